"""Make one sample: the pre chip, the painted post chip, its labels and its metadata record.

Everything is made in a scratch folder inside the dataset and moved into place file by file
(os.replace); only then does the caller record the sample in the manifest. A crash leaves at most
a scratch folder (removed on the next run) or complete files of a sample that is not yet in the
manifest and is made again, to the same bytes, on the next run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio.crs import CRS

from engine import __version__
from engine.geo.damage_classes import classify_polygons
from engine.geo.grid import OutputGrid
from engine.geo.metadata import centre_lonlat, gsd_metres
from engine.geo.raster import open_raster
from engine.geo.writer import GeoTIFFWriter
from engine.pipelines.inpaint import LABEL_NODATA, InpaintOutputs, InpaintRequest, inpaint

from . import layout
from .plan import SampleSpec
from .scenes import Scene

WGS84 = CRS.from_epsg(4326)
SCRATCH = ".scratch"


def chip_grid(scene_grid: OutputGrid, spec: SampleSpec) -> OutputGrid:
    return OutputGrid(scene_grid.crs, scene_grid.window_transform(spec.window), spec.size, spec.size)


def _write_pre_chip(scene: Scene, spec: SampleSpec, path: Path) -> OutputGrid:
    """The scene's pixels under the chip, every band, on the chip's grid (a window: no resampling)."""
    with open_raster(scene.path) as source:
        info = source.info
        scene_grid = OutputGrid(info.crs, info.transform, info.width, info.height)
        grid = chip_grid(scene_grid, spec)
        bands = list(info.data_bands)
        has_mask = info.mask_kind in ("alpha", "internal", "sidecar")
        window = spec.window
        tags = {"GFM4D_VERSION": __version__, "GFM4D_SYNTHETIC": "no: a window of the source scene",
                "GFM4D_SOURCE": scene.path.name, "GFM4D_DATE": scene.date.isoformat(),
                "GFM4D_WINDOW": f"{spec.col},{spec.row},{spec.size},{spec.size}"}
        with GeoTIFFWriter(path, grid, count=len(bands), dtype=info.dtypes[bands[0] - 1], nodata=info.nodata,
                           with_mask=has_mask, colorinterp=[source.dataset.colorinterp[b - 1] for b in bands],
                           band_descriptions=[info.descriptions[b - 1] or "" for b in bands], tags=tags) as out:
            local = type(window)(0, 0, spec.size, spec.size)
            out.write(source.dataset.read(bands, window=window), local)
            if has_mask:
                out.write_mask(source.valid_mask(window), local)
    return grid


def _label_features(damage, classes, grid: OutputGrid) -> list[dict]:
    """The damage polygons on the chip, cut to it, as lon/lat and pixel geometries with their class."""
    left, bottom, right, top = grid.bounds
    footprint = shapely.box(left, bottom, right, top)
    to_pixel = ~grid.transform
    from engine.geo.vectors import PolygonLayer

    features = []
    for index, (geometry, attrs) in enumerate(zip(damage.geometries, damage.attributes)):
        code = int(classes.codes[index])
        if geometry is None or code == 0 or not geometry.intersects(footprint):
            continue
        clipped = shapely.make_valid(geometry).intersection(footprint)
        parts = [p for p in shapely.get_parts(clipped) if p.geom_type == "Polygon" and p.area > 0]
        for k, part in enumerate(parts):
            lonlat = PolygonLayer([part], [{}], grid.crs, "").to_crs(WGS84).geometries[0]
            pixel = shapely.transform(part, lambda xy: np.column_stack(to_pixel @ (xy[:, 0], xy[:, 1])))
            features.append({
                "uid": f"{attrs['uid']}" + (f"-{k}" if len(parts) > 1 else ""),
                "subtype": classes.classes[code].name, "class_code": code,
                "feature_type": attrs.get("feature_type", "building"),
                # rounded vertex by vertex (not snapped), so both copies keep matching vertices (xBD's xy <-> lng_lat)
                "lonlat": shapely.transform(lonlat, lambda c: np.round(c, 9)),
                "xy": shapely.transform(pixel, lambda c: np.round(c, 6)),
            })
    return features


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_sample(model, recipe, spec: SampleSpec, scene: Scene, damage, root: Path, cancel=None) -> dict:
    """Make a sample, move its files into the dataset at `root`; its manifest record."""
    scratch = root / SCRATCH / f"{spec.sample_id}-{uuid.uuid4().hex[:8]}"
    scratch.mkdir(parents=True)
    try:
        made = _make_files(model, recipe, spec, scene, damage, scratch, cancel)
        targets = layout.sample_files(recipe.layout, spec)
        record = {"id": spec.sample_id, "number": spec.number, "split": spec.split, "files": {}, "sha256": {}}
        for name, relative in targets.items():
            source, destination = made[name], root / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            record["sha256"][name] = _sha256(source)
            os.replace(source, destination)
            record["files"][name] = relative
        record["class_pixels"] = made["class_pixels"]
        return record
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _make_files(model, recipe, spec: SampleSpec, scene: Scene, damage, scratch: Path, cancel) -> dict:
    pre, post, label = scratch / "pre.tif", scratch / "post.tif", scratch / "label.tif"
    grid = _write_pre_chip(scene, spec, pre)
    post_date = dt.date.fromisoformat(spec.post_date)
    request = InpaintRequest(
        image=pre, polygons=damage, class_field="subtype", class_prompts=dict(recipe.class_prompts) or None,
        disaster_type=spec.disaster_type, date=post_date, strength=recipe.strength, dilation_m=recipe.dilation_m,
        steps=recipe.steps, guidance_scale=recipe.guidance_scale, seed=spec.seed, scheduler=recipe.scheduler,
        cloud_cover=recipe.cloud_cover,
    )
    result = inpaint(model, request, InpaintOutputs(post, label), cancel=cancel)
    classes = classify_polygons(damage, "subtype", disaster_type=spec.disaster_type,
                                prompts=dict(recipe.class_prompts) or None)
    features = _label_features(damage, classes, grid)
    with rasterio.open(label) as labels_source:
        labels = labels_source.read(1)
    codes, counts = np.unique(labels, return_counts=True)
    names = {c.code: c.name for c in classes.classes.values()} | {0: "background", LABEL_NODATA: "nodata"}
    class_pixels = {names.get(int(c), f"class-{int(c)}"): int(n) for c, n in zip(codes, counts)}
    centre_col, centre_row = spec.size / 2, spec.size / 2
    x, y = grid.transform @ (centre_col, centre_row)
    lon, lat = centre_lonlat(grid.crs, x, y)
    metadata = {
        "id": spec.sample_id, "synthetic": True, "what_is_synthetic": "the post chip inside the painted classes' mask",
        "gfm4d_version": __version__, "model": recipe.model, "prompts": result.tags.get("GFM4D_PROMPTS", ""),
        "method": result.tags.get("GFM4D_METHOD", ""), "seed": spec.seed, "steps": recipe.steps,
        "guidance_scale": request.guidance(model), "scheduler": recipe.scheduler, "strength": recipe.strength,
        "cloud_cover": recipe.cloud_cover, "disaster_type": spec.disaster_type, "disaster": scene.disaster,
        "source_scene": scene.path.name, "scene_id": scene.scene_id, "pre_date": scene.date.isoformat(),
        "pre_date_source": scene.date_source, "post_date": spec.post_date, "split": spec.split,
        "window": {"col": spec.col, "row": spec.row, "width": spec.size, "height": spec.size},
        "crs": grid.crs.to_string(), "transform": list(grid.transform)[:6], "bounds": list(grid.bounds),
        "gsd_m": round(float(gsd_metres(grid.crs, grid.transform, centre_col, centre_row)), 6),
        "lon": round(float(lon), 8), "lat": round(float(lat), 8), "class_pixels": class_pixels,
        "label_classes": {str(c.code): c.name for c in sorted(classes.classes.values(), key=lambda c: c.code)},
        "label_nodata": LABEL_NODATA, "polygons": len(features),
    }
    made = {"pre": pre, "post": post, "label": label, "class_pixels": class_pixels}
    made.update(layout.write_sidecars(recipe.layout, spec, scratch, metadata, features, grid, pre, post, label))
    return made
