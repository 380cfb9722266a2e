"""Super-resolution of Sentinel-2 as DiffusionSat does it: a 2D metadata ControlNet on the SatUNet.

The output grid covers the scene's footprint (or a chosen extent) at the model's output resolution
(default: an eighth of the Sentinel-2 pixel). The condition is the scene warped onto the same
footprint at twice the output pixel size (the model's `conditioning_scale` 2: a 256 px condition
for a 512 px image), normalised per spec §7, with the conditioning metadata of a 10 m image.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from rasterio.transform import Affine
from rasterio.windows import Window

from engine.errors import InputError, ModelError
from engine.geo.dates import acquisition_for_raster, parse_date
from engine.geo.grid import OutputGrid, grid_from_extent
from engine.geo.metadata import SatMetadata, centre_lonlat
from engine.geo.raster import GridView, open_raster
from engine.geo.sentinel2 import CONDITION_BANDS, CONDITION_GSD_M, Sentinel2Normalisation, condition_band_indices
from engine.geo.tiling import Span
from engine.pipelines.canvas import LatentCanvas
from engine.pipelines.generate import GenerateRequest, GenerateResult, generate
from engine.pipelines.sampling import CancelCheck, ProgressCallback, SamplerSettings

DEFAULT_PROMPT = "a fmow satellite image"
DEFAULT_FACTOR = 8  # output pixels per Sentinel-2 pixel along each axis


@dataclass(kw_only=True)
class SuperresRequest(SamplerSettings):
    image: Path
    bands: Sequence[str] | None = None  # Sentinel-2 name of each input band, in order
    extent: tuple[float, float, float, float] | None = None  # in the image's CRS; default: its footprint
    resolution_m: float | None = None  # default: the scene's GSD / 8
    date: dt.date | str | None = None  # default: the scene's acquisition date
    prompt: str = DEFAULT_PROMPT
    control_scale: float = 1.0


class Sentinel2Conditioning:
    """Region conditioning: the scene on the condition grid, and its per-window metadata."""

    def __init__(self, source, bands: list[int], grid: OutputGrid, condition_factor: int, date, cloud, control_scale):
        self.bands = bands
        self.k = condition_factor
        self.date, self.cloud, self.control_scale = date, cloud, control_scale
        scale = 8 / condition_factor
        self.grid = grid
        condition_grid = OutputGrid(grid.crs, grid.transform @ Affine.scale(scale),
                                    int(np.ceil(grid.width / scale)), int(np.ceil(grid.height / scale)))
        self._view = GridView(source, condition_grid.crs, condition_grid.transform, condition_grid.width,
                              condition_grid.height)
        self._normalise = Sentinel2Normalisation()

    def __call__(self, canvas: LatentCanvas, region: Span, windows: list[Span]) -> dict:
        k = self.k
        data = self._view.read(bands=self.bands, window=Window(region.col * k, region.row * k, region.width * k, region.height * k))
        image = self._normalise.to_unit(np.ma.getdata(data))
        image[:, np.ma.getmaskarray(data).any(axis=0)] = 0.0
        cond_metadata = []
        for span in windows:
            x, y = canvas.centre_of(Span(region.row + span.row, region.col + span.col, span.height, span.width))
            lon, lat = centre_lonlat(canvas.grid.crs, x, y)
            cond_metadata.append(SatMetadata(lon=lon, lat=lat, gsd_m=CONDITION_GSD_M, cloud_cover=self.cloud,
                                             date=self.date).normalised())
        return {
            "control_image": torch.from_numpy(image)[None],
            "control_factor": k,
            "window_cond_metadata": cond_metadata,
            "control_scale": self.control_scale,
        }

    def close(self) -> None:
        self._view.close()


def superres(model, request: SuperresRequest, output: str | Path, progress: ProgressCallback | None = None,
             cancel: CancelCheck | None = None) -> GenerateResult:
    """Super-resolve a Sentinel-2 scene into an RGB GeoTIFF at `output` (written atomically)."""
    controlnet = getattr(model, "controlnet", None)
    if controlnet is None or "superres" not in model.info.tasks:
        raise ModelError(
            f"model {model.info.name} ({model.info.kind}) cannot super-resolve: it needs DiffusionSat's Sentinel-2 "
            "2D ControlNet (10 conditioning bands); `gfm4d models list` shows the tasks of each model"
        )
    channels = int(controlnet.config.conditioning_in_channels)
    if channels != len(CONDITION_BANDS):
        raise ModelError(f"model {model.info.name} takes {channels}-band conditions, not the 10 Sentinel-2 bands")
    factor = controlnet.condition_factor
    with open_raster(request.image, min_size=2) as source:
        info = source.info
        data_bands = info.data_bands  # an alpha band is the scene's mask, not a Sentinel-2 band
        positions = condition_band_indices([info.descriptions[b - 1] for b in data_bands], request.bands)
        bands = [data_bands[p - 1] for p in positions]
        acquisition = acquisition_for_raster(request.image, imagery_tags=info.imagery_tags,
                                             explicit_date=parse_date(request.date) if request.date else None)
        if request.extent is not None:
            extent = request.extent
            left, bottom, right, top = info.bounds
            if extent[2] <= left or extent[0] >= right or extent[3] <= bottom or extent[1] >= top:
                raise InputError(f"the extent {extent} does not overlap the scene's bounds {tuple(info.bounds)} (in {info.crs.to_string()})")
        else:
            extent = tuple(info.bounds)
        if request.resolution_m:
            grid = grid_from_extent(extent, info.crs, resolution_m=request.resolution_m)
        else:  # an eighth of the scene's pixel, in its own units: the grids nest exactly
            size = (info.transform.a / DEFAULT_FACTOR, -info.transform.e / DEFAULT_FACTOR)
            grid = grid_from_extent(extent, info.crs, pixel_size=size)
        cloud = request.cloud_cover if request.cloud_cover is not None else acquisition.cloud_cover
        conditioning = Sentinel2Conditioning(source, bands, grid, factor, acquisition.date, cloud, request.control_scale)
        try:
            generate_request = GenerateRequest(grid=grid, prompt=request.prompt, date=acquisition.date,
                                               **{**request.sampler_fields(), "cloud_cover": cloud})
            tags = {
                "GFM4D_TASK": "superres",
                "GFM4D_SOURCE": Path(info.path).name,
                "GFM4D_CONDITION_BANDS": " ".join(CONDITION_BANDS),
                "GFM4D_SOURCE_BANDS": ",".join(str(b) for b in bands),
            }
            return generate(model, generate_request, output, progress, cancel, conditioning=conditioning, extra_tags=tags)
        finally:
            conditioning.close()
