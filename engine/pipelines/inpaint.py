"""Inpaint: a pre-event raster + disaster polygons -> a post-event raster whose damage location is known.

Only the model windows that the (dilated, feathered) mask reaches are processed, grouped into
disjoint regions, so work and memory follow the masked area, not the raster. In each region the
visible bands are mapped to the model's range, VAE-encoded, and denoised with the post-event
prompt of the window's dominant damage class and the window's own metadata. The UNet decides the
method: a 9-channel inpainting UNet gets the mask and the masked image's latents as extra input
channels; any other UNet (DiffusionSat's SatUNet included) keeps the unmasked latents by masked
latent blending. The decoded pixels are composited with the feathered mask and mapped back to the
input's dtype and range: outside the mask every output value is the input's, bit for bit, and
bands the model cannot synthesise (NIR, ...) are copied unchanged.

Outputs: the post-event raster on the input's grid with the input's bands (an alpha band stays the
alpha band, graded values kept), type, nodata, mask, scale/offset and colour interpretation; a
palette raster is written as the RGB it shows. Painted pixels never take the nodata value and are
never masked. Beside it a label raster of class codes (0 = no change, 255 = nodata where the input
has no data), and optionally the label polygons.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from rasterio.enums import ColorInterp
from rasterio.windows import Window

from engine import __version__
from engine.errors import InputError
from engine.geo.dates import parse_date
from engine.geo.damage_classes import PolygonClasses, classify_polygons
from engine.geo.grid import OutputGrid
from engine.geo.masks import dilate, label_raster, place_on_grid, soft_mask, windows_touching_mask
from engine.geo.metadata import SatMetadata, centre_lonlat, gsd_metres
from engine.geo.radiometry import Stretch, stretch_for_source
from engine.geo.raster import RasterSource, open_raster, require_rgb
from engine.geo.tiling import Span, group_overlapping, plan_windows
from engine.geo.vectors import PolygonLayer, read_polygons, write_polygons
from engine.geo.writer import GeoTIFFWriter, check_destination
from engine.models.layout import FLUX_FILL_TRANSFORMER
from engine.pipelines.captions import metadata_caption
from engine.pipelines.canvas import context_blocks, decode_in_blocks, encode_pixels
from engine.pipelines.sampling import (
    CancelCheck,
    CanvasJob,
    Progress,
    ProgressCallback,
    SamplerSettings,
    check_cancel,
    denoise_canvas,
    effective_start,
    encode_prompt,
    position_noise,
)

LABEL_NODATA = 255
_COPY_BLOCK = 1024


@dataclass(kw_only=True)
class InpaintRequest(SamplerSettings):
    image: Path
    polygons: Path | PolygonLayer
    class_field: str | None = None
    class_prompts: dict | None = None  # {class name or code: prompt}
    inpaint_classes: dict | None = None  # {class name or code: bool}, overrides the defaults
    disaster_type: str | None = None  # flooding, fire, wind, earthquake, tsunami, volcano
    prompt: str | None = None  # one prompt for every class, overriding the class prompts
    date: dt.date | None = None  # post-event date for the metadata
    strength: float = 1.0
    dilation_m: float = 0.0
    feather_m: float | None = None  # default: three pixels
    rgb_bands: tuple[int, int, int] | None = None


@dataclass
class InpaintOutputs:
    image: Path
    label: Path
    polygons: Path | None = None


@dataclass
class InpaintResult:
    outputs: InpaintOutputs
    regions: int
    windows: int
    windows_total: int
    polygons_used: int
    report: str
    seconds: float
    tags: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: plan, model, write


@dataclass
class _Plan:
    """What the request resolves to on this raster."""

    grid: OutputGrid
    rgb: tuple[int, int, int]
    classes: PolygonClasses
    placed: object  # MaskPolygons
    inpaint_mask_polygons: object  # dilated MaskPolygons of the inpainted classes
    only: list[bool]
    feather_m: float
    stretch: Stretch
    prompts: list[str]
    prompt_of_code: dict[int, int]
    nodata: float | None  # the value painted pixels must not take


def _validate(request: InpaintRequest, model) -> tuple[int, int]:
    if not 0.0 < request.strength <= 1.0:
        raise InputError(f"strength must be in (0, 1], not {request.strength}")
    if request.dilation_m < 0 or (request.feather_m is not None and request.feather_m < 0):
        raise InputError("dilation and feather are distances in metres and cannot be negative")
    return request.window_cells(model)


def _plan(request: InpaintRequest, source: RasterSource) -> _Plan:
    info = source.info
    if info.source_orientation != "north-up":
        raise InputError(
            f"{info.path} is {info.source_orientation}; inpainting writes on the input's own grid, which must be "
            "north-up: warp it first (gdalwarp -t_srs <its CRS> in.tif north_up.tif)"
        )
    rgb = require_rgb(info)
    grid = OutputGrid(info.crs, info.transform, info.width, info.height)
    layer = request.polygons if isinstance(request.polygons, PolygonLayer) else read_polygons(request.polygons)
    classes = classify_polygons(layer, request.class_field, disaster_type=request.disaster_type,
                                prompts=request.class_prompts, inpaint=request.inpaint_classes)
    feather_m = request.feather_m if request.feather_m is not None else 3 * min(info.pixel_size_m)
    placed = place_on_grid(layer, grid, margin_m=request.dilation_m + feather_m)
    inpainted = set(classes.inpainted_codes)
    only = [int(code) in inpainted for code in classes.codes]
    if not any(only[i] for i in placed.indices):
        names = sorted({classes.classes[int(c)].name for c in classes.codes[placed.indices]})
        raise InputError(
            f"none of the polygons on the raster is of a class that is inpainted (classes there: {', '.join(names)}); "
            "choose the class field, or switch classes on with inpaint_classes (e.g. {'no-damage': true})"
        )
    codes_used = sorted({int(c) for c, keep in zip(classes.codes, only) if keep})
    prompts = [request.prompt] if request.prompt else [classes.prompt(c) for c in codes_used]
    prompt_of_code = {c: (0 if request.prompt else i) for i, c in enumerate(codes_used)}
    return _Plan(
        grid=grid, rgb=rgb, classes=classes, placed=placed,
        inpaint_mask_polygons=dilate(placed, request.dilation_m), only=only, feather_m=feather_m,
        stretch=stretch_for_source(source, rgb), prompts=prompts, prompt_of_code=prompt_of_code,
        nodata=None if info.is_palette else info.nodata,
    )


def _cell_window(span: Span, factor: int) -> Window:
    return Window(span.col * factor, span.row * factor, span.width * factor, span.height * factor)


def _dominant_prompt(plan: _Plan, window: Window) -> int:
    """The prompt row of the most frequent inpainted class in a window."""
    labels = label_raster(plan.placed, plan.classes, plan.grid, window)
    counts = {code: int((labels == code).sum()) for code in plan.prompt_of_code}
    return plan.prompt_of_code[max(counts, key=lambda c: (counts[c], c))]


def _region_pixels(source: RasterSource, plan: _Plan, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Visible bands of a region in [-1, 1] (invalid pixels at mid-grey) and their validity."""
    data = source.read(window, bands=list(plan.rgb))
    valid = ~np.ma.getmaskarray(data).any(axis=0)
    unit = plan.stretch.to_unit(np.ma.getdata(data))
    unit[:, ~valid] = 0.5
    return unit * 2.0 - 1.0, valid


