"""Flood polygons for GFM4D-mini's North Dakota NAIP series: water over land that was dry in 2009.

The ten NAIP acquisitions of tile m_4709963_se (2009-2020) cover prairie potholes in a wet cycle: the
lakes spread over fields and pasture after 2009 (the driest date, 12% water). Water is found
per date from NAIP's own NIR band (NDWI = (G - NIR) / (G + NIR) above the date's Otsu threshold,
opened by 1 px, pieces under 20 px dropped); a date's flooded area is its water outside the 2009 water
grown by 2 px (10 m of shoreline tolerance), pieces under 40 px (1,000 m^2) dropped. Dates whose NDWI
has no water mode (Otsu's threshold below 0: bare soil, not water, is what it separates) get no
labels. The polygons are written, one GeoJSON per date in the tile's CRS, with the field GFM4D's
inpainting reads (`notation: Flooded area`), so their chips train on inpainting's flood caption.

    .venv/bin/python scripts/naip_flood_labels.py ../shared/data/train recipes/gfm4d-mini/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
from rasterio.warp import Resampling, reproject
from skimage.filters import threshold_otsu
from skimage.morphology import dilation, disk, opening, remove_small_objects

from engine.geo.masks import mask_polygons
from engine.geo.vectors import write_polygons

REFERENCE_DATE = "20090818"
TILE = "naip_m_4709963_se_14_1_"


def water(path: Path) -> tuple[np.ndarray | None, float, rasterio.DatasetReader]:
    """The date's water mask (None when its NDWI has no water mode), its threshold, and its dataset's profile."""
    with rasterio.open(path) as ds:
        green, nir = (ds.read(b).astype(np.float32) for b in (2, 4))
        valid = ds.read_masks(1) > 0
        profile = {"crs": ds.crs, "transform": ds.transform, "shape": (ds.height, ds.width)}
    ndwi = (green - nir) / np.maximum(green + nir, 1e-6)
    threshold = float(threshold_otsu(ndwi[valid]))
    if threshold < 0:
        return None, threshold, profile
    mask = opening((ndwi > threshold) & valid, disk(1))
    return remove_small_objects(mask, max_size=20), threshold, profile


def on_grid(mask: np.ndarray, source: dict, target: dict) -> np.ndarray:
    """`mask` resampled (nearest) from one date's grid onto another's: the dates' origins differ by a pixel or so."""
    out = np.zeros(target["shape"], dtype=np.uint8)
    reproject(mask.astype(np.uint8), out, src_transform=source["transform"], src_crs=source["crs"],
              dst_transform=target["transform"], dst_crs=target["crs"], resampling=Resampling.nearest)
    return out.astype(bool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("naip_folder", type=Path)
    parser.add_argument("output_folder", type=Path)
    args = parser.parse_args()
    reference, _, ref_profile = water(args.naip_folder / f"{TILE}{REFERENCE_DATE}.tif")
    dry = dilation(reference, disk(2))
    for path in sorted(args.naip_folder.glob(f"{TILE}*.tif")):
        date = path.stem.rsplit("_", 1)[-1]
        if date == REFERENCE_DATE:
            continue
        mask, threshold, profile = water(path)
        if mask is None:
            print(f"{date}: no water mode in NDWI (Otsu {threshold:.2f}); no labels")
            continue
        flooded = remove_small_objects(mask & ~on_grid(dry, ref_profile, profile), max_size=40)
        layer = mask_polygons(flooded, profile["transform"], profile["crs"],
                              {"notation": "Flooded area", "event_type": "flood"}, f"{path.name} flood")
        out = write_polygons(layer, args.output_folder / f"naip_flood_{date}.geojson")
        print(f"{date}: Otsu {threshold:.2f}, flooded {flooded.mean():.1%} of the tile, {len(layer)} polygons -> {out}")


if __name__ == "__main__":
    main()
