"""Polygon layers in (GeoJSON, GeoPackage, Shapefile, zipped Shapefile, xBD label JSON) and out.

Reading goes through OGR (pyogrio) so every format GDAL knows works; geometries become shapely
objects with their attributes, and the layer's CRS is always kept: polygons are reprojected to
the raster's CRS whatever the two are, never assumed to match. xBD label files are JSON but not
GeoJSON, so they are recognised by content and read by `engine.geo.xbd`.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyogrio
import pyogrio.raw
import pyproj
import shapely
from rasterio.crs import CRS
from shapely.geometry.base import BaseGeometry

from engine.errors import InputError

# Output formats written by `write_polygons`, by file extension.
_WRITE_DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}


@dataclass
class PolygonLayer:
    """Polygons with their attributes and CRS, in file order.

    `crs` is None only for polygons in pixel space (xBD `xy` labels without a georeference).
    `ids` are the features' own identifiers (OGR FIDs, xBD uids) used in messages and reports;
    when absent, the position in the layer stands in.
    """

    geometries: list[BaseGeometry | None]
    attributes: list[dict[str, Any]]
    crs: CRS | None
    source: str
    ids: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.geometries)

    @property
    def feature_ids(self) -> list[Any]:
        return list(self.ids) if self.ids is not None else list(range(len(self.geometries)))

    def to_crs(self, crs: CRS | str) -> "PolygonLayer":
        target = CRS.from_user_input(crs)
        if self.crs is None:
            raise InputError(
                f"the polygons of {self.source} are in pixel coordinates with no CRS, so they cannot be "
                "reprojected; georeference them first (for xBD labels: read the lng_lat polygons, or "
                "fit a georeference with fit_xbd_georeference)"
            )
        if target == self.crs:
            return self
        forward = pyproj.Transformer.from_crs(self.crs.to_wkt(), target.to_wkt(), always_xy=True)
        moved = shapely.transform(np.array(self.geometries, dtype=object), forward.transform, interleaved=False)
        return replace(self, geometries=list(moved), crs=target)

    def bounds(self) -> tuple[float, float, float, float]:
        present = [g for g in self.geometries if g is not None and not g.is_empty]
        if not present:
            raise InputError(f"{self.source} has no non-empty geometries; check the layer or the selection")
        return tuple(float(v) for v in shapely.total_bounds(present))


def _ogr_path(path: Path) -> str:
    if path.suffix.lower() == ".zip":
        return f"/vsizip/{path}"
    return str(path)


def _is_xbd_labels(path: Path) -> bool:
    """xBD label files are JSON objects whose `features` hold `lng_lat` / `xy` lists."""
    if path.suffix.lower() != ".json":
        return False
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, ValueError):
        return False
    features = content.get("features") if isinstance(content, dict) else None
    return isinstance(features, dict) and ("lng_lat" in features or "xy" in features)


def _check_polygon_source(path: Path) -> None:
    """A folder or an empty file is named as such, not answered with GDAL's driver-prefix hint."""
    if path.is_dir() and not any(path.glob("*.shp")):
        raise InputError(f"{path} is a folder, not a polygon file: give a GeoJSON, GeoPackage, Shapefile or zipped Shapefile")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"the polygon file {path} is empty (0 bytes): give a GeoJSON, GeoPackage, Shapefile or zipped Shapefile")


