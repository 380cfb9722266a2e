"""A result raster and a reference raster of the same place, brought onto one grid.

The reference is warped onto the result's grid with the engine's co-registration
(`engine.geo.coregister.warped_view`, a GDAL warped view: any CRS, resolution or footprint), or
the result onto the reference's grid with `reverse=True`. Pixels the warped raster does not cover,
or that are nodata/masked in either raster, are invalid; only pixels valid in both are compared,
and the overlap actually used is reported. A mask (label raster or polygons) is brought onto the
same grid, so metrics can be split into inside and outside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import shapely
from rasterio.enums import Resampling
from rasterio.warp import transform_geom
from rasterio.windows import Window

from engine.errors import InputError
from engine.geo.grid import OutputGrid, grid_like
from engine.geo.raster import RasterSource, open_raster

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".jp2", ".png")
# Both rasters are read whole onto the compared grid (SSIM needs neighbourhoods; metrics need all
# pixels): this many values per raster (about 3 GB in float64 for the pair) is the most accepted.
MAX_VALUES = 200_000_000


@dataclass
class AlignedPair:
    """Result and reference pixels on one grid (masked where invalid), and what the overlap was."""

    grid: OutputGrid
    on: str  # "result" or "reference": whose grid the pixels are on
    result: np.ma.MaskedArray  # (bands, rows, cols)
    reference: np.ma.MaskedArray
    result_bands: tuple[int, ...]
    reference_bands: tuple[int, ...]
    dtype: np.dtype
    stretch: object  # the reference's engine.geo.radiometry.Stretch, to show both in [0, 1] alike

    @property
    def valid(self) -> np.ndarray:
        """(rows, cols) True where both rasters have data."""
        return ~(np.ma.getmaskarray(self.result).any(axis=0) | np.ma.getmaskarray(self.reference).any(axis=0))

    def overlap(self) -> dict:
        """The pixels compared: count, fraction of the grid, and their bounding box in the grid's CRS."""
        valid = self.valid
        rows, cols = np.nonzero(valid)
        left, top = self.grid.transform @ (int(cols.min()), int(rows.min()))
        right, bottom = self.grid.transform @ (int(cols.max()) + 1, int(rows.max()) + 1)
        return {
            "pixels": int(valid.sum()),
            "fraction_of_grid": float(valid.mean()),
            "bounds": [left, bottom, right, top],
            "crs": self.grid.crs.to_string(),
            "on_grid_of": self.on,
        }


def _bands(source: RasterSource, chosen: Sequence[int] | None) -> tuple[int, ...]:
    if chosen:
        return tuple(source._band_list(list(chosen)))
    return source.info.data_bands


def _footprint_overlaps(moving: RasterSource, grid: OutputGrid) -> bool:
    box = shapely.geometry.mapping(shapely.box(*moving.info.bounds))
    moved = shapely.geometry.shape(transform_geom(moving.info.crs, grid.crs, box))
    return moved.intersects(shapely.box(*grid.bounds)) and moved.intersection(shapely.box(*grid.bounds)).area > 0


def align(
    result: Path,
    reference: Path,
    bands: Sequence[int] | None = None,
    reference_bands: Sequence[int] | None = None,
    reverse: bool = False,
    resampling: str = "bilinear",
) -> AlignedPair:
    """Read the result and the reference onto one grid (the result's; the reference's with `reverse`)."""
    try:
        method = Resampling[resampling]
    except KeyError:
        raise InputError(f"unknown resampling {resampling!r}; use nearest, bilinear, cubic or average") from None
    with open_raster(result) as res, open_raster(reference) as ref:
        res_bands, ref_bands = _bands(res, bands), _bands(ref, reference_bands)
        if len(res_bands) != len(ref_bands):
            hint = ""
            if res.info.rgb_bands and ref.info.rgb_bands:
                hint = (f" (e.g. compare red, green, blue: bands {' '.join(map(str, res.info.rgb_bands))} of the result "
                        f"and {' '.join(map(str, ref.info.rgb_bands))} of the reference)")
            raise InputError(f"the result has {len(res_bands)} bands and the reference {len(ref_bands)}; choose the "
                             f"bands to compare so that both have the same number{hint}")
        if res.info.is_palette or ref.info.is_palette:
            raise InputError("palette (colour-map) rasters cannot be compared value by value; expand them to RGB "
                             "first (gdal_translate -expand rgb)")
        target, moving = (ref, res) if reverse else (res, ref)
        target_bands, moving_bands = (ref_bands, res_bands) if reverse else (res_bands, ref_bands)
        info = target.info
        grid = grid_like(info.crs, info.transform, info.width, info.height)
        if grid.width * grid.height * len(target_bands) > MAX_VALUES:
            raise InputError(f"{Path(info.path).name} is {grid.width} x {grid.height} px x {len(target_bands)} bands, more "
                             "than one evaluation reads at once; compare a smaller area (gdal_translate -srcwin) or "
                             "fewer bands")
        if not _footprint_overlaps(moving, grid):
            raise InputError(f"{Path(moving.info.path).name} and {Path(target.info.path).name} do not overlap: they "
                             "show different places (check both rasters' CRS and extent)")
        fixed = target.read(bands=list(target_bands))
        warped = _read_on_grid(moving, grid, list(moving_bands), method)
        stretch_source = ref.dataset
        from engine.geo.radiometry import stretch_for

        stretch = stretch_for(stretch_source, list(ref_bands))
        res_dtype, ref_dtype = np.dtype(res.info.dtypes[res_bands[0] - 1]), np.dtype(ref.info.dtypes[ref_bands[0] - 1])
    pair = AlignedPair(grid, "reference" if reverse else "result", warped if reverse else fixed,
                       fixed if reverse else warped, res_bands, ref_bands,
                       res_dtype if res_dtype == ref_dtype else None, stretch)
    if not pair.valid.any():
        raise InputError("the rasters overlap but no pixel of the overlap is valid in both (nodata or masked "
                         "everywhere in one of them); check their nodata values and masks")
    return pair


def _read_on_grid(source, grid: OutputGrid, bands: list[int], resampling) -> np.ma.MaskedArray:
    """A raster's bands warped onto a grid (the co-registration predict uses), masked where it has no data."""
    from engine.geo.raster import GridView

    view = GridView(source, grid.crs, grid.transform, grid.width, grid.height, resampling)
    try:
        return view.read(Window(0, 0, grid.width, grid.height), bands=bands)
    finally:
        view.close()


def mask_on_grid(path: Path, grid: OutputGrid) -> np.ndarray:
    """(rows, cols) bool of a mask on a grid: a label raster (non-zero, valid = inside; nearest
    neighbour) or polygons (any polygon covering the pixel centre = inside)."""
    path = Path(path)
    if path.suffix.lower() in RASTER_SUFFIXES:
        with open_raster(path) as source:
            labels = _read_on_grid(source, grid, [source.info.data_bands[0]], Resampling.nearest)[0]
        return np.asarray(labels.filled(0) != 0)
    from engine.geo.masks import label_raster
    from engine.geo.vectors import read_polygons

    layer = read_polygons(path)
    return label_raster(layer, np.ones(len(layer.geometries), dtype=np.uint8), grid) > 0
