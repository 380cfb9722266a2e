"""Held-out events: does a model paint a flood or a burn scar where one really happened?

For every training source with event polygons (floods, burn perimeters) that reach into its held-out
strip (the east `holdout` of the raster, never trained on), the polygons are clipped to that strip
and inpainted into the real post-event raster with their own caption. Under the mask lie the real
flood or scar, which the model never saw, so the painted pixels can be compared with them: the mean
absolute error (0-255, after inference's own stretch of the raster), and the mean colours of the
painted pixels, of the real event and of the land around the polygons.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .labels import SourceLabels, is_event


@dataclass
class HeldoutEvent:
    """A window around a source's held-out events: the real (post-event) pixels, the label, each model's painting."""

    source: str
    real: np.ndarray  # (3, H, W) the real raster's RGB, stretched to 0-255
    label: np.ndarray  # (H, W) the inpainted events' class codes (0 elsewhere)
    painted: dict  # model name -> (3, H, W) its inpainting, stretched like `real`


def clipped_events(source, holdout: float, folder: Path):
    """The source's event polygons clipped to its held-out strip, as GeoJSON, and their bounds; None where
    none reach it (or only slivers of under 16 pixels)."""
    import shapely

    from engine.geo.raster import open_raster
    from engine.geo.vectors import PolygonLayer, write_polygons

    with open_raster(source.paths[0]) as raster:
        info = raster.info
    labels = SourceLabels(source, info)
    left = info.transform @ (round(info.width * (1 - holdout)), 0)
    right = info.transform @ (info.width, info.height)
    strip = shapely.box(min(left[0], right[0]), min(left[1], right[1]), max(left[0], right[0]), max(left[1], right[1]))
    codes = np.asarray(labels.classes.codes)[labels.placed.indices]
    kept = [(g.intersection(strip), int(c)) for g, c in zip(labels.placed.geometries, codes) if is_event(c)]
    kept = [(g, c) for g, c in kept if not g.is_empty and g.area > 16 * abs(info.transform.determinant)]
    if not kept:
        return None
    path = Path(folder) / f"{source.name}.geojson"
    attributes = [{"class": labels.classes.classes[c].name} for _, c in kept]
    write_polygons(PolygonLayer([g for g, _ in kept], attributes, info.crs, "held-out events"), path)
    return path, shapely.union_all([g for g, _ in kept]).bounds


def event_scores(real: np.ndarray, painted: np.ndarray, label: np.ndarray) -> dict | None:
    """MAE and mean colours inside the event (two pixels in from its edge, past the feather), and the
    mean colour of a ring of land around it (from 3 to 6 pixels out); None when nothing is left inside."""
    from scipy import ndimage

    inside = (label > 0) & (label < 255)
    inner = ndimage.binary_erosion(inside, iterations=2)
    if not inner.any():
        return None
    ring = ndimage.binary_dilation(inside, iterations=6) & ~ndimage.binary_dilation(inside, iterations=2)
    mean = lambda image, where: image[:, where].astype(np.float64).mean(axis=1).round(1).tolist()  # noqa: E731
    return {"mae": round(float(np.abs(painted[:, inner].astype(np.float64) - real[:, inner]).mean()), 2),
            "painted": mean(painted, inner), "real": mean(real, inner), "around": mean(real, ring),
            "pixels": int(inner.sum())}


def heldout_events(models: dict, sources, holdout: float, steps: int, guidance: float | None = None,
                   seed: int = 0) -> list[HeldoutEvent]:
    """Inpaint every source's held-out events with each of `models` ({name: loaded model})."""
    import rasterio
    from rasterio.windows import Window, from_bounds

    from engine.geo.radiometry import stretch_for
    from engine.pipelines.inpaint import InpaintOutputs, InpaintRequest, inpaint

    found = []
    with tempfile.TemporaryDirectory(prefix="gfm4d-heldout-events-") as scratch:
        folder = Path(scratch)
        for source in sources:
            if not source.polygons or len(source.paths) != 1:
                continue
            clipped = clipped_events(source, holdout, folder)
            if clipped is None:
                continue
            polygons, bounds = clipped
            bands = list(source.bands or (1, 2, 3))
            with rasterio.open(source.paths[0]) as dataset:  # only a window around the events is read back
                stretch = stretch_for(dataset, bands)
                tight = from_bounds(*bounds, transform=dataset.transform).round_offsets().round_lengths()
                window = Window(tight.col_off - 8, tight.row_off - 8, tight.width + 16, tight.height + 16).intersection(
                    Window(0, 0, dataset.width, dataset.height))
                real = stretch.to_unit(dataset.read(bands, window=window)) * 255
            painted, label = {}, None
            for name, model in models.items():
                outputs = InpaintOutputs(folder / f"{source.name}-{name}.tif", folder / f"{source.name}-{name}-label.tif")
                request = InpaintRequest(image=source.paths[0], polygons=polygons, class_field="class",
                                         disaster_type=source.disaster_type, rgb_bands=source.bands, steps=steps,
                                         guidance_scale=guidance, seed=seed)
                inpaint(model, request, outputs)
                with rasterio.open(outputs.image) as post, rasterio.open(outputs.label) as labels:
                    painted[name] = stretch.to_unit(post.read(bands, window=window)) * 255
                    label = labels.read(1, window=window)
                outputs.image.unlink()
            found.append(HeldoutEvent(source.name, real, label, painted))
    return found


def score_heldout_events(models: dict, sources, holdout: float, steps: int, guidance: float | None = None) -> dict:
    """{source: {model name: event_scores}} for every held-out event (empty when no source has one; a sliver
    with nothing left two pixels in from its edge is left out)."""
    scores = {}
    for event in heldout_events(models, sources, holdout, steps, guidance):
        per_model = {name: event_scores(event.real, image, event.label) for name, image in event.painted.items()}
        if all(value is not None for value in per_model.values()):
            scores[event.source] = per_model
    return scores
