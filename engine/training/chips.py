"""The chip bank: square RGB chips cut from training sources at several ground resolutions.

Each chip is read straight from the file at its scale (a window `size x scale` pixels wide,
area-averaged to `size`), so pooled chips cost one read and memory never holds a whole raster.
Its conditioning is computed by the same functions inference uses for a model window
(`engine.geo.metadata.centre_lonlat`, `gsd_metres` at the window centre), so training and
generation agree on what "1 m at 47 N" means.

Held-out chips come from a strip at the east side of every source (`holdout` of its width): a
place's time series or band stack shares that strip, so no training chip shows the evaluation area.
The bank is a folder of numpy arrays (memory-mapped when used) plus a JSON record per chip; where
sources have polygons, `event_masks.npy` marks each chip's event pixels (the masks an inpainting
model trains on).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.windows import Window

from engine.errors import InputError
from engine.geo.dates import acquisition_for_raster
from engine.geo.metadata import SatMetadata, centre_lonlat, gsd_metres
from engine.geo.radiometry import _PERCENTILES as PERCENTILES, Stretch, stretch_for
from engine.geo.raster import RasterSource, open_raster, require_rgb

from .labels import SourceLabels
from .sources import TrainingSource

MIN_VALID_FRACTION = 0.99
BANK_FORMAT = 1


@dataclass(frozen=True)
class ChipRecord:
    source: str
    place: str  # chips of one place share the held-out strip and a sampling share
    split: str  # "train" | "heldout"
    scale: int  # source pixels per chip pixel (area average)
    col: int  # window in source pixels
    row: int
    crs: str
    transform: tuple[float, ...]  # of the chip's own pixels (a, b, c, d, e, f)
    land_cover: str | None
    country: str | None
    date: str | None
    cloud_cover: float | None
    lon: float
    lat: float
    gsd_m: float
    caption: str | None = None  # from the class of the polygons covering the chip (labels.py)


def chip_metadata(crs, transform: Affine, size: int, date, cloud_cover) -> SatMetadata:
    """What inference conditions a `size`-pixel window with this transform on."""
    x, y = transform @ (size / 2, size / 2)
    lon, lat = centre_lonlat(crs, x, y)
    gsd = gsd_metres(crs, transform, size / 2, size / 2)
    return SatMetadata(lon=lon, lat=lat, gsd_m=gsd, cloud_cover=cloud_cover, date=date)


class _RGBReader:
    """Reads (3, size, size) unit-range RGB of one source at a scale, with the validity fraction."""

    def __init__(self, source: TrainingSource) -> None:
        self.source = source
        self.rasters: list[RasterSource] = []
        try:
            if len(source.paths) == 1:
                raster = open_raster(source.paths[0], rgb_bands=source.bands)
                try:
                    bands = require_rgb(raster.info)
                except InputError:
                    raise InputError(
                        f"training source {source.paths[0]} has no recognisable red, green and blue bands "
                        f"({raster.info.count} band(s)); give 'bands: [R, G, B]' in the sources file, or "
                        "'band_files' for one file per colour"
                    ) from None
                self.rasters = [raster]
                self.plan = [(raster, list(bands))]
            else:
                self.rasters = [open_raster(path) for path in source.paths]
                first = self.rasters[0].info
                for other in self.rasters[1:]:
                    if (other.info.width, other.info.height, other.info.transform, other.info.crs) != (
                        first.width, first.height, first.transform, first.crs
                    ):
                        raise InputError(
                            f"band files {source.paths[0].name} and {Path(other.info.path).name} are not on one grid; "
                            "warp them onto one grid first (gdalwarp -tr/-te) or stack them (gdal_merge.py -separate)"
                        )
                self.plan = [(raster, [1]) for raster in self.rasters]
        except Exception:
            self.close()
            raise
        self.info = self.rasters[0].info
        self.stretches = [self._stretch(raster, bands) for raster, bands in self.plan]

    def _stretch(self, raster: RasterSource, bands: list[int]) -> Stretch:
        if self.source.nodata is None:
            return stretch_for(raster.dataset, bands)
        ds = raster.dataset
        step = max(1, max(ds.width, ds.height) // 1024)
        data = ds.read(bands, out_shape=(len(bands), max(1, ds.height // step), max(1, ds.width // step)),
                       resampling=Resampling.nearest).astype(np.float64)
        keep = (data != self.source.nodata).all(axis=0)
        if not keep.any():
            raise InputError(f"training source {Path(raster.info.path).name} holds only its nodata value {self.source.nodata}")
        low, high = np.percentile(data[:, keep], PERCENTILES, axis=1)
        return Stretch(low.astype(np.float32), np.maximum(high, low + 1).astype(np.float32), np.dtype(ds.dtypes[0]))

    def read(self, window: Window, size: int) -> tuple[np.ndarray, float]:
        parts, valid = [], np.ones((size, size), dtype=bool)
        for (raster, bands), stretch in zip(self.plan, self.stretches):
            ds = raster.dataset
            data = ds.read(bands, window=window, out_shape=(len(bands), size, size), resampling=Resampling.average)
            masks = ds.read_masks(bands, window=window, out_shape=(len(bands), size, size), resampling=Resampling.nearest)
            valid &= (masks > 0).all(axis=0)
            if self.source.nodata is not None:
                full = ds.read(bands, window=window, out_shape=(len(bands), size, size), resampling=Resampling.nearest)
                valid &= (full != self.source.nodata).all(axis=0)
            parts.append(stretch.to_unit(data))
        rgb = np.concatenate(parts, axis=0)
        fraction = float(valid.mean())
        if 0 < fraction < 1:
            fill = rgb[:, valid].mean(axis=1)
            rgb[:, ~valid] = fill[:, None]
        return rgb, fraction

    def close(self) -> None:
        for raster in self.rasters:
            raster.close()


def _windows(width: int, height: int, span: int, stride: int, col_range: tuple[int, int]) -> Iterator[tuple[int, int]]:
    lo, hi = col_range
    for row in range(0, height - span + 1, stride):
        for col in range(lo, hi - span + 1, stride):
            yield col, row


def cut_source(
    source: TrainingSource, size: int, scales: tuple[int, ...], holdout: float, event_share: float | None = None
) -> Iterator[tuple[np.ndarray, ChipRecord, np.ndarray | None]]:
    """Every chip of one source: (uint8 RGB (3, size, size), record, uint8 event mask (size, size) or None
    without polygons), train chips then held-out ones.

    With `event_share`, the training area also gets chips centred on event polygons where events
    cover at least that share (labels.SourceLabels.event_windows).
    """
    reader = _RGBReader(source)
    try:
        info = reader.info
        acquisition = acquisition_for_raster(source.paths[0], explicit_date=source.date, explicit_cloud=source.cloud_cover)
        split_col = int(round(info.width * (1 - holdout)))
        labels = SourceLabels(source, info) if source.polygons else None
        crs_text = info.crs.to_wkt()
        for scale in scales:
            span = size * scale
            areas = (("train", (0, split_col), span // 2), ("heldout", (split_col, info.width), span))
            for split, col_range, stride in areas:
                windows = list(_windows(info.width, info.height, span, max(1, stride), col_range))
                if split == "train" and labels and event_share is not None:
                    on_grid = set(windows)
                    windows += [w for w in labels.event_windows(span, col_range, event_share) if w not in on_grid]
                for col, row in windows:
                    rgb, valid = reader.read(Window(col, row, span, span), size)
                    if valid < MIN_VALID_FRACTION:
                        continue
                    transform = info.transform @ Affine.translation(col, row) @ Affine.scale(scale)
                    meta = chip_metadata(info.crs, transform, size, acquisition.date, acquisition.cloud_cover)
                    label, events = labels.chip(col, row, span, size) if labels else (None, None)
                    record = ChipRecord(
                        source=source.name, place=source.group, split=split, scale=scale, col=col, row=row, crs=crs_text,
                        transform=tuple(transform)[:6], land_cover=(label and label.land_cover) or source.land_cover,
                        country=source.country, date=acquisition.date.isoformat() if acquisition.date else None,
                        cloud_cover=acquisition.cloud_cover, lon=meta.lon, lat=meta.lat, gsd_m=meta.gsd_m,
                        caption=label.caption if label else None,
                    )
                    yield np.round(rgb * 255).astype(np.uint8), record, events
    finally:
        reader.close()


class ChipBank:
    """A built bank: `images` (N, 3, S, S) uint8 memory-mapped, `metadata` (N, 7), `records`."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        manifest = json.loads((self.folder / "bank.json").read_text(encoding="utf-8"))
        self.size = manifest["size"]
        self.scales = tuple(manifest["scales"])
        self.records = [ChipRecord(**{**r, "transform": tuple(r["transform"])}) for r in manifest["records"]]
        self.images = np.load(self.folder / "images.npy", mmap_mode="r")
        self.metadata = np.load(self.folder / "metadata.npy")
        masks = self.folder / "event_masks.npy"
        self.event_masks = np.load(masks, mmap_mode="r") if masks.is_file() else None  # (N, S, S) uint8
        self.signature = manifest["signature"]

    def indices(self, split: str) -> np.ndarray:
        return np.array([i for i, r in enumerate(self.records) if r.split == split], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.records)


