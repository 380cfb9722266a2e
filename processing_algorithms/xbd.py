"""xBD / xView2 label files read with json alone (no shapely, no GDAL): buildings and damage grades.

A label file lists every building twice, under `features.lng_lat` (WKT in EPSG:4326) and
`features.xy` (pixel coordinates of the PNG); the map copy is the one a GIS layer wants. Post-
disaster files grade each building in `subtype`; pre-disaster files have no grade. Codes follow
the engine's label raster: no-damage 1, minor-damage 2, major-damage 3, destroyed 4,
un-classified 5 (None for ungraded buildings).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

DAMAGE_CODES = {"no-damage": 1, "minor-damage": 2, "major-damage": 3, "destroyed": 4, "un-classified": 5}
SCENE_FIELDS = ("disaster", "disaster_type", "capture_date", "img_name")


class XbdFormatError(ValueError):
    """The file is not an xBD label file; the message says what is wrong with it."""


@dataclass(frozen=True)
class Building:
    uid: str | None
    feature_type: str | None
    subtype: str | None
    wkt: str

    @property
    def damage_code(self) -> int | None:
        return DAMAGE_CODES.get(self.subtype) if self.subtype else None


@dataclass(frozen=True)
class XbdLabels:
    metadata: dict
    buildings: list

    def scene(self) -> dict:
        """The scene attributes every building gets (disaster, type, capture date, image name)."""
        return {key: self.metadata.get(key) for key in SCENE_FIELDS}


def read_xbd_labels(path: str) -> XbdLabels:
    """The buildings of an xBD label JSON in map coordinates (EPSG:4326)."""
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, ValueError) as exc:
        raise XbdFormatError(f"{path} is not a readable JSON file ({exc}); choose an xBD label file (*_disaster.json).") from None
    features = content.get("features") if isinstance(content, dict) else None
    entries = features.get("lng_lat") if isinstance(features, dict) else None
    if not isinstance(entries, list):
        raise XbdFormatError(
            f"{path} is not an xBD label file: it has no features.lng_lat list. Choose a *_disaster.json label "
            "file of xBD / xView2 (GeoJSON files can be opened as layers directly)."
        )
    buildings = []
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("wkt"), str):
            raise XbdFormatError(f"{path}: features.lng_lat[{position}] has no 'wkt' text; the file is damaged.")
        properties = entry.get("properties") or {}
        buildings.append(Building(properties.get("uid"), properties.get("feature_type"), properties.get("subtype"), entry["wkt"]))
    return XbdLabels(dict(content.get("metadata") or {}), buildings)