def read_polygons(path: str | Path, layer: str | int | None = None) -> PolygonLayer:
    """Read a polygon layer; points and lines are refused with a clear message."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"the polygon file {path} does not exist")
    _check_polygon_source(path)
    if _is_xbd_labels(path):
        from engine.geo.xbd import read_xbd_labels

        return read_xbd_labels(path, use="lng_lat").polygons
    try:
        meta, fids, wkb, field_data = pyogrio.raw.read(_ogr_path(path), layer=layer, return_fids=True)
    except Exception as exc:  # pyogrio raises several error types for unreadable data
        reason = str(exc).split("; It might help to specify the correct driver")[0].rstrip(". ")
        raise InputError(
            f"could not read polygons from {path}: {reason}. Give a GeoJSON, GeoPackage, Shapefile or zipped Shapefile"
        ) from exc
    if not meta.get("crs"):
        raise InputError(
            f"{path} has no CRS (for a Shapefile: is the .prj file missing?); assign one in a GIS and save again"
        )
    geometry_type = (meta.get("geometry_type") or "").lower()
    mixed = ("unknown", "geometry", "geometrycollection")
    if geometry_type and "polygon" not in geometry_type and geometry_type not in mixed:
        raise InputError(
            f"{path} holds {meta['geometry_type']} geometries; polygons are needed (buffer points or lines first)"
        )
    geometries = [None if g is None else shapely.from_wkb(g) for g in wkb]
    names = list(meta["fields"])
    attributes = [
        {name: _plain(field_data[j][i]) for j, name in enumerate(names)} for i in range(len(geometries))
    ]
    ids = [_plain(f) for f in fids] if fids is not None else None
    return PolygonLayer(geometries, attributes, CRS.from_user_input(meta["crs"]), str(path), ids)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python values, so attributes serialise to JSON as they are."""
    return value.item() if hasattr(value, "item") else value


def _field_column(values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """One attribute column as an OGR-typed array (int, float or text) and its null mask."""
    present = [v for v in values if v is not None]
    nulls = np.array([v is None for v in values], dtype=bool)
    mask = nulls if nulls.any() else None
    if present and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present):
        return np.array([0 if v is None else int(v) for v in values], dtype=np.int64), mask
    if present and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in present):
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64), mask
    return np.array([None if v is None else str(v) for v in values], dtype=object), mask


def _with_geojson_crs(layer: PolygonLayer) -> PolygonLayer:
    """The layer in a CRS a GeoJSON file can name.

    GeoJSON names its CRS by an authority code only; a CRS without one in its WKT (such as "Albers
    Conical Equal Area" from a GeoTIFF) would be dropped, and every reader would then take the
    coordinates for lon/lat. Such a CRS is written as the code it equals, EPSG's first (what most
    readers know), else another authority's; a CRS that equals none (a custom or compound CRS) goes
    to lon/lat (OGC:CRS84), GeoJSON's own CRS.
    """
    if not (layer.crs.is_geographic or layer.crs.is_projected):
        raise InputError(f"the polygons of {layer.source} are in a local CRS with no place on Earth, which GeoJSON "
                         "cannot carry; write them to a .gpkg file instead")
    wkt_crs = pyproj.CRS.from_wkt(layer.crs.to_wkt())
    for authority in (wkt_crs.to_authority(auth_name="EPSG"), wkt_crs.to_authority()):
        if authority is not None:
            named = CRS.from_authority(*authority)
            if named == layer.crs:
                return replace(layer, crs=named)
    return layer.to_crs("OGC:CRS84")


def write_polygons(layer: PolygonLayer, path: str | Path, fields: Sequence[str] | None = None) -> Path:
    """Write a layer as GeoPackage or GeoJSON (by extension), atomically (temp name + rename).

    Attribute types follow the values: all-integer columns stay integers, so class codes remain
    numbers a GIS can symbolise on.
    """
    path = Path(path)
    driver = _WRITE_DRIVERS.get(path.suffix.lower())
    if driver is None:
        raise InputError(f"cannot write polygons to {path.name}: give a .gpkg or .geojson file name")
    if layer.crs is None:
        raise InputError(f"the polygons of {layer.source} have no CRS; georeference them before writing a GIS file")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"the folder {parent} for {path.name} does not exist; create it first")
    if driver == "GeoJSON":
        layer = _with_geojson_crs(layer)
    names = list(fields) if fields is not None else list(dict.fromkeys(k for a in layer.attributes for k in a))
    columns = [_field_column([a.get(name) for a in layer.attributes]) for name in names]
    wkb = np.array([None if g is None else shapely.to_wkb(g) for g in layer.geometries], dtype=object)
    scratch = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        pyogrio.raw.write(
            str(scratch),
            wkb,
            [c for c, _ in columns],
            names,
            field_mask=[m for _, m in columns],
            layer=path.stem,
            driver=driver,
            geometry_type="MultiPolygon",
            promote_to_multi=True,
            crs=layer.crs.to_wkt(),
        )
        os.replace(scratch, path)
    finally:
        if scratch.exists():
            scratch.unlink()
    return path
