"""Sentinel-2 bands for DiffusionSat's super-resolution ControlNet (spec §7).

Bands are found by their descriptions (B4, B04, B8A, "B04 red", ...) or by an explicit list naming
each input band; never by position alone unless the raster has exactly the 13 bands of the
fMoW-Sentinel order and no descriptions. Each band is normalised with the fMoW-Sentinel statistics
exactly as the model was trained (quantised to 8 bits), then reordered to B4 B3 B2 B5 B6 B7 B8
B8A B11 B12.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from engine.errors import InputError

ALL_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
MEAN = dict(zip(ALL_BANDS, (1370.19, 1184.38, 1120.77, 1136.26, 1263.74, 1645.40, 1846.87, 1762.60, 1972.62, 582.73, 14.77, 1732.16, 1247.92)))
STD = dict(zip(ALL_BANDS, (633.15, 650.28, 712.13, 965.23, 948.98, 1108.07, 1258.36, 1233.15, 1364.39, 472.38, 14.31, 1310.37, 1087.60)))
CONDITION_BANDS = ("B4", "B3", "B2", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
CONDITION_GSD_M = 10.0

_NAME = re.compile(r"\bB0?(\d{1,2}A?)\b", re.IGNORECASE)


def band_name(text: str | None) -> str | None:
    """'B04', 'b4', 'B8A', 'B04 (red)' -> 'B4' / 'B8A'; None when it names no Sentinel-2 band."""
    if not text:
        return None
    match = _NAME.search(text)
    if not match:
        return None
    name = "B" + match.group(1).upper()
    return name if name in ALL_BANDS else None


def condition_band_indices(descriptions: Sequence[str | None], explicit: Sequence[str] | None = None) -> list[int]:
    """1-based input band of each condition band (B4 B3 B2 B5 B6 B7 B8 B8A B11 B12)."""
    count = len(descriptions)
    if explicit is not None:
        if len(explicit) != count:
            raise InputError(f"the band list names {len(explicit)} bands but the raster has {count}; name every band in order")
        names = [band_name(b) for b in explicit]
        if None in names:
            raise InputError(f"band list {list(explicit)}: every entry must be a Sentinel-2 band name such as B4 or B8A")
    else:
        names = [band_name(d) for d in descriptions]
        if None in names:
            if count == 13 and not any(descriptions):
                names = list(ALL_BANDS)  # the fMoW-Sentinel order, the only safe positional reading
            else:
                raise InputError(
                    f"cannot tell which Sentinel-2 band each of the {count} bands is (descriptions: {list(descriptions)}); "
                    "give the band list explicitly, e.g. B2,B3,B4,B5,B6,B7,B8,B8A,B11,B12"
                )
    missing = [b for b in CONDITION_BANDS if b not in names]
    if missing:
        raise InputError(f"the super-resolution model needs Sentinel-2 bands {', '.join(missing)}, which the raster lacks")
    return [names.index(b) + 1 for b in CONDITION_BANDS]


class Sentinel2Normalisation:
    """Maps the condition bands (in CONDITION_BANDS order) to [0, 1] as in training."""

    def __init__(self) -> None:
        self.low = np.array([MEAN[b] - 2 * STD[b] for b in CONDITION_BANDS], np.float32)[:, None, None]
        self.span = np.array([4 * STD[b] for b in CONDITION_BANDS], np.float32)[:, None, None]

    def to_unit(self, data: np.ndarray) -> np.ndarray:
        scaled = np.clip((data.astype(np.float32) - self.low) / self.span * 255.0, 0, 255)
        return scaled.astype(np.uint8).astype(np.float32) / 255.0
