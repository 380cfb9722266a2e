"""xBD / xView2 labels: buildings with damage grades, and a georeference for their PNGs.

Each label JSON gives every building twice: `features.lng_lat` (WKT in EPSG:4326) and
`features.xy` (WKT in pixel coordinates of the 1024x1024 PNG, continuous, (0, 0) at the top-left
corner of the top-left pixel — GDAL's convention). The PNGs carry no georeference, but the two
copies of each vertex are matching pairs, so an affine pixel -> map transform can be fitted by
least squares. It is fitted in the local UTM zone, where the images are north-up with square
pixels (in degrees they are not square); the samples fit it to ~1e-8 px. It maps pixel corners
exactly as a GeoTIFF geotransform does, so no half-pixel shift is applied: buildings cut by the
image's bottom edge have xy vertices at y = 1024 = height, i.e. on the last pixel's outer edge.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyproj
import rasterio
import shapely
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from shapely.geometry.base import BaseGeometry

from engine.errors import InputError
from engine.geo.damage_classes import NO_CHANGE, XBD_DAMAGE_CODES
from engine.geo.grid import OutputGrid
from engine.geo.vectors import PolygonLayer, write_polygons
from engine.geo.writer import GeoTIFFWriter

WGS84 = CRS.from_epsg(4326)
# A fit whose vertices miss by more than this (pixels RMS) means the two coordinate sets do not
# describe the same image (mixed-up files, edited labels): refuse rather than misplace pixels.
MAX_RESIDUAL_PX = 2.0
# Rotation/shear that moves no pixel of the image by more than this is dropped, so the GeoTIFF
# is north-up (what the rest of GFM4D, and most GIS tools, expect of a raster grid).
NORTH_UP_TOLERANCE_PX = 0.01
_COORDINATE_SETS = ("lng_lat", "xy")
_ROWS_PER_BLOCK = 256
_EXPORT_FIELDS = ["uid", "damage", "damage_code", "disaster", "disaster_type", "capture_date"]


@dataclass
class XbdLabels:
    """One xBD label file: the polygons (in the chosen coordinates) and the image metadata.

    `lng_lat` and `xy` hold both copies of every building, aligned with `polygons` by position
    (None where one copy is missing), for fitting the georeference.
    """

    polygons: PolygonLayer
    metadata: dict[str, Any]
    lng_lat: list[BaseGeometry | None]
    xy: list[BaseGeometry | None]
    path: str

    @property
    def disaster(self) -> str | None:
        return self.metadata.get("disaster")

    @property
    def disaster_type(self) -> str | None:
        return self.metadata.get("disaster_type")

    @property
    def capture_date(self) -> datetime | None:
        text = self.metadata.get("capture_date")
        if not text:
            return None
        try:
            return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
        except ValueError:
            raise InputError(
                f"{self.path}: capture_date {text!r} is not an ISO 8601 date; correct it in the label file"
            ) from None

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(width, height) of the labelled PNG, when the metadata gives it."""
        width, height = self.metadata.get("width"), self.metadata.get("height")
        return (int(width), int(height)) if width and height else None

    @property
    def is_post_disaster(self) -> bool:
        """Post-disaster labels grade damage (`subtype`); pre-disaster labels do not."""
        return any(a.get("subtype") is not None for a in self.polygons.attributes)


class XbdGeoreference(NamedTuple):
    """Pixel -> map affine of an xBD PNG, its CRS, and how well the vertex pairs fit it."""

    transform: Affine
    crs: CRS
    residual_px: float


def _load(path: Path) -> dict:
    if not path.exists():
        raise InputError(f"the xBD label file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not readable JSON ({exc}); give an xBD label file (*_disaster.json)") from exc
    features = content.get("features") if isinstance(content, dict) else None
    if not isinstance(features, dict) or not any(isinstance(features.get(k), list) for k in _COORDINATE_SETS):
        raise InputError(
            f"{path} is not an xBD label file: it has no features.lng_lat / features.xy lists "
            "(for GeoJSON, use read_polygons)"
        )
    return content


