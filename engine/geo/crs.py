"""Coordinate reference systems of input rasters: checked once, then trusted.

The models are conditioned on WGS84 longitude/latitude and a ground sampling distance in metres,
so every input CRS must be tied to the Earth and convertible to WGS84. Anything PROJ understands
is accepted (EPSG, ESRI-only codes, WKT without an authority, legacy datums such as NAD27); a
missing CRS or one on another body is rejected, because guessing would silently misplace pixels.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import pyproj
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError

from engine.errors import InputError

WGS84_SEMI_MAJOR_M = 6_378_137.0
# Every Earth ellipsoid or sphere in use (Everest 1830 ... International 1924, authalic spheres)
# lies within 0.2 % of WGS84's semi-major axis; the nearest other body (Venus) is 5 % off.
EARTH_SEMI_MAJOR_TOLERANCE = 0.005

_WGS84_GEOD = pyproj.Geod(ellps="WGS84")


def _as_rasterio_crs(crs: Any) -> CRS | None:
    """rasterio CRS from a rasterio/pyproj CRS, code or WKT; None when there is none."""
    if crs is None:
        return None
    if isinstance(crs, CRS):
        return crs if crs.to_wkt() else None
    if isinstance(crs, str) and not crs.strip():
        return None
    if isinstance(crs, pyproj.CRS):
        return CRS.from_wkt(crs.to_wkt())
    return CRS.from_user_input(crs)


@lru_cache(maxsize=64)
def _pyproj_from_wkt(wkt: str) -> pyproj.CRS:
    return pyproj.CRS.from_wkt(wkt)


def _wkt(crs: CRS) -> str:
    """WKT2 where GDAL can write it (it keeps ESRI ids and non-Earth bodies intact), else WKT1."""
    try:
        return crs.to_wkt(version="WKT2_2019")
    except CRSError:
        return crs.to_wkt()


def as_pyproj(crs: CRS) -> pyproj.CRS:
    """pyproj view of a rasterio CRS."""
    return _pyproj_from_wkt(_wkt(crs))


def _no_crs_error(what: str) -> InputError:
    return InputError(
        f"{what} has no coordinate reference system, so its pixels cannot be placed on the Earth; "
        "assign the CRS its provider documents, e.g. `gdal_edit.py -a_srs EPSG:<code> <file>`, "
        "then try again."
    )


def _check_earth_body(pcrs: pyproj.CRS, what: str) -> None:
    """Reject CRSs without an ellipsoid or on another celestial body (Mars, Moon, ...)."""
    geodetic = pcrs.geodetic_crs
    ellipsoid = geodetic.ellipsoid if geodetic is not None else None
    if ellipsoid is None:
        raise InputError(
            f"{what} uses a local/engineering coordinate system ({pcrs.name!r}) that is not tied to "
            "the Earth, so it cannot be reprojected to longitude/latitude; georeference the data "
            "in a geographic or projected CRS (e.g. with gdalwarp or gdal_edit.py -a_srs)."
        )
    semi_major = ellipsoid.semi_major_metre
    if abs(semi_major / WGS84_SEMI_MAJOR_M - 1.0) > EARTH_SEMI_MAJOR_TOLERANCE:
        raise InputError(
            f"{what} is referenced to another celestial body: ellipsoid {ellipsoid.name!r} has a "
            f"semi-major axis of {semi_major:,.0f} m (the Earth's is {WGS84_SEMI_MAJOR_M:,.0f} m). "
            "Reprojection to Earth coordinates is impossible and the models only know Earth "
            "imagery; use an Earth raster (or, if the CRS is simply wrong, assign the right one "
            "with `gdal_edit.py -a_srs EPSG:<code> <file>`)."
        )


def require_earth_crs(crs: Any, what: str) -> CRS:
    """The CRS as a rasterio CRS, or InputError when it is missing, unreadable or not the Earth's.

    `what` names the thing in the message (e.g. "raster scene.tif").
    """
    try:
        rio_crs = _as_rasterio_crs(crs)
    except (CRSError, pyproj.exceptions.CRSError) as exc:
        raise InputError(
            f"{what} has a coordinate reference system that PROJ cannot read ({exc}); "
            "assign a valid one, e.g. `gdal_edit.py -a_srs EPSG:<code> <file>`."
        ) from exc
    if rio_crs is None:
        raise _no_crs_error(what)
    try:
        pcrs = as_pyproj(rio_crs)
    except pyproj.exceptions.CRSError as exc:
        raise InputError(
            f"{what} has a coordinate reference system that PROJ cannot interpret ({exc}); "
            "assign a valid one, e.g. `gdal_edit.py -a_srs EPSG:<code> <file>`."
        ) from exc
    _check_earth_body(pcrs, what)
    return rio_crs


def is_geographic(crs: CRS) -> bool:
    """True when coordinates are angles (longitude/latitude), not lengths."""
    return bool(as_pyproj(crs).is_geographic)


@lru_cache(maxsize=64)
def _transformer_to_wgs84(wkt: str) -> pyproj.Transformer:
    return pyproj.Transformer.from_crs(_pyproj_from_wkt(wkt), "EPSG:4326", always_xy=True)


def to_wgs84(crs: CRS, xs, ys) -> tuple[np.ndarray, np.ndarray]:
    """Longitudes and latitudes (degrees, x/y order) of points given in `crs`.

    Longitudes are whatever PROJ returns (usually within [-180, 180]); handling the antimeridian
    is the caller's business (see `crosses_antimeridian`).
    """
    transformer = _transformer_to_wgs84(_wkt(crs))
    lons, lats = transformer.transform(np.asarray(xs, dtype="float64"), np.asarray(ys, dtype="float64"))
    return np.asarray(lons), np.asarray(lats)


def metres_per_pixel(crs: CRS, transform: Affine, width: int, height: int) -> tuple[float, float]:
    """Ground size (x, y) in metres of one pixel at the raster centre.

    Measured as geodesic distances on WGS84 between the centre pixel's opposite edges, so the
    answer is true ground size whatever the CRS: degrees become metres, Web Mercator's nominal
    metres shrink with cos(latitude), UTM's scale factor is taken out.
    """
    col, row = width / 2.0, height / 2.0
    xs, ys = zip(
        transform @ (col - 0.5, row),
        transform @ (col + 0.5, row),
        transform @ (col, row - 0.5),
        transform @ (col, row + 0.5),
    )
    lons, lats = to_wgs84(crs, xs, ys)
    if not (np.all(np.isfinite(lons)) and np.all(np.isfinite(lats))):
        raise InputError(
            f"the raster centre ({xs[0]:.6g}, {ys[0]:.6g}) lies outside the valid area of its CRS, "
            "so its pixel size on the ground cannot be measured; check that the CRS is the right "
            "one (`gdalinfo <file>`) and fix it with `gdal_edit.py -a_srs`."
        )
    _, _, size_x = _WGS84_GEOD.inv(lons[0], lats[0], lons[1], lats[1])
    _, _, size_y = _WGS84_GEOD.inv(lons[2], lats[2], lons[3], lats[3])
    return float(size_x), float(size_y)


def crosses_antimeridian(crs: CRS, transform: Affine, width: int, height: int, samples: int = 32) -> bool:
    """True when the raster footprint straddles the 180° meridian.

    The outline is densified, converted to WGS84 and unwrapped into one continuous ring; the
    footprint crosses when that ring strictly contains ±180° (+ k·360°). A raster merely touching
    180° does not cross.
    """
    t = np.linspace(0.0, 1.0, samples, endpoint=False)
    cols = np.concatenate([t * width, np.full_like(t, width), (1 - t) * width, np.zeros_like(t)])
    rows = np.concatenate([np.zeros_like(t), t * height, np.full_like(t, height), (1 - t) * height])
    xs, ys = transform @ (cols, rows)
    lons, _ = to_wgs84(crs, xs, ys)
    lons = lons[np.isfinite(lons)]
    if lons.size == 0:
        return False
    ring = np.unwrap(np.append(lons, lons[0]), period=360.0)
    low, high = float(ring.min()), float(ring.max())
    next_meridian = (np.floor((low - 180.0) / 360.0) + 1.0) * 360.0 + 180.0
    return bool(next_meridian < high)


def utm_point(lon: float, lat: float) -> tuple[CRS, float, float]:
    """The WGS84 UTM zone's CRS at a point, and the point's coordinates in it."""
    zone = min(60, int((lon + 180) // 6) + 1)
    epsg = (32600 if lat >= 0 else 32700) + zone
    x, y = pyproj.Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    return CRS.from_epsg(epsg), x, y
