"""Burn scars at 30 m from MTBS fire bundles: Landsat true colour before and after, the scar as polygons.

An MTBS (Monitoring Trends in Burn Severity, USGS and USDA Forest Service, mtbs.gov; public domain) fire
bundle holds Landsat TOA reflectance before and after the fire (`<fire>_<yyyymmdd>_<sensor>_refl.tif`,
bands blue, green, red, NIR, SWIR1, SWIR2[, coastal, cirrus]) and the thematic burn severity on the same
30 m grid (`<fire>_<pre>_<post>_dnbr6.tif`: 1 unburned to low, 2 low, 3 moderate, 4 high, 5 increased
greenness, 6 no data). Per fire this writes both dates' true colour as 8-bit GeoTIFFs, stretched by one
per-band stretch shared by the two dates (so the scar is the real change, not a difference of stretches),
and the moderate and high severity areas, where the scar shows in true colour, as polygons with the field
GFM4D's inpainting reads (`notation: Burnt area`), so the after image's chips train on inpainting's burn
caption (a `gfm4d train` sources entry: the after image with `polygons:` and `disaster_type: fire`).

Fourmile Canyon (Colorado, 2010) goes to the demo's sample folder: `make demo` paints its scar into the
image from before the fire, beside the real image from after it. The other nine go to the training
folder (the 30 m burn experiment of docs/training.md).

    .venv/bin/python scripts/mtbs_burn_sources.py MTBS_FOLDER TRAINING_FOLDER engine/sample_data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
from skimage.morphology import opening, remove_small_objects

from engine.geo.masks import mask_polygons
from engine.geo.radiometry import Stretch
from engine.geo.vectors import write_polygons

# Fire folder -> (name, date before, date after): fires whose scar stands out in true colour on cloud-free,
# stripe-free Landsat (checked by eye); the after date is the first clear image showing the scar.
FIRES = {
    "Angora": ("angora", "20060812", "20080630"),
    "Canyon_Creek_2003": ("canyon_creek", "20020710", "20040808"),
    "Fern_Lake": ("fern_lake", "20100925", "20130917"),
    "Fourmile_Canyon": ("fourmile_canyon", "20100621", "20100925"),
    "Gaviota": ("gaviota", "20040425", "20050412"),
    "Hall_2003": ("hall", "20020709", "20040730"),
    "Jesusita": ("jesusita", "20080623", "20090626"),
    "South_Fork_2003": ("south_fork", "20020709", "20040730"),
    "Thompson_Ridge": ("thompson_ridge", "20110608", "20140616"),
    "Wragg": ("wragg", "20150711", "20150812"),
}
HELD_OUT = "fourmile_canyon"
TRUE_COLOUR = [3, 2, 1]
SCAR_CLASSES = (3, 4)  # moderate and high severity
PERCENTILES = (0.5, 99.5)
LARGEST_SPECK_PX = 11  # scar pieces of up to about a hectare are dropped


def reflectance(folder: Path, day: str) -> Path:
    (path,) = folder.glob(f"*_{day}_*refl.tif")
    return path


def true_colour(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(TRUE_COLOUR)


def shared_stretch(images: list[np.ndarray]) -> Stretch:
    """Per-band low and high percentiles over both dates' valid pixels."""
    valid = np.concatenate([image[:, (image > 0).all(axis=0)] for image in images], axis=1)
    low, high = np.percentile(valid.astype(np.float64), PERCENTILES, axis=1)
    return Stretch(low.astype(np.float32), np.maximum(high, low + 1).astype(np.float32), np.dtype(np.uint8))


def write_rgb(image: np.ndarray, stretch: Stretch, grid: dict, target: Path) -> None:
    valid = (image > 0).all(axis=0)
    rgb = np.where(valid, np.round(stretch.to_unit(image) * 254) + 1, 0).astype(np.uint8)  # 0 is nodata only
    profile = {"driver": "GTiff", "count": 3, "dtype": "uint8", "nodata": 0, "compress": "deflate", **grid}
    with rasterio.open(target, "w", **profile) as out:
        out.write(rgb)
        for band, name in enumerate(("red", "green", "blue"), start=1):
            out.set_band_description(band, name)


def severity_on_grid(severity_path: Path, images: list[Path]) -> tuple[np.ndarray, dict]:
    """The severity classes and the fire's grid, CRS from the severity raster: some bundles' reflectance
    files carry only a LOCAL_CS. The images must be on the severity raster's grid."""
    with rasterio.open(severity_path) as ds:
        for path in images:
            with rasterio.open(path) as image:
                if (image.width, image.height, image.transform) != (ds.width, ds.height, ds.transform):
                    raise SystemExit(f"{path.name} is not on the grid of {severity_path.name}")
        return ds.read(1), {"width": ds.width, "height": ds.height, "transform": ds.transform, "crs": ds.crs}


def write_scar(severity: np.ndarray, grid: dict, source: str, target: Path) -> int:
    scar = remove_small_objects(opening(np.isin(severity, SCAR_CLASSES), np.ones((2, 2), dtype=bool)), max_size=LARGEST_SPECK_PX)
    layer = mask_polygons(scar, grid["transform"], grid["crs"], {"notation": "Burnt area", "event_type": "fire"},
                          f"{source} moderate and high severity")
    write_polygons(layer, target)
    return len(layer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mtbs_folder", type=Path, help="folder of MTBS fire bundles, one sub-folder per fire")
    parser.add_argument("training_folder", type=Path, help="where the nine fires to train on go")
    parser.add_argument("sample_folder", type=Path, help="where the held-out fire the demo paints goes")
    args = parser.parse_args()
    for folder_name, (name, before, after) in FIRES.items():
        folder = args.mtbs_folder / folder_name
        output_folder = args.sample_folder if name == HELD_OUT else args.training_folder
        sources = [reflectance(folder, before), reflectance(folder, after)]
        (severity_path,) = folder.glob("*_dnbr6.tif")
        severity, grid = severity_on_grid(severity_path, sources)
        images = [true_colour(source) for source in sources]
        stretch = shared_stretch(images)
        for image, day in zip(images, (before, after)):
            write_rgb(image, stretch, grid, output_folder / f"mtbs_{name}_{day}_rgb.tif")
        count = write_scar(severity, grid, severity_path.name, output_folder / f"mtbs_{name}_{after}_burn.geojson")
        print(f"{name}: mtbs_{name}_{before}_rgb.tif, mtbs_{name}_{after}_rgb.tif and {count} scar polygons")


if __name__ == "__main__":
    main()