def _parse(entries: list, which: str, path: Path) -> tuple[list[BaseGeometry | None], list[dict[str, Any]]]:
    geometries, properties = [], []
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InputError(f"{path}: features.{which}[{position}] is not an object with 'properties' and 'wkt'")
        props = dict(entry.get("properties") or {})
        wkt = entry.get("wkt")
        try:
            geometry = shapely.from_wkt(wkt) if wkt else None
        except shapely.errors.GEOSException as exc:
            building = props.get("uid", position)
            raise InputError(f"{path}: building {building} in features.{which} has unreadable WKT ({exc})") from exc
        geometries.append(geometry)
        properties.append(props)
    return geometries, properties


def _key(props: dict[str, Any], position: int) -> Any:
    return props.get("uid", ("position", position))


def read_xbd_labels(
    path: str | Path,
    use: str = "lng_lat",
    georeference: tuple[Affine, CRS] | XbdGeoreference | None = None,
) -> XbdLabels:
    """Read an xBD label JSON.

    `use="lng_lat"` gives polygons in EPSG:4326; `use="xy"` gives them in pixel space with no
    CRS, unless `georeference` (transform, crs) is given, which places them on the map.
    """
    if use not in _COORDINATE_SETS:
        raise InputError(f"use must be 'lng_lat' or 'xy', not {use!r}")
    path = Path(path)
    content = _load(path)
    features = content["features"]
    parsed = {which: _parse(features.get(which) or [], which, path) for which in _COORDINATE_SETS}
    geometries, properties = parsed[use]
    other = "xy" if use == "lng_lat" else "lng_lat"
    other_by_key = {_key(p, i): g for i, (g, p) in enumerate(zip(*parsed[other]))}
    others = [other_by_key.get(_key(p, i)) for i, p in enumerate(properties)]
    lng_lat, xy = (geometries, others) if use == "lng_lat" else (others, geometries)

    crs: CRS | None = WGS84 if use == "lng_lat" else None
    if use == "xy" and georeference is not None:
        transform, crs = georeference[0], CRS.from_user_input(georeference[1])
        moved = shapely.transform(
            np.array(geometries, dtype=object), lambda x, y: transform @ (x, y), interleaved=False
        )
        geometries = list(moved)
    metadata = dict(content.get("metadata") or {})
    # The scene's disaster and date go on every polygon, so a class mapping can find them.
    scene = {key: metadata.get(key) for key in ("disaster", "disaster_type", "capture_date")}
    attributes = [
        {"uid": p.get("uid"), "feature_type": p.get("feature_type"), "subtype": p.get("subtype"), **scene}
        for p in properties
    ]
    ids = [p.get("uid", i) for i, p in enumerate(properties)]
    layer = PolygonLayer(geometries, attributes, crs, str(path), ids)
    return XbdLabels(layer, metadata, lng_lat, xy, str(path))


def utm_crs_for(lon: float, lat: float) -> CRS:
    """The WGS84 / UTM zone CRS containing a point (standard zones, no Norway/Svalbard exceptions)."""
    zone = min(60, int(math.floor((lon + 180.0) / 6.0)) + 1)
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def _vertex_pairs(labels: XbdLabels) -> tuple[np.ndarray, np.ndarray]:
    """(pixel xy, lon/lat) of every vertex present in both copies of the same building."""
    pixels, lonlats = [], []
    for xy, lng_lat in zip(labels.xy, labels.lng_lat):
        if xy is None or lng_lat is None or xy.is_empty or lng_lat.is_empty:
            continue
        a, b = shapely.get_coordinates(xy), shapely.get_coordinates(lng_lat)
        if len(a) != len(b):
            continue  # the two copies were not written vertex by vertex: no pairs to trust
        pixels.append(a)
        lonlats.append(b)
    if not pixels:
        return np.empty((0, 2)), np.empty((0, 2))
    return np.vstack(pixels), np.vstack(lonlats)


