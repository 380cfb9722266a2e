"""Does a model paint an event where one really happened? A figure of held-out floods and burn scars.

Every source of a sources file whose event polygons (floods, burn perimeters) reach into its held-out
strip gets them inpainted by each model (engine.training.event_check, the check `gfm4d train` puts in
an inpainting model's card): the real image with the held-out polygon outlined, then each model's
inpainting, cropped around the polygon. The scores go beside the figure as .json.

    python scripts/inpaint_heldout_events.py recipes/gfm4d-mini/sources-events.yaml \
        --models gfm4d-mini gfm4d-mini-inpaint --out docs/img/gfm4d_mini_inpaint_heldout_events.png
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", type=Path)
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--models-dir", type=Path, help="besides the built-in models")
    parser.add_argument("--holdout", type=float, default=0.2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--only", nargs="*", help="source names to show (default: all)")
    parser.add_argument("--out", type=Path, required=True, help="figure (.png); the scores go beside it as .json")
    args = parser.parse_args()

    from engine.models.registry import ModelRegistry
    from engine.training.event_check import event_scores, heldout_events
    from engine.training.sources import load_sources

    sources = [s for s in load_sources([args.sources]).sources if not args.only or s.name in args.only]
    with tempfile.TemporaryDirectory(prefix="gfm4d-models-") as empty:
        registry = ModelRegistry(args.models_dir or Path(empty))
        models = {name: registry.load(name) for name in args.models}
        events = heldout_events(models, sources, args.holdout, args.steps, args.guidance)
    if not events:
        sys.exit(f"no event polygon of {args.sources} reaches a held-out strip: nothing to inpaint")
    scores = {e.source: {name: event_scores(e.real, image, e.label) for name, image in e.painted.items()} for e in events}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(scores, indent=2), encoding="utf-8")
    figure([(e.source, e.real, e.label, [e.painted[n] for n in models]) for e in events], list(models), args.out)
    print(args.out)


def figure(rows, names: list[str], path: Path, height: int = 200, per_row: int = 3) -> None:
    """Per source: the real image around the held-out polygons (outlined), then each model's inpainting."""
    from PIL import Image, ImageDraw
    from scipy import ndimage

    tiles = []
    for source, pre, label, posts in rows:
        inside = (label > 0) & (label < 255)
        rows_in, cols_in = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
        box = (slice(max(0, rows_in[0] - 12), rows_in[-1] + 13), slice(max(0, cols_in[0] - 12), cols_in[-1] + 13))
        low, high = np.percentile(pre.reshape(pre.shape[0], -1), (1, 99), axis=1)
        outline = (inside & ~ndimage.binary_erosion(inside))[box]
        panels = []
        for k, image in enumerate([pre] + posts):
            unit = np.clip((image[(slice(None),) + box].astype(np.float32) - low[:, None, None])
                           / np.maximum(high - low, 1)[:, None, None], 0, 1)
            rgb = (np.moveaxis(unit, 0, -1) * 255).astype(np.uint8)
            if k == 0:
                rgb[outline] = (255, 255, 0)
            scale = height / rgb.shape[0]
            panels.append(Image.fromarray(rgb).resize((max(1, round(rgb.shape[1] * scale)), height), Image.NEAREST))
        width = sum(p.width for p in panels) + 4 * (len(panels) - 1)
        tile = Image.new("RGB", (width, height + 14), "white")
        x = 0
        for panel in panels:
            tile.paste(panel, (x, 14))
            x += panel.width + 4
        ImageDraw.Draw(tile).text((2, 1), source.replace("_s2_rgb", "").replace("naip_m_4709963_se_14_1_", "naip north dakota "),
                                  fill="black")
        tiles.append(tile)
    lines = [tiles[i:i + per_row] for i in range(0, len(tiles), per_row)]
    legend = "each: real image, held-out event outlined | " + " | ".join(names)
    sheet = Image.new("RGB", (max(sum(t.width + 10 for t in line) for line in lines),
                              16 + sum(max(t.height for t in line) + 8 for line in lines)), "white")
    ImageDraw.Draw(sheet).text((2, 2), legend, fill="black")
    y = 16
    for line in lines:
        x = 0
        for tile in line:
            sheet.paste(tile, (x, y))
            x += tile.width + 10
        y += max(t.height for t in line) + 8
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


if __name__ == "__main__":
    main()
