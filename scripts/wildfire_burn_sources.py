"""Burn scars for GFM4D-mini: true-colour Sentinel-2 chips of California fires with their CAL FIRE perimeters.

Reads the `data_example/` chips of github.com/Runan-Duan/Wildfire_Detection (Sentinel-2 L2A after the fire,
bands TCI_R, TCI_G, TCI_B, B8, B12; the perimeter rasterised on the same grid) and writes, per fire, the
true-colour bands as an 8-bit GeoTIFF and the perimeter as polygons with the field GFM4D's inpainting
reads (`notation: Burnt area`), so their chips train on inpainting's burn caption.

    .venv/bin/python scripts/wildfire_burn_sources.py WILDFIRE_DETECTION/data_example recipes/gfm4d-mini/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio

from engine.geo.masks import mask_polygons
from engine.geo.vectors import write_polygons

# Fires whose scar stands out in true colour and whose mask follows it (checked by eye on each chip).
FIRES = ("APACHE_20240624", "CAMPBELL_20241028", "CANAL_20240530", "CLEAR_20240626", "CODY_20240608",
         "CREEK_20240726", "FRENCH_20240704", "GROVE_2_20240724", "HERNANDEZ_20240615", "SKY_20240619",
         "TULEDAD_20241006", "WATER_20240621")


def write_rgb(source: Path, target: Path) -> None:
    with rasterio.open(source) as ds:
        tci = ds.read([1, 2, 3])
        profile = {"driver": "GTiff", "width": ds.width, "height": ds.height, "count": 3, "dtype": "uint8",
                   "crs": ds.crs, "transform": ds.transform, "nodata": 0, "compress": "deflate"}
    valid = np.isfinite(tci).all(axis=0)
    rgb = np.where(valid, np.clip(np.nan_to_num(tci), 1, 255), 0).astype(np.uint8)  # 0 is nodata only
    with rasterio.open(target, "w", **profile) as out:
        out.write(rgb)
        out.set_band_description(1, "TCI_R")
        out.set_band_description(2, "TCI_G")
        out.set_band_description(3, "TCI_B")


def write_perimeter(mask_path: Path, target: Path) -> int:
    with rasterio.open(mask_path) as ds:
        layer = mask_polygons(ds.read(1) == 1, ds.transform, ds.crs, {"notation": "Burnt area", "event_type": "fire"},
                              f"{mask_path.name} perimeter")
    write_polygons(layer, target)
    return len(layer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_example", type=Path)
    parser.add_argument("output_folder", type=Path)
    args = parser.parse_args()
    for fire in FIRES:
        stem = f"calfire_{fire.lower()}"
        write_rgb(args.data_example / "post_fire" / f"{fire}.tif", args.output_folder / f"{stem}_s2_rgb.tif")
        count = write_perimeter(args.data_example / "masks" / f"{fire}.tif", args.output_folder / f"{stem}_burn.geojson")
        print(f"{fire}: {stem}_s2_rgb.tif and {count} perimeter polygons")


if __name__ == "__main__":
    main()
