"""The dataset's catalogue: a STAC catalog of the samples (label extension), a README card, a preview.

All three are made from the manifest and the samples' metadata records, so they are rewritten
identically on every run and always describe exactly the samples that are finished.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image

from engine import __version__

from .plan import SPLITS

PREVIEW_SAMPLES = 12
PREVIEW_TILE = 128
# Label code -> colour of the preview (xBD damage scale, then area classes).
CLASS_COLOURS = {
    1: (46, 204, 64), 2: (255, 220, 0), 3: (255, 133, 27), 4: (255, 65, 54), 5: (170, 170, 170),
    6: (177, 13, 201), 7: (127, 219, 255), 8: (0, 116, 217), 9: (133, 20, 75),
}


def _atomic_text(path: Path, text: str) -> Path:
    scratch = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    scratch.write_text(text, encoding="utf-8")
    os.replace(scratch, path)
    return path


def _records_in_order(plan, manifest) -> list[tuple[object, dict]]:
    return [(spec, manifest.records[spec.sample_id]) for spec in plan.samples if spec.sample_id in manifest]


def _metadata(root: Path, record: dict) -> dict:
    return json.loads((root / record["files"]["metadata"]).read_text(encoding="utf-8"))


def _write_stac(recipe, root: Path, done: list[tuple[object, dict]]) -> Path:
    import pystac
    from pystac.extensions.label import LabelClasses, LabelExtension, LabelType
    from pystac.extensions.projection import ProjectionExtension
    from shapely.geometry import box, mapping

    catalog = pystac.Catalog(id=recipe.name, description=recipe.description or f"GFM4D synthetic dataset {recipe.name}")
    collections = {}
    for spec, record in done:
        meta = _metadata(root, record)
        if spec.split not in collections:
            collections[spec.split] = pystac.Collection(
                id=f"{recipe.name}-{spec.split}", description=f"{spec.split} split of {recipe.name}",
                extent=pystac.Extent(pystac.SpatialExtent([[-180, -90, 180, 90]]), pystac.TemporalExtent([[None, None]])),
                license="other",
            )
        from rasterio.warp import transform_bounds

        left, bottom, right, top = meta["bounds"]
        lonlat = transform_bounds(meta["crs"], "EPSG:4326", left, bottom, right, top, densify_pts=21)
        import datetime as dt

        when = dt.datetime.fromisoformat(meta["post_date"]).replace(tzinfo=dt.timezone.utc)
        item = pystac.Item(
            id=record["id"], geometry=mapping(box(*lonlat)), bbox=list(lonlat), datetime=when,
            properties={"gfm4d:synthetic": True, "gfm4d:model": meta["model"], "gfm4d:seed": meta["seed"],
                        "gfm4d:steps": meta["steps"], "gfm4d:prompts": meta["prompts"], "gfm4d:source_scene": meta["source_scene"],
                        "gfm4d:pre_date": meta["pre_date"], "gfm4d:split": spec.split, "gfm4d:version": meta["gfm4d_version"],
                        "gsd": meta["gsd_m"]},
        )
        classes = [name for code, name in sorted(meta["label_classes"].items(), key=lambda kv: int(kv[0]))]
        label = LabelExtension.ext(item, add_if_missing=True)
        label.apply(label_description="damage class per pixel (codes in gfm4d:label_codes, 255 = nodata) and per polygon (subtype)",
                    label_type=LabelType.RASTER, label_properties=None,
                    label_classes=[LabelClasses.create(classes=classes, name=None)],
                    label_tasks=["segmentation", "classification"], label_methods=["automated"])
        item.properties["gfm4d:label_codes"] = meta["label_classes"]
        proj = ProjectionExtension.ext(item, add_if_missing=True)
        proj.apply(code=meta["crs"], shape=[meta["window"]["height"], meta["window"]["width"]], transform=meta["transform"])
        roles = {"pre": ["data"], "post": ["data"], "label": ["labels", "labels-raster"], "labels": ["labels", "labels-vector"],
                 "metadata": ["metadata"]}
        for name, relative in record["files"].items():
            suffix = Path(relative).suffix
            media = {".tif": pystac.MediaType.COG, ".png": pystac.MediaType.PNG, ".geojson": pystac.MediaType.GEOJSON,
                     ".json": pystac.MediaType.JSON}[suffix]
            item.add_asset(name, pystac.Asset(href=str(root / relative), media_type=media, roles=roles.get(name, ["data"])))
        collections[spec.split].add_item(item)
    for split in SPLITS:
        if split in collections:
            collection = collections[split]
            collection.extent = pystac.Extent.from_items(list(collection.get_items()))
            catalog.add_child(collection)
    catalog.normalize_hrefs(str(root / "stac"))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return root / "stac" / "catalog.json"


def _rgb8(path: Path, stretch_from: Path) -> np.ndarray:
    from engine.geo.radiometry import stretch_for
    from engine.geo.raster import open_raster, require_rgb

    with open_raster(stretch_from) as source:
        rgb = require_rgb(source.info)
        stretch = stretch_for(source.dataset, rgb)
    with rasterio.open(path) as src:
        return np.moveaxis(np.round(stretch.to_unit(src.read(list(rgb))) * 255).astype(np.uint8), 0, -1)


def _label_rgb(path: Path, base: np.ndarray) -> np.ndarray:
    with rasterio.open(path) as src:
        codes = src.read(1)
    out = (base.astype(np.float32) * 0.35).astype(np.uint8)
    for code, colour in CLASS_COLOURS.items():
        out[codes == code] = colour
    out[codes == 255] = 0
    return out


def write_preview(root: Path, done: list[tuple[object, dict]], path: Path) -> Path | None:
    """A mosaic PNG: a row per sample (up to PREVIEW_SAMPLES, spread over the dataset): pre | post | labels."""
    if not done:
        return None
    picks = [done[int(i)] for i in np.unique(np.linspace(0, len(done) - 1, min(PREVIEW_SAMPLES, len(done))).round())]
    tile, gap, columns = PREVIEW_TILE, 4, 2
    rows = -(-len(picks) // columns)
    cell_w = 3 * tile + 2 * gap
    canvas = Image.new("RGB", (columns * cell_w + (columns + 1) * 3 * gap, rows * tile + (rows + 1) * 3 * gap), (255, 255, 255))
    for k, (spec, record) in enumerate(picks):
        files = {name: root / rel for name, rel in record["files"].items()}
        pre = _rgb8(files["pre"], files["pre"])
        post = _rgb8(files["post"], files["pre"])
        panels = [pre, post, _label_rgb(files["label"], post)]
        x0 = (k % columns) * (cell_w + 3 * gap) + 3 * gap
        y0 = (k // columns) * (tile + 3 * gap) + 3 * gap
        for p, panel in enumerate(panels):
            image = Image.fromarray(panel).resize((tile, tile), Image.Resampling.NEAREST)
            canvas.paste(image, (x0 + p * (tile + gap), y0))
    scratch = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    canvas.save(scratch, format="PNG")
    os.replace(scratch, path)
    return path


def _counts(root: Path, done) -> tuple[dict, dict, dict]:
    samples = {s: 0 for s in SPLITS}
    pixels: dict[str, dict[str, int]] = {}
    with_class: dict[str, dict[str, int]] = {}
    for spec, record in done:
        samples[spec.split] += 1
        for name, count in record.get("class_pixels", {}).items():
            pixels.setdefault(name, {s: 0 for s in SPLITS})[spec.split] += count
            if name not in ("background", "nodata"):
                with_class.setdefault(name, {s: 0 for s in SPLITS})[spec.split] += 1
    return samples, pixels, with_class


def _card(recipe, plan, done, root: Path, preview: Path | None) -> str:
    import yaml

    samples, pixels, with_class = _counts(root, done)
    header = "| class | " + " | ".join(SPLITS) + " |\n|---|" + "---:|" * len(SPLITS) + "\n"
    sample_rows = "".join(f"| {name} | " + " | ".join(str(v[s]) for s in SPLITS) + " |\n" for name, v in sorted(with_class.items()))
    pixel_rows = "".join(f"| {name} | " + " | ".join(str(v[s]) for s in SPLITS) + " |\n" for name, v in sorted(pixels.items()))
    scenes = "".join(
        f"| {p.scene.scene_id} | {p.scene.path.name} | {p.scene.date} ({p.scene.date_source}) | {p.chips_total} | "
        f"{p.chips_with_damage} | {p.chips_dropped_at_split_borders} | {p.chips_chosen} |\n"
        for p in plan.scene_plans
    )
    recipe_text = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    layout = ("`<split>/<id>/` with pre.tif, post.tif, label.tif, labels.geojson, metadata.json" if recipe.layout == "gfm4d"
              else "xView2/xBD: `<split>/images/*_{pre,post}_disaster.png`, `<split>/labels/*_disaster.json`, "
                   "`<split>/targets/*_target.png`; GeoTIFFs in `geotiffs/`, GeoJSON in `geojson/`, records in `metadata/`")
    return f"""# {recipe.name}

