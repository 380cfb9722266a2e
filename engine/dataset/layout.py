"""Where a sample's files go in the dataset folder, and the side files each layout needs.

`gfm4d` (default): `<split>/<id>/` with pre.tif, post.tif, label.tif (class codes, 255 nodata),
labels.geojson (lon/lat polygons with xBD-style `subtype`) and metadata.json — what torchgeo-style
readers take. `xbd`: the xView2 layout, `<split>/images/<id>_{pre,post}_disaster.png`,
`<split>/labels/<id>_{pre,post}_disaster.json` (xBD label schema: lng_lat and xy WKT with
`feature_type`, `subtype`, `uid`), `<split>/targets/<id>_{pre,post}_disaster_target.png`, so xView2
baselines train on it unchanged; the georeferenced GeoTIFFs, GeoJSON and metadata go beside them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
import shapely
from PIL import Image

from engine.geo.radiometry import stretch_for
from engine.geo.raster import open_raster, require_rgb

XBD_SENSOR = "GFM4D synthetic"


def sample_files(layout: str, spec) -> dict[str, str]:
    """Result name -> path relative to the dataset root."""
    split, sid = spec.split, spec.sample_id
    if layout == "gfm4d":
        names = {"pre": "pre.tif", "post": "post.tif", "label": "label.tif", "labels": "labels.geojson",
                 "metadata": "metadata.json"}
        return {name: f"{split}/{sid}/{file}" for name, file in names.items()}
    return {
        "pre": f"{split}/geotiffs/{sid}_pre_disaster.tif",
        "post": f"{split}/geotiffs/{sid}_post_disaster.tif",
        "label": f"{split}/geotiffs/{sid}_post_disaster_label.tif",
        "labels": f"{split}/geojson/{sid}_post_disaster.geojson",
        "metadata": f"{split}/metadata/{sid}.json",
        "pre_png": f"{split}/images/{sid}_pre_disaster.png",
        "post_png": f"{split}/images/{sid}_post_disaster.png",
        "pre_json": f"{split}/labels/{sid}_pre_disaster.json",
        "post_json": f"{split}/labels/{sid}_post_disaster.json",
        "pre_target": f"{split}/targets/{sid}_pre_disaster_target.png",
        "post_target": f"{split}/targets/{sid}_post_disaster_target.png",
    }


def _json(path: Path, content) -> Path:
    path.write_text(json.dumps(content, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


def _geojson(features: list[dict]) -> dict:
    return {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "id": f["uid"], "geometry": json.loads(shapely.to_geojson(f["lonlat"])),
             "properties": {k: f[k] for k in ("uid", "subtype", "class_code", "feature_type")}}
            for f in features
        ],
    }


def _xbd_labels(features: list[dict], metadata: dict, post: bool, image_name: str) -> dict:
    def entry(f, which):
        properties = {"feature_type": f["feature_type"], "uid": f["uid"]}
        if post:
            properties["subtype"] = f["subtype"]
        return {"properties": properties, "wkt": shapely.to_wkt(f[which], rounding_precision=12, trim=True)}

    size = metadata["window"]["width"]
    return {
        "features": {"lng_lat": [entry(f, "lonlat") for f in features], "xy": [entry(f, "xy") for f in features]},
        "metadata": {
            "sensor": XBD_SENSOR if post else metadata["source_scene"], "provider_asset_type": "synthetic" if post else "source",
            "gsd": metadata["gsd_m"], "capture_date": f"{metadata['post_date' if post else 'pre_date']}T00:00:00.000Z",
            "off_nadir_angle": None, "pan_resolution": None, "sun_azimuth": None, "sun_elevation": None,
            "target_azimuth": None, "disaster": metadata["disaster"], "disaster_type": metadata["disaster_type"],
            "catalog_id": metadata["scene_id"], "original_width": size, "original_height": size, "width": size,
            "height": size, "id": metadata["id"], "img_name": image_name,
        },
    }


def _rgb_pngs(pre: Path, post: Path, pre_png: Path, post_png: Path) -> None:
    """8-bit RGB PNGs of both chips with one stretch (the pre chip's), so they compare pixel for pixel."""
    with open_raster(pre) as source:
        rgb = require_rgb(source.info)
        stretch = stretch_for(source.dataset, rgb)
    for tif, png in ((pre, pre_png), (post, post_png)):
        with rasterio.open(tif) as src:
            unit = stretch.to_unit(src.read(list(rgb)))
        pixels = np.round(unit * 255).astype(np.uint8)
        Image.fromarray(np.moveaxis(pixels, 0, -1)).save(png, format="PNG")


def _targets(label: Path, pre_target: Path, post_target: Path) -> None:
    """xView2 target masks: pre = building (1) or not; post = the class code; nodata -> 0."""
    with rasterio.open(label) as src:
        codes = src.read(1)
    known = codes != src.nodata
    Image.fromarray(np.where(known & (codes > 0), 1, 0).astype(np.uint8)).save(pre_target, format="PNG")
    Image.fromarray(np.where(known, codes, 0).astype(np.uint8)).save(post_target, format="PNG")


def write_sidecars(layout: str, spec, scratch: Path, metadata: dict, features: list[dict], grid, pre, post, label) -> dict:
    """Write the layout's files beside the chips in the scratch folder; name -> scratch path."""
    made = {"labels": _json(scratch / "labels.geojson", _geojson(features)),
            "metadata": _json(scratch / "metadata.json", metadata)}
    if layout == "xbd":
        files = sample_files(layout, spec)
        made["pre_png"], made["post_png"] = scratch / "pre.png", scratch / "post.png"
        _rgb_pngs(pre, post, made["pre_png"], made["post_png"])
        for which, post_labels in (("pre", False), ("post", True)):
            image_name = Path(files[f"{which}_png"]).name
            made[f"{which}_json"] = _json(scratch / f"{which}.json", _xbd_labels(features, metadata, post_labels, image_name))
        made["pre_target"], made["post_target"] = scratch / "pre_target.png", scratch / "post_target.png"
        _targets(label, made["pre_target"], made["post_target"])
    return made
