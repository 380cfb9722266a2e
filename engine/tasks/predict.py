"""The predict task: dated `frames` -> the image at `target_date` on a frame's grid (image.tif + preview.png)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydantic import Field, field_validator

from . import Input, inputs_named, task
from .base import SamplingParams, date_field


class PredictParams(SamplingParams):
    """The target date, the frames' dates and the sampler settings of a temporal prediction."""

    target_date: dt.date = Field(..., description="date to predict (ISO 8601): past, future or in between")
    dates: list[dt.date | None] | None = Field(None, description="one date per frame, null to read it from the frame")
    reference: int = Field(0, ge=0, description="index of the frame whose grid the output takes")
    control_scale: float = Field(1.0, ge=0, le=10, description="multiplier of the ControlNet's residuals")
    model: str = Field("demo-controlnet-3d", description="a temporal (3D) or pre/post (2D) ControlNet model")
    steps: int = Field(50, ge=1, le=500)
    guidance_scale: float = Field(1.0, ge=0, le=100)

    _parse_target = field_validator("target_date", mode="before")(date_field)

    @field_validator("dates", mode="before")
    @classmethod
    def _parse_dates(cls, value):
        return [date_field(v) for v in value] if isinstance(value, list) else value


@task(
    "predict",
    PredictParams,
    inputs={
        "frames": Input("raster", "dated rasters of one place (frames.0, frames.1, ...)", many=True),
        "reference": Input("raster", "optional: a raster whose grid the output takes instead of a frame's"),
    },
    summary="dated rasters -> the image at a target date on a reference grid (results: image, preview)",
)
def run(registry, params: PredictParams, inputs, out_dir: Path, progress, cancel) -> dict[str, Path]:
    from engine.geo.writer import write_preview_png
    from engine.pipelines.predict import PredictRequest, predict

    reference = params.reference
    if "reference" in inputs:
        from engine.geo.grid import grid_like
        from engine.geo.raster import open_raster

        with open_raster(inputs["reference"]) as source:
            info = source.info
        reference = grid_like(info.crs, info.transform, info.width, info.height)
    model = params.load_model(registry)
    request = PredictRequest(
        frames=inputs_named(inputs, "frames"), target_date=params.target_date, dates=params.dates,
        reference=reference, prompt=params.prompt, control_scale=params.control_scale, **params.sampler_fields(),
    )
    result = predict(model, request, out_dir / "image.tif", progress=progress, cancel=cancel)
    path = result.generated.path
    return {"image": path, "preview": write_preview_png(path, out_dir / "preview.png")}