def build_chip_bank(
    sources: tuple[TrainingSource, ...],
    folder: Path,
    size: int,
    scales: tuple[int, ...] = (1, 2, 4),
    holdout: float = 0.2,
    progress: Callable[[str], None] | None = None,
    event_share: float | None = None,
) -> ChipBank:
    """Cut every source into `folder` (kept when it already holds the same bank); the bank."""
    folder = Path(folder)
    signature = _signature(sources, size, scales, holdout, event_share)
    if (folder / "bank.json").is_file():
        bank = ChipBank(folder)
        if bank.signature == signature:
            return bank
    images, records, masks = [], [], []
    for source in sources:
        count = 0
        for image, record, events in cut_source(source, size, scales, holdout, event_share):
            images.append(image)
            records.append(record)
            masks.append(events)
            count += 1
        if progress:
            progress(f"{source.name}: {count} chips")
    train = sum(r.split == "train" for r in records)
    if train < 8:
        raise InputError(
            f"the training data gives only {train} training chips of {size} px (scales {list(scales)}): "
            "add imagery, or use smaller chips (--chip-size) or fewer pooling scales"
        )
    if train == len(records):
        raise InputError("no held-out chips: every source is narrower than a chip in its held-out strip; add imagery or lower --chip-size")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bank-", dir=folder.parent))
    try:
        np.save(staging / "images.npy", np.stack(images))
        metadata = np.stack([
            SatMetadata(lon=r.lon, lat=r.lat, gsd_m=r.gsd_m, cloud_cover=r.cloud_cover, date=r.date).normalised()
            for r in records
        ])
        np.save(staging / "metadata.npy", metadata)
        if any(m is not None for m in masks):
            blank = np.zeros((size, size), dtype=np.uint8)
            np.save(staging / "event_masks.npy", np.stack([blank if m is None else m for m in masks]))
        manifest = {"format": BANK_FORMAT, "size": size, "scales": list(scales), "holdout": holdout,
                    "signature": signature, "records": [asdict(r) for r in records]}
        (staging / "bank.json").write_text(json.dumps(manifest), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ChipBank(folder)


def _signature(sources, size, scales, holdout, event_share=None) -> str:
    parts = [f"{BANK_FORMAT}|3|{size}|{list(scales)}|{holdout}" + (f"|events {event_share}" if event_share is not None else "")]
    for source in sources:
        stats = [f"{p}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in source.paths]
        parts.append(f"{stats}|{source.bands}|{source.land_cover}|{source.country}|{source.date}|{source.cloud_cover}|{source.nodata}")
        if source.polygons:
            labelled = source.polygons.stat()
            parts.append(f"{source.polygons}:{labelled.st_size}:{int(labelled.st_mtime)}|{source.class_field}|"
                         f"{source.polygon_class}|{source.disaster_type}")
    import hashlib

    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def bicubic_baseline(images: np.ndarray, factor: int = 8) -> np.ndarray:
    """Shrink by area average and enlarge bicubically: what a VAE of that factor must beat."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.asarray(images, dtype=np.float32))
    small = F.avg_pool2d(x, factor)
    return F.interpolate(small, scale_factor=factor, mode="bicubic", align_corners=False).clamp(0, 255).numpy()