@dataclass
class InpaintPlan:
    """A request resolved on its raster: the mask's plan and the disjoint regions of windows it reaches.

    Regions share no latent cell and each depends only on the request and the raster, so they
    may be inpainted in any order and in any process (engine.scaleout) with the same pixels.
    """

    plan: _Plan
    regions: list[tuple[Span, list[Span]]]  # each region and its windows (absolute latent cells)
    windows: int
    windows_total: int
    overlap_cells: int
    steps_run: int  # denoising steps per region (fewer than `steps` when strength < 1)


def prepare_request(request: InpaintRequest, outputs: InpaintOutputs) -> InpaintRequest:
    """The request with its date parsed, once its destinations are known to be writable."""
    for path in (outputs.image, outputs.label):
        check_destination(path)
    return replace(request, date=parse_date(request.date) if request.date else None)


def plan_inpaint(model, request: InpaintRequest, source: RasterSource) -> InpaintPlan:
    """Which windows the (dilated, feathered) mask reaches on `source`, grouped into disjoint regions."""
    window_cells, overlap_cells = _validate(request, model)
    f = model.vae_scale_factor
    plan = _plan(request, source)
    grid = plan.grid
    rows, cols = max(math.ceil(grid.height / f), window_cells), max(math.ceil(grid.width / f), window_cells)
    all_windows = plan_windows(rows, cols, window_cells, overlap_cells)
    touched = windows_touching_mask(plan.inpaint_mask_polygons, grid, [_cell_window(s, f) for s in all_windows],
                                    0.0, plan.feather_m, only=plan.only)
    touched_set = {(int(w.row_off), int(w.col_off)) for w in touched}
    chosen = [s for s in all_windows if (s.row * f, s.col * f) in touched_set]
    return InpaintPlan(plan, group_overlapping(chosen), len(chosen), len(all_windows), overlap_cells,
                       request.steps - effective_start(request.steps, request.strength))


