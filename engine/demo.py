"""The demo: GFM4D-mini generates real-looking places, and paints a burn scar into a real tile.

Everything runs offline on the built-in model (trained by GFM4D on public-domain imagery; see its
model card). The places are where and at the scales the model learned: North Dakota farmland at
5 and 10 m, Florida and Virginia forest at 0.2 and 1 m, a Colorado town at 0.3 and 0.6 m,
Japanese mountains at 150 m. Each is generated on the place's UTM grid with its own metadata.

The sample tile is a public-domain NAIP aerial tile (USDA, 1 m, EPSG:26917, 2016-06-20 per its file
name). The demo also generates (1) onto that tile's exact grid, so the result lines up with it pixel
for pixel, (2) a larger area around it in EPSG:4326 at 2 m, several overlapping windows blended
into one seamless image, and (3) inpaints a burn scar polygon into the real tile: a post-event
image identical to the tile outside the feathered polygon, plus the polygon as a label raster.
Last, it paints two real events into the images from before them, beside what they really looked like:
the water of 2019-09-04 (mapped from that year's NAIP) over the dry 2009-08-18 NAIP image of the same
North Dakota ground at 5 m, in the part of both tiles that GFM4D's models never trained on, and the scar
of the Fourmile Canyon fire (Colorado, September 2010; MTBS burn severity) into Landsat's June 2010 image
at 30 m, a fire no model trained on. The events are painted by the built-in inpainting model,
GFM4D-mini-inpaint.
`overview.png` puts every result side by side with its caption.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from rasterio.warp import transform_bounds

from engine import config
from engine.geo.dates import acquisition_for_raster
from engine.geo.grid import grid_from_extent, grid_like, utm_square
from engine.geo.raster import open_raster
from engine.geo.vectors import PolygonLayer, read_polygons
from engine.geo.writer import write_preview_png
from engine.models.demo import build_demo_models
from engine.models.registry import ModelRegistry
from engine.pipelines.generate import GenerateRequest, generate
from engine.pipelines.inpaint import InpaintOutputs, InpaintRequest, inpaint

_SAMPLES = Path(__file__).parent / "sample_data"
SAMPLE = _SAMPLES / "m_3607824_se_17_1_20160620_sub.tif"
PROMPT = "a fmow satellite image of a forest in the united states"


@dataclass(frozen=True)
class RealEvent:
    """A real event the models never trained on: its polygons are painted into the image from before
    it, and the image from after it is shown beside."""

    name: str
    seed: int
    before: Path
    after: Path
    polygons: Path
    disaster_type: str
    date: str
    before_caption: str
    painted_caption: str
    after_caption: str


REAL_EVENTS = (
    RealEvent("flood", 4, _SAMPLES / "naip_m_4709963_se_14_1_20090818_heldout.tif",
              _SAMPLES / "naip_m_4709963_se_14_1_20190904_heldout.tif", _SAMPLES / "naip_flood_20190904_heldout.geojson",
              "flooding", "2019-09-04", "real NAIP, 5 m, dry 2009 (input)", "2019 flood polygons inpainted",
              "the real 2019 (never trained on)"),
    RealEvent("fire", 5, _SAMPLES / "mtbs_fourmile_canyon_20100621_rgb.tif",
              _SAMPLES / "mtbs_fourmile_canyon_20100925_rgb.tif", _SAMPLES / "mtbs_fourmile_canyon_20100925_burn.geojson",
              "fire", "2010-09-25", "real Landsat, 30 m, June 2010 (input)", "Fourmile Canyon scar inpainted",
              "the real Sept. 2010 (never trained on)"),
)


@dataclass(frozen=True)
class Place:
    name: str
    prompt: str
    lon: float
    lat: float
    gsd_m: float
    size_px: int
    date: str | None


PLACES = (
    Place("farmland_5m", "a fmow satellite image of a farm in the united states", -99.17, 47.03, 5, 512, "2018-07-16"),
    Place("farmland_10m", "a fmow satellite image of a farm in the united states", -99.17, 47.03, 10, 512, "2018-07-16"),
    Place("forest_0.2m", "a fmow satellite image of a forest in the united states", -81.99, 29.69, 0.2, 384, "2018-06-15"),
    Place("forest_1m", "a fmow satellite image of a forest in the united states", -78.0, 36.62, 1, 384, "2016-06-20"),
    Place("town_0.3m", "a fmow satellite image of a town in the united states", -104.775, 38.954, 0.3, 384, "2014-04-15"),
    Place("town_0.6m", "a fmow satellite image of a town in the united states", -104.775, 38.954, 0.6, 384, "2014-04-15"),
    Place("mountains_150m", "a fmow satellite image of a mountain in japan", 139.5, 36.8, 150, 512, "2015-05-02"),
)


def run_demo(output_dir: Path, models_dir: Path, steps: int = 30, model_name: str | None = None,
             inpaint_model_name: str | None = None) -> Iterator[str]:
    """Run the demo, yielding a line for each thing done and where its files are. The events are painted by
    `inpaint_model_name` (default: the built-in inpainting model, or `model_name` when only that is given)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    build_demo_models(models_dir)  # the tiny predict / super-resolution models the README's examples use
    device = config.device()
    registry = ModelRegistry(models_dir, config.sd21_dir())
    model = registry.load(model_name or config.BUILTIN_MODEL, device=device, dtype=config.dtype_for(device))
    inpainter = registry.load(inpaint_model_name or model_name or config.BUILTIN_INPAINT_MODEL,
                              device=device, dtype=config.dtype_for(device))
    yield f"models: {model.info.display_name} ({model.info.path}), inpainting: {inpainter.info.display_name}"
    captions = []
    for index, place in enumerate(PLACES):
        grid = utm_square(place.lon, place.lat, place.gsd_m, place.size_px)
        request = GenerateRequest(grid=grid, prompt=place.prompt, date=place.date, cloud_cover=0.0, steps=steps, seed=10 + index)
        yield _run(model, request, output_dir / f"{place.name}.tif")
        captions.append((output_dir / f"{place.name}.png", f"{place.name.replace('_', ' ')} (generated)"))

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
    # A burn scar: 60 m x 40 m in the tile's north-west clearing, one week after the acquisition.
    yield _inpaint(inpainter, SAMPLE, _pixel_polygon(SAMPLE, [(40, 30), (100, 35), (95, 70), (45, 75)], "Burnt area"),
                   "fire", "2016-06-27", output_dir / "inpainted_burn_scar", steps, seed=3)
    zoom = _zoom_png(output_dir / "inpainted_burn_scar.png", (10, 0, 130, 120), output_dir / "inpainted_burn_scar_zoom.png")
    captions += [(output_dir / "generated_wide_epsg4326.png", "wider area, 2 m, blended windows"),
                 (output_dir / "generated_on_sample_grid.png", "generated on the NAIP tile's grid, 1 m"),
                 (output_dir / "sample_input.png", "real NAIP tile, 1 m (input)"),
                 (output_dir / "inpainted_burn_scar.png", "burn scar polygon inpainted"),
                 (zoom, "the burn scar, zoomed in")]
    # Real events painted into the image from before them, beside the image from after them.
    for event in REAL_EVENTS:
        before, after = output_dir / f"{event.name}_before.png", output_dir / f"{event.name}_real.png"
        write_preview_png(event.before, before)
        write_preview_png(event.after, after)
        yield _inpaint(inpainter, event.before, read_polygons(event.polygons), event.disaster_type, event.date,
                       output_dir / f"inpainted_{event.name}", steps, seed=event.seed)
        captions += [(before, event.before_caption), (output_dir / f"inpainted_{event.name}.png", event.painted_caption),
                     (after, event.after_caption)]
    overview = _overview(captions, output_dir / "overview.png")
    yield f"previews: {overview} (all results), {output_dir / 'sample_input.png'} (the real sample) and the .png beside each GeoTIFF"


