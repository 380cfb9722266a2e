"""Chip captions from polygons with classes: what a labelled chip shows, in the words inpainting uses.

A training source may carry polygons (burn perimeters, flood extents, xBD buildings, land-cover
maps). They are classified exactly as `inpaint` classifies its polygons (`classify_polygons`: the
class field, CEMS/xBD names, a constant class) and burned onto the source's own pixel grid. A chip
takes the class that covers the largest part of it, when that is at least `MIN_CLASS_SHARE`:

- a damage or event class (xBD grades, "burnt-area", "flooded-area", ...) gives the chip the
  caption inpainting conditions that class on (DiffusionSat's xBD caption plus the class's wording),
  so a model trained on burn scars paints one when `inpaint` asks for a burnt area;
- any other class name ("forest", "water") is the chip's land cover in the fMoW caption.

On the regular grid an event rarely fills a chip: a flood polygon is a corner of a field chip, and
the chip looks like its unlabelled neighbours, so its caption teaches little. `event_windows` adds
windows centred on each event polygon (and shifted by a quarter chip each way) where the event
covers most of the chip, so the caption and what it names are seen together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from rasterio.windows import Window

from engine.geo.damage_classes import FIRST_OTHER_CODE, NO_CHANGE, classify_polygons
from engine.geo.grid import grid_like
from engine.geo.masks import label_raster, place_on_grid
from engine.geo.vectors import read_polygons

MIN_CLASS_SHARE = 0.25


@dataclass(frozen=True)
class ChipLabel:
    """What a chip's caption says instead of its source's land cover."""

    land_cover: str | None = None
    caption: str | None = None  # a whole caption, used as it is (dropped only with the caption)


class SourceLabels:
    """A source's polygons placed on its grid and classified as inpainting classifies them."""

    def __init__(self, source, info) -> None:
        layer = read_polygons(source.polygons)
        self.grid = grid_like(info.crs, info.transform, info.width, info.height)
        self.placed = place_on_grid(layer, self.grid)  # fails with the extents when nothing overlaps
        self.classes = classify_polygons(layer, source.class_field, disaster_type=source.disaster_type,
                                         **({"constant": source.polygon_class} if source.polygon_class else {}))

    def chip(self, col: int, row: int, span: int, size: int) -> tuple[ChipLabel | None, np.ndarray]:
        """The `span`-pixel window at (col, row) as a `size`-pixel chip: its label (None where no class
        covers enough of it) and, uint8 (size, size), where event classes cover most of each chip pixel
        (what an inpainting model is trained to repaint under the event's caption)."""
        codes = label_raster(self.placed, self.classes, self.grid, Window(col, row, span, span))
        scale = span // size
        events = is_event(codes).reshape(size, scale, size, scale).mean(axis=(1, 3)) >= 0.5
        return _label_of(codes, self.classes), events.astype(np.uint8)

    def event_windows(self, span: int, col_range: tuple[int, int], min_share: float) -> list[tuple[int, int]]:
        """(col, row) of `span`-pixel windows in `col_range` centred on event polygons (and shifted by a
        quarter span each way) where event classes cover at least `min_share` of the window."""
        lo, hi = col_range
        events = is_event(np.asarray(self.classes.codes)[self.placed.indices])
        inverse = ~self.grid.transform
        pixel_area = abs(self.grid.transform.determinant)
        quarter = span // 4
        found: dict[tuple[int, int], None] = {}
        for geometry, event in zip(self.placed.geometries, events):
            if not event or geometry.area / pixel_area < min_share * span * span / 4:
                continue  # too small to fill the chip, even with neighbours beside it
            point = shapely.point_on_surface(geometry)
            centre_col, centre_row = inverse @ (point.x, point.y)
            for d_row in (-quarter, 0, quarter):
                for d_col in (-quarter, 0, quarter):
                    col = int(round(centre_col - span / 2 + d_col))
                    row = int(round(centre_row - span / 2 + d_row))
                    if lo <= col and col + span <= hi and 0 <= row and row + span <= self.grid.height:
                        found.setdefault((col, row))
        return [window for window in found if self._event_share(*window, span) >= min_share]

    def _event_share(self, col: int, row: int, span: int) -> float:
        codes = label_raster(self.placed, self.classes, self.grid, Window(col, row, span, span))
        return float(is_event(codes).mean())


def _label_of(codes: np.ndarray, classes) -> ChipLabel | None:
    """The class covering most of a window's codes, as a caption (events) or land cover; None under MIN_CLASS_SHARE."""
    counts = np.bincount(codes.ravel(), minlength=256)
    counts[NO_CHANGE] = 0
    code = int(counts.argmax())
    if counts[code] < MIN_CLASS_SHARE * codes.size:
        return None
    label = classes.classes[code]
    if is_event(code):
        return ChipLabel(caption=label.prompt)
    return ChipLabel(land_cover=label.name.replace("-", " "))


def is_event(code):
    """Damage and event classes (xBD grades, burnt or flooded areas), not land cover (codes or arrays of them)."""
    return (code > NO_CHANGE) & (code < FIRST_OTHER_CODE)
