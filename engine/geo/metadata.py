"""The DiffusionSat metadata vector, and the geodesy that fills it for a tile.

DiffusionSat conditions every image on seven numbers ``[lon, lat, gsd, cloud_cover, year, month,
day]``, each mapped linearly so that its usual range covers 0..1000 (specs/diffusionsat.md §1). An
unknown field is 0 *after* normalisation, which is why ``SatMetadata`` keeps ``None`` for unknown
values instead of a sentinel. Lon/lat are WGS84 degrees of the tile centre and the GSD is the true
ground size in metres of an output pixel, whatever the CRS of the grid.
"""

from __future__ import annotations

import datetime
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pyproj
from rasterio.transform import Affine
from pyproj.exceptions import CRSError, ProjError

from engine.errors import InputError
from engine.geo.dates import check_cloud_fraction, cloud_fraction_from_percent, finite_number, parse_date

__all__ = [
    "METADATA_FIELDS",
    "SatMetadata",
    "normalise_batch",
    "cloud_fraction_from_percent",
    "centre_lonlat",
    "pixel_size_metres",
    "gsd_metres",
]

METADATA_FIELDS = ("lon", "lat", "gsd", "cloud_cover", "year", "month", "day")

# normalised = (value + offset) / span * SCALE, per field in METADATA_FIELDS order.
SCALE = 1000.0
_OFFSETS = np.array([180.0, 90.0, 0.0, 0.0, -1980.0, 0.0, 0.0])
_SPANS = np.array([360.0, 180.0, 1.0, 1.0, 120.0, 12.0, 31.0])
_TRAINED_YEARS = range(1980, 2101)


@dataclass(frozen=True)
class SatMetadata:
    """What DiffusionSat knows about an image; ``None`` = unknown (normalised to 0).

    ``lon`` is wrapped into [-180, 180] (a tile east of the antimeridian may come out at 181°);
    ``cloud_cover`` is a fraction 0..1 (use ``cloud_fraction_from_percent`` for percentages);
    ``date`` also accepts an ISO 8601 string or a datetime (converted to its UTC date).
    """

    lon: float | None
    lat: float | None
    gsd_m: float | None
    cloud_cover: float | None
    date: datetime.date | None

    def __post_init__(self) -> None:
        if self.lon is not None:
            lon = finite_number(self.lon, "longitude")
            if not -180.0 <= lon <= 180.0:
                lon = (lon + 180.0) % 360.0 - 180.0
            object.__setattr__(self, "lon", lon)
        if self.lat is not None:
            lat = finite_number(self.lat, "latitude")
            if not -90.0 <= lat <= 90.0:
                raise InputError(f"latitude {self.lat!r} is outside -90..90 degrees: is it a projected y or lon/lat swapped?")
            object.__setattr__(self, "lat", lat)
        if self.gsd_m is not None:
            gsd = finite_number(self.gsd_m, "ground sampling distance")
            if gsd <= 0:
                raise InputError(f"ground sampling distance {self.gsd_m!r} m must be positive: give metres per pixel")
            object.__setattr__(self, "gsd_m", gsd)
        if self.cloud_cover is not None:
            object.__setattr__(self, "cloud_cover", check_cloud_fraction(self.cloud_cover))
        if self.date is not None:
            when = parse_date(self.date)
            if when.year not in _TRAINED_YEARS:
                warnings.warn(
                    f"acquisition year {when.year} is outside 1980..2100, the range DiffusionSat's "
                    "date normalisation was designed for; the model has never seen such a date",
                    UserWarning,
                    stacklevel=3,
                )
            object.__setattr__(self, "date", when)

    def normalised(self) -> np.ndarray:
        """The (7,) float32 vector the model's metadata embedding takes."""
        raw = np.array(
            [
                _or_nan(self.lon),
                _or_nan(self.lat),
                _or_nan(self.gsd_m),
                _or_nan(self.cloud_cover),
                *((self.date.year, self.date.month, self.date.day) if self.date else (math.nan,) * 3),
            ],
            dtype=np.float64,
        )
        vector = (raw + _OFFSETS) / _SPANS * SCALE
        return np.nan_to_num(vector, nan=0.0).astype(np.float32)

    @classmethod
    def from_normalised(cls, vec: Any) -> SatMetadata:
        """The metadata a normalised vector stands for; each 0 reads back as unknown (None)."""
        vector = np.asarray(vec, dtype=np.float64)
        if vector.shape != (len(METADATA_FIELDS),) or not np.all(np.isfinite(vector)):
            raise InputError(
                f"a DiffusionSat metadata vector has {len(METADATA_FIELDS)} finite numbers "
                f"{METADATA_FIELDS}; got shape {vector.shape}"
            )
        values = vector / SCALE * _SPANS - _OFFSETS
        known = vector != 0
        lon, lat, gsd, cloud = (float(values[i]) if known[i] else None for i in range(4))
        return cls(lon=lon, lat=lat, gsd_m=gsd, cloud_cover=cloud, date=_date_from_normalised(vector, values))