def prompt_text(model, request: InpaintRequest, job: InpaintPlan):
    """The embedded class prompts every region shares (None: the backbone reads per-window captions)."""
    if model.info.metadata_caption:
        return None
    return encode_prompt(model, job.plan.prompts, request.negative_prompt, request.guidance(model))


def inpaint_region(model, request: InpaintRequest, job: InpaintPlan, source: RasterSource, index: int, text,
                   on_step=None, cancel: CancelCheck | None = None) -> tuple[Window, np.ndarray, np.ndarray]:
    """Region number `index`: its pixel window, composited pixels (visible bands, input dtype) and soft mask."""
    region, windows = job.regions[index]
    pixels, soft = _inpaint_region(model, request, job.plan, source, region, windows, job.overlap_cells, text,
                                   on_step, cancel)
    return _cell_window(region, model.vae_scale_factor), pixels, soft


def write_inpaint(model, request: InpaintRequest, job: InpaintPlan, source: RasterSource, results, outputs: InpaintOutputs,
                  cancel: CancelCheck | None, started: float, timings: dict[str, float]) -> InpaintResult:
    """Write the outputs from the regions' results (atomically) and describe them."""
    written = time.perf_counter()
    tags = _tags(request, model, job.plan, source)
    _write_outputs(source, job.plan, results, outputs, tags, cancel)
    finished = time.perf_counter()
    return InpaintResult(
        outputs=outputs, regions=len(job.regions), windows=job.windows, windows_total=job.windows_total,
        polygons_used=job.plan.placed.report.used, report=job.plan.placed.report.summary(),
        seconds=finished - started, tags=tags, timings={**timings, "write": finished - written},
    )


