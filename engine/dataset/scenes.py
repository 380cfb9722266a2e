"""Scenes of a recipe: each entry (file, folder, glob or STAC JSON) -> pre-event rasters with their dates.

Dates are read as every other task reads them (explicit > STAC item > IMAGERY metadata > file
name); a scene whose date is unknown is refused, because the post-event date is counted from it.
"""

from __future__ import annotations

import datetime as dt
import glob
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InputError
from engine.geo.dates import acquisition_for_raster

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")


@dataclass(frozen=True)
class Scene:
    """One pre-event raster of the dataset."""

    index: int  # position in the recipe's resolved scene list
    entry: int  # which recipe `scenes` entry it came from
    path: Path
    scene_id: str  # stable, file-name based, unique in the dataset
    date: dt.date
    date_source: str
    disaster_type: str | None
    disaster: str


def _stac_assets(path: Path) -> list[tuple[Path, dict]]:
    """(raster path, item) of a STAC ItemCollection, Item or static Catalog (links followed)."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not readable STAC JSON ({exc})") from None
    kind = content.get("type") if isinstance(content, dict) else None
    if kind == "FeatureCollection":
        items = content.get("features") or []
    elif kind == "Feature":
        items = [content]
    elif kind in ("Catalog", "Collection"):
        items = []
        for link in content.get("links", []):
            if link.get("rel") in ("item", "child"):
                items.extend(item for _, item in _stac_assets((path.parent / link["href"]).resolve()))
        return [(_asset_path(path, item), item) for item in items]
    else:
        raise InputError(f"{path} is JSON but not a STAC ItemCollection, Item or Catalog")
    return [(_asset_path(path, item), item) for item in items]


def _asset_path(catalog: Path, item: dict) -> Path:
    assets = item.get("assets") or {}
    for key in ("image", "visual", "data", *assets):
        href = (assets.get(key) or {}).get("href")
        if href and Path(href.split("?")[0]).suffix.lower() in RASTER_SUFFIXES:
            path = Path(href)
            return path if path.is_absolute() else (catalog.parent / path).resolve()
    raise InputError(f"the STAC item {item.get('id')!r} in {catalog} has no GeoTIFF asset (image, visual or data)")


def _expand(entry: str) -> list[tuple[Path, dict | None]]:
    path = Path(entry)
    if any(ch in entry for ch in "*?["):
        found = sorted(Path(p) for p in glob.glob(entry, recursive=True))
        files = [(p, None) for p in found if p.suffix.lower() in RASTER_SUFFIXES]
    elif path.is_dir():
        files = [(p, None) for p in sorted(path.iterdir()) if p.suffix.lower() in RASTER_SUFFIXES]
    elif path.suffix.lower() == ".json" and path.is_file():
        files = _stac_assets(path)
    elif path.is_file():
        files = [(path, None)]
    else:
        raise InputError(f"the scene {entry} does not exist; give a raster file, a folder, a glob or a STAC JSON")
    if not files:
        raise InputError(f"the scene entry {entry} matches no raster ({', '.join(RASTER_SUFFIXES)})")
    return files


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "scene"


def resolve_scenes(recipe) -> list[Scene]:
    """Every pre-event raster of the recipe, in recipe order, each with its date."""
    scenes: list[Scene] = []
    seen: dict[str, int] = {}
    for entry_index, entry in enumerate(recipe.scenes):
        for path, item in _expand(entry.path):
            acquisition = acquisition_for_raster(path, explicit_date=entry.date, stac_item=item)
            if acquisition.date is None:
                raise InputError(
                    f"the acquisition date of the scene {path} is unknown (not in its metadata, a STAC item or its "
                    f"file name); give it in the recipe: scenes[{entry_index}].date: YYYY-MM-DD"
                )
            base = _slug(path.stem)
            digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:6]
            scene_id = base if base not in seen else f"{base}-{digest}"
            seen[scene_id] = len(scenes)
            disaster_type = entry.disaster_type or recipe.disaster_type
            scenes.append(Scene(len(scenes), entry_index, path, scene_id, acquisition.date, acquisition.source,
                                disaster_type, _slug(entry.disaster or f"{recipe.name}-{disaster_type or 'event'}")))
    return scenes
