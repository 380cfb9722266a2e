"""The pixel grid a STAC item describes, from its projection extension (``proj:*``) fields.

A STAC item can say where its pixels lie without opening the raster: CRS, shape and affine
transform. Asset-level fields override item-level ones, since the bands of one item (Sentinel-2
10 m / 20 m / 60 m) often have different grids.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from rasterio.transform import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError

from engine.errors import InputError

_GRID_KEYS = ("proj:shape", "proj:transform", "proj:bbox")


def grid_from_stac(item: Mapping, asset: str | None = None) -> tuple[CRS, Affine, tuple[int, int]]:
    """(crs, transform, (rows, cols)) of a STAC item, or of one of its assets.

    CRS from ``proj:code`` (or the older ``proj:epsg``), ``proj:wkt2`` or ``proj:projjson``;
    shape from ``proj:shape`` [rows, cols]; transform from ``proj:transform`` (rasterio/Affine
    order, 6 or 9 numbers), else from ``proj:bbox`` and the shape.
    """
    if hasattr(item, "to_dict") and not isinstance(item, Mapping):
        item = item.to_dict()
    if not isinstance(item, Mapping) or not isinstance(item.get("properties"), Mapping):
        raise InputError("a STAC item must be a JSON object with 'properties' (a GeoJSON Feature)")
    fields = dict(item["properties"])
    if asset is not None:
        assets = item.get("assets") or {}
        if asset not in assets:
            raise InputError(f"the STAC item has no asset {asset!r}; its assets are {sorted(assets)}")
        fields.update(assets[asset])

    crs = _crs(fields)
    shape = _shape(fields, item, asset)
    transform = _transform(fields, shape)
    return crs, transform, shape


def _crs(fields: Mapping[str, Any]) -> CRS:
    try:
        if fields.get("proj:code"):
            return CRS.from_user_input(fields["proj:code"])
        if fields.get("proj:epsg"):
            return CRS.from_epsg(int(fields["proj:epsg"]))
        if fields.get("proj:wkt2"):
            return CRS.from_wkt(fields["proj:wkt2"])
        if fields.get("proj:projjson"):
            return CRS.from_user_input(json.dumps(fields["proj:projjson"]))
    except (CRSError, ValueError, TypeError) as error:
        raise InputError(f"the STAC item's CRS cannot be read ({error}): check its proj:* fields") from None
    raise InputError(
        "the STAC item has no CRS (proj:code, proj:epsg, proj:wkt2 or proj:projjson): "
        "give the raster's CRS explicitly"
    )


def _shape(fields: Mapping[str, Any], item: Mapping, asset: str | None) -> tuple[int, int]:
    shape = fields.get("proj:shape")
    if shape is None:
        raise InputError(f"the STAC item has no proj:shape [rows, cols]{_asset_hint(item, asset)}")
    if not _numbers(shape, 2) or any(n <= 0 or int(n) != n for n in shape):
        raise InputError(f"the STAC item's proj:shape {shape!r} is not two positive whole numbers [rows, cols]")
    return int(shape[0]), int(shape[1])


def _transform(fields: Mapping[str, Any], shape: tuple[int, int]) -> Affine:
    numbers = fields.get("proj:transform")
    if numbers is not None:
        if not (_numbers(numbers, 6) or _numbers(numbers, 9)):
            raise InputError(f"the STAC item's proj:transform {numbers!r} is not 6 or 9 numbers in Affine order")
        if len(numbers) == 9 and [float(n) for n in numbers[6:]] != [0.0, 0.0, 1.0]:
            raise InputError(f"the STAC item's proj:transform {numbers!r} does not end with 0, 0, 1: it is not affine")
        transform = Affine(*(float(n) for n in numbers[:6]))
    elif fields.get("proj:bbox") is not None:
        bbox = fields["proj:bbox"]
        if not _numbers(bbox, 4):
            raise InputError(f"the STAC item's proj:bbox {bbox!r} is not [xmin, ymin, xmax, ymax]")
        west, south, east, north = (float(n) for n in bbox)
        rows, cols = shape
        transform = Affine((east - west) / cols, 0.0, west, 0.0, -(north - south) / rows, north)
    else:
        raise InputError("the STAC item has neither proj:transform nor proj:bbox: its pixel grid is unknown")
    if transform.determinant == 0:
        raise InputError(f"the STAC item's grid transform {tuple(transform)[:6]} is degenerate (zero pixel size)")
    return transform


def _numbers(values: Any, count: int) -> bool:
    """Whether a JSON value is a list of ``count`` finite numbers."""
    return (
        isinstance(values, (list, tuple))
        and len(values) == count
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    )


def _asset_hint(item: Mapping, asset: str | None) -> str:
    if asset is not None:
        return ""
    with_grid = sorted(
        name for name, fields in (item.get("assets") or {}).items() if any(key in fields for key in _GRID_KEYS)
    )
    if not with_grid:
        return ""
    return f"; its assets {with_grid} have their own grids: choose one of them as the asset"
