"""Polygons in any CRS -> label rasters and soft inpainting masks on a raster's grid, window by window.

Polygons are always reprojected to the raster's CRS (a WGS84/UTM layer over a NAD83/UTM raster
is not "the same"), repaired when invalid, and those that miss the raster are set aside; a
`MaskReport` says which. Every raster product is computed for one rasterio `Window` at a time,
so memory follows the window, and a window's values equal the same pixels of the whole raster:
the feather reads a margin around the window instead of stopping at its edge.

A "grid" is anything with `crs`, `transform`, `width` and `height`: an `OutputGrid` or an open
rasterio dataset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import pyproj
import shapely
import shapely.affinity
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.windows import Window
from shapely.geometry.base import BaseGeometry

from engine.errors import InputError
from engine.geo.metadata import pixel_size_metres as metadata_pixel_size, uses_point_scale
from engine.geo.vectors import PolygonLayer

# Box blurs applied per axis: three make the fall-off smooth (piecewise quadratic, near Gaussian).
_BLUR_PASSES = 3
_REPORTED_IDS = 10


@dataclass
class MaskReport:
    """What happened to each polygon on its way onto a raster grid."""

    total: int
    used: int
    repaired: list[Any] = field(default_factory=list)
    empty: list[Any] = field(default_factory=list)
    outside: list[Any] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.used} of {self.total} polygons used"]
        groups = (("repaired (invalid geometry)", self.repaired), ("empty", self.empty))
        for what, ids in groups + (("outside the raster", self.outside),):
            if ids:
                shown = ", ".join(str(i) for i in ids[:_REPORTED_IDS]) + (", ..." if len(ids) > _REPORTED_IDS else "")
                parts.append(f"{len(ids)} {what}: {shown}")
        return "; ".join(parts)


@dataclass
class MaskPolygons(PolygonLayer):
    """Polygons placed on a grid: in its CRS, valid, and only those that touch it.

    `indices` are the positions of the kept polygons in the source layer, so per-polygon classes
    of the source still apply.
    """

    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    report: MaskReport | None = None


# --- ground scale ---------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _pyproj_crs(wkt: str) -> pyproj.CRS:
    return pyproj.CRS.from_wkt(wkt)


@lru_cache(maxsize=32)
def _proj(wkt: str) -> pyproj.Proj:
    return pyproj.Proj(_pyproj_crs(wkt))


@lru_cache(maxsize=32)
def _to_geodetic(wkt: str) -> pyproj.Transformer:
    crs = _pyproj_crs(wkt)
    return pyproj.Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)


def metres_per_unit(crs: CRS, xs: Any, ys: Any) -> tuple[np.ndarray, np.ndarray]:
    """Ground metres per CRS unit along x and y at points of a CRS (vectorised).

    The same rule as the GSD metadata and output grids (engine.geo.metadata.pixel_size_metres):
    geographic CRSs use the ellipsoid's radii of curvature, projected CRSs their linear unit, and
    Mercator projections (Web Mercator) are corrected by their point scale.
    """
    wkt = crs.to_wkt()
    pcrs = _pyproj_crs(wkt)
    xs, ys = np.atleast_1d(np.asarray(xs, dtype=float)), np.atleast_1d(np.asarray(ys, dtype=float))
    unit = pcrs.axis_info[0].unit_conversion_factor
    if pcrs.is_geographic:
        ellipsoid = pcrs.ellipsoid
        a, b = ellipsoid.semi_major_metre, ellipsoid.semi_minor_metre
        e2 = 1.0 - (b / a) ** 2
        lat = ys * unit
        w = np.sqrt(1.0 - e2 * np.sin(lat) ** 2)
        return a / w * np.cos(lat) * unit, a * (1.0 - e2) / w**3 * unit
    nominal = np.full(xs.shape, unit)
    if not uses_point_scale(wkt):
        return nominal, nominal.copy()
    lon, lat = _to_geodetic(wkt).transform(xs, ys)
    factors = _proj(wkt).get_factors(lon, lat)
    sx = np.asarray(factors.parallel_scale, dtype=float)
    sy = np.asarray(factors.meridional_scale, dtype=float)
    usable = np.isfinite(sx) & np.isfinite(sy) & (sx > 0) & (sy > 0)
    return unit / np.where(usable, sx, 1.0), unit / np.where(usable, sy, 1.0)


def pixel_size_metres(grid: Any) -> tuple[float, float]:
    """Ground size of one pixel (along columns, along rows) at the grid's centre."""
    return metadata_pixel_size(grid.crs, grid.transform, grid.width / 2, grid.height / 2)


