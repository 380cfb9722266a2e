"""Output grids: an extent in any CRS plus a resolution becomes a north-up pixel grid.

A resolution in metres means metres on the ground at the extent's centre, measured the way the
model's GSD metadata is (`engine.geo.metadata.pixel_size_metres`): projected CRSs use their linear
unit, so "1 m on UTM" gives exactly 1-unit pixels as a GIS user expects; Mercator projections
(Web Mercator) are corrected by their point scale and geographic CRSs use geodesic distances, so a
"1 m" request is 1 m on the ground there too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rasterio.transform import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from engine.errors import InputError
from engine.geo.crs import utm_point
from engine.geo.metadata import pixel_size_metres


@dataclass(frozen=True)
class OutputGrid:
    """A north-up pixel grid: what an output raster covers, pixel for pixel."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units."""
        left, top = self.transform.c, self.transform.f
        right = left + self.transform.a * self.width
        bottom = top + self.transform.e * self.height
        return left, bottom, right, top

    @property
    def pixel_size(self) -> tuple[float, float]:
        """Pixel width and height in CRS units (both positive)."""
        return self.transform.a, -self.transform.e

    def window_transform(self, window: Window) -> Affine:
        return self.transform @ Affine.translation(window.col_off, window.row_off)

    def pixel_centre(self, col: float, row: float) -> tuple[float, float]:
        """CRS coordinates of a (fractional) pixel position's centre."""
        return self.transform @ (col + 0.5, row + 0.5)


def ground_metres_per_unit(crs: CRS, x: float, y: float) -> tuple[float, float]:
    """Ground metres per CRS unit along x and y at point (x, y): the GSD of a 1-unit pixel there."""
    return pixel_size_metres(crs, Affine.translation(x, y), 0.0, 0.0)


def grid_from_extent(
    bounds: tuple[float, float, float, float],
    crs: CRS | str,
    resolution_m: float | None = None,
    pixel_size: float | tuple[float, float] | None = None,
) -> OutputGrid:
    """North-up grid whose top-left corner is the extent's, at the requested pixel size.

    Exactly one of `resolution_m` (ground metres) and `pixel_size` (CRS units) is given. The
    pixel size is kept exactly; width and height are rounded, so the right and bottom edges lie
    within half a pixel of the requested extent.
    """
    crs = CRS.from_user_input(crs) if not isinstance(crs, CRS) else crs
    left, bottom, right, top = (float(v) for v in bounds)
    if not all(math.isfinite(v) for v in (left, bottom, right, top)):
        raise InputError(f"the extent {bounds} has a non-finite coordinate; give four numbers")
    if right <= left or top <= bottom:
        raise InputError(
            f"the extent {bounds} is empty or inverted: give it as (xmin, ymin, xmax, ymax) with "
            "xmin < xmax and ymin < ymax, in the units of its CRS"
        )
    if (resolution_m is None) == (pixel_size is None):
        raise InputError("give exactly one of a resolution in metres or a pixel size in CRS units")
    if resolution_m is not None:
        if not resolution_m > 0:
            raise InputError(f"the resolution must be a positive number of metres, not {resolution_m}")
        cx, cy = (left + right) / 2, (top + bottom) / 2
        mx, my = ground_metres_per_unit(crs, cx, cy)
        size_x, size_y = resolution_m / mx, resolution_m / my
    else:
        size_x, size_y = pixel_size if isinstance(pixel_size, tuple) else (pixel_size, pixel_size)
        if not (size_x > 0 and size_y > 0):
            raise InputError(f"the pixel size must be positive, not {pixel_size}")
    width = max(1, round((right - left) / size_x))
    height = max(1, round((top - bottom) / size_y))
    return OutputGrid(crs, Affine(size_x, 0.0, left, 0.0, -size_y, top), width, height)


def grid_of_raster(path, what: str = "the reference raster") -> OutputGrid:
    """The grid of a raster whose pixels an output must line up with (`--like`): only its grid is
    read, so an all-nodata raster serves. A south-up raster gives the same pixels north-up; a rotated
    or GCP-georeferenced one has no north-up grid to match and is refused."""
    from engine.geo.raster import open_raster

    with open_raster(path, require_valid=False) as source:
        info = source.info
    if info.source_orientation in ("rotated", "gcps"):
        how = "is rotated or sheared" if info.source_orientation == "rotated" else "is georeferenced only by GCPs"
        raise InputError(
            f"{what} {path} {how}, so no north-up output can line up with its pixels; warp it to a "
            f"north-up grid first (`gdalwarp -t_srs {info.crs.to_string()} {path} north_up.tif`) and give that instead"
        )
    return OutputGrid(info.crs, info.transform, info.width, info.height)


def grid_like(crs: CRS, transform: Affine, width: int, height: int) -> OutputGrid:
    """The grid of an existing north-up raster, so an output lines up with it pixel for pixel."""
    if transform.b != 0 or transform.d != 0 or transform.a <= 0 or transform.e >= 0:
        raise InputError("the reference raster is not north-up; warp it to a north-up grid first (gdalwarp)")
    return OutputGrid(crs, transform, width, height)


def utm_square(lon: float, lat: float, gsd_m: float, size_px: int) -> OutputGrid:
    """A `size_px` square at `gsd_m` centred on a lon/lat, on its WGS84 UTM zone: where a place is generated."""
    crs, x, y = utm_point(lon, lat)
    half = size_px * gsd_m / 2
    return grid_from_extent((x - half, y - half, x + half, y + half), crs, pixel_size=gsd_m)
