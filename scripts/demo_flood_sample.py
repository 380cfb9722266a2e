"""Cut the demo's before/after flood sample from the North Dakota NAIP series (public domain).

    python scripts/demo_flood_sample.py ../shared/data/train recipes/gfm4d-mini/data engine/sample_data

Writes, all on one grid (the 2009 tile's, 5 m, EPSG:26914), inside the tiles' held-out east strip
(the 20% of each raster that GFM4D-mini and GFM4D-mini-inpaint never trained on):
  naip_m_4709963_se_14_1_20090818_heldout.tif  the dry year, RGB: the pre-event raster the demo paints into
  naip_m_4709963_se_14_1_20190904_heldout.tif  the same ground on 2019-09-04, RGB, resampled onto that grid:
                                               what the flood really looked like
  naip_flood_20190904_heldout.geojson         the 2019 flood polygons (recipes/gfm4d-mini/data) clipped to it
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio.warp import Resampling, reproject
from rasterio.windows import Window

TILE = "naip_m_4709963_se_14_1_{}.tif"
PRE, POST = "20090818", "20190904"
HOLDOUT = 0.2  # recipes/gfm4d-mini: the east fifth of every raster is held out
ROW, SIZE = 340, 187  # a square of the held-out strip where the 2019 water spread over dry 2009 land
PROFILE = {"driver": "GTiff", "dtype": "uint8", "count": 3, "nodata": 0, "compress": "deflate", "photometric": "rgb"}


def main(train: Path, labels: Path, out: Path) -> None:
    with rasterio.open(train / TILE.format(PRE)) as pre:
        col = round(pre.width * (1 - HOLDOUT))
        assert pre.width - col == SIZE, "the held-out strip is the square's width"
        window = Window(col, ROW, SIZE, SIZE)
        transform, crs = pre.window_transform(window), pre.crs
        before = pre.read([1, 2, 3], window=window)
    after = np.zeros_like(before)
    with rasterio.open(train / TILE.format(POST)) as post:
        reproject(post.read([1, 2, 3]), after, src_transform=post.transform, src_crs=post.crs, src_nodata=0,
                  dst_transform=transform, dst_crs=crs, dst_nodata=0, resampling=Resampling.bilinear)
    for stem, pixels in ((TILE.format(PRE + "_heldout"), before), (TILE.format(POST + "_heldout"), after)):
        with rasterio.open(out / stem, "w", width=SIZE, height=SIZE, crs=crs, transform=transform, **PROFILE) as dst:
            dst.write(pixels)
    box = shapely.box(*rasterio.transform.array_bounds(SIZE, SIZE, transform))
    flood = json.loads((labels / f"naip_flood_{POST}.geojson").read_text(encoding="utf-8"))
    features = []
    for feature in flood["features"]:
        clipped = shapely.geometry.shape(feature["geometry"]).intersection(box)
        if clipped.area >= 400:  # 16 pixels of 5 m
            features.append({"type": "Feature", "properties": feature["properties"],
                             "geometry": shapely.geometry.mapping(clipped)})
    flood["features"] = features
    (out / f"naip_flood_{POST}_heldout.geojson").write_text(json.dumps(flood), encoding="utf-8")
    print(f"{len(features)} flood polygons, {sum(shapely.geometry.shape(f['geometry']).area for f in features) / 1e6:.3f} km2")


if __name__ == "__main__":
    main(*(Path(arg) for arg in sys.argv[1:4]))
