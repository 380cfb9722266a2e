"""Training sources: which rasters to learn from, how to read RGB from them, what they show.

A source is one multi-band raster, or one single-band file per colour (Landsat's B4 B3 B2), plus
what a caption can say about it (land cover, country) and its licence for the model card. Sources
come from a YAML/JSON file (relative paths are relative to that file) or straight from raster
paths and folders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.errors import InputError

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
        if path.is_file() and path.suffix.lower() in (".yaml", ".yml", ".json"):
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


_ENTRY_KEYS = {"path", "band_files", "bands", "land_cover", "country", "date", "cloud_cover", "licence", "attribution", "place", "nodata"}


def _source_from_entry(entry: Any, base: Path, file: Path, index: int) -> TrainingSource:
    where = f"{file} sources[{index}]"
    if not isinstance(entry, dict):
        raise InputError(f"{where} must be a mapping with 'path' (or 'band_files')")
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise InputError(f"{where} has unknown keys {sorted(unknown)}; known: {sorted(_ENTRY_KEYS)}")
    if ("path" in entry) == ("band_files" in entry):
        raise InputError(f"{where} needs exactly one of 'path' (a multi-band raster) or 'band_files' (R, G, B files)")
    names = [entry["path"]] if "path" in entry else list(entry["band_files"])
    if "band_files" in entry and len(names) != 3:
        raise InputError(f"{where} 'band_files' lists {len(names)} files; give the red, green and blue files")
    paths = tuple((base / str(name)).resolve() for name in names)
    for path in paths:
        if not path.is_file():
            raise InputError(f"{where}: {path} does not exist")
    bands = entry.get("bands")
    if bands is not None and (not isinstance(bands, list) or len(bands) != 3 or not all(isinstance(b, int) and b > 0 for b in bands)):
        raise InputError(f"{where} 'bands' must be three 1-based band numbers [R, G, B]")
    return TrainingSource(
        paths=paths,
        bands=tuple(bands) if bands else None,
        land_cover=entry.get("land_cover"),
        country=entry.get("country"),
        date=str(entry["date"]) if entry.get("date") else None,
        cloud_cover=entry.get("cloud_cover"),
        licence=str(entry.get("licence", "unknown")),
        attribution=str(entry.get("attribution", "")),
        place=str(entry.get("place", "")),
        nodata=entry.get("nodata"),
    )