# --- placing polygons on a grid -------------------------------------------------------------------


def _polygonal(geometry: BaseGeometry) -> BaseGeometry:
    """The polygonal part of a geometry (make_valid can return lines and points beside polygons)."""
    if geometry.geom_type in ("Polygon", "MultiPolygon"):
        return geometry
    parts = shapely.get_parts(shapely.get_parts(geometry))
    polygons = [p for p in parts if p.geom_type == "Polygon" and not p.is_empty]
    if not polygons:
        return shapely.Polygon()
    return polygons[0] if len(polygons) == 1 else shapely.MultiPolygon(polygons)


def _footprint(grid: Any, margin_px: tuple[float, float] = (0.0, 0.0)) -> shapely.Polygon:
    mx, my = margin_px
    corners = [(-mx, -my), (grid.width + mx, -my), (grid.width + mx, grid.height + my), (-mx, grid.height + my)]
    return shapely.Polygon([grid.transform @ c for c in corners])


def _margin_px(grid: Any, metres: float) -> tuple[float, float]:
    if metres <= 0:
        return 0.0, 0.0
    size_x, size_y = pixel_size_metres(grid)
    return metres / size_x, metres / size_y


def _fmt_bounds(bounds: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in bounds) + ")"


def place_on_grid(layer: PolygonLayer, grid: Any, margin_m: float = 0.0) -> MaskPolygons:
    """Reproject to the grid's CRS, repair invalid geometries, set aside those that miss the grid.

    Polygons within `margin_m` of the grid count as touching it (a dilation or feather can reach
    in from there). Fails when no polygon touches the grid.
    """
    if isinstance(layer, MaskPolygons) and layer.crs == grid.crs:
        return layer
    moved = layer.to_crs(grid.crs)
    ids = layer.feature_ids
    geometries = np.array(moved.geometries, dtype=object)
    report = MaskReport(total=len(geometries), used=0)
    finite = np.array([g is None or bool(np.isfinite(shapely.get_coordinates(g)).all()) for g in geometries])
    kept_geometries, kept_indices = [], []
    footprint = _footprint(grid, _margin_px(grid, margin_m))
    for index, geometry in enumerate(geometries):
        if geometry is None or geometry.is_empty:
            report.empty.append(ids[index])
            continue
        if not finite[index]:
            report.outside.append(ids[index])  # not representable in the grid's CRS at all
            continue
        if not geometry.is_valid:
            geometry = _polygonal(shapely.make_valid(geometry))
            report.repaired.append(ids[index])
        else:
            geometry = _polygonal(geometry)
        if geometry.is_empty:
            report.empty.append(ids[index])
        elif not footprint.intersects(geometry):
            report.outside.append(ids[index])
        else:
            kept_geometries.append(geometry)
            kept_indices.append(index)
    report.used = len(kept_geometries)
    if not kept_geometries:
        raster_bounds = _fmt_bounds(_footprint(grid).bounds)
        try:
            present = [g for g in geometries[finite] if g is not None and not g.is_empty]
            polygon_bounds = _fmt_bounds(shapely.total_bounds(present))
        except Exception:  # all empty or unprojectable: there is no extent to show
            polygon_bounds = "(none: no usable geometry)"
        raise InputError(
            f"none of the {report.total} polygons of {layer.source} overlaps the raster: the raster covers "
            f"{raster_bounds} and the polygons {polygon_bounds}, both in {grid.crs.to_string()}. Check that "
            "the polygons and the raster show the same place and that the polygon file's CRS is right"
        )
    return MaskPolygons(
        geometries=kept_geometries,
        attributes=[moved.attributes[i] for i in kept_indices],
        crs=CRS.from_user_input(grid.crs),
        source=layer.source,
        ids=[ids[i] for i in kept_indices],
        indices=np.asarray(kept_indices, dtype=np.int64),
        report=report,
    )


# --- geometry helpers -----------------------------------------------------------------------------


