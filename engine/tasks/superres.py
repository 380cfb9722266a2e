"""The superres task: a Sentinel-2 `image` -> a finer RGB image.tif + preview.png on the same footprint."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydantic import Field, field_validator

from . import Input, task
from .base import SamplingParams, date_field


class SuperresParams(SamplingParams):
    """Band names, output extent and resolution, and sampler settings of a super-resolution."""

    bands: list[str] | None = Field(None, description="Sentinel-2 name of each input band in order (default: from band descriptions)")
    extent: tuple[float, float, float, float] | None = Field(None, description="part of the scene, in its CRS (default: all of it)")
    resolution_m: float | None = Field(None, gt=0, description="output pixel size in metres (default: an eighth of the scene's)")
    date: dt.date | None = Field(None, description="acquisition date (default: read from the scene)")
    control_scale: float = Field(1.0, ge=0, le=10)
    model: str = Field("demo-superres", description="a Sentinel-2 super-resolution ControlNet model")

    _parse_date = field_validator("date", mode="before")(date_field)


def output_size(params: SuperresParams, inputs) -> tuple[int, int]:
    """The output's size in pixels, as `engine.pipelines.superres` will make it."""
    from engine.geo.grid import grid_from_extent
    from engine.geo.raster import open_raster

    with open_raster(inputs["image"]) as source:
        info = source.info
    extent = params.extent or tuple(info.bounds)
    if params.resolution_m:
        grid = grid_from_extent(extent, info.crs, resolution_m=params.resolution_m)
    else:
        grid = grid_from_extent(extent, info.crs, pixel_size=abs(info.transform.a) / 8)
    return grid.width, grid.height


@task(
    "superres",
    SuperresParams,
    inputs={"image": Input("raster", "Sentinel-2 scene with 10 or 13 bands", required=True)},
    size=lambda params, inputs: output_size(params, inputs),
    summary="Sentinel-2 scene -> RGB at a finer resolution on the same footprint (results: image, preview)",
)
def run(registry, params: SuperresParams, inputs, out_dir: Path, progress, cancel) -> dict[str, Path]:
    from engine.errors import InputError
    from engine.geo.writer import write_preview_png
    from engine.pipelines.superres import SuperresRequest, superres

    if "image" not in inputs:
        raise InputError("the superres task needs an `image` (the Sentinel-2 scene)")
    model = params.load_model(registry)
    request = SuperresRequest(
        image=inputs["image"], bands=params.bands, extent=params.extent, resolution_m=params.resolution_m,
        date=params.date, prompt=params.prompt, control_scale=params.control_scale, **params.sampler_fields(),
    )
    result = superres(model, request, out_dir / "image.tif", progress=progress, cancel=cancel)
    return {"image": result.path, "preview": write_preview_png(result.path, out_dir / "preview.png")}
