"""Pixel values to the model's range and back, per band.

uint8 imagery maps 0..255 linearly. Other types (uint16 reflectance, 11-bit data, int16, floats)
are stretched between low and high percentiles of the raster's valid pixels, read from a
decimated view (the overviews when the file has them), so the statistics cost the same for any
raster size. Mapping back clips to the input's dtype range and rounds integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from rasterio.enums import Resampling

# Long side of the decimated read used for statistics.
_STATS_SIDE = 1024
_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class Stretch:
    """Per-band linear map between stored values and the model's [0, 1]."""

    low: np.ndarray  # (bands,)
    high: np.ndarray
    dtype: np.dtype

    def to_unit(self, data: np.ndarray) -> np.ndarray:
        low, high = self.low[:, None, None], self.high[:, None, None]
        return np.clip((data.astype(np.float32) - low) / (high - low), 0.0, 1.0)

    def from_unit(self, unit: np.ndarray) -> np.ndarray:
        low, high = self.low[:, None, None], self.high[:, None, None]
        values = low + np.clip(unit, 0.0, 1.0) * (high - low)
        if np.issubdtype(self.dtype, np.integer):
            info = np.iinfo(self.dtype)
            return np.clip(np.round(values), info.min, info.max).astype(self.dtype)
        return values.astype(self.dtype)


def stretch_for(dataset, bands: Sequence[int]) -> Stretch:
    """The stretch of some bands of an open rasterio dataset (or north-up view)."""
    dtype = np.dtype(dataset.dtypes[bands[0] - 1])
    if dtype == np.uint8:
        return Stretch(np.zeros(len(bands), np.float32), np.full(len(bands), 255.0, np.float32), dtype)
    scale = max(dataset.width, dataset.height) / _STATS_SIDE
    shape = (len(bands), max(1, round(dataset.height / max(scale, 1))), max(1, round(dataset.width / max(scale, 1))))
    sample = dataset.read(list(bands), out_shape=shape, resampling=Resampling.nearest, masked=True)
    low, high = [], []
    for band in sample:
        values = band.compressed().astype(np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            low.append(0.0)
            high.append(1.0)
            continue
        lo, hi = np.percentile(values, _PERCENTILES)
        if hi <= lo:
            hi = lo + 1.0
        low.append(lo)
        high.append(hi)
    return Stretch(np.array(low, np.float32), np.array(high, np.float32), dtype)


def stretch_for_source(source, bands: Sequence[int]) -> Stretch:
    """The stretch of some bands of a RasterSource: palette rasters are 8-bit colours, whatever
    the type of their indices."""
    if source.info.is_palette:
        return Stretch(np.zeros(len(bands), np.float32), np.full(len(bands), 255.0, np.float32), np.dtype("uint8"))
    return stretch_for(source.dataset, bands)
