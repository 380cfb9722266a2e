"""The demo: build the demo models, then generate over the bundled real sample area.

The sample is a public-domain NAIP aerial tile (USDA, 1 m, EPSG:26917, 2016-06-20 per its file
name). The demo generates (1) onto that tile's exact grid, so the result lines up with it pixel
for pixel, conditioned on the tile's date read from its file name, and (2) a larger area around
it in EPSG:4326 at 2 m, which takes several overlapping windows blended into one seamless image,
and (3) inpaints a burn scar polygon into the real tile: a post-event image identical to the tile
outside the feathered polygon, plus the polygon as a label raster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from rasterio.warp import transform_bounds

from engine import config
from engine.geo.dates import acquisition_for_raster
from engine.geo.grid import grid_from_extent, grid_like
from engine.geo.raster import open_raster
from engine.geo.writer import write_preview_png
from engine.models.demo import build_demo_models
from engine.models.registry import ModelRegistry
from engine.geo.vectors import PolygonLayer
from engine.pipelines.generate import GenerateRequest, generate
from engine.pipelines.inpaint import InpaintOutputs, InpaintRequest, inpaint

SAMPLE = Path(__file__).parent / "sample_data" / "m_3607824_se_17_1_20160620_sub.tif"
PROMPT = "a fmow satellite image of a farm in the united states"


def run_demo(output_dir: Path, models_dir: Path, steps: int = 20) -> Iterator[str]:
    """Run the demo, yielding a line for each thing done and where its files are."""
    output_dir.mkdir(parents=True, exist_ok=True)
    build_demo_models(models_dir)
    yield f"demo models ready in {models_dir}"
    device = config.device()
    model = ModelRegistry(models_dir, config.sd21_dir()).load(config.DEMO_MODEL, device=device, dtype=config.dtype_for(device))

    with open_raster(SAMPLE) as source:
        info = source.info
    acquisition = acquisition_for_raster(SAMPLE)
    yield f"sample area: {SAMPLE.name}, {info.width} x {info.height} px, {info.crs.to_string()}, acquired {acquisition.date} (from the {acquisition.source})"
    write_preview_png(SAMPLE, output_dir / "sample_input.png")

    on_grid = GenerateRequest(grid=grid_like(info.crs, info.transform, info.width, info.height), prompt=PROMPT,
                              date=acquisition.date, steps=steps, seed=1)
    yield _run(model, on_grid, output_dir / "generated_on_sample_grid.tif")

    left, bottom, right, top = transform_bounds(info.crs, "EPSG:4326", *info.bounds)
    half_w, half_h = (right - left), (top - bottom)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    wide = GenerateRequest(
        grid=grid_from_extent((cx - half_w, cy - half_h, cx + half_w, cy + half_h), "EPSG:4326", resolution_m=2.0),
        prompt=PROMPT, date=acquisition.date, cloud_cover=0.0, steps=steps, seed=2,
    )
    yield _run(model, wide, output_dir / "generated_wide_epsg4326.tif")
    yield _inpaint_burn_scar(model, info, output_dir)
    yield f"previews: {output_dir / 'sample_input.png'} (the real sample) and the .png beside each GeoTIFF"


def _inpaint_burn_scar(model, info, output_dir: Path) -> str:
    """A 60 m x 40 m burn scar in the tile's north-west clearing, one week after the acquisition."""
    import shapely

    left, top = info.transform @ (40, 30)
    scar = shapely.Polygon([(left, top), (left + 60, top - 5), (left + 55, top - 40), (left + 5, top - 45)])
    layer = PolygonLayer([scar], [{"notation": "Burnt area"}], info.crs, "demo burn scar")
    outputs = InpaintOutputs(output_dir / "inpainted_burn_scar.tif", output_dir / "inpainted_burn_scar_label.tif")
    result = inpaint(model, InpaintRequest(image=SAMPLE, polygons=layer, class_field="notation", disaster_type="fire",
                                           date="2016-06-27", steps=20, seed=3), outputs)
    preview = write_preview_png(outputs.image, outputs.image.with_suffix(".png"))
    return (f"wrote {outputs.image} (the sample with a burn scar painted in; {result.windows} of "
            f"{result.windows_total} windows processed) with its label {outputs.label} and {preview}")


def _run(model, request: GenerateRequest, path: Path) -> str:
    result = generate(model, request, path)
    preview = write_preview_png(path, path.with_suffix(".png"))
    grid = result.grid
    return (f"wrote {path} ({grid.width} x {grid.height} px, {grid.crs.to_string()}, {result.windows} windows, "
            f"{result.seconds:.1f} s) and {preview}")
