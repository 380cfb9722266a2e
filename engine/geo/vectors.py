"""Polygon layers in (GeoJSON, GeoPackage, Shapefile or a zipped Shapefile), reprojected on demand.

Reading goes through OGR (pyogrio) so every format GDAL knows works; geometries become shapely
objects with their attributes, and the layer's CRS is always kept: polygons are reprojected to
the raster's CRS whatever the two are, never assumed to match.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyogrio
import pyproj
import shapely
from rasterio.crs import CRS
from shapely.geometry.base import BaseGeometry
from shapely.ops import transform as shapely_transform

from engine.errors import InputError


@dataclass
class PolygonLayer:
    """Polygons with their attributes and CRS, in file order."""

    geometries: list[BaseGeometry | None]
    attributes: list[dict[str, Any]]
    crs: CRS
    source: str

    def to_crs(self, crs: CRS) -> "PolygonLayer":
        if CRS.from_user_input(crs) == self.crs:
            return self
        forward = pyproj.Transformer.from_crs(self.crs.to_wkt(), CRS.from_user_input(crs).to_wkt(), always_xy=True)
        moved = [None if g is None else shapely_transform(forward.transform, g) for g in self.geometries]
        return PolygonLayer(moved, self.attributes, CRS.from_user_input(crs), self.source)

    def bounds(self) -> tuple[float, float, float, float]:
        present = [g for g in self.geometries if g is not None and not g.is_empty]
        if not present:
            raise InputError(f"{self.source} has no non-empty geometries; check the layer or the selection")
        return tuple(shapely.total_bounds(present))


def _ogr_path(path: Path) -> str:
    if path.suffix.lower() == ".zip":
        return f"/vsizip/{path}"
    return str(path)


def read_polygons(path: str | Path, layer: str | int | None = None) -> PolygonLayer:
    """Read a polygon layer; points and lines are refused with a clear message."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"the polygon file {path} does not exist")
    try:
        meta, _fids, wkb, field_data = pyogrio.raw.read(_ogr_path(path), layer=layer)
    except Exception as exc:  # pyogrio raises several error types for unreadable data
        raise InputError(f"could not read polygons from {path}: {exc}. Give a GeoJSON, GeoPackage, Shapefile or zipped Shapefile") from exc
    if not meta.get("crs"):
        raise InputError(f"{path} has no CRS (for a Shapefile: is the .prj file missing?); assign one in a GIS and save again")
    geometry_type = (meta.get("geometry_type") or "").lower()
    if geometry_type and "polygon" not in geometry_type and geometry_type not in ("unknown", "geometry", "geometrycollection"):
        raise InputError(f"{path} holds {meta['geometry_type']} geometries; polygons are needed (buffer points or lines first)")
    geometries = [None if g is None else shapely.from_wkb(g) for g in wkb]
    names = list(meta["fields"])
    attributes = [{name: _plain(field_data[j][i]) for j, name in enumerate(names)} for i in range(len(geometries))]
    return PolygonLayer(geometries, attributes, CRS.from_user_input(meta["crs"]), str(path))


def _plain(value: Any) -> Any:
    """numpy scalars -> Python values, so attributes serialise to JSON as they are."""
    return value.item() if hasattr(value, "item") else value