def dilate(polygons: PolygonLayer, metres: float) -> PolygonLayer:
    """Buffer every polygon by `metres` on the ground, whatever the layer's CRS units are."""
    if not metres >= 0 or not math.isfinite(metres):
        raise InputError(f"a dilation must be a finite number of metres >= 0, not {metres}")
    if metres == 0 or not len(polygons):
        return polygons
    if polygons.crs is None:
        raise InputError(
            f"the polygons of {polygons.source} have no CRS, so metres mean nothing for them; georeference them first"
        )
    geometries = np.array(polygons.geometries, dtype=object)
    present = np.array([g is not None and not g.is_empty for g in geometries])
    if not present.any():
        return polygons
    bounds = shapely.bounds(geometries[present])
    cx, cy = (bounds[:, 0] + bounds[:, 2]) / 2, (bounds[:, 1] + bounds[:, 3]) / 2
    mx, my = metres_per_unit(polygons.crs, cx, cy)
    out = geometries.copy()
    isotropic = np.abs(mx / my - 1.0) < 1e-3
    positions = np.flatnonzero(present)
    out[positions[isotropic]] = shapely.buffer(geometries[positions[isotropic]], metres / mx[isotropic])
    for k in np.flatnonzero(~isotropic):
        # Stretch to metres around the polygon's centre, buffer, shrink back (geographic CRSs).
        origin = (cx[k], cy[k])
        stretched = shapely.affinity.scale(geometries[positions[k]], mx[k], my[k], origin=origin)
        out[positions[k]] = shapely.affinity.scale(stretched.buffer(metres), 1 / mx[k], 1 / my[k], origin=origin)
    return replace(polygons, geometries=list(out))


def _as_window(window: Window | None, grid: Any) -> Window:
    if window is None:
        return Window(0, 0, grid.width, grid.height)
    values = (window.col_off, window.row_off, window.width, window.height)
    if any(float(v) != int(v) for v in values) or window.width <= 0 or window.height <= 0:
        raise InputError(f"the window {window} must have whole-pixel offsets and a positive size")
    return Window(*(int(v) for v in values))


def _window_transform(grid: Any, window: Window) -> Affine:
    return grid.transform @ Affine.translation(window.col_off, window.row_off)


