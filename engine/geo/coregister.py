"""Dated frames of one place, co-registered onto a reference grid window by window.

Each frame (any CRS, resolution and footprint) is read through a GDAL warped view onto the
reference grid, so only the window asked for is warped and memory follows the window. Where a
frame has no data on the grid the result is masked, never filled in silently; a frame that does
not reach the grid at all is an error that names it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import shapely
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_geom
from rasterio.windows import Window

from engine.errors import InputError
from engine.geo.dates import acquisition_for_raster, parse_date
from engine.geo.grid import OutputGrid
from engine.geo.radiometry import Stretch, stretch_for
from engine.geo.raster import RasterSource, open_raster, require_rgb


@dataclass
class Frame:
    """One dated raster of a stack, open for reading."""

    path: Path
    date: dt.date
    date_source: str
    cloud_cover: float | None
    source: RasterSource
    bands: tuple[int, ...]
    stretch: Stretch

    @property
    def gsd_m(self) -> float:
        return sum(self.source.info.pixel_size_m) / 2

    def close(self) -> None:
        self.source.close()


def open_frames(
    paths: Sequence[Path],
    dates: Sequence[str | dt.date | None] | None = None,
    bands: Sequence[Sequence[int]] | None = None,
) -> list[Frame]:
    """Open every frame with its acquisition date (explicit, STAC, IMAGERY metadata or file name)."""
    if not paths:
        raise InputError("give at least one raster frame")
    if dates is not None and len(dates) != len(paths):
        raise InputError(f"{len(dates)} dates were given for {len(paths)} frames; give one per frame (or none)")
    frames: list[Frame] = []
    try:
        for index, path in enumerate(paths):
            explicit = dates[index] if dates is not None else None
            source = open_raster(path)
            acquisition = acquisition_for_raster(path, imagery_tags=source.info.imagery_tags,
                                                 explicit_date=parse_date(explicit) if explicit else None)
            if acquisition.date is None:
                source.close()
                raise InputError(
                    f"no acquisition date found for {Path(path).name} (no STAC item, IMAGERY metadata or date in "
                    "its file name); give the frames' dates explicitly"
                )
            chosen = tuple(bands[index]) if bands is not None else require_rgb(source.info)
            frames.append(Frame(Path(path), acquisition.date, acquisition.source, acquisition.cloud_cover, source,
                                chosen, stretch_for(source.dataset, chosen)))
    except BaseException:
        for frame in frames:
            frame.close()
        raise
    return frames


def footprint_on(frame: Frame, grid: OutputGrid) -> shapely.Geometry:
    """The frame's valid footprint (its bounds) in the grid's CRS."""
    info = frame.source.info
    box = shapely.box(*info.bounds)
    moved = transform_geom(info.crs, grid.crs, shapely.geometry.mapping(box))
    return shapely.geometry.shape(moved)


def coverage(frame: Frame, grid: OutputGrid) -> float:
    """Fraction of the grid's area that the frame's bounds cover."""
    grid_box = shapely.box(*grid.bounds)
    return footprint_on(frame, grid).intersection(grid_box).area / grid_box.area


def check_coverage(frames: Sequence[Frame], grid: OutputGrid) -> list[float]:
    """Coverage of each frame; an error naming the frames that miss the grid entirely."""
    fractions = [coverage(frame, grid) for frame in frames]
    missing = [f"{frame.path.name} ({frame.date})" for frame, c in zip(frames, fractions) if c <= 0]
    if missing:
        left, bottom, right, top = grid.bounds
        raise InputError(
            f"{', '.join(missing)} {'does' if len(missing) == 1 else 'do'} not overlap the target extent ({left:.6g}, {bottom:.6g}, {right:.6g}, "
            f"{top:.6g} in {grid.crs.to_string()}): remove it from the stack or choose another reference grid"
        )
    return fractions


def warped_view(dataset, grid: OutputGrid, resampling: Resampling = Resampling.bilinear) -> WarpedVRT:
    """A dataset warped onto a grid; pixels the source does not cover are masked (an alpha band is
    added when the source has no nodata value to mark them)."""
    return WarpedVRT(dataset, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                     resampling=resampling, add_alpha=dataset.nodata is None)


def read_warped(vrt: WarpedVRT, bands: list[int], window: Window) -> np.ma.MaskedArray:
    """A window of a warped view that may reach past its edges (warped views cannot read boundless)."""
    rows, cols = int(window.height), int(window.width)
    out = np.ma.masked_all((len(bands), rows, cols), dtype=vrt.dtypes[bands[0] - 1])
    inside = window.intersection(Window(0, 0, vrt.width, vrt.height)) if _overlaps(window, vrt) else None
    if inside is not None:
        r0, c0 = int(inside.row_off - window.row_off), int(inside.col_off - window.col_off)
        out[:, r0 : r0 + int(inside.height), c0 : c0 + int(inside.width)] = vrt.read(bands, window=inside, masked=True)
    return out


def _overlaps(window: Window, vrt: WarpedVRT) -> bool:
    return (window.col_off < vrt.width and window.row_off < vrt.height
            and window.col_off + window.width > 0 and window.row_off + window.height > 0)


class WarpedFrame:
    """A frame seen on a grid; read windows of it as masked arrays in the model's [0, 1]."""

    def __init__(self, frame: Frame, grid: OutputGrid, resampling: Resampling = Resampling.bilinear):
        self.frame = frame
        self.grid = grid
        self._vrt = warped_view(frame.source.dataset, grid, resampling)

    def read_unit(self, window: Window) -> np.ma.MaskedArray:
        """(bands, rows, cols) in [0, 1], masked where the frame has no data; windows may pass the edge."""
        data = read_warped(self._vrt, list(self.frame.bands), window)
        valid = ~np.ma.getmaskarray(data).any(axis=0)
        unit = self.frame.stretch.to_unit(np.ma.getdata(data))
        return np.ma.MaskedArray(unit, mask=np.broadcast_to(~valid, unit.shape).copy())

    def close(self) -> None:
        self._vrt.close()
