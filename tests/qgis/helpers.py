"""Helpers of the QGIS tests: reading result grids with GDAL, skipping tasks the engine lacks."""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Grid:
    epsg: str | None
    origin: tuple[float, float]
    pixel: tuple[float, float]
    width: int
    height: int
    bands: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        x0, y0 = self.origin
        return x0, y0 - self.pixel[1] * self.height, x0 + self.pixel[0] * self.width, y0


def raster_grid(path: str) -> Grid:
    """CRS code, top-left corner, pixel size, size and band count of a raster, as GDAL reads it."""
    from osgeo import gdal, osr

    dataset = gdal.Open(str(path))
    assert dataset is not None, f"GDAL cannot open {path}"
    x0, dx, rx, y0, ry, dy = dataset.GetGeoTransform()
    assert rx == 0 and ry == 0, "the result is not north-up"
    srs = osr.SpatialReference(wkt=dataset.GetProjection())
    srs.AutoIdentifyEPSG()
    code = srs.GetAuthorityCode(None)
    return Grid(f"EPSG:{code}" if code else None, (x0, y0), (dx, -dy), dataset.RasterXSize, dataset.RasterYSize, dataset.RasterCount)


def read_bands(path: str):
    """All bands as a (bands, rows, cols) numpy array."""
    from osgeo import gdal

    return gdal.Open(str(path)).ReadAsArray()


def free_port() -> int:
    """A loopback port nobody listens on (at the time of asking)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def needs_task(engine, task: str) -> None:
    """Skip when the engine under test does not run `task` yet."""
    tasks = engine.tasks()
    if task not in tasks:
        pytest.skip(f"the engine does not run the {task} task yet (it runs: {', '.join(tasks)})")


def whole_pixel_window(geotransform, size, bounds):
    """(col, row, cols, rows) of the source pixels that cover bounds (xmin, ymin, xmax, ymax).

    Positions are rounded to a micro-pixel first: an edge on a pixel boundary takes no neighbour.
    """
    x0, dx, _, y0, _, dy = geotransform
    xmin, ymin, xmax, ymax = bounds

    def position(value, origin, size):
        return round((value - origin) / size, 6)

    col0, col1 = max(0, math.floor(position(xmin, x0, dx))), min(size[0], math.ceil(position(xmax, x0, dx)))
    row0, row1 = max(0, math.floor(position(ymax, y0, dy))), min(size[1], math.ceil(position(ymin, y0, dy)))
    return col0, row0, col1 - col0, row1 - row0
