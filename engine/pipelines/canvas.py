"""Latent canvases laid over output grids: their size, where their cells are, and decoding them.

A latent cell covers `f x f` output pixels (f = the VAE's scale factor, 8 for SD-class models).
The canvas starts at the grid's top-left corner and is padded right and down to whole cells and
to at least one model window; the padding is generated but never written.
"""

from __future__ import annotations

import math
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from rasterio.windows import Window

from engine.geo.grid import OutputGrid
from engine.geo.queued_writer import DEFAULT_DEPTH, QueuedWriter
from engine.geo.tiling import Span
from engine.pipelines.sampling import CancelCheck, check_cancel
from engine.runtime.vae_decode import CPU_DECODE_BATCH

# Canvases larger than this (bytes) are kept in a memory-mapped scratch file.
IN_MEMORY_LIMIT = 512 * 2**20


@dataclass(frozen=True)
class LatentCanvas:
    grid: OutputGrid
    factor: int  # output pixels per latent cell
    channels: int
    height: int  # cells
    width: int

    @classmethod
    def over(cls, grid: OutputGrid, factor: int, channels: int, min_cells: int) -> "LatentCanvas":
        height = max(math.ceil(grid.height / factor), min_cells)
        width = max(math.ceil(grid.width / factor), min_cells)
        return cls(grid, factor, channels, height, width)

    def centre_of(self, span: Span) -> tuple[float, float]:
        """CRS coordinates of a latent span's centre."""
        return self.grid.transform @ ((span.col + span.width / 2) * self.factor, (span.row + span.height / 2) * self.factor)

    def pixel_window(self, span: Span) -> Window | None:
        """The part of the output grid a latent span covers, or None if it is all padding."""
        row, col = span.row * self.factor, span.col * self.factor
        height = min(span.height * self.factor, self.grid.height - row)
        width = min(span.width * self.factor, self.grid.width - col)
        if height <= 0 or width <= 0:
            return None
        return Window(col, row, width, height)


class LatentStore:
    """The finished latents of a canvas, in memory or in a scratch file when large."""

    def __init__(self, canvas: LatentCanvas, scratch_dir: str | Path | None = None) -> None:
        shape = (canvas.channels, canvas.height, canvas.width)
        nbytes = int(np.prod(shape)) * 4
        self._tmp = None
        if nbytes > IN_MEMORY_LIMIT:
            self._tmp = tempfile.TemporaryDirectory(prefix="gfm4d-latents-", dir=scratch_dir)
            self.array = np.lib.format.open_memmap(Path(self._tmp.name) / "latents.npy", "w+", np.float32, shape)
        else:
            self.array = np.zeros(shape, dtype=np.float32)

    def read(self, span: Span) -> torch.Tensor:
        return torch.from_numpy(np.array(self.array[(slice(None),) + span.slices]))[None]

    def write(self, span: Span, latents: torch.Tensor, keep: np.ndarray | None = None) -> None:
        """Store latents of a span; where `keep` is True the stored cells are left as they are."""
        values = latents[0].detach().cpu().numpy()
        target = self.array[(slice(None),) + span.slices]
        if keep is None:
            target[...] = values
        else:
            target[...] = np.where(keep[None], target, values)

    def close(self) -> None:
        self.array = None
        if self._tmp is not None:
            self._tmp.cleanup()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """VAE output in [-1, 1] -> uint8 (rounded, clipped)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


@torch.no_grad()
def decode_latents(model, latents: torch.Tensor) -> torch.Tensor:
    """VAE decode of (B, C, h, w) latents to float32 images in [-1, 1].

    Through the model's VaeDecoder: half precision on a GPU, float32 for any image that overflows
    (engine.runtime.vae_decode).
    """
    latents = latents.to(model.device, torch.float32) / model.vae_scaling_factor + _shift(model)
    return model.vae_decoder(latents)


def _shift(model) -> float:
    """The VAE's latent shift (SD3, FLUX); 0 for SD-class VAEs."""
    return getattr(model, "vae_shift_factor", 0.0)


