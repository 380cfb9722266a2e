"""STAC items as training sources: an item's RGB assets, with its date and cloud cover.

A `visual` asset (true colour, as Sentinel-2 L2A and NAIP items have) is read as one RGB raster;
otherwise the assets whose band is red, green and blue (`eo:bands` common names, or STAC 1.1's
`bands` with `eo:common_name`) are read as one file per colour. Asset hrefs are resolved next to
the item file, as `stac-asset download` and pystac write them; remote hrefs are refused: training
reads local files only, so download the assets first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import unquote, urlparse

from engine.errors import InputError
from engine.geo.dates import acquisition_from_stac

COLOURS = ("red", "green", "blue")


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read {path} as JSON: {error}") from None


def _is_item(document: Any) -> bool:
    return isinstance(document, Mapping) and document.get("type") == "Feature" and "stac_version" in document


def _items(document: Any) -> list[Mapping]:
    if _is_item(document):
        return [document]
    if isinstance(document, Mapping) and document.get("type") == "FeatureCollection":
        features = document.get("features") or []
        if features and all(_is_item(feature) for feature in features):
            return list(features)
    return []


def is_stac_file(path: Path) -> bool:
    """Whether a .json file is a STAC item or an item collection (and not a sources file)."""
    return bool(_items(_read(path)))


def stac_sources(path: Path) -> list[dict]:
    """TrainingSource fields (paths, date, cloud_cover) of every item in a STAC item or item-collection file."""
    items = _items(_read(path))
    if not items:
        raise InputError(f"{path} is not a STAC item or item collection (a GeoJSON Feature with 'stac_version')")
    return [_item_source(item, path) for item in items]


def _item_source(item: Mapping, path: Path) -> dict:
    where = f"STAC item {item.get('id', '?')!r} in {path}"
    assets = item.get("assets") or {}
    if not isinstance(assets, Mapping):
        raise InputError(f"{where} has no 'assets' object")
    visual = assets.get("visual") or next((a for a in assets.values() if "visual" in (a.get("roles") or [])), None)
    if visual is not None:
        paths = (_local(visual, path, where),)
    else:
        by_colour = {}
        for asset in assets.values():
            colour = _colour(asset)
            if colour in COLOURS:
                by_colour.setdefault(colour, asset)
        if len(by_colour) < 3:
            raise InputError(
                f"{where} has no 'visual' asset and no red, green and blue band assets (found "
                f"{sorted(by_colour) or 'none'} among {sorted(assets)}); give the RGB files as 'band_files' instead"
            )
        paths = tuple(_local(by_colour[colour], path, where) for colour in COLOURS)
    acquisition = acquisition_from_stac(item)
    return {"paths": paths, "date": acquisition.date.isoformat() if acquisition.date else None,
            "cloud_cover": acquisition.cloud_cover}


def _colour(asset: Mapping) -> str | None:
    """The common name of a one-band asset (STAC 1.0 eo:bands, or 1.1 bands)."""
    bands = asset.get("eo:bands") or asset.get("bands") or []
    if len(bands) != 1 or not isinstance(bands[0], Mapping):
        return None
    name = bands[0].get("common_name") or bands[0].get("eo:common_name")
    return str(name).lower() if name else None


def _local(asset: Mapping, item_path: Path, where: str) -> Path:
    href = str(asset.get("href") or "")
    parsed = urlparse(href)
    if parsed.scheme not in ("", "file"):
        raise InputError(
            f"{where}: the asset {href} is not a local file; download the item's assets first "
            "(for instance with stac-asset) and train on the downloaded item"
        )
    local = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(href)
    resolved = (item_path.parent / local).resolve()
    if not resolved.is_file():
        raise InputError(f"{where}: its asset {resolved} does not exist")
    return resolved
