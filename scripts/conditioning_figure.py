"""docs/img/gfm4d_mini_conditioning.png: what GFM4D-mini makes of the date, the place and the caption.

    .venv/bin/python scripts/conditioning_figure.py [--model gfm4d-mini] [--output docs/img/...]

Top row: one place (North Dakota farmland, 10 m) and one seed on three dates, as in its NAIP time
series (a wet June, a dry September, a late-summer year). Bottom row: the same seed over farmland
in North Dakota and in Spain, and the Spanish fields with the caption inpainting uses for a flood.
Every image is generated on its place's UTM grid, with its own metadata.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine import config  # noqa: E402
from engine.geo.damage_classes import caption as disaster_caption  # noqa: E402
from engine.geo.grid import utm_square  # noqa: E402
from engine.models.registry import ModelRegistry  # noqa: E402
from engine.pipelines.generate import GenerateRequest, generate  # noqa: E402
from engine.training.report import grid_png  # noqa: E402

FARM_US = "a fmow satellite image of a farm in the united states"
FARM_ES = "a fmow satellite image of a farm in spain"
FLOOD = disaster_caption("flooding", "with flooded areas")
NORTH_DAKOTA, SPAIN = (-99.17, 47.03), (-0.77, 38.11)
PANELS = (
    (NORTH_DAKOTA, FARM_US, "2010-06-29", "North Dakota farm, 2010-06-29"),
    (NORTH_DAKOTA, FARM_US, "2015-09-26", "North Dakota farm, 2015-09-26"),
    (NORTH_DAKOTA, FARM_US, "2020-08-31", "North Dakota farm, 2020-08-31"),
    (NORTH_DAKOTA, FARM_US, "2019-09-18", "North Dakota farm, 2019-09-18"),
    (SPAIN, FARM_ES, "2019-09-18", "Spain (Segura) farm, 2019-09-18"),
    (SPAIN, FLOOD, "2019-09-18", "Spain, flood caption, 2019-09-18"),
)
GSD_M, SIZE_PX, SEED = 10.0, 256, 7


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=config.BUILTIN_MODEL)
    parser.add_argument("--models-dir", type=Path, default=config.models_dir())
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "img" / "gfm4d_mini_conditioning.png")
    args = parser.parse_args()
    import rasterio

    model = ModelRegistry(args.models_dir, config.sd21_dir()).load(args.model)
    tiles = []
    with tempfile.TemporaryDirectory(prefix="gfm4d-figure-") as scratch:
        for index, ((lon, lat), prompt, date, _) in enumerate(PANELS):
            grid = utm_square(lon, lat, GSD_M, SIZE_PX)
            path = Path(scratch) / f"{index}.tif"
            generate(model, GenerateRequest(grid=grid, prompt=prompt, date=date, cloud_cover=0.0, seed=SEED), path)
            with rasterio.open(path) as ds:
                tiles.append(np.moveaxis(ds.read([1, 2, 3]), 0, -1))
    print(grid_png(tiles, [label for *_, label in PANELS], 3, args.output, tile=SIZE_PX))


if __name__ == "__main__":
    main()