def inpaint(
    model,
    request: InpaintRequest,
    outputs: InpaintOutputs,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> InpaintResult:
    """Inpaint the request's polygons into its raster; write the outputs atomically."""
    started = time.perf_counter()
    request = prepare_request(request, outputs)
    with open_raster(request.image, rgb_bands=request.rgb_bands) as source:
        job = plan_inpaint(model, request, source)
        count = len(job.regions)
        total = count * job.steps_run + count + 1
        done = 0

        def report(message: str) -> None:
            if progress is not None:
                progress(Progress(done, total, message))

        report("starting")  # the job's size is known before its first step
        planned = time.perf_counter()
        text = prompt_text(model, request, job)
        results: list[tuple[Window, np.ndarray, np.ndarray]] = []
        for index in range(count):
            check_cancel(cancel)

            def on_step(step: int, index=index) -> None:
                nonlocal done
                done += 1
                report(f"region {index + 1}/{count}: step {step}/{job.steps_run}")

            results.append(inpaint_region(model, request, job, source, index, text, on_step, cancel))
            done += 1
            report(f"region {index + 1}/{count} decoded")

        result = write_inpaint(model, request, job, source, results, outputs, cancel, started,
                               {"plan": planned - started, "model": time.perf_counter() - planned})
        done = total
        report("written")
        return result


def _inpaint_region(model, request, plan: _Plan, source, region: Span, windows: list[Span], overlap_cells: int,
                    text, on_step, cancel) -> tuple[np.ndarray, np.ndarray]:
    """Inpaint one region; return its composited pixels (visible bands, input dtype) and soft mask."""
    f = model.vae_scale_factor
    window = _cell_window(region, f)
    image, valid = _region_pixels(source, plan, window)
    soft = soft_mask(plan.inpaint_mask_polygons, plan.grid, window, plan.feather_m, only=plan.only)
    soft[~valid] = 0.0
    image_t = torch.from_numpy(image)[None]
    latents = encode_pixels(model, image_t)
    # A latent cell is regenerated if any of its pixels is touched by the mask.
    cell_mask = torch.from_numpy(soft > 0).float()[None, None]
    cell_mask = torch.nn.functional.max_pool2d(cell_mask, f)
    local = [s.relative_to(region) for s in windows]
    job = CanvasJob(
        noise=position_noise(request.seed, region, model.latent_channels),
        windows=local,
        window_metadata=_metadata(model, plan, region, local, request),
        overlap=overlap_cells,
        window_prompts=[_dominant_prompt(plan, _cell_window(s, f)) for s in windows],
        init=latents,
        strength=request.strength,
    )
    if model.info.metadata_caption:
        captions = [metadata_caption(plan.prompts[p], m)
                    for p, m in zip(job.window_prompts, _window_metadata(plan, region, local, request, f))]
        unique = list(dict.fromkeys(captions))
        text = encode_prompt(model, unique, request.negative_prompt, request.guidance(model))
        job.window_prompts = [unique.index(c) for c in captions]
    method = _method(model)
    if method == "inpainting-unet":
        masked_image = image_t * (torch.from_numpy(soft)[None, None] == 0)
        job.extra_channels = torch.cat([cell_mask, encode_pixels(model, masked_image)], dim=1)
    elif method == "flux-fill":
        job.extra_channels = flux_fill_conditioning(model, image_t, torch.from_numpy((soft > 0).astype(np.float32))[None, None])
    else:
        job.known, job.known_mask = latents, 1.0 - cell_mask
    generator = torch.Generator().manual_seed(request.seed)
    out = denoise_canvas(model, model.make_scheduler(request.scheduler), job, text,
                         num_inference_steps=request.steps, guidance_scale=request.guidance(model),
                         batch_size=request.batch_size, generator=generator, on_step=on_step, cancel=cancel)
    generated = _decode(model, out)
    original = np.ma.getdata(source.read(window, bands=list(plan.rgb)))
    unit = (generated + 1.0) / 2.0
    blended = plan.stretch.to_unit(original) * (1 - soft) + unit * soft
    painted = soft > 0
    composite = np.where(painted[None], plan.stretch.from_unit(blended), original)
    return avoid_value(composite, painted, plan.nodata), soft


def flux_fill_conditioning(model, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """FLUX Fill's extra input channels, unpacked: the masked image's latents, then the (1, 1, H, W)
    pixel mask (1 = repaint) folded into f*f channels per latent cell, as FluxFillPipeline lays them out."""
    f = model.vae_scale_factor
    h, w = mask.shape[-2] // f, mask.shape[-1] // f
    folded = mask[:, 0].view(1, h, f, w, f).permute(0, 2, 4, 1, 3).reshape(1, f * f, h, w)
    return torch.cat([encode_pixels(model, image * (1 - mask)), folded], dim=1)


def _method(model) -> str:
    """How the denoiser keeps the unmasked image: its own inpainting inputs, or masked latent blending."""
    if model.info.kind == FLUX_FILL_TRANSFORMER:
        return "flux-fill"
    if model.unet.config.in_channels == 9:
        return "inpainting-unet"
    return "masked-latent-blending"


def _decode(model, latents: torch.Tensor, margin: int = 8) -> np.ndarray:
    """Decode region latents in blocks with context (sized for the device) -> (3, H, W) float32 in [-1, 1]."""
    f = model.vae_scale_factor
    rows, cols = latents.shape[-2:]
    out = np.empty((3, rows * f, cols * f), dtype=np.float32)
    block, batch = model.decode_size(margin)
    pairs = context_blocks(rows, cols, rows, cols, block, margin)
    for core, image in decode_in_blocks(model, lambda span: latents[(slice(None), slice(None)) + span.slices], pairs,
                                        batch=batch):
        out[:, core.row * f : (core.row + core.height) * f, core.col * f : (core.col + core.width) * f] = (
            image.float().clamp(-1, 1).cpu().numpy()
        )
    return out


def _metadata(model, plan: _Plan, region: Span, local: list[Span], request) -> list[np.ndarray] | None:
    if not model.info.uses_metadata:
        return None
    return [m.normalised() for m in _window_metadata(plan, region, local, request, model.vae_scale_factor)]


def _window_metadata(plan: _Plan, region: Span, local: list[Span], request, f: int) -> list[SatMetadata]:
    """Each window's centre lon/lat and ground pixel size, with the request's date and cloud cover."""
    items = []
    for span in local:
        col = (region.col + span.col + span.width / 2) * f
        row = (region.row + span.row + span.height / 2) * f
        x, y = plan.grid.transform @ (col, row)
        lon, lat = centre_lonlat(plan.grid.crs, x, y)
        gsd = gsd_metres(plan.grid.crs, plan.grid.transform, col, row)
        items.append(SatMetadata(lon=lon, lat=lat, gsd_m=gsd, cloud_cover=request.cloud_cover, date=request.date))
    return items


def _tags(request: InpaintRequest, model, plan: _Plan, source) -> dict[str, str]:
    info = source.info
    synthesised = ",".join(str(b) for b in plan.rgb)
    unchanged = [b for b in info.data_bands if b not in plan.rgb]
    return {
        "GFM4D_VERSION": __version__,
        "GFM4D_TASK": "inpaint",
        "GFM4D_SYNTHETIC": "inside the label mask only: generated by a diffusion model; elsewhere the input's pixels",
        "GFM4D_MODEL": model.info.name,
        "GFM4D_METHOD": _method(model),
        "GFM4D_PROMPTS": " | ".join(plan.prompts),
        "GFM4D_DATE": request.date.isoformat() if request.date else "",
        "GFM4D_SEED": str(request.seed),
        "GFM4D_STRENGTH": f"{request.strength:g}",
        "GFM4D_SYNTHESISED_BANDS": synthesised,
        "GFM4D_UNCHANGED_BANDS": ",".join(f"{b} ({info.colorinterp[b - 1]})" for b in unchanged),
        "GFM4D_POLYGONS": plan.placed.report.summary(),
        "GFM4D_SOURCE": Path(info.path).name,
    }


def _output_layout(source: RasterSource) -> dict:
    """Bands, band order and masking of the post-event raster: the input's own, alpha band included
    (graded values kept). Palette rasters are written as the RGB they show (their indices cannot
    hold new colours), masked where the palette or nodata made them transparent."""
    info = source.info
    bands = list(range(1, info.count + 1))
    if info.is_palette:
        return dict(bands=bands, dtype="uint8", nodata=None, with_mask=info.mask_kind != "none",
                    colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue], descriptions=None,
                    scales=None, offsets=None)
    return dict(bands=bands, dtype=info.dtypes[0], nodata=info.nodata, with_mask=info.mask_kind in ("internal", "sidecar"),
                colorinterp=[ColorInterp[name] for name in info.colorinterp],
                descriptions=[d or "" for d in info.descriptions], scales=info.scales, offsets=info.offsets)


def _write_outputs(source: RasterSource, plan: _Plan, results, outputs: InpaintOutputs, tags: dict, cancel) -> None:
    """Copy the input block by block, pasting inpainted regions; write the label raster beside it."""
    info = source.info
    layout = _output_layout(source)
    bands = layout["bands"]
    rgb_rows = [bands.index(b) for b in plan.rgb]
    class_table = ";".join(f"{c.code}={c.name}" for c in sorted(plan.classes.classes.values(), key=lambda c: c.code))
    with GeoTIFFWriter(outputs.image, plan.grid, count=len(bands), dtype=layout["dtype"], nodata=layout["nodata"],
                       with_mask=layout["with_mask"], colorinterp=layout["colorinterp"],
                       band_descriptions=layout["descriptions"], scales=layout["scales"], offsets=layout["offsets"],
                       tags=tags) as image_out, \
         GeoTIFFWriter(outputs.label, plan.grid, count=1, dtype="uint8", nodata=LABEL_NODATA,
                       tags={**tags, "GFM4D_LABEL_CLASSES": class_table, "GFM4D_SYNTHETIC": "no: the mask used"}) as label_out:
        for row in range(0, info.height, _COPY_BLOCK):
            for col in range(0, info.width, _COPY_BLOCK):
                check_cancel(cancel)
                block = Window(col, row, min(_COPY_BLOCK, info.width - col), min(_COPY_BLOCK, info.height - row))
                data = np.ma.getdata(source.read(block, bands=bands)).astype(layout["dtype"], copy=False)
                valid = source.valid_mask(block)
                for region_window, pixels, soft in results:
                    _paste(data, rgb_rows, block, region_window, pixels)
                image_out.write(data, block)
                if layout["with_mask"]:
                    image_out.write_mask(valid, block)
                labels = label_raster(plan.placed, plan.classes, plan.grid, block)
                labels[~valid] = LABEL_NODATA
                label_out.write(labels[None], block)
        if outputs.polygons is not None:
            _write_label_polygons(plan, outputs.polygons)


def avoid_value(values: np.ndarray, where: np.ndarray, value: float | None) -> np.ndarray:
    """`values` with every element equal to `value` inside `where` moved one step away from it, so
    painted pixels never read as nodata (holes). The step goes into the type's range."""
    if value is None or np.isnan(value):
        return values
    hit = where[None] & (values == value)
    if not hit.any():
        return values
    if np.issubdtype(values.dtype, np.integer):
        info = np.iinfo(values.dtype)
        step = value + 1 if value < info.max else value - 1
    else:
        step = np.nextafter(values.dtype.type(value), values.dtype.type(np.inf))
    values = values.copy()
    values[hit] = step
    return values


def _paste(data: np.ndarray, rgb_rows: list[int], block: Window, region: Window, pixels: np.ndarray) -> None:
    top, left = max(block.row_off, region.row_off), max(block.col_off, region.col_off)
    bottom = min(block.row_off + block.height, region.row_off + region.height)
    right = min(block.col_off + block.width, region.col_off + region.width)
    if bottom <= top or right <= left:
        return
    dst = (slice(top - block.row_off, bottom - block.row_off), slice(left - block.col_off, right - block.col_off))
    src = (slice(top - region.row_off, bottom - region.row_off), slice(left - region.col_off, right - region.col_off))
    for k, row in enumerate(rgb_rows):
        data[row][dst] = pixels[k][src]


def _write_label_polygons(plan: _Plan, path: Path) -> None:
    codes = plan.classes.codes[plan.placed.indices]
    attributes = [
        {**attrs, "class_code": int(code), "class_name": plan.classes.classes[int(code)].name}
        for attrs, code in zip(plan.placed.attributes, codes)
    ]
    layer = PolygonLayer(list(plan.placed.geometries), attributes, plan.grid.crs, plan.placed.source)
    write_polygons(layer, path)
