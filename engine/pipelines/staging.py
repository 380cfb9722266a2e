"""A region's denoising inputs, put on the model's device once, in batches of one fixed shape.

The sampling loop calls the networks once per batch of windows at every step. Anything it copied
from host memory in there would be a host-to-device transfer (and a wait for the GPU) per call:
for predict and super-resolution the whole conditioning image, every step. So before the first
step, everything the loop reads is staged on the device: the extra input channels of inpainting
UNets, the ControlNet image, the blend weights and their sum, and for every batch of windows its
prompt rows, metadata and conditioning metadata, with the guidance halves already concatenated.

Every batch of a region holds the same number of windows: the windows are split into batches as
evenly as the batch size allows, and the last batch is filled up with repeats of its own last
window, whose outputs are discarded. All windows of a job have one size (plan_windows shifts
edge windows inward instead of cutting them), so every network call of a job has the same
shapes: what compiled graphs and CUDA graphs need to be replayed instead of rebuilt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from engine.geo.tiling import Span, blend_weights


@dataclass
class WindowBatch:
    """One network call: its windows and their conditioning, on the model's device."""

    windows: list[int]  # indices into the job's windows; the tail repeats the last real one
    real: int  # the first `real` entries are distinct windows; the outputs of the rest are discarded
    hidden: torch.Tensor  # prompt rows, (B, tokens, dim), or (2B, ...) with the unconditional half first
    pooled: torch.Tensor | None
    metadata: torch.Tensor | None  # (B, 7) or (2B, 7), float32 as the metadata embedding needs
    cond_metadata: torch.Tensor | None  # (B, 7[, T]) or (2B, ...)


def batch_layout(count: int, size: int) -> list[list[int]]:
    """Windows 0..count-1 in batches of one common length of at most `size`, the last padded with repeats.

    The length is the smallest that needs no more calls than batches of `size` would: 17 windows
    at 16 per call are two calls of 9, not 16 and 1 padded to 16.
    """
    calls = math.ceil(count / max(1, size))
    length = math.ceil(count / calls)
    batches = []
    for start in range(0, count, length):
        batch = list(range(start, min(start + length, count)))
        batches.append(batch + [batch[-1]] * (length - len(batch)))
    return batches


def window_weights(windows: Sequence[Span], overlap: int, device) -> list[torch.Tensor]:
    """Each window's (1, 1, h, w) blend weights on `device` (one tensor per distinct window shape)."""
    cache: dict[tuple[int, int], torch.Tensor] = {}
    weights = []
    for span in windows:
        key = (span.height, span.width)
        if key not in cache:
            cache[key] = torch.from_numpy(blend_weights(span.height, span.width, overlap)).to(device)[None, None]
        weights.append(cache[key])
    return weights


class StagedRegion:
    """What the loop reads for one canvas job, on the model's device; batches are staged per batch size."""

    def __init__(self, model, job, text):
        self.model = model
        self.job = job
        self.text = text
        self.guided = text.uncond is not None
        device = model.device
        self.extra_channels = None if job.extra_channels is None else job.extra_channels.to(device, torch.float32)
        self.control_image = None if job.control_image is None else job.control_image.to(device, model.dtype)
        self.weights = window_weights(job.windows, job.overlap, device)
        height, width = job.noise.shape[-2:]
        total = torch.zeros((1, 1, height, width), dtype=torch.float32, device=device)
        for span, weight in zip(job.windows, self.weights):
            total[(slice(None), slice(None)) + span.slices] += weight
        # Cells no window covers (a region's corners outside every chosen window) get no prediction.
        self.weight_total = total.clamp_min(1e-12)
        self._batches: dict[int, list[WindowBatch]] = {}

    def batches(self, size: int) -> list[WindowBatch]:
        """The job's windows in batches of at most `size` (staged at the first request for that size)."""
        if size not in self._batches:
            self._batches[size] = [self._stage(windows) for windows in batch_layout(len(self.job.windows), size)]
        return self._batches[size]

    def _stage(self, windows: list[int]) -> WindowBatch:
        job, text, device = self.job, self.text, self.model.device
        count = len(windows)
        rows = [job.window_prompts[i] if job.window_prompts is not None else 0 for i in windows]
        hidden = text.cond[rows]
        pooled = text.pooled[rows] if text.pooled is not None else None
        metadata = _stacked(job.window_metadata, windows, device)
        cond_metadata = _stacked(job.window_cond_metadata, windows, device)
        if self.guided:
            hidden = torch.cat([text.uncond.expand(count, -1, -1), hidden])
            if pooled is not None:
                pooled = torch.cat([text.uncond_pooled.expand(count, -1), pooled])
            # The unconditional half has all-zero (conditioning) metadata, still passed through the MLPs.
            if metadata is not None:
                metadata = torch.cat([torch.zeros_like(metadata), metadata])
            if cond_metadata is not None:
                cond_metadata = torch.cat([torch.zeros_like(cond_metadata), cond_metadata])
        real = len(dict.fromkeys(windows))
        return WindowBatch(windows, real, hidden, pooled, metadata, cond_metadata)


def _stacked(per_window: Sequence[np.ndarray] | None, windows: list[int], device) -> torch.Tensor | None:
    if per_window is None:
        return None
    return torch.from_numpy(np.stack([per_window[i] for i in windows])).to(device)