def _pixel_polygon(image: Path, corners_px: list[tuple[float, float]], notation: str) -> PolygonLayer:
    """One event polygon, drawn in the image's pixels, in the image's CRS."""
    import shapely

    with open_raster(image) as source:
        info = source.info
    area = shapely.Polygon([info.transform @ corner for corner in corners_px])
    return PolygonLayer([area], [{"notation": notation}], info.crs, f"demo {notation.lower()}")


def _inpaint(model, image: Path, polygons: PolygonLayer, disaster_type: str, date: str, stem: Path, steps: int,
             seed: int) -> str:
    """Paint event polygons (classed by their `notation`) into a real raster; the label raster beside it."""
    outputs = InpaintOutputs(stem.with_suffix(".tif"), stem.with_name(stem.name + "_label.tif"))
    result = inpaint(model, InpaintRequest(image=image, polygons=polygons, class_field="notation",
                                           disaster_type=disaster_type, date=date, steps=steps, seed=seed), outputs)
    preview = write_preview_png(outputs.image, outputs.image.with_suffix(".png"))
    return (f"wrote {outputs.image} ({disaster_type} painted into {image.name}; {result.windows} of "
            f"{result.windows_total} windows processed) with its label {outputs.label} and {preview}")


def _zoom_png(png: Path, box: tuple[int, int, int, int], path: Path) -> Path:
    """A crop of a preview (left, top, right, bottom in its pixels), so a small painted area can be judged."""
    from PIL import Image

    Image.open(png).convert("RGB").crop(box).save(path)
    return path


def _run(model, request: GenerateRequest, path: Path) -> str:
    result = generate(model, request, path)
    preview = write_preview_png(path, path.with_suffix(".png"))
    grid = result.grid
    return (f"wrote {path} ({grid.width} x {grid.height} px, {grid.crs.to_string()}, {result.windows} windows, "
            f"{result.seconds:.1f} s) and {preview}")


def _overview(captions: list[tuple[Path, str]], path: Path) -> Path:
    import numpy as np
    from PIL import Image

    from engine.training.report import grid_png

    tiles = [np.asarray(Image.open(png).convert("RGB").resize((256, 256), Image.LANCZOS)) for png, _ in captions]
    return grid_png(tiles, [label for _, label in captions], 3, path, tile=256)
