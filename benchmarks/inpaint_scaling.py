"""Inpainting cost versus raster size: a few small polygons on a huge raster and on a small one.

Each case runs in a fresh process so its peak memory (max RSS) is its own. The large raster is
synthetic (tiled, compressed uint8 RGB in UTM); the polygons are the same few small squares in
both cases. Model work follows the masked area; reading and rewriting the raster (the output is
a full copy of the input on its grid) follows the raster size at disk speed.

    .venv/bin/python benchmarks/inpaint_scaling.py --size 20000 --work /tmp/gfm4d-bench
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ORIGIN = (500000.0, 4100000.0)  # UTM 33N, 1 m pixels
CRS = "EPSG:32633"


def make_raster(path: Path, size: int) -> None:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    if path.exists():
        return
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs=CRS,
                   transform=from_origin(ORIGIN[0], ORIGIN[1] + size, 1.0, 1.0), tiled=True,
                   blockxsize=512, blockysize=512, compress="DEFLATE", BIGTIFF="IF_SAFER")
    block = 2048
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, block):
            for col in range(0, size, block):
                h, w = min(block, size - row), min(block, size - col)
                rr, cc = np.mgrid[row : row + h, col : col + w]
                texture = ((rr // 7 + cc // 11) % 64 + 96).astype(np.uint8)
                dst.write(np.stack([texture, texture + 20, texture - 30]), window=Window(col, row, w, h))


def make_polygons(path: Path, size: int) -> None:
    """Three 40 m squares near the raster's lower-left corner (inside a 512 px raster too)."""
    features = []
    for i, (x, y) in enumerate([(60, 60), (200, 120), (330, 300)]):
        x0, y0 = ORIGIN[0] + x, ORIGIN[1] + y
        ring = [[x0, y0], [x0 + 40, y0], [x0 + 40, y0 + 40], [x0, y0 + 40], [x0, y0]]
        features.append({"type": "Feature", "properties": {"subtype": "destroyed"}, "geometry": {"type": "Polygon", "coordinates": [ring]}})
    path.write_text(json.dumps({"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}, "features": features}))


def run_case(raster: Path, polygons: Path, models: Path, out: Path, steps: int) -> dict:
    """Runs inside the child process."""
    from engine.models.registry import ModelRegistry
    from engine.pipelines.inpaint import InpaintOutputs, InpaintRequest, inpaint

    model = ModelRegistry(models).load("demo-satunet")
    started = time.perf_counter()
    result = inpaint(model, InpaintRequest(image=raster, polygons=polygons, class_field="subtype", disaster_type="fire",
                                           steps=steps, guidance_scale=7.5, seed=0),
                     InpaintOutputs(out / f"{raster.stem}_post.tif", out / f"{raster.stem}_label.tif"))
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mb": peak_mb, "windows": result.windows, "windows_total": result.windows_total,
            **result.timings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000, help="side of the large raster in pixels")
    parser.add_argument("--small", type=int, default=512, help="side of the small raster in pixels")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--work", type=Path, default=Path("bench_work"))
    parser.add_argument("--case", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        raster, polygons, models, out = map(Path, args.case)
        print(json.dumps(run_case(raster, polygons, models, out, args.steps)))
        return

    from engine.models.demo import build_demo_models

    args.work.mkdir(parents=True, exist_ok=True)
    models = args.work / "models"
    build_demo_models(models)
    polygons = args.work / "squares.geojson"
    make_polygons(polygons, args.size)
    rows = []
    for size in (args.small, args.size):
        raster = args.work / f"raster_{size}.tif"
        make_raster(raster, size)
        out = args.work / f"out_{size}"
        out.mkdir(exist_ok=True)
        proc = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--case", str(raster), str(polygons),
                               str(models), str(out)], capture_output=True, text=True, check=True)
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append((size, figures))
    print(f"machine: {platform.processor() or platform.machine()}, {platform.system()}, python {platform.python_version()}")
    print(f"{'raster':>14} | {'windows run / all':>18} | {'total s':>7} | {'plan s':>6} | {'model s':>7} | {'write s':>7} | {'peak RSS MB':>11}")
    for size, f in rows:
        print(f"{size:>6} x {size:<6}| {f['windows']:>7} / {f['windows_total']:<9}| {f['seconds']:>7.1f} | {f['plan']:>6.1f} | "
              f"{f['model']:>7.1f} | {f['write']:>7.1f} | {f['peak_mb']:>11.0f}")


if __name__ == "__main__":
    main()
