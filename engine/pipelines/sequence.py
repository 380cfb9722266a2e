"""Sequences: a seed frame from the generator, then each next date predicted from the frames so far.

The generator (a SatUNet) makes the first date's image on the grid; the temporal ControlNet then
predicts every later date conditioned on the most recent frames (at most as many as it was
trained with), each written as its own GeoTIFF on the same grid.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from engine.errors import InputError
from engine.geo.dates import parse_date
from engine.geo.grid import OutputGrid
from engine.pipelines.generate import GenerateRequest, generate
from engine.pipelines.predict import PredictRequest, predict
from engine.pipelines.sampling import CancelCheck, Progress, ProgressCallback, SamplerSettings


@dataclass(kw_only=True)
class SequenceRequest(SamplerSettings):
    """The sampler settings (window, scheduler, ...) apply to every frame; `guidance_scale` to the
    seed frame, `predict_guidance_scale` to the predicted ones."""

    grid: OutputGrid
    dates: Sequence[dt.date | str]
    prompt: str
    predict_guidance_scale: float = 1.0


def generate_sequence(generator, predictor, request: SequenceRequest, out_dir: Path, stem: str = "frame",
                      progress: ProgressCallback | None = None, cancel: CancelCheck | None = None) -> list[Path]:
    """Write one GeoTIFF per date into `out_dir`; returns their paths in date order."""
    dates = sorted(parse_date(d) for d in request.dates)
    if len(dates) < 2:
        raise InputError("a sequence needs at least two dates: the first is generated, the others predicted")
    if len(set(dates)) != len(dates):
        raise InputError("the sequence's dates must all differ")
    window = predictor.info.num_frames or 3
    paths: list[Path] = []
    for index, date in enumerate(dates):

        def step(p: Progress, index=index) -> None:
            if progress is not None:
                progress(Progress(index * p.total + p.done, len(dates) * p.total, f"frame {index + 1}/{len(dates)}: {p.message}"))

        path = out_dir / f"{stem}_{date.isoformat()}.tif"
        if index == 0:
            generate(generator, GenerateRequest(grid=request.grid, prompt=request.prompt, date=date,
                                                **request.sampler_fields()),
                     path, step, cancel)
        else:
            recent = paths[-window:]
            settings = {**request.sampler_fields(), "guidance_scale": request.predict_guidance_scale,
                        "seed": request.seed + index}
            predict(predictor, PredictRequest(frames=recent, dates=dates[index - len(recent) : index], target_date=date,
                                              reference=request.grid, prompt=request.prompt, **settings),
                    path, step, cancel)
        paths.append(path)
    return paths
