"""The generate task: an extent, a `like` raster or an `aoi` polygon file -> image.tif + preview.png.

Params mirror `gfm4d generate` so that CLI, HTTP and QGIS users describe the same request the
same way; `output_grid` is where "where to generate" becomes an OutputGrid, checked before a
job is queued and again when it runs.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from rasterio.crs import CRS
from rasterio.errors import CRSError

from engine.errors import InputError
from engine.geo.grid import OutputGrid, grid_from_extent, grid_of_raster

from . import Input, task
from .base import SamplingParams, date_field

# Far beyond any real request (65536 x 65536 px); what lies above is a unit mix-up, e.g. an
# extent in metres with a CRS in degrees, and would occupy the engine for weeks.
MAX_OUTPUT_PIXELS = 1 << 32


class GenerateParams(SamplingParams):
    """Where, what and how to generate (sizes in output pixels)."""

    extent: tuple[float, float, float, float] | None = Field(
        None, description="xmin, ymin, xmax, ymax in the units of `crs`; or upload a `like` raster or an `aoi` file"
    )
    crs: str | None = Field(None, description="CRS of `extent` and of the output (EPSG:32618, WKT, ...); default with `aoi`: the AOI's")
    resolution_m: float | None = Field(None, gt=0, description="output pixel size in ground metres")
    pixel_size: float | None = Field(None, gt=0, description="output pixel size in CRS units")
    prompt: str = Field(..., max_length=2000, description="text prompt, e.g. 'a fmow satellite image of a farm in italy'")
    date: dt.date | None = Field(None, description="acquisition date to condition on (ISO 8601)")
    region_size: int | None = Field(
        None, ge=16, le=1 << 20,
        description="side of a region in pixels: a larger output is made region by region, each continuing the ones "
                    "before it (default: 2048 latent cells, 16384 px with SD's VAE); smaller regions use less memory "
                    "and, on Ray, run in parallel on more workers",
    )

    _parse_date = field_validator("date", mode="before")(date_field)

    @field_validator("crs")
    @classmethod
    def _known_crs(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                CRS.from_user_input(value)
            except (CRSError, ValueError, TypeError) as exc:
                raise ValueError(f"{value!r} is not a CRS GDAL knows ({exc}); give e.g. 'EPSG:32618' or a WKT string") from None
        return value

    @model_validator(mode="after")
    def _one_pixel_size(self) -> "GenerateParams":
        if self.resolution_m is not None and self.pixel_size is not None:
            raise ValueError("give resolution_m (ground metres) or pixel_size (CRS units), not both")
        return self


def output_grid(params: GenerateParams, inputs: dict[str, Path]) -> tuple[OutputGrid, list | None]:
    """The output grid (and AOI polygons in its CRS) from exactly one of extent, `like` or `aoi`."""
    like, aoi_file = inputs.get("like"), inputs.get("aoi")
    given = [name for name, value in (("extent", params.extent), ("like", like), ("aoi", aoi_file)) if value is not None]
    if len(given) != 1:
        have = f"; got {' and '.join(given)}" if given else ""
        raise InputError(
            "say where to generate with exactly one of: `extent` (with `crs`), a `like` raster "
            f"(its grid is taken) or an `aoi` polygon file{have}"
        )
    if like is not None:
        if params.resolution_m is not None or params.pixel_size is not None or params.crs is not None:
            raise InputError("a `like` raster fixes the CRS and pixel size: drop crs, resolution_m and pixel_size")
        return grid_of_raster(like, "the `like` raster"), None
    if (params.resolution_m is None) == (params.pixel_size is None):
        raise InputError("give the output pixel size: resolution_m (ground metres) or pixel_size (CRS units)")
    if aoi_file is not None:
        from engine.geo.vectors import read_polygons

        layer = read_polygons(aoi_file)
        crs = CRS.from_user_input(params.crs) if params.crs else layer.crs
        layer = layer.to_crs(crs)
        bounds = layer.bounds()
        aoi = [g for g in layer.geometries if g is not None and not g.is_empty]
        return grid_from_extent(bounds, crs, resolution_m=params.resolution_m, pixel_size=params.pixel_size), aoi
    if params.crs is None:
        raise InputError("`extent` needs `crs` (e.g. 'EPSG:32618') to say what its numbers mean")
    grid = grid_from_extent(params.extent, params.crs, resolution_m=params.resolution_m, pixel_size=params.pixel_size)
    return grid, None


def check_size(grid: OutputGrid) -> None:
    pixels = grid.width * grid.height
    if pixels > MAX_OUTPUT_PIXELS:
        raise InputError(
            f"the output would be {grid.width} x {grid.height} px ({pixels / 1e9:.3g} Gpx), more than one job makes "
            f"({MAX_OUTPUT_PIXELS / 1e9:.3g} Gpx): use a coarser resolution or a smaller extent "
            "(are the extent's numbers in the units of its CRS?)"
        )


def _size(grid: OutputGrid) -> tuple[int, int]:
    return grid.width, grid.height


def check(params: GenerateParams, inputs: dict[str, Path]) -> None:
    check_size(output_grid(params, inputs)[0])


@task(
    "generate",
    GenerateParams,
    inputs={
        "like": Input("raster", "raster whose grid (CRS, transform, size) the output takes"),
        "aoi": Input("vector", "polygons (GeoJSON, GPKG, zipped Shapefile, xBD JSON): generate over their extent, mask outside"),
    },
    check=check,
    size=lambda params, inputs: _size(output_grid(params, inputs)[0]),
    summary="prompt + metadata -> a georeferenced RGB image over an extent (results: image, preview)",
)
def run(registry, params: GenerateParams, inputs, out_dir: Path, progress, cancel) -> dict[str, Path]:
    from engine.geo.writer import write_preview_png
    from engine.pipelines.generate import GenerateRequest, generate

    grid, aoi = output_grid(params, inputs)
    check_size(grid)
    regions = {}
    if params.region_size is not None:
        from .base import latent_cell

        regions["max_region_cells"] = params.region_size // latent_cell(registry.get(params.model))
    request = GenerateRequest(grid=grid, prompt=params.prompt, date=params.date, aoi=aoi, **regions,
                              **params.sampler_fields())
    if getattr(registry, "ray_address", None) is not None:
        from engine.scaleout.regions import generate_on_ray

        loras = registry.lora_specs([entry.model_dump() for entry in params.lora or ()])
        result = generate_on_ray(registry, params.model, request, out_dir / "image.tif", address=registry.ray_address,
                                 workers=registry.ray_workers, loras=loras, progress=progress, cancel=cancel)
    else:
        result = generate(params.load_model(registry), request, out_dir / "image.tif", progress=progress, cancel=cancel)
    return {"image": result.path, "preview": write_preview_png(result.path, out_dir / "preview.png")}
