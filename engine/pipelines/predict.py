"""Predict: a stack of dated rasters -> the image at a target date on a reference grid.

DiffusionSat's 3D ControlNet conditions the SatUNet on the frames (each with its own date, GSD,
cloud cover and centre as conditioning metadata); its 2D ControlNet does the single-frame case
(given the post-event image predict the pre-event one, or the reverse). Every frame is
co-registered onto the reference grid window by window; where a frame has no data the condition is
zero there and the output says how much of each frame covered the grid. Generation itself (windows,
regions, blending, decoding) is the generate pipeline's, with the frames as a region conditioning.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from rasterio.windows import Window

from engine.errors import InputError, ModelError
from engine.geo.coregister import Frame, WarpedFrame, check_coverage, open_frames
from engine.geo.dates import parse_date
from engine.geo.grid import OutputGrid, grid_like
from engine.geo.metadata import SatMetadata, centre_lonlat
from engine.geo.tiling import Span
from engine.pipelines.canvas import LatentCanvas
from engine.pipelines.generate import GenerateRequest, GenerateResult, generate
from engine.pipelines.sampling import CancelCheck, ProgressCallback, SamplerSettings

DEFAULT_PROMPT = "a fmow satellite image"


@dataclass(kw_only=True)
class PredictRequest(SamplerSettings):
    frames: Sequence[Path]
    target_date: dt.date | str
    dates: Sequence[dt.date | str | None] | None = None  # per frame; None: read from each frame
    reference: int | OutputGrid = 0  # a frame's index (its grid), or an explicit grid
    prompt: str = DEFAULT_PROMPT
    control_scale: float = 1.0
    rgb_bands: Sequence[int] | Sequence[Sequence[int] | None] | None = None  # (R, G, B) for all frames, or per frame
    steps: int = 50
    guidance_scale: float = 1.0  # DiffusionSat's 3D ControlNet example uses 1.0


@dataclass
class PredictResult:
    generated: GenerateResult
    frames: list[tuple[str, str, float]] = field(default_factory=list)  # (name, date, coverage)


class FrameConditioning:
    """Region conditioning from co-registered frames: the ControlNet image and per-frame metadata."""

    def __init__(self, frames: Sequence[Frame], grid: OutputGrid, temporal: bool, control_scale: float):
        self.frames = frames
        self.grid = grid
        self.temporal = temporal
        self.control_scale = control_scale
        self.warped = [WarpedFrame(frame, grid) for frame in frames]

    def __call__(self, canvas: LatentCanvas, region: Span, windows: list[Span]) -> dict:
        f = canvas.factor
        pixels = Window(region.col * f, region.row * f, region.width * f, region.height * f)
        stacks = [w.read_unit(pixels).filled(0.0) for w in self.warped]  # no data -> 0 (black), never invented
        image = np.stack(stacks, axis=1) if self.temporal else stacks[0]
        cond_metadata = []
        for span in windows:
            x, y = canvas.centre_of(Span(region.row + span.row, region.col + span.col, span.height, span.width))
            lon, lat = centre_lonlat(canvas.grid.crs, x, y)
            per_frame = [SatMetadata(lon=lon, lat=lat, gsd_m=frame.gsd_m, cloud_cover=frame.cloud_cover,
                                     date=frame.date).normalised() for frame in self.frames]
            cond_metadata.append(np.stack(per_frame, axis=1) if self.temporal else per_frame[0])
        return {
            "control_image": torch.from_numpy(np.ascontiguousarray(image))[None].float(),
            "control_factor": f,
            "window_cond_metadata": cond_metadata,
            "control_scale": self.control_scale,
        }

    def close(self) -> None:
        for warped in self.warped:
            warped.close()


def condition_channels(controlnet) -> int:
    """How many bands a ControlNet's condition has (3 for RGB frames)."""
    config = controlnet.config
    return int(getattr(config, "conditioning_in_channels", None) or getattr(config, "conditioning_channels", 3))


def _check_model(model, frame_count: int) -> bool:
    """True for the 3D (temporal) ControlNet; errors for models that cannot predict."""
    if getattr(model, "controlnet", None) is None or "predict" not in model.info.tasks:
        raise ModelError(
            f"model {model.info.name} ({model.info.kind}) cannot predict: it needs a DiffusionSat 3D ControlNet "
            "(a stack of frames) or a 2D metadata ControlNet (one frame); `gfm4d models list` shows the tasks of each"
        )
    temporal = model.info.kind == "controlnet-3d"
    if not temporal and frame_count != 1:
        raise InputError(f"model {model.info.name} is a 2D ControlNet and takes one frame, not {frame_count}")
    channels = condition_channels(model.controlnet)
    if channels != 3:
        raise InputError(f"model {model.info.name} expects {channels}-band conditions; predict gives RGB frames")
    return temporal


def predict(model, request: PredictRequest, output: str | Path, progress: ProgressCallback | None = None,
            cancel: CancelCheck | None = None) -> PredictResult:
    """Predict the image at the target date on the reference grid; written atomically to `output`."""
    target_date = parse_date(request.target_date)
    temporal = _check_model(model, len(request.frames))
    frames = open_frames(list(request.frames), request.dates, request.rgb_bands)
    conditioning = None
    try:
        frames.sort(key=lambda frame: frame.date)
        grid = _reference_grid(request, frames)
        fractions = check_coverage(frames, grid)
        conditioning = FrameConditioning(frames, grid, temporal, request.control_scale)
        generate_request = GenerateRequest(grid=grid, prompt=request.prompt, date=target_date, **request.sampler_fields())
        summary = [(frame.path.name, frame.date.isoformat(), fraction) for frame, fraction in zip(frames, fractions)]
        tags = {
            "GFM4D_TASK": "predict",
            "GFM4D_TARGET_DATE": target_date.isoformat(),
            "GFM4D_FRAMES": "; ".join(f"{name} {date} ({fraction:.0%} of the grid)" for name, date, fraction in summary),
        }
        generated = generate(model, generate_request, output, progress, cancel, conditioning=conditioning, extra_tags=tags)
        return PredictResult(generated, summary)
    finally:
        if conditioning is not None:
            conditioning.close()
        for frame in frames:
            frame.close()


def _reference_grid(request: PredictRequest, frames: list[Frame]) -> OutputGrid:
    if isinstance(request.reference, OutputGrid):
        return request.reference
    names = [str(p) for p in request.frames]
    index = request.reference
    if not 0 <= index < len(names):
        raise InputError(f"the reference frame index {index} is not one of the {len(names)} frames")
    wanted = Path(names[index])
    info = next(frame.source.info for frame in frames if frame.path == wanted)
    return grid_like(info.crs, info.transform, info.width, info.height)