def _least_squares(pixels: np.ndarray, world: np.ndarray, north_up: bool) -> Affine:
    cols, rows = pixels[:, 0], pixels[:, 1]
    if north_up:
        a, c = np.polyfit(cols, world[:, 0], 1)
        e, f = np.polyfit(rows, world[:, 1], 1)
        return Affine(a, 0.0, c, 0.0, e, f)
    design = np.column_stack([cols, rows, np.ones_like(cols)])
    (a, b, c), *_ = np.linalg.lstsq(design, world[:, 0], rcond=None)
    (d, e, f), *_ = np.linalg.lstsq(design, world[:, 1], rcond=None)
    return Affine(a, b, c, d, e, f)


def _residual_px(transform: Affine, pixels: np.ndarray, world: np.ndarray) -> float:
    back = ~transform
    cols, rows = back @ (world[:, 0], world[:, 1])
    return float(np.sqrt(np.mean((cols - pixels[:, 0]) ** 2 + (rows - pixels[:, 1]) ** 2)))


def fit_xbd_georeference(labels: XbdLabels) -> XbdGeoreference:
    """Least-squares affine pixel -> local UTM from the labels' matching vertex pairs."""
    pixels, lonlats = _vertex_pairs(labels)
    unique = np.unique(pixels, axis=0)
    spread = np.linalg.svd(unique - unique.mean(axis=0), compute_uv=False) if len(unique) >= 3 else np.zeros(2)
    if len(unique) < 3 or spread[1] < 1e-6 * max(spread[0], 1.0):
        raise InputError(
            f"{labels.path} has {len(unique)} distinct matching xy/lng_lat vertices"
            + (" and they lie on one line" if len(unique) >= 3 else "")
            + "; a georeference needs at least 3 that are not collinear (a label file with at least one "
            "building polygon in both features.xy and features.lng_lat)"
        )
    lon, lat = lonlats.mean(axis=0)
    crs = utm_crs_for(float(lon), float(lat))
    to_utm = pyproj.Transformer.from_crs(WGS84.to_wkt(), crs.to_wkt(), always_xy=True)
    world = np.column_stack(to_utm.transform(lonlats[:, 0], lonlats[:, 1]))

    transform = _least_squares(pixels, world, north_up=False)
    width, height = labels.image_size or (1024, 1024)
    shear_px = max(abs(transform.b) * height / abs(transform.a), abs(transform.d) * width / abs(transform.e))
    if shear_px < NORTH_UP_TOLERANCE_PX:
        transform = _least_squares(pixels, world, north_up=True)
    residual = _residual_px(transform, pixels, world)
    if not residual <= MAX_RESIDUAL_PX:
        raise InputError(
            f"the xy and lng_lat polygons of {labels.path} do not describe the same image: an affine "
            f"fit misses their vertices by {residual:.2f} px RMS (at most {MAX_RESIDUAL_PX} px is "
            "accepted); check that the file is an unedited xBD label file"
        )
    return XbdGeoreference(transform, crs, residual)


def check_xbd_pair(png: str | Path, labels_json: str | Path) -> None:
    """Refuse a PNG the labels are not for: a pre image georeferenced with post labels gets the post
    image's date and sensor. The labels' `metadata.img_name` names their image; a PNG with an xBD
    name must carry that name (a renamed copy is judged by its size alone)."""
    png, labels_json = Path(png), Path(labels_json)
    img_name = _load(labels_json).get("metadata", {}).get("img_name")
    xbd_named = png.name.endswith(("_pre_disaster.png", "_post_disaster.png"))
    if isinstance(img_name, str) and img_name and xbd_named and img_name != png.name:
        raise InputError(
            f"{labels_json.name} labels the image {img_name}, not {png.name} (xBD pre and post images have their own "
            f"label files); give --image {img_name}, or the labels of {png.name}"
        )


