"""Sets of images for the set metrics: a folder of images or a dataset manifest, read as RGB in [0, 1].

A set is a folder (its images, searched recursively, in name order) or a manifest file listing
them: a text file with one path per line, a CSV with an `image` (or `path`) column, or JSON/JSONL
records with an `image` (or `path`) field; relative paths are relative to the manifest's folder.
Each image is read with GDAL (GeoTIFF, PNG, JPEG; georeferenced or not): its RGB bands (or the
grey band three times), 8-bit as value/255 and other types stretched per band between percentiles
as the engine does for model inputs, resized to `size` x `size` for the feature network.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning

from engine.errors import InputError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_FIELDS = ("image", "path", "file")


def _from_records(records: list, base: Path, manifest: Path) -> list[Path]:
    paths = []
    for record in records:
        if isinstance(record, str):
            paths.append(record)
            continue
        value = next((record[k] for k in _FIELDS if isinstance(record, dict) and isinstance(record.get(k), str)), None)
        if value is None:
            raise InputError(f"a record of {manifest} has none of the fields {', '.join(_FIELDS)} naming its image")
        paths.append(value)
    return [p if p.is_absolute() else base / p for p in map(Path, paths)]


def image_paths(source: Path) -> list[Path]:
    """The images of a set: a folder's images or a manifest's list (see the module docstring)."""
    source = Path(source)
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not source.is_file():
        raise InputError(f"the image set {source} does not exist; give a folder of images or a manifest file")
    text = source.read_text(errors="replace")
    base = source.parent
    suffix = source.suffix.lower()
    if suffix == ".json":
        data = json.loads(text)
        records = data if isinstance(data, list) else next((data[k] for k in ("samples", "images", "items") if k in data), None)
        if not isinstance(records, list):
            raise InputError(f"{source} is JSON but not a list of images (nor has a samples/images list)")
        paths = _from_records(records, base, source)
    elif suffix == ".jsonl":
        paths = _from_records([json.loads(line) for line in text.splitlines() if line.strip()], base, source)
    elif suffix == ".csv":
        paths = _from_records(list(csv.DictReader(text.splitlines())), base, source)
    elif suffix in IMAGE_SUFFIXES:
        paths = [source]
    else:
        paths = [base / line.strip() if not Path(line.strip()).is_absolute() else Path(line.strip())
                 for line in text.splitlines() if line.strip() and not line.startswith("#")]
    absent = [str(p) for p in paths if not p.is_file()]
    if absent:
        raise InputError(f"{len(absent)} image(s) listed in {source} do not exist, e.g. {absent[0]}")
    return paths


def read_unit_rgb(path: Path) -> np.ndarray:
    """(3, rows, cols) float32 in [0, 1] of one image file."""
    from engine.geo.radiometry import stretch_for

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                bands = [1, 2, 3] if src.count >= 3 else [1, 1, 1]
                data = src.read(bands, masked=True)
                unit = stretch_for(src, bands).to_unit(np.ma.getdata(data))
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"{path} cannot be read as an image ({exc})") from None
    return unit


def load_set(source: Path | list[Path], size: int, minimum: int = 1, name: str = "image set") -> tuple[np.ndarray, list[Path]]:
    """(N, 3, size, size) images of a set in [0, 1], and their paths."""
    paths = list(source) if isinstance(source, (list, tuple)) else image_paths(source)
    if len(paths) < minimum:
        raise InputError(f"the {name} {source if not isinstance(source, list) else ''} has {len(paths)} image(s); "
                         f"the metrics asked for need at least {minimum}")
    images = np.empty((len(paths), 3, size, size), dtype=np.float32)
    for i, path in enumerate(paths):
        x = torch.from_numpy(read_unit_rgb(path))[None]
        images[i] = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                                    antialias=True)[0].clamp(0, 1).numpy()
    return images, paths