{recipe.description or 'A synthetic disaster dataset made with GFM4D.'}

**Synthetic data.** Every post-event chip is an image generated by a diffusion model ({recipe.model}) inside the
damage mask; outside it, its pixels are the pre-event scene's. The labels are the masks that were painted, so they
are exact for the synthetic images but say nothing about any real event.

{f'![preview]({preview.name})' if preview else ''}

Each preview row: pre-event chip | synthetic post-event chip | label classes over the post chip.

## Contents

{sum(samples.values())} of {len(plan.samples)} planned samples are finished (split by {recipe.split.by}):
{', '.join(f'{s} {samples[s]}' for s in SPLITS)}. Layout: {layout}. A STAC catalog (label extension) is in
`stac/catalog.json`; `manifest.jsonl` lists every finished sample with the SHA-256 of its files.

Samples containing each class:

{header}{sample_rows}
Pixels per class:

{header}{pixel_rows}
Label raster: uint8 class codes (0 background, 1 no-damage, 2 minor-damage, 3 major-damage, 4 destroyed,
5 un-classified, 6 affected, 7 flood-trace, 8 flooded-area, 9 burnt-area), 255 = nodata.

## Scenes

| scene | file | date | chips | with damage | dropped at split borders | used |
|---|---|---|---:|---:|---:|---:|
{scenes}
## Licence

{recipe.license}

The synthetic images derive from the source scenes and labels above; their licences apply to this dataset too.

## Recipe

Made with GFM4D {__version__}; the same recipe gives the same bytes.

```yaml
{recipe_text}```
"""


def write_catalog_and_card(recipe, root: Path, plan, manifest) -> dict[str, Path]:
    done = _records_in_order(plan, manifest)
    outputs = {}
    if done:
        outputs["stac"] = _write_stac(recipe, root, done)
    preview = write_preview(root, done, root / "preview.png")
    if preview is not None:
        outputs["preview"] = preview
    outputs["card"] = _atomic_text(root / "README.md", _card(recipe, plan, done, root, preview))
    return outputs