def _near_window(
    placed: MaskPolygons, grid: Any, window: Window, margin_px: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """Indices (into `placed`) of polygons whose bounding box may reach the window."""
    mx, my = margin_px
    zone = _grown(window, mx + 1, my + 1)
    transform = _window_transform(grid, zone)
    corners = np.array([transform @ c for c in ((0, 0), (zone.width, 0), (zone.width, zone.height), (0, zone.height))])
    left, bottom = corners.min(axis=0)
    right, top = corners.max(axis=0)
    b = shapely.bounds(np.array(placed.geometries, dtype=object))
    return np.flatnonzero((b[:, 0] <= right) & (b[:, 2] >= left) & (b[:, 1] <= top) & (b[:, 3] >= bottom))


def _grown(window: Window, cols: float, rows: float) -> Window:
    return Window(window.col_off - cols, window.row_off - rows, window.width + 2 * cols, window.height + 2 * rows)


def _burn(
    geometries: Sequence[BaseGeometry], values: Sequence[int], grid: Any, window: Window, dtype: str
) -> np.ndarray:
    """Rasterise at pixel centres (all_touched=False); later shapes overwrite earlier ones."""
    shape = (int(window.height), int(window.width))
    if not len(geometries):
        return np.zeros(shape, dtype=dtype)
    return rasterize(
        zip(geometries, (int(v) for v in values)),
        out_shape=shape,
        transform=_window_transform(grid, window),
        fill=0,
        all_touched=False,
        dtype=dtype,
    )


def _codes_for(placed: MaskPolygons, classes: Any) -> np.ndarray:
    codes = np.asarray(getattr(classes, "codes", classes))
    if codes.ndim != 1 or len(codes) != placed.report.total:
        raise InputError(
            f"{len(codes)} class codes were given for {placed.report.total} polygons; give one code per polygon"
        )
    if codes.size and (codes.min() < 0 or codes.max() > 255):
        raise InputError("class codes must lie in 0..255 to fit the uint8 label raster")
    return codes[placed.indices].astype(np.uint8)


# --- raster products ------------------------------------------------------------------------------


def label_raster(polygons: PolygonLayer, classes: Any, grid: Any, window: Window | None = None) -> np.ndarray:
    """uint8 class codes of a window (0 = no change); where polygons overlap, the higher code wins.

    `classes` is a PolygonClasses or one code per polygon of the source layer.
    """
    placed = place_on_grid(polygons, grid)
    window = _as_window(window, grid)
    codes = _codes_for(placed, classes)
    near = _near_window(placed, grid, window)
    near = near[codes[near] > 0]
    order = near[np.argsort(codes[near], kind="stable")]
    return _burn([placed.geometries[i] for i in order], codes[order], grid, window, "uint8")


def _box_sum(values: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """Sums over 2*radius+1 cells along an axis, only where the box fits (the array shrinks)."""
    if radius == 0:
        return values
    padded = np.cumsum(values, axis=axis)
    padded = np.concatenate([np.zeros_like(np.take(padded, [0], axis=axis)), padded], axis=axis)
    size = 2 * radius + 1
    n = values.shape[axis]
    upper = np.take(padded, np.arange(size, n + 1), axis=axis)
    lower = np.take(padded, np.arange(0, n + 1 - size), axis=axis)
    return upper - lower


def _select(placed: MaskPolygons, only: Sequence[bool] | None) -> MaskPolygons:
    if only is None:
        return placed
    keep = np.asarray(only, dtype=bool)
    if keep.shape != (placed.report.total,):
        raise InputError(f"`only` must give one True/False per polygon ({placed.report.total}), not {keep.shape}")
    chosen = np.flatnonzero(keep[placed.indices])
    return replace(
        placed,
        geometries=[placed.geometries[i] for i in chosen],
        attributes=[placed.attributes[i] for i in chosen],
        ids=[placed.feature_ids[i] for i in chosen],
        indices=placed.indices[chosen],
    )


def _split(half_span: int) -> tuple[int, ...]:
    """Radii of the blur passes, as equal as whole pixels allow, adding up to `half_span`."""
    base, extra = divmod(half_span, _BLUR_PASSES)
    return tuple(base + (1 if i < extra else 0) for i in range(_BLUR_PASSES))


def feather_radii(grid: Any, feather_m: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Box radii of the blur passes along columns and along rows; together they span `feather_m`.

    The span is a whole number of pixels, so it matches `feather_m` to within a pixel.
    """
    if not feather_m >= 0 or not math.isfinite(feather_m):
        raise InputError(f"the feather must be a finite number of metres >= 0, not {feather_m}")
    size_x, size_y = pixel_size_metres(grid)
    return _split(round(feather_m / size_x / 2)), _split(round(feather_m / size_y / 2))


def soft_mask(
    polygons: PolygonLayer,
    grid: Any,
    window: Window | None = None,
    feather_m: float = 0.0,
    *,
    only: Sequence[bool] | None = None,
) -> np.ndarray:
    """float32 mask of a window: 1 inside the polygons, falling smoothly to 0 over `feather_m` outside.

    Three box blurs of the polygons grown by half the feather: the blur's support is the feather,
    so where it is centred on the polygon edge it still sees only "inside" (value 1) and a feather
    away it sees only "outside" (0). Blurs run on integer sums over the window plus a margin, so a
    window equals the same crop of the whole raster exactly. `only` (one bool per source polygon)
    restricts the mask, e.g. to the classes that are inpainted. A feather under a pixel gives the
    hard mask.
    """
    placed = _select(place_on_grid(polygons, grid), only)
    window = _as_window(window, grid)
    radii_x, radii_y = feather_radii(grid, feather_m)
    near = _near_window(placed, grid, window)
    hard = _burn([placed.geometries[i] for i in near], [1] * len(near), grid, window, "uint8")
    margin_x, margin_y = sum(radii_x), sum(radii_y)
    if margin_x == 0 and margin_y == 0:
        return hard.astype(np.float32)
    size_x, size_y = pixel_size_metres(grid)
    grow_m = (margin_x * size_x + margin_y * size_y) / 2
    near = _near_window(placed, grid, window, (margin_x + grow_m / size_x, margin_y + grow_m / size_y))
    nearby = PolygonLayer([placed.geometries[i] for i in near], [{} for _ in near], placed.crs, placed.source)
    grown = dilate(nearby, grow_m).geometries
    sums = _burn(grown, [1] * len(grown), grid, _grown(window, margin_x, margin_y), "uint8").astype(np.int64)
    for radius_x, radius_y in zip(radii_x, radii_y):
        sums = _box_sum(_box_sum(sums, radius_y, axis=0), radius_x, axis=1)
    boxes = np.prod([(2 * rx + 1) * (2 * ry + 1) for rx, ry in zip(radii_x, radii_y)], dtype=np.int64)
    return np.maximum(sums / float(boxes), hard).astype(np.float32)


def _pixel_bounds(placed: MaskPolygons, grid: Any) -> np.ndarray:
    """Per polygon (col_min, row_min, col_max, row_max) in fractional pixels of the grid."""
    b = shapely.bounds(np.array(placed.geometries, dtype=object))
    inverse = ~grid.transform
    corners = [inverse @ (b[:, i], b[:, j]) for i, j in ((0, 1), (2, 1), (2, 3), (0, 3))]
    cols = np.stack([c[0] for c in corners])
    rows = np.stack([c[1] for c in corners])
    return np.stack([cols.min(axis=0), rows.min(axis=0), cols.max(axis=0), rows.max(axis=0)], axis=1)


def _mask_reach_px(grid: Any, dilation_m: float, feather_m: float) -> tuple[float, float]:
    """How far beyond the polygons the mask can be non-zero, in pixels (plus one for pixel centres)."""
    mx, my = _margin_px(grid, max(dilation_m, 0.0))
    radii_x, radii_y = feather_radii(grid, max(feather_m, 0.0))
    return mx + 2 * sum(radii_x) + 1.0, my + 2 * sum(radii_y) + 1.0


def masked_bounds(
    polygons: PolygonLayer,
    grid: Any,
    dilation_m: float = 0.0,
    feather_m: float = 0.0,
    *,
    only: Sequence[bool] | None = None,
) -> Window | None:
    """The window of the grid that holds every pixel the (dilated, feathered) mask touches.

    None when the selected polygons leave the whole raster untouched.
    """
    placed = _select(place_on_grid(polygons, grid), only)
    if not placed.geometries:
        return None
    reach_x, reach_y = _mask_reach_px(grid, dilation_m, feather_m)
    pixel = _pixel_bounds(placed, grid)
    col0 = max(0, math.floor(pixel[:, 0].min() - reach_x))
    row0 = max(0, math.floor(pixel[:, 1].min() - reach_y))
    col1 = min(grid.width, math.ceil(pixel[:, 2].max() + reach_x))
    row1 = min(grid.height, math.ceil(pixel[:, 3].max() + reach_y))
    if col1 <= col0 or row1 <= row0:
        return None
    return Window(col0, row0, col1 - col0, row1 - row0)


def windows_touching_mask(
    polygons: PolygonLayer,
    grid: Any,
    windows: Sequence[Window],
    dilation_m: float = 0.0,
    feather_m: float = 0.0,
    *,
    only: Sequence[bool] | None = None,
) -> list[Window]:
    """The windows of a tiling that the (dilated, feathered) mask reaches; the rest can be copied."""
    placed = _select(place_on_grid(polygons, grid), only)
    if not placed.geometries:
        return []
    reach_x, reach_y = _mask_reach_px(grid, dilation_m, feather_m)
    pixel = _pixel_bounds(placed, grid)
    touched = []
    for window in windows:
        hit = (
            (pixel[:, 0] - reach_x < window.col_off + window.width)
            & (pixel[:, 2] + reach_x > window.col_off)
            & (pixel[:, 1] - reach_y < window.row_off + window.height)
            & (pixel[:, 3] + reach_y > window.row_off)
        )
        if hit.any():
            touched.append(window)
    return touched


def mask_polygons(mask: np.ndarray, transform: Affine, crs: CRS, attributes: dict[str, Any], source: str) -> PolygonLayer:
    """A boolean mask's areas as polygons (the inverse of burning polygons into a label raster),
    their pixel staircases simplified within half a pixel; every polygon gets `attributes`."""
    from rasterio.features import shapes
    from shapely.geometry import shape

    tolerance = abs(transform.a) / 2
    geometries = [shape(geometry).simplify(tolerance)
                  for geometry, value in shapes(mask.astype(np.uint8), mask=mask, transform=transform) if value == 1]
    return PolygonLayer(geometries, [dict(attributes) for _ in geometries], CRS.from_user_input(crs), source)