def context_blocks(rows: int, cols: int, limit_rows: int, limit_cols: int, block: int, margin: int) -> list[tuple[Span, Span]]:
    """(core, context) spans: cores tile rows x cols; each context adds up to `margin` cells a side.

    A block is processed with its context and only its core is kept, so blocks never overlap in
    the result and every block still sees its neighbours (VAE encoding and decoding in tiles).
    """
    pairs = []
    for row in range(0, rows, block):
        for col in range(0, cols, block):
            core = Span(row, col, min(block, rows - row), min(block, cols - col))
            top, left = max(0, row - margin), max(0, col - margin)
            bottom = min(limit_rows, row + core.height + margin)
            right = min(limit_cols, col + core.width + margin)
            pairs.append((core, Span(top, left, bottom - top, right - left)))
    return pairs


def decode_blocks(canvas: LatentCanvas, block: int, margin: int) -> list[tuple[Span, Span]]:
    """Decoding blocks over the part of a canvas that lies on the grid."""
    rows = math.ceil(canvas.grid.height / canvas.factor)
    cols = math.ceil(canvas.grid.width / canvas.factor)
    return context_blocks(rows, cols, canvas.height, canvas.width, block, margin)


@torch.no_grad()
def encode_pixels(model, pixels: torch.Tensor, block: int = 64, margin: int = 8) -> torch.Tensor:
    """(1, 3, H, W) images in [-1, 1] (H, W multiples of the VAE factor) -> (1, C, H/f, W/f) latents.

    Encoded in blocks with context like decoding, so memory follows the block, not the image; the
    distribution's mode is used, so encoding is deterministic.
    """
    f = model.vae_scale_factor
    rows, cols = pixels.shape[-2] // f, pixels.shape[-1] // f
    latents = torch.empty((1, model.latent_channels, rows, cols), dtype=torch.float32)
    for core, context in context_blocks(rows, cols, rows, cols, block, margin):
        region = pixels[..., context.row * f : (context.row + context.height) * f, context.col * f : (context.col + context.width) * f]
        encoded = model.vae.encode(region.to(model.device, model.vae.dtype)).latent_dist.mode()
        inner = core.relative_to(context)
        latents[(slice(None), slice(None)) + core.slices] = ((encoded[(slice(None), slice(None)) + inner.slices] - _shift(model)) * model.vae_scaling_factor).float().cpu()
    return latents


def decode_in_blocks(model, read: Callable[[Span], torch.Tensor], pairs: list[tuple[Span, Span]],
                     cancel: CancelCheck | None = None, batch: int = CPU_DECODE_BATCH) -> Iterator[tuple[Span, torch.Tensor]]:
    """Decode (core, context) blocks; yields each core with its decoded pixels in [-1, 1] (C, h*f, w*f).

    Blocks whose contexts have the same shape (all but the edge ones) are decoded `batch` at a time
    in one VAE call; only the core of each context is kept.
    """
    f = model.vae_scale_factor
    groups: dict[tuple[int, int], list[tuple[Span, Span]]] = {}
    for core, context in pairs:
        groups.setdefault((context.height, context.width), []).append((core, context))
    for members in groups.values():
        for start in range(0, len(members), batch):
            check_cancel(cancel)
            chunk = members[start : start + batch]
            images = decode_latents(model, torch.cat([read(context) for _, context in chunk]))
            for (core, context), image in zip(chunk, images):
                inner = core.relative_to(context)
                yield core, image[:, inner.row * f : (inner.row + inner.height) * f, inner.col * f : (inner.col + inner.width) * f]


def decode_to_writer(model, canvas: LatentCanvas, store: LatentStore, writer, *, block: int, margin: int,
                     batch: int = CPU_DECODE_BATCH, valid_mask=None, on_block=None, cancel: CancelCheck | None = None,
                     queue_depth: int | None = DEFAULT_DEPTH) -> None:
    """Decode a stored canvas block by block straight into a GeoTIFF writer.

    The writes go to the writer on a thread of their own through a queue of `queue_depth` blocks
    (None: written here, in turn with decoding), so decoding never waits on the disk and the file is
    the same bytes either way. `valid_mask(window)`, when given, returns each block's validity mask.
    """
    with QueuedWriter(writer, queue_depth) if queue_depth is not None else nullcontext(writer) as sink:
        for core, image in decode_in_blocks(model, store.read, decode_blocks(canvas, block, margin), cancel, batch):
            pixels = to_uint8(image[None])[0]
            window = canvas.pixel_window(core)
            sink.write(pixels[:, : int(window.height), : int(window.width)], window)
            if valid_mask is not None:
                sink.write_mask(valid_mask(window), window)
            if on_block is not None:
                on_block()
