"""Window layouts over a canvas and the weights that blend overlapping windows.

Diffusion models see fixed-size windows; an extent of any size is covered by overlapping
windows whose predictions are blended with weights that fall off towards each window's edge, so
no window boundary is visible (MultiDiffusion). The same layout code serves latent windows
(denoising), pixel blocks (VAE decoding) and regions (canvases too big to hold at once).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import InputError


@dataclass(frozen=True)
class Span:
    """A rectangle of a canvas: rows [row, row + height), columns [col, col + width)."""

    row: int
    col: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.row, self.row + self.height), slice(self.col, self.col + self.width)

    def intersection(self, other: "Span") -> "Span | None":
        top, left = max(self.row, other.row), max(self.col, other.col)
        bottom = min(self.row + self.height, other.row + other.height)
        right = min(self.col + self.width, other.col + other.width)
        if bottom <= top or right <= left:
            return None
        return Span(top, left, bottom - top, right - left)

    def relative_to(self, outer: "Span") -> "Span":
        return Span(self.row - outer.row, self.col - outer.col, self.height, self.width)


def axis_starts(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets of windows of `size` covering [0, length) with at least `overlap` shared.

    The last window is aligned to the end, so every window is whole and the overlap is never
    smaller than asked for.
    """
    if size <= 0 or overlap < 0 or overlap >= size:
        raise InputError(f"a window of {size} with an overlap of {overlap} is not usable: need 0 <= overlap < size")
    if length <= size:
        return [0]
    stride = size - overlap
    count = -(-(length - size) // stride) + 1
    if count == 1:
        return [0]
    # Spread the windows evenly: the overlap is at least `overlap` everywhere.
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


def plan_windows(height: int, width: int, size: int, overlap: int) -> list[Span]:
    """Windows of size x size (clipped to the canvas when it is smaller) covering the canvas."""
    rows = axis_starts(height, size, overlap)
    cols = axis_starts(width, size, overlap)
    return [Span(r, c, min(size, height), min(size, width)) for r in rows for c in cols]


def ramp(length: int, overlap: int, floor: float = 1e-3) -> np.ndarray:
    """1-D weight: 1 in the middle, falling linearly to near 0 over `overlap` cells at each end.

    Linear ramps of two windows overlapping by `overlap` add up to ~1, i.e. a plain cross-fade.
    The floor keeps every weight positive, so a cell covered by one window alone is never 0/0.
    """
    if overlap <= 0:
        return np.ones(length, dtype=np.float32)
    idx = np.arange(length, dtype=np.float64)
    distance = np.minimum(idx + 0.5, length - idx - 0.5)
    return np.clip(distance / overlap, floor, 1.0).astype(np.float32)


def blend_weights(height: int, width: int, overlap: int) -> np.ndarray:
    """2-D separable blending weights of one window."""
    return np.outer(ramp(height, overlap), ramp(width, overlap))


def bounding_span(spans: list[Span]) -> Span:
    top = min(s.row for s in spans)
    left = min(s.col for s in spans)
    bottom = max(s.row + s.height for s in spans)
    right = max(s.col + s.width for s in spans)
    return Span(top, left, bottom - top, right - left)


def group_overlapping(spans: list[Span]) -> list[tuple[Span, list[Span]]]:
    """Group windows into regions with disjoint bounding boxes: (bounding box, its windows).

    Windows that overlap go together, and so do groups whose bounding boxes would overlap, so
    each region can be processed on its own and pasted without touching another's pixels.
    """
    groups = [(s, [s]) for s in spans]
    merged = True
    while merged:
        merged = False
        result: list[tuple[Span, list[Span]]] = []
        for box, members in groups:
            for i, (other_box, other_members) in enumerate(result):
                if box.intersection(other_box) is not None:
                    combined = other_members + members
                    result[i] = (bounding_span(combined), combined)
                    merged = True
                    break
            else:
                result.append((box, members))
        groups = result
    return groups
