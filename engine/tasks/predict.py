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
    rgb_bands: tuple[int, int, int] | list[tuple[int, int, int] | None] | None = Field(
        None, description="1-based red, green, blue bands: one triple for every frame, or one per frame "
        "(null: by colour interpretation)")
    model: str = Field("demo-controlnet-3d", description="a temporal (3D) or pre/post (2D) ControlNet model")
    steps: int = Field(50, ge=1, le=500)
    guidance_scale: float = Field(1.0, ge=0, le=100)

    _parse_target = field_validator("target_date", mode="before")(date_field)

    @field_validator("dates", mode="before")
    @classmethod
    def _parse_dates(cls, value):
        return [date_field(v) for v in value] if isinstance(value, list) else value


def output_size(params: PredictParams, inputs) -> tuple[int, int]:
    """The output has the grid of the `reference` raster, else of the reference frame."""
    from engine.errors import InputError
    from engine.geo.raster import open_raster

    frames = inputs_named(inputs, "frames")
    if "reference" in inputs:
        path = inputs["reference"]
    elif params.reference < len(frames):
        path = frames[params.reference]
    else:
        raise InputError(f"the reference frame index {params.reference} is not one of the {len(frames)} frames")
    with open_raster(path) as source:
        return source.info.width, source.info.height


@task(
    "predict",
    PredictParams,
    inputs={
        "frames": Input("raster", "dated rasters of one place (frames.0, frames.1, ...)", many=True, required=True),
        "reference": Input("raster", "optional: a raster whose grid the output takes instead of a frame's"),
    },
    size=lambda params, inputs: output_size(params, inputs),
    summary="dated rasters -> the image at a target date on a reference grid (results: image, preview)",
)
def run(registry, params: PredictParams, inputs, out_dir: Path, progress, cancel) -> dict[str, Path]:
    from engine.geo.writer import write_preview_png
    from engine.pipelines.predict import PredictRequest, predict

    reference = params.reference
    if "reference" in inputs:
        from engine.geo.grid import grid_of_raster

        reference = grid_of_raster(inputs["reference"], "the reference raster")
    model = params.load_model(registry)
    request = PredictRequest(
        frames=inputs_named(inputs, "frames"), target_date=params.target_date, dates=params.dates,
        reference=reference, prompt=params.prompt, control_scale=params.control_scale, rgb_bands=params.rgb_bands,
        **params.sampler_fields(),
    )
    result = predict(model, request, out_dir / "image.tif", progress=progress, cancel=cancel)
    path = result.generated.path
    return {"image": path, "preview": write_preview_png(path, out_dir / "preview.png")}