def xbd_png_to_geotiff(png: str | Path, labels_json: str | Path, out_tif: str | Path) -> Path:
    """Write the PNG as a georeferenced GeoTIFF on the affine fitted from its labels."""
    labels = read_xbd_labels(labels_json)
    georeference = fit_xbd_georeference(labels)
    png = Path(png)
    if not png.exists():
        raise InputError(f"the xBD image {png} does not exist")
    check_xbd_pair(png, labels_json)
    try:
        return _write_georeferenced(png, Path(labels_json), labels, georeference, out_tif)
    except (rasterio.errors.RasterioError, CPLE_BaseError) as exc:
        reason = exc.__cause__ or exc.__context__ or exc  # rasterio's "Read failed" hides GDAL's reason
        raise InputError(f"cannot read the xBD image {png.name} ({reason}): the file is damaged or truncated, copy it again") from None


def _write_georeferenced(png: Path, labels_json: Path, labels, georeference, out_tif) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        src = rasterio.open(png)
    with src:
        size = labels.image_size
        if size is not None and size != (src.width, src.height):
            raise InputError(
                f"{png.name} is {src.width}x{src.height} px but {Path(labels_json).name} labels a "
                f"{size[0]}x{size[1]} image; give the PNG that goes with these labels"
            )
        if src.count not in (3, 4) or src.dtypes[0] != "uint8":
            raise InputError(f"{png.name} is not an 8-bit RGB(A) image; xBD images are RGB PNGs")
        grid = OutputGrid(georeference.crs, georeference.transform, src.width, src.height)
        colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha][: src.count]
        tags = {
            "XBD_DISASTER": str(labels.disaster or ""),
            "XBD_DISASTER_TYPE": str(labels.disaster_type or ""),
            "XBD_CAPTURE_DATE": str(labels.metadata.get("capture_date") or ""),
            "XBD_SENSOR": str(labels.metadata.get("sensor") or ""),
            "XBD_GEOREFERENCE_RESIDUAL_PX": f"{georeference.residual_px:.6f}",
        }
        with GeoTIFFWriter(out_tif, grid, count=src.count, dtype="uint8", colorinterp=colorinterp, tags=tags) as writer:
            for row in range(0, src.height, _ROWS_PER_BLOCK):
                rows = min(_ROWS_PER_BLOCK, src.height - row)
                window = Window(0, row, src.width, rows)
                writer.write(src.read(window=window), window)
    return Path(out_tif)


def export_xbd_polygons(labels_json: str | Path, out_path: str | Path) -> Path:
    """Write the buildings (lon/lat) with their damage as a GeoPackage or GeoJSON.

    `damage_code` is the label raster's code (see engine.geo.damage_classes); 0 where a building
    has no damage grade (pre-disaster labels).
    """
    labels = read_xbd_labels(labels_json)
    layer = labels.polygons
    damages = [props.get("subtype") for props in layer.attributes]
    unknown = sorted({d for d in damages if d is not None and d not in XBD_DAMAGE_CODES})
    if unknown:
        raise InputError(
            f"{labels.path} has damage subtypes {unknown} that xBD does not define "
            f"(known: {', '.join(XBD_DAMAGE_CODES)}); correct the label file"
        )
    attributes = [
        {
            "uid": props.get("uid"),
            "damage": damage,
            "damage_code": XBD_DAMAGE_CODES.get(damage, NO_CHANGE),
            "disaster": labels.disaster,
            "disaster_type": labels.disaster_type,
            "capture_date": labels.metadata.get("capture_date"),
        }
        for props, damage in zip(layer.attributes, damages)
    ]
    out = PolygonLayer(layer.geometries, attributes, layer.crs, layer.source, layer.ids)
    return write_polygons(out, out_path, fields=_EXPORT_FIELDS)