def _date_from_normalised(vector: np.ndarray, values: np.ndarray) -> datetime.date | None:
    year_n, month_n, day_n = vector[4:]
    if month_n == 0 and day_n == 0:
        if year_n != 0:
            raise InputError("the metadata vector has a year but no month and day: a date needs all three")
        return None
    # A normalised year of 0 is 1980 when month and day are known (those are never 0).
    parts = []
    for name, value in zip(("year", "month", "day"), values[4:]):
        whole = round(float(value))
        if abs(value - whole) > 0.1:
            raise InputError(
                f"the metadata vector's {name} reads back as {value:.3f}, not a whole number: "
                "was it made by SatMetadata.normalised()?"
            )
        parts.append(whole)
    try:
        return datetime.date(*parts)
    except ValueError as error:
        raise InputError(f"the metadata vector's date {parts} is not a calendar date ({error})") from None


def normalise_batch(items: Sequence[SatMetadata]) -> np.ndarray:
    """The (N, 7) float32 metadata of a batch of tiles, one row per item."""
    rows = [item.normalised() for item in items]
    if not rows:
        return np.zeros((0, len(METADATA_FIELDS)), dtype=np.float32)
    return np.stack(rows).astype(np.float32, copy=False)


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


# --- CRS helpers (cached per CRS: building transformers dominates small transforms) -----------


def _crs_key(crs: Any) -> str | int:
    if crs is None or not crs:  # rasterio's empty CRS() is falsy
        raise InputError("the grid has no CRS: assign the raster's coordinate reference system first")
    if isinstance(crs, (str, int)):
        return crs
    try:
        return pyproj.CRS.from_user_input(crs).to_wkt()
    except CRSError as error:
        raise InputError(f"cannot understand the CRS {crs!r} ({error}): give an EPSG code or WKT") from None


@lru_cache(maxsize=64)
def _pyproj_crs(key: str | int) -> pyproj.CRS:
    try:
        crs = pyproj.CRS.from_user_input(key)
    except CRSError as error:
        raise InputError(f"cannot understand the CRS {key!r} ({error}): give an EPSG code or WKT") from None
    # The horizontal part is what pixels are measured in (compound = horizontal + vertical).
    if crs.is_compound:
        crs = crs.sub_crs_list[0]
    if crs.is_bound:
        crs = crs.source_crs
    return crs


@lru_cache(maxsize=64)
def _to_wgs84(key: str | int) -> pyproj.Transformer:
    crs = _pyproj_crs(key)
    try:
        return pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    except ProjError as error:
        raise InputError(
            f"cannot transform {crs.name!r} to WGS84 longitude/latitude ({error}): DiffusionSat needs "
            "Earth coordinates, so reproject the raster to an Earth CRS"
        ) from None


@lru_cache(maxsize=64)
def _to_own_geographic(key: str | int) -> tuple[pyproj.Transformer, pyproj.Proj]:
    crs = _pyproj_crs(key)
    return pyproj.Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True), pyproj.Proj(crs)


def centre_lonlat(crs: Any, x: float, y: float) -> tuple[float, float]:
    """WGS84 (lon, lat) in degrees of a point given in ``crs``; lon wrapped to [-180, 180)."""
    try:
        lon, lat = _to_wgs84(_crs_key(crs)).transform(x, y, errcheck=True)
    except ProjError as error:
        raise InputError(f"the point ({x}, {y}) cannot be placed on the Earth ({error}): is it inside the CRS's area?") from None
    if not (math.isfinite(lon) and math.isfinite(lat)):
        raise InputError(f"the point ({x}, {y}) has no WGS84 longitude/latitude: is it inside the CRS's area?")
    return (lon + 180.0) % 360.0 - 180.0, lat


# --- ground sampling distance --------------------------------------------------------------------

