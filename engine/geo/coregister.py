"""Dated frames of one place, co-registered onto a reference grid window by window.

Each frame (any CRS, resolution, footprint and orientation: south-up, rotated and GCP-only files
included) is read through a GDAL warped view onto the reference grid, so only the window asked for
is warped and memory follows the window. Validity travels with it (nodata, alpha band, internal
or sidecar mask, NaN, outside the footprint) and palette frames are coloured after a nearest-
neighbour warp of their indices. Where a frame has no data on the grid the result is masked, never
filled in silently; a frame with no valid pixel on the grid is an error that names it. Coverage is
measured on the grid itself, so frames whose corners lie outside their CRS's domain (a
geostationary full disk) are measured like any other.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

from engine.errors import InputError
from engine.geo.dates import acquisition_for_raster, parse_date
from engine.geo.grid import OutputGrid
from engine.geo.radiometry import Stretch, stretch_for_source
from engine.geo.raster import GridView, RasterSource, open_raster, require_rgb

# Long side of the coarse grid on which coverage is measured.
_COVERAGE_SIDE = 256


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


def _bands_per_frame(bands, count: int) -> list:
    """None, one (R, G, B) for every frame, or one (R, G, B) or None per frame -> one entry per frame."""
    if bands is None:
        return [None] * count
    bands = list(bands)
    if bands and all(isinstance(b, (int, np.integer)) for b in bands):
        return [tuple(bands)] * count
    if len(bands) == 1:
        return bands * count
    if len(bands) != count:
        raise InputError(
            f"{len(bands)} band choices were given for {count} frames; give one --bands R G B for every "
            "frame, or one per frame in the frames' order"
        )
    return bands


def open_frames(
    paths: Sequence[Path],
    dates: Sequence[str | dt.date | None] | None = None,
    bands: Sequence[int] | Sequence[Sequence[int] | None] | None = None,
) -> list[Frame]:
    """Open every frame with its acquisition date (explicit, STAC, IMAGERY metadata or file name).

    `bands` chooses the red, green and blue bands: one (R, G, B) for every frame, or one per frame
    (None: by colour interpretation)."""
    if not paths:
        raise InputError("give at least one raster frame")
    if dates is not None and len(dates) != len(paths):
        raise InputError(f"{len(dates)} dates were given for {len(paths)} frames; give one per frame (or none)")
    choices = _bands_per_frame(bands, len(paths))
    frames: list[Frame] = []
    try:
        for index, path in enumerate(paths):
            explicit = dates[index] if dates is not None else None
            source = open_raster(path, rgb_bands=choices[index])
            acquisition = acquisition_for_raster(path, imagery_tags=source.info.imagery_tags,
                                                 explicit_date=parse_date(explicit) if explicit else None)
            if acquisition.date is None:
                source.close()
                raise InputError(
                    f"no acquisition date found for {Path(path).name} (no STAC item, IMAGERY metadata or date in "
                    "its file name); give the frames' dates explicitly"
                )
            try:
                chosen = require_rgb(source.info)
            except InputError:
                source.close()
                raise
            frames.append(Frame(Path(path), acquisition.date, acquisition.source, acquisition.cloud_cover, source,
                                chosen, stretch_for_source(source, chosen)))
    except BaseException:
        for frame in frames:
            frame.close()
        raise
    return frames


def coverage(frame: Frame, grid: OutputGrid) -> float:
    """Fraction of the grid where the frame has valid pixels, measured on a coarse copy of the grid."""
    scale = max(grid.width, grid.height) / _COVERAGE_SIDE
    width, height = (max(1, math.ceil(n / scale)) for n in (grid.width, grid.height)) if scale > 1 else (grid.width, grid.height)
    transform = grid.transform @ Affine.scale(grid.width / width, grid.height / height)
    with GridView(frame.source, grid.crs, transform, width, height, Resampling.nearest) as view:
        return float(view.valid_mask(bands=list(frame.bands)).mean())


def check_coverage(frames: Sequence[Frame], grid: OutputGrid) -> list[float]:
    """Coverage of each frame; an error naming the frames with no valid pixel on the grid."""
    fractions = [coverage(frame, grid) for frame in frames]
    missing = [f"{frame.path.name} ({frame.date})" for frame, c in zip(frames, fractions) if c <= 0]
    if missing:
        left, bottom, right, top = grid.bounds
        raise InputError(
            f"{', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no valid pixel on the target extent "
            f"({left:.6g}, {bottom:.6g}, {right:.6g}, {top:.6g} in {grid.crs.to_string()}): it does not overlap it "
            "or holds only nodata there; remove it from the stack or choose another reference grid"
        )
    return fractions


class WarpedFrame:
    """A frame seen on a grid; read windows of it as masked arrays in the model's [0, 1]."""

    def __init__(self, frame: Frame, grid: OutputGrid, resampling: Resampling = Resampling.bilinear):
        self.frame = frame
        self.grid = grid
        self._view = GridView(frame.source, grid.crs, grid.transform, grid.width, grid.height, resampling)

    def read_unit(self, window: Window) -> np.ma.MaskedArray:
        """(bands, rows, cols) in [0, 1], masked where the frame has no data; windows may pass the edge."""
        data = self._view.read(window, bands=list(self.frame.bands))
        valid = ~np.ma.getmaskarray(data).any(axis=0)
        unit = self.frame.stretch.to_unit(np.ma.getdata(data))
        return np.ma.MaskedArray(unit, mask=np.broadcast_to(~valid, unit.shape).copy())

    def close(self) -> None:
        self._view.close()
