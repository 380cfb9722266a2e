"""Damage sources -> one polygon layer per scene, every polygon with an xBD-style `subtype` class.

All sources end in the same shape: a PolygonLayer in the scene's CRS whose attributes are
`subtype` (a class of engine.geo.damage_classes), `feature_type` (building, road, area) and `uid`,
so the inpaint pipeline classifies them with `class_field="subtype"` and the label codes are the
same in every scene. Random choices (footprint damage, procedural shapes) draw from a generator
seeded by the recipe seed, the scene and the source, so they are the same wherever they are made.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyogrio
import shapely
from rasterio.crs import CRS

from engine.errors import InputError
from engine.geo.damage_classes import classify_polygons, guess_class_field
from engine.geo.masks import dilate, metres_per_unit
from engine.geo.vectors import PolygonLayer, read_polygons
from engine.geo.xbd import read_xbd_labels

from .recipe import DAMAGE_CLASSES, FootprintSource, PolygonSource, ProceduralSource, SpaceNet8Source, XbdSource

_BLOB_VERTICES = 48
_BLOB_HARMONICS = 4


def source_rng(seed: int, scene_index: int, source_index: int) -> np.random.Generator:
    return np.random.default_rng([seed, scene_index, source_index, 0x6D61])


def _layer(geometries, subtypes, feature_types, crs, source: str) -> PolygonLayer:
    attributes = [
        {"subtype": s, "feature_type": f, "uid": f"{Path(source).stem}-{i}"}
        for i, (s, f) in enumerate(zip(subtypes, feature_types))
    ]
    return PolygonLayer(list(geometries), attributes, CRS.from_user_input(crs), source, [a["uid"] for a in attributes])


def _from_polygons(source: PolygonSource) -> PolygonLayer:
    layer = read_polygons(source.path)
    field = source.class_field
    if source.class_name is not None:
        names = [source.class_name] * len(layer)
    else:
        field = field or guess_class_field(layer.attributes)
        if field is None:
            raise InputError(
                f"{source.path} has no class attribute ({', '.join(('subtype', 'dmg', 'notation'))}); "
                "give class_field or one class_name for all its polygons"
            )
        classes = classify_polygons(layer, field)
        keep = [i for i, c in enumerate(classes.codes) if int(c)]  # code 0: no change, nothing to label
        layer = PolygonLayer([layer.geometries[i] for i in keep], [layer.attributes[i] for i in keep], layer.crs,
                             layer.source)
        names = [classes.classes[int(classes.codes[i])].name for i in keep]
        unknown = sorted({n for n in names if n not in DAMAGE_CLASSES})
        if unknown:
            raise InputError(
                f"the class field {field!r} of {source.path} has values {unknown} that are not damage classes "
                f"({', '.join(DAMAGE_CLASSES)}); use another class_field or one class_name"
            )
    return _layer(layer.geometries, names, [source.feature_type] * len(layer), layer.crs, str(source.path))


def _from_xbd(source: XbdSource) -> PolygonLayer:
    labels = read_xbd_labels(source.path)
    if not labels.is_post_disaster:
        raise InputError(f"{source.path} is a pre-disaster xBD label file (no subtype); give the *_post_disaster.json")
    layer = labels.polygons
    names = [a.get("subtype") or "un-classified" for a in layer.attributes]
    return _layer(layer.geometries, names, ["building"] * len(layer), layer.crs, str(source.path))


def _flooded(value) -> bool:
    return str(value).strip().lower() in ("yes", "true", "1", "flooded")


def _from_spacenet8(source: SpaceNet8Source) -> PolygonLayer:
    """SpaceNet 8 labels: flooded buildings and roads -> flooded-area, other buildings -> no-damage."""
    try:
        meta, _, wkb, field_data = pyogrio.raw.read(str(source.path), return_fids=True)
    except Exception as exc:
        raise InputError(f"could not read SpaceNet 8 labels from {source.path}: {exc}") from None
    fields = list(meta["fields"])
    if "flooded" not in fields:
        raise InputError(f"{source.path} has no `flooded` attribute; it is not a SpaceNet 8 label file")
    flooded = field_data[fields.index("flooded")]
    crs = CRS.from_user_input(meta["crs"] or "EPSG:4326")
    geometries, names, kinds = [], [], []
    lines = []
    for geometry, is_flooded in zip((shapely.from_wkb(g) for g in wkb), flooded):
        if geometry is None or geometry.is_empty:
            continue
        wet = _flooded(is_flooded)
        if geometry.geom_type in ("LineString", "MultiLineString"):
            if wet:
                lines.append(geometry)
        else:
            geometries.append(geometry)
            names.append("flooded-area" if wet else "no-damage")
            kinds.append("building")
    if lines:
        roads = _layer(lines, ["flooded-area"] * len(lines), ["road"] * len(lines), crs, str(source.path))
        # A line has no area: buffering by half the road width makes it the road surface.
        widened = dilate(roads, source.road_width_m / 2)
        geometries += widened.geometries
        names += ["flooded-area"] * len(lines)
        kinds += ["road"] * len(lines)
    return _layer(geometries, names, kinds, crs, str(source.path))


def _from_footprints(source: FootprintSource, disaster_type: str | None, rng: np.random.Generator) -> PolygonLayer:
    layer = read_polygons(source.path)
    rule = source.sampling.get(disaster_type) if disaster_type else None
    rule = rule or source.sampling.get("*")
    if rule is None:
        raise InputError(
            f"the footprint sampling of {source.path} has no rule for the disaster type {disaster_type!r}; "
            f"add one, or a rule for every type ({{grade: fraction}})"
        )
    draws = rng.random(len(layer))
    edges = np.cumsum(list(rule.values()))
    grades = list(rule)
    names = [grades[int(np.searchsorted(edges, u, side="right"))] if u < edges[-1] else "no-damage" for u in draws]
    return _layer(layer.geometries, names, ["building"] * len(layer), layer.crs, str(source.path))


def _blob(cx: float, cy: float, radius_m: float, scale: tuple[float, float], rng: np.random.Generator):
    """A smooth random star-shaped polygon around (cx, cy): radius varied by a few harmonics."""
    theta = np.linspace(0, 2 * math.pi, _BLOB_VERTICES, endpoint=False)
    radius = np.ones_like(theta)
    for k in range(2, 2 + _BLOB_HARMONICS):
        radius += rng.uniform(0, 0.35 / (k - 1)) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    radius = np.clip(radius, 0.3, None) * radius_m
    xs = cx + radius * np.cos(theta) / scale[0]
    ys = cy + radius * np.sin(theta) / scale[1]
    return shapely.Polygon(np.column_stack([xs, ys]))


def _from_procedural(source: ProceduralSource, grid, rng: np.random.Generator) -> PolygonLayer:
    left, bottom, right, top = grid.bounds
    near = None
    if source.near is not None:
        guide = _read_any_geometry(source.near).to_crs(grid.crs)
        near = shapely.union_all([g for g in guide.geometries if g is not None])
        near = near.intersection(shapely.box(left, bottom, right, top)).boundary if near.geom_type.endswith("Polygon") \
            else near.intersection(shapely.box(left, bottom, right, top))
        if near.is_empty:
            raise InputError(f"none of {source.near} lies on the scene; give lines or polygons over it")
    blobs = []
    for _ in range(source.count):
        if near is not None:
            point = near.interpolate(rng.uniform(0, near.length))
            cx, cy = point.x, point.y
        else:
            cx, cy = rng.uniform(left, right), rng.uniform(bottom, top)
        scale = tuple(float(v[0]) for v in metres_per_unit(grid.crs, cx, cy))
        blobs.append(_blob(cx, cy, rng.uniform(*source.radius_m), scale, rng))
    return _layer(blobs, [source.class_name] * len(blobs), ["area"] * len(blobs), grid.crs, f"procedural-{source.class_name}")


def _read_any_geometry(path: Path) -> PolygonLayer:
    try:
        meta, _, wkb, _ = pyogrio.raw.read(str(path), return_fids=True)
    except Exception as exc:
        raise InputError(f"could not read {path}: {exc}") from None
    return PolygonLayer([shapely.from_wkb(g) for g in wkb], [{} for _ in wkb], CRS.from_user_input(meta["crs"]), str(path))


def scene_damage(recipe, scene, grid) -> PolygonLayer:
    """Every damage polygon of a scene (its own sources, then the recipe's), in the scene's CRS."""
    entry = recipe.scenes[scene.entry]
    sources = list(entry.damage) + list(recipe.damage)
    if not sources:
        raise InputError(f"the scene {scene.path} has no damage source; add `damage:` to it or to the recipe")
    geometries, attributes, ids = [], [], []
    for index, source in enumerate(sources):
        rng = source_rng(recipe.seed, scene.index, index)
        if isinstance(source, PolygonSource):
            layer = _from_polygons(source)
        elif isinstance(source, XbdSource):
            layer = _from_xbd(source)
        elif isinstance(source, SpaceNet8Source):
            layer = _from_spacenet8(source)
        elif isinstance(source, FootprintSource):
            layer = _from_footprints(source, scene.disaster_type, rng)
        else:
            layer = _from_procedural(source, grid, rng)
        moved = layer.to_crs(grid.crs)
        geometries += moved.geometries
        attributes += [{**a, "source": index} for a in moved.attributes]
        ids += moved.feature_ids
    return PolygonLayer(geometries, attributes, CRS.from_user_input(grid.crs), f"damage of {scene.scene_id}", ids)