# Mercator projections (not transverse) stretch the map by 1/cos(lat): their map units are not ground
# metres, so the nominal pixel size is divided by the projection's point scale. For Web Mercator that
# scale is exactly 1/cos(lat) (ground size = nominal x cos(lat)).
_MERCATOR_METHODS = {
    "1024",  # Popular Visualisation Pseudo Mercator (EPSG:3857, ESRI:102100)
    "9841",  # Mercator (1SP) (Spherical) (EPSG:3785, the old Web Mercator code)
    "1026",  # Mercator (Spherical)
    "9804",  # Mercator (variant A)
    "9805",  # Mercator (variant B)
    "1044",  # Mercator (variant C)
}


def uses_point_scale(crs: Any) -> bool:
    """Whether a projected CRS's map units are corrected by its point scale (Mercator projections)."""
    method = _pyproj_crs(_crs_key(crs)).coordinate_operation
    return method is not None and method.method_code in _MERCATOR_METHODS


def pixel_size_metres(crs: Any, transform: Affine, col: float, row: float) -> tuple[float, float]:
    """Ground size in metres (along rows, along columns) of one pixel at image position (col, row).

    (col, row) are image coordinates: (0, 0) is the grid's top-left corner, ``col + 0.5`` a pixel
    centre, (width / 2, height / 2) the grid centre. Sizes are measured across that point, so
    rotated and sheared grids work. Geographic CRSs use geodesic distances on their ellipsoid;
    projected CRSs use their linear unit in metres (US survey feet included), corrected by the point
    scale for Mercator projections whose map metres are not ground metres.
    """
    transform = Affine(*tuple(transform)[:6])
    if transform.determinant == 0 or not all(math.isfinite(v) for v in transform[:6]):
        raise InputError(f"the grid's transform {tuple(transform)[:6]} is degenerate: a pixel has no size")
    key = _crs_key(crs)
    horizontal = _pyproj_crs(key)
    ends_x = (transform @ (col - 0.5, row), transform @ (col + 0.5, row))
    ends_y = (transform @ (col, row - 0.5), transform @ (col, row + 0.5))
    if horizontal.is_geographic:
        return _geodesic(horizontal, *ends_x), _geodesic(horizontal, *ends_y)
    if not horizontal.is_projected:
        raise InputError(
            f"the CRS {horizontal.name!r} ({horizontal.type_name}) is neither geographic nor projected: "
            "reproject the raster to a map projection or to longitude/latitude"
        )
    unit = horizontal.axis_info[0].unit_conversion_factor  # metres per CRS unit
    size_x = math.hypot(transform.a, transform.d) * unit
    size_y = math.hypot(transform.b, transform.e) * unit
    if uses_point_scale(key):
        parallel, meridional = _mercator_scale(key, transform @ (col, row))
        size_x, size_y = size_x / parallel, size_y / meridional
    return size_x, size_y


def gsd_metres(crs: Any, transform: Affine, col: float, row: float) -> float:
    """Ground sampling distance in metres at (col, row): the mean of the pixel's two ground sizes."""
    size_x, size_y = pixel_size_metres(crs, transform, col, row)
    return (size_x + size_y) / 2.0


def _geodesic(crs: pyproj.CRS, start: tuple[float, float], end: tuple[float, float]) -> float:
    to_degrees = math.degrees(crs.axis_info[0].unit_conversion_factor)  # e.g. grads -> degrees
    lon1, lat1, lon2, lat2 = (value * to_degrees for value in (*start, *end))
    if not (-90.0 <= lat1 <= 90.0 and -90.0 <= lat2 <= 90.0):
        raise InputError(
            f"the grid reaches latitude {max(abs(lat1), abs(lat2)):.6g}°, beyond the poles: "
            "check the raster's geotransform and CRS"
        )
    _, _, distance = crs.get_geod().inv(lon1, lat1, lon2, lat2)
    return float(distance)


def _mercator_scale(key: str | int, point: tuple[float, float]) -> tuple[float, float]:
    to_geographic, projection = _to_own_geographic(key)
    try:
        lon, lat = to_geographic.transform(*point, errcheck=True)
        factors = projection.get_factors(lon, lat, errcheck=True)
    except ProjError as error:
        raise InputError(f"cannot compute the map scale at {point} ({error}): is the grid inside the CRS's area?") from None
    return factors.parallel_scale, factors.meridional_scale
