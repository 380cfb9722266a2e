"""Training sources: which rasters to learn from, how to read RGB from them, what they show.

A source is one multi-band raster, one single-band file per colour (Landsat's B4 B3 B2), or the
RGB assets of a STAC item, plus what a caption can say about it (land cover, country, polygons
with classes) and its licence for the model card. Sources come from a YAML/JSON file (relative
paths are relative to that file), STAC item files, or straight from raster paths and folders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.errors import InputError
from engine.geo.damage_classes import normalise_disaster_type

from .stac_sources import is_stac_file, stac_sources

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")


@dataclass(frozen=True)
class TrainingSource:
    """One raster (or band stack) to cut chips from."""

    paths: tuple[Path, ...]  # one file, or one file per band in R, G, B order
    bands: tuple[int, int, int] | None = None  # 1-based (R, G, B) of a multi-band file
    land_cover: str | None = None  # caption words: "farm", "forest", "town", ...
    country: str | None = None
    date: str | None = None  # overrides the date found in the file's metadata or name
    cloud_cover: float | None = None
    licence: str = "unknown"
    attribution: str = ""
    place: str = ""  # sources of one place (a time series, a band stack) share a held-out area
    nodata: float | None = None  # a fill value the file does not declare (Landsat's 0 outside the scene)
    polygons: Path | None = None  # classes for the captions of the chips they cover (see labels.py)
    class_field: str | None = None  # the polygons' class attribute, as inpaint's class field
    polygon_class: str | None = None  # the class of every polygon when there is no class field
    disaster_type: str | None = None  # for the captions of damage classes (fire, flooding, ...)

    @property
    def name(self) -> str:
        return self.paths[0].stem

    @property
    def group(self) -> str:
        return self.place or self.name


@dataclass(frozen=True)
class SourceList:
    sources: tuple[TrainingSource, ...]
    description: str = ""
    extra: dict = field(default_factory=dict, hash=False)


def load_sources(items: list[str | Path]) -> SourceList:
    """Sources from a sources file (.yaml/.yml/.json) or raster files and folders."""
    if not items:
        raise InputError("no training data given: name raster files, folders or a sources .yaml file")
    sources: list[TrainingSource] = []
    description, extra = "", {}
    for item in items:
        path = Path(item)
        if not path.exists():
            raise InputError(f"training data {path} does not exist")
        if path.is_file() and path.suffix.lower() == ".json" and is_stac_file(path):
            sources.extend(TrainingSource(**fields) for fields in stac_sources(path))
        elif path.is_file() and path.suffix.lower() in (".yaml", ".yml", ".json"):
            listed = _read_sources_file(path)
            sources.extend(listed.sources)
            description = description or listed.description
            extra.update(listed.extra)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in RASTER_SUFFIXES)
            if not found:
                raise InputError(f"the folder {path} holds no raster files ({', '.join(RASTER_SUFFIXES)})")
            sources.extend(TrainingSource(paths=(p,)) for p in found)
        else:
            sources.append(TrainingSource(paths=(path,)))
    return SourceList(tuple(sources), description, extra)


def _read_sources_file(path: Path) -> SourceList:
    try:
        text = path.read_text(encoding="utf-8")
        document = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise InputError(f"cannot read the sources file {path}: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("sources"), list):
        raise InputError(f"the sources file {path} needs a 'sources:' list (each with 'path' or 'bands_files')")
    base = path.parent
    sources = tuple(_source_from_entry(entry, base, path, index) for index, entry in enumerate(document["sources"]))
    extra = {key: value for key, value in document.items() if key not in ("sources", "description")}
    return SourceList(sources, str(document.get("description", "")), extra)


_ENTRY_KEYS = {"path", "band_files", "stac", "bands", "land_cover", "country", "date", "cloud_cover", "licence",
               "attribution", "place", "nodata", "polygons", "class_field", "class", "disaster_type"}
_IMAGE_KEYS = ("path", "band_files", "stac")


def _source_from_entry(entry: Any, base: Path, file: Path, index: int) -> TrainingSource:
    where = f"{file} sources[{index}]"
    if not isinstance(entry, dict):
        raise InputError(f"{where} must be a mapping with 'path', 'band_files' or 'stac'")
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise InputError(f"{where} has unknown keys {sorted(unknown)}; known: {sorted(_ENTRY_KEYS)}")
    given = [key for key in _IMAGE_KEYS if key in entry]
    if len(given) != 1:
        raise InputError(f"{where} needs exactly one of 'path' (a multi-band raster), 'band_files' (R, G, B files) "
                         f"or 'stac' (a STAC item with RGB assets); it has {given or 'none'}")
    if "stac" in entry:
        items = stac_sources(_existing(base, entry["stac"], where))
        if len(items) != 1:
            raise InputError(f"{where}: {entry['stac']} holds {len(items)} STAC items; name one item file per source")
        image = items[0]
    else:
        names = [entry["path"]] if "path" in entry else list(entry["band_files"])
        if "band_files" in entry and len(names) != 3:
            raise InputError(f"{where} 'band_files' lists {len(names)} files; give the red, green and blue files")
        image = {"paths": tuple(_existing(base, name, where) for name in names)}
    bands = entry.get("bands")
    if bands is not None and (not isinstance(bands, list) or len(bands) != 3 or not all(isinstance(b, int) and b > 0 for b in bands)):
        raise InputError(f"{where} 'bands' must be three 1-based band numbers [R, G, B]")
    polygons = _existing(base, entry["polygons"], where) if entry.get("polygons") else None
    if not polygons and any(entry.get(key) for key in ("class_field", "class", "disaster_type")):
        raise InputError(f"{where} gives 'class_field', 'class' or 'disaster_type' without 'polygons' to apply them to")
    disaster_type = normalise_disaster_type(entry.get("disaster_type"))
    return TrainingSource(
        paths=image["paths"],
        bands=tuple(bands) if bands else None,
        land_cover=entry.get("land_cover"),
        country=entry.get("country"),
        date=str(entry["date"]) if entry.get("date") else image.get("date"),
        cloud_cover=entry["cloud_cover"] if entry.get("cloud_cover") is not None else image.get("cloud_cover"),
        licence=str(entry.get("licence", "unknown")),
        attribution=str(entry.get("attribution", "")),
        place=str(entry.get("place", "")),
        nodata=entry.get("nodata"),
        polygons=polygons,
        class_field=str(entry["class_field"]) if entry.get("class_field") else None,
        polygon_class=str(entry["class"]) if entry.get("class") else None,
        disaster_type=disaster_type,
    )


def _existing(base: Path, name: Any, where: str) -> Path:
    path = (base / str(name)).resolve()
    if not path.is_file():
        raise InputError(f"{where}: {path} does not exist")
    return path
