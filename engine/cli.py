"""`gfm4d` command line: the engine's tasks, its models and the demo, with progress bars.

Arguments are checked before torch is imported (cli_args, cli_preflight): a typo is answered at
once. Before a job starts, one line says which model runs on what and how big the job is; a job
above a size or time threshold needs `--yes`. Errors a user can fix print one line
(`gfm4d: error: ...`) and exit with status 2; Ctrl-C or SIGTERM cancels the job, leaves no output
file (nor scratch folder) and exits with status 130 (143 for SIGTERM).
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from engine import __version__, config
from engine.cli_args import (
    ArgumentParser,
    ExtentAction,
    add_threads_argument,
    add_ray_arguments,
    date,
    date_or_auto,
    fraction,
    positive_float,
    positive_int,
    stderr_line,
)
from engine.cli_interrupt import interrupt_outcome, run_interruptible
from engine.errors import Cancelled, GFM4DError, InputError
from engine.models.lora import add_lora_argument, lora_params


def _progress_bar(description: str):
    from engine.cli_progress import ProgressBar

    return ProgressBar(description)


def _registry(args):
    from engine.models.registry import ModelRegistry

    return ModelRegistry(Path(args.models_dir), Path(args.sd21_dir) if args.sd21_dir else None)


def _device(args) -> str:
    if args.device:
        return args.device
    return str(config.device())


def _task_registry(args):
    """One registry per command, so a sequence loads each model once."""
    if getattr(args, "_task_registry", None) is None:
        from engine.tasks import DeviceRegistry

        from engine.runtime.threads import apply_threads

        apply_threads(getattr(args, "threads", None))  # work runs in this process from here on
        sd21 = Path(args.sd21_dir) if args.sd21_dir else None
        args._task_registry = DeviceRegistry(Path(args.models_dir), sd21, device=args.device,
                                             ray_address=getattr(args, "ray", None), ray_workers=getattr(args, "workers", None))
    return args._task_registry


def _preflight(args, task: str, params: dict, files: dict[str, Path], outputs: dict[str, Path],
               size: tuple[int, int] | None, frames: int = 1, repeats: int = 1, partial: bool = False) -> None:
    """Checks that need no torch, then the line saying which model runs and how big the job is."""
    from engine import cli_preflight as pre

    pre.check_outputs(outputs, list(files.values()), getattr(args, "overwrite", False))
    pre.check_extent_units(params.get("extent"), params.get("crs"))
    pre.check_inputs(files)
    if "model" not in params:  # a task that runs no diffusion model (evaluate): nothing to size
        return
    model, steps, guidance = params["model"], params.get("steps", 30), params.get("guidance_scale")
    if getattr(args, "engine", None):
        from engine.server.cli_support import engine_device

        device = engine_device(args.engine, args.engine_token)
        line = f"gfm4d: {task} with model {model} on the engine at {args.engine} ({device})"
        if size is not None:
            job = pre.JobSize(size[0], size[1], 0, 0, None, partial)
            line += f": {size[0]} x {size[1]} px ({job.megapixels:.2f} Mpx)"
            pre.check_confirmed(job, getattr(args, "yes", False))
        stderr_line(line)
        return
    info = pre.check_model(_registry(args), model, task)
    if size is None:
        stderr_line(f"gfm4d: {task} with model {model}")
        return
    device = _device(args)
    job = pre.estimate(info, size[0], size[1], steps, guidance, params.get("window"), params.get("overlap"), device,
                       frames=frames, repeats=repeats, partial=partial)
    stderr_line(pre.describe(task, model, device, job, steps, guidance))
    pre.check_confirmed(job, getattr(args, "yes", False))


def _run_task(args, task: str, params: dict, files: dict[str, Path], outputs: dict[str, Path],
              size: tuple[int, int] | None = None, checked: bool = False, label: str | None = None,
              **size_options) -> dict[str, Path]:
    """Run a task in this process, or on the engine named by --engine: same params, same results.

    `size` (output width, height) feeds the line printed before the job; `checked` skips the
    checks a caller (sequence) has already made for all its tasks.
    """
    params = {key: value for key, value in params.items() if value is not None}
    outputs = {name: Path(path) for name, path in outputs.items() if path}
    if getattr(args, "ray", None) is not None:
        _check_ray(args)
    if not checked:
        _preflight(args, task, params, files, outputs, size, **size_options)
    bar = _progress_bar(f"{label} {task}" if label else task)
    try:
        if getattr(args, "engine", None):
            from engine.server.cli_support import run_on_engine
            from engine.server.settings import default_token

            bar.status("uploading")
            return run_on_engine(args.engine, args.engine_token or default_token(), task, params, files, outputs, bar)
        from engine.tasks import run_task_locally

        bar.status(f"loading {params.get('model')}")
        registry = _task_registry(args)
        registry.allow_lora_paths = True  # a local user may name LoRA files anywhere
        return run_interruptible(lambda cancelled: run_task_locally(
            registry, {"task": task, **params}, files, outputs, progress=bar, cancel=cancelled), say=bar.say)
    finally:
        bar.close()


def _check_ray(args) -> None:
    """`--ray` runs here: refused with `--engine` (whose Ray is the engine's own), and Ray must be installed."""
    if getattr(args, "engine", None):
        raise InputError("--ray runs the job's regions from this process; an engine has its own: "
                         "drop --ray, or start the engine with `gfm4d serve --ray`")
    from engine.scaleout.cluster import require_ray

    require_ray()


def _report(written: dict[str, Path]) -> None:
    """What was written where, with the image's grid and the notes the task left in its tags."""
    import rasterio

    for name, path in written.items():
        line = f"wrote {name}: {path}"
        if path.suffix.lower() in (".tif", ".tiff"):
            with rasterio.open(path) as src:
                line += f" ({src.width} x {src.height} px, {src.crs.to_string()}, pixel {src.res[0]:g} x {src.res[1]:g})"
                for key in ("GFM4D_POLYGONS", "GFM4D_FRAMES"):
                    if key in src.tags() and name == "image":
                        line += f"\n  {key[6:].lower()}: {src.tags()[key]}"
        print(line)


def _sampling_params(args) -> dict:
    return {
        "model": args.model, "steps": args.steps, "guidance_scale": args.guidance, "seed": args.seed,
        "scheduler": args.scheduler, "window": getattr(args, "window", None), "overlap": getattr(args, "overlap", None),
        "batch_size": args.batch_size, "negative_prompt": args.negative_prompt, "cloud_cover": args.cloud_cover,
        "lora": lora_params(getattr(args, "lora", None)),
    }


def _where_params(args) -> tuple[dict, dict[str, Path]]:
    params = {"extent": args.extent, "crs": args.crs, "resolution_m": args.resolution, "pixel_size": args.pixel_size}
    files = {name: Path(value) for name, value in (("like", args.like), ("aoi", args.aoi)) if value}
    return params, files


def _raster_size(path) -> tuple[int, int]:
    from engine.cli_preflight import raster_size

    return raster_size(Path(path))


def _where_size(where: dict, files: dict[str, Path]) -> tuple[int, int] | None:
    """The output size of a generate request, or None where the request is incomplete (the task says why)."""
    from engine.geo.grid import grid_from_extent

    one_pixel_size = (where["resolution_m"] is None) != (where["pixel_size"] is None)
    if "like" in files and not where["extent"] and "aoi" not in files:
        return _raster_size(files["like"])
    if "aoi" in files and not where["extent"] and one_pixel_size:
        from rasterio.crs import CRS

        from engine.geo.vectors import read_polygons

        layer = read_polygons(files["aoi"])
        crs = CRS.from_user_input(where["crs"]) if where["crs"] else layer.crs
        grid = grid_from_extent(layer.to_crs(crs).bounds(), crs, resolution_m=where["resolution_m"],
                                pixel_size=where["pixel_size"])
        return grid.width, grid.height
    if where["extent"] and where["crs"] and one_pixel_size and not files:
        from engine import cli_preflight

        cli_preflight.check_extent_units(where["extent"], where["crs"])
        grid = grid_from_extent(where["extent"], where["crs"], resolution_m=where["resolution_m"],
                                pixel_size=where["pixel_size"])
        return grid.width, grid.height
    return None


def cmd_generate(args) -> int:
    where, files = _where_params(args)
    params = {**_sampling_params(args), **where, "prompt": args.prompt, "date": args.date, "region_size": args.region_size}
    outputs = {"image": args.output, "preview": args.preview}
    _report(_run_task(args, "generate", params, files, outputs, size=_where_size(where, files)))
    return 0


def _class_mapping(pairs: list[str] | None, what: str) -> dict | None:
    """CLASS=VALUE pairs -> {class: value}; classes may be names or codes."""
    if not pairs:
        return None
    mapping = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"{what} takes CLASS=VALUE (e.g. destroyed=\"...\"), not {pair!r}")
        mapping[key] = value
    return mapping


def cmd_inpaint(args) -> int:
    output = Path(args.output)
    switches = {**{c: True for c in args.inpaint_class or []}, **{c: False for c in args.skip_class or []}}
    params = {
        **_sampling_params(args), "prompt": args.prompt, "class_field": args.class_field,
        "class_prompts": _class_mapping(args.class_prompt, "--class-prompt"), "inpaint_classes": switches or None,
        "disaster_type": args.disaster_type, "date": args.date, "strength": args.strength, "dilation_m": args.dilation,
        "feather_m": args.feather, "rgb_bands": args.bands, "label_polygons": bool(args.label_polygons),
    }
    outputs = {
        "image": output,
        "label": Path(args.label) if args.label else output.with_name(output.stem + "_label.tif"),
        "polygons": args.label_polygons,
    }
    files = {"image": Path(args.image), "polygons": Path(args.polygons)}
    size = _raster_size(args.image)
    _report(_run_task(args, "inpaint", params, files, outputs, size=size, partial=True))
    return 0


def cmd_predict(args) -> int:
    dates = [None if d in ("", "-", "auto") else d for d in args.dates] if args.dates else None
    params = {**_sampling_params(args), "prompt": args.prompt, "target_date": args.target_date, "dates": dates,
              "reference": args.reference_frame, "control_scale": args.control_scale,
              "rgb_bands": (args.bands[0] if len(args.bands) == 1 else args.bands) if args.bands else None}
    files = {f"frames.{i}": Path(frame) for i, frame in enumerate(args.frames)}
    if args.like:
        files["reference"] = Path(args.like)
    grid_source = Path(args.like) if args.like else (
        Path(args.frames[args.reference_frame]) if 0 <= args.reference_frame < len(args.frames) else None)
    size = _raster_size(grid_source) if grid_source is not None else None
    outputs = {"image": args.output, "preview": args.preview}
    _report(_run_task(args, "predict", params, files, outputs, size=size, frames=len(args.frames)))
    return 0


def _superres_size(args) -> tuple[int, int] | None:
    """Output pixels: the extent (or the scene) at --resolution (default: an eighth of the scene's pixel)."""
    import rasterio

    from engine.cli_preflight import raster_size

    path = Path(args.image)
    raster_size(path)
    with rasterio.open(path) as source:
        bounds, crs, scene_pixel = tuple(source.bounds), source.crs, abs(source.transform.a)
    if crs is None or (args.resolution and crs.is_geographic):
        return None  # metres on a geographic grid: the task works it out
    bounds = args.extent or bounds
    pixel = args.resolution or scene_pixel / 8
    return max(1, round((bounds[2] - bounds[0]) / pixel)), max(1, round((bounds[3] - bounds[1]) / pixel))


def cmd_superres(args) -> int:
    params = {**_sampling_params(args), "prompt": args.prompt, "bands": args.bands.split(",") if args.bands else None,
              "extent": args.extent, "resolution_m": args.resolution, "date": args.date,
              "control_scale": args.control_scale}
    outputs = {"image": args.output, "preview": args.preview}
    _report(_run_task(args, "superres", params, {"image": Path(args.image)}, outputs, size=_superres_size(args)))
    return 0


def cmd_sequence(args) -> int:
    from engine.cli_sequence import run_sequence

    where, files = _where_params(args)
    written = run_sequence(args, _sampling_params(args), where, files, _where_size)
    _report(written)
    return 0


def cmd_xbd_import(args) -> int:
    from engine import cli_preflight
    from engine.geo.xbd import export_xbd_polygons, xbd_png_to_geotiff

    if args.image and not args.image_output:
        raise InputError("--image needs --image-output (a .tif path) for the georeferenced GeoTIFF")
    outputs = {"polygons": Path(args.output)}
    if args.image:
        outputs["image"] = Path(args.image_output)
    inputs = [Path(args.labels)] + ([Path(args.image)] if args.image else [])
    cli_preflight.check_outputs(outputs, inputs, args.overwrite)
    if args.image:  # check the pairing before writing anything
        from engine.geo.xbd import check_xbd_pair

        check_xbd_pair(Path(args.image), Path(args.labels))
    polygons = export_xbd_polygons(Path(args.labels), Path(args.output))
    if args.image:
        try:
            image = xbd_png_to_geotiff(Path(args.image), Path(args.labels), Path(args.image_output))
        except BaseException:  # both outputs or neither
            polygons.unlink(missing_ok=True)
            raise
        print(f"wrote {image}")
    print(f"wrote {polygons}")
    return 0


def _add_sampling_arguments(parser, default_model: str | None = None) -> None:
    """Model and sampler options shared by every task."""
    how = parser.add_argument_group("how")
    how.add_argument("--model", default=default_model or config.default_model(), help="model folder name (see `gfm4d models list`)")
    how.add_argument("--steps", type=positive_int, default=30, help="denoising steps")
    how.add_argument("--guidance", type=float, help="classifier-free guidance scale (<= 1: none, half the work; default: the model's own, 7.5 for DiffusionSat, 2.5 for GFM4D-mini)")
    how.add_argument("--seed", type=int, default=0, help="same seed, same request: the same image")
    how.add_argument("--scheduler", help="ddim, dpm++, euler, pndm, unipc (default: the model's)")
    how.add_argument("--window", type=positive_int, help="window size in pixels (default: the model's native resolution)")
    how.add_argument("--overlap", type=int, help="window overlap in pixels (default: a quarter window)")
    how.add_argument("--batch-size", type=positive_int, help="windows per UNet call (default: what free GPU memory holds; 4 on CPU)")
    how.add_argument("--overwrite", action="store_true", help="replace outputs that exist (default: refuse)")
    how.add_argument("--yes", action="store_true",
                     help="run a job above the size or time threshold (default: refuse it; threshold "
                          "env GFM4D_CONFIRM_MINUTES, 30 min, or 256 Mpx)")


def _add_grid_arguments(parser) -> None:
    where = parser.add_argument_group("where")
    where.add_argument("--extent", nargs=4, type=float, action=ExtentAction, metavar=("XMIN", "YMIN", "XMAX", "YMAX"),
                       help="in the units of --crs")
    where.add_argument("--crs", help="CRS of --extent and of the output, e.g. EPSG:32618 (default with --aoi: the AOI's)")
    where.add_argument("--aoi", help="polygon file (GeoJSON, GPKG, Shapefile): its extent (generate also masks outside)")
    where.add_argument("--like", help="raster whose grid (CRS, transform, size) the output takes")
    where.add_argument("--resolution", type=positive_float, help="output pixel size in ground metres")
    where.add_argument("--pixel-size", type=positive_float, help="output pixel size in CRS units")


def cmd_demo(args) -> int:
    from engine.demo import run_demo

    for line in run_demo(Path(args.output), Path(args.models_dir), steps=args.steps):
        print(line)
    return 0


def cmd_models(args) -> int:
    if args.models_command in ("available", "fetch"):
        from engine.cli_models import run_models_command

        return run_models_command(args)
    from engine.cli_models import readiness

    registry = _registry(args)
    if args.models_command == "import":
        from engine.models.importing import describe_import

        info = registry.import_model(Path(args.path), name=args.name,
                                     config=Path(args.config) if args.config else None)
        for line in describe_import(info, registry.sd21_dir, Path(args.path)):
            print(line)
        return 0
    infos = registry.list()
    if args.json:
        print(json.dumps([_info_dict(i) for i in infos], indent=2))
    elif not infos:
        print(f"no models in {args.models_dir}; run `gfm4d demo` to build the demo models or `gfm4d models import PATH`")
    else:
        for info in infos:
            print(f"{info.name:24} {info.kind:24} {info.native_resolution:5d} px  {', '.join(info.tasks)}  {info.path}")
            print(f"    {readiness(info)}")
    if not args.json:
        for name, path in registry.loras().items():
            print(f"{name:24} {'lora':24} {'':8}  --lora {name}[:SCALE]  {path}")
    return 0


def _info_dict(info) -> dict:
    from engine.cli_models import readiness

    return {
        "name": info.name,
        "kind": info.kind,
        "path": str(info.path),
        "native_resolution": info.native_resolution,
        "tasks": list(info.tasks),
        "ready": info.ready,
        "readiness": readiness(info),
        "missing_components": list(info.missing_components),
        "family": info.family,
        "parameters": _parameters(info),
    }


def _parameters(info) -> int | None:
    """Parameter count from the weight files' headers (None when they cannot be read)."""
    from engine.models.footprint import model_parameters

    try:
        return sum(model_parameters(info).values())
    except (GFM4DError, OSError, ValueError):
        return None


def build_parser() -> ArgumentParser:
    from engine.cli_models import add_fetch_parsers
    from engine.server.cli_support import add_engine_arguments, add_serve_arguments, run_serve

    parser = ArgumentParser(prog="gfm4d", description="Diffusion models for satellite imagery, georeferenced.")
    parser.add_argument("--version", action="version", version=f"gfm4d {__version__}")
    parser.add_argument("--models-dir", default=str(config.models_dir()), help="folder of model folders (env GFM4D_MODELS)")
    parser.add_argument("--sd21-dir", default=str(config.sd21_dir() or ""), help="Stable Diffusion 2.1 folder that fills missing components (env GFM4D_SD21_DIR)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate an image over an extent from a prompt and metadata")
    _add_grid_arguments(gen)
    what = gen.add_argument_group("what")
    what.add_argument("--prompt", required=True)
    what.add_argument("--negative-prompt", default="")
    what.add_argument("--date", type=date, help="acquisition date to condition on, YYYY-MM-DD")
    what.add_argument("--cloud-cover", type=fraction, help="cloud cover fraction 0..1")
    _add_sampling_arguments(gen)
    add_lora_argument(gen)
    gen.add_argument("-o", "--output", required=True, help="output GeoTIFF")
    gen.add_argument("--preview", help="also write a PNG preview here")
    gen.add_argument("--region-size", type=positive_int, metavar="PX",
                     help="side of a region in pixels: larger outputs are made region by region, seam-free "
                          "(default: 2048 latent cells); smaller regions use less memory and run in parallel with --ray")
    add_ray_arguments(gen, "denoise the regions of a large extent")
    add_engine_arguments(gen)
    add_threads_argument(gen)
    gen.set_defaults(func=cmd_generate)

    inp = sub.add_parser("inpaint", help="paint disaster damage into a pre-event raster inside polygons")
    inp.add_argument("image", help="pre-event raster (GeoTIFF or any GDAL raster)")
    inp.add_argument("--polygons", required=True, help="disaster polygons: GeoJSON, GPKG, Shapefile, zip, or xBD label JSON")
    classes = inp.add_argument_group("classes and prompts")
    classes.add_argument("--class-field", help="attribute with the class per polygon (xBD subtype, dmg, notation)")
    classes.add_argument("--class-prompt", action="append", metavar="CLASS=PROMPT", help="prompt for a class (repeatable)")
    classes.add_argument("--inpaint-class", action="append", metavar="CLASS", help="also inpaint this class (e.g. no-damage)")
    classes.add_argument("--skip-class", action="append", metavar="CLASS", help="label but do not inpaint this class")
    classes.add_argument("--disaster-type", help="flooding, fire, wind, earthquake, tsunami or volcano")
    classes.add_argument("--prompt", help="one prompt for every class (overrides the class prompts)")
    classes.add_argument("--negative-prompt", default="")
    post = inp.add_argument_group("post-event metadata and mask")
    post.add_argument("--date", type=date, help="post-event date, YYYY-MM-DD")
    post.add_argument("--cloud-cover", type=fraction, help="cloud cover fraction 0..1")
    post.add_argument("--strength", type=float, default=1.0, help="1 repaints the mask fully; lower keeps more of the input")
    post.add_argument("--dilation", type=float, default=0.0, help="grow the mask by this many metres")
    post.add_argument("--feather", type=float, help="feathered edge width in metres (default: three pixels)")
    post.add_argument("--bands", type=int, nargs=3, metavar=("R", "G", "B"), help="1-based red, green, blue bands")
    _add_sampling_arguments(inp, config.default_inpaint_model())
    add_lora_argument(inp)
    inp.add_argument("-o", "--output", required=True, help="post-event GeoTIFF")
    inp.add_argument("--label", help="label raster (default: OUTPUT_label.tif)")
    inp.add_argument("--label-polygons", help="also write the label polygons (.gpkg; or .geojson, which is in lon/lat when the raster's CRS has no EPSG or other code)")
    add_ray_arguments(inp, "inpaint the masked regions")
    add_engine_arguments(inp)
    add_threads_argument(inp)
    inp.set_defaults(func=cmd_inpaint)

    pre = sub.add_parser("predict", help="predict the image at a target date from a stack of dated rasters")
    pre.add_argument("frames", nargs="+", help="rasters of one place (any CRS, resolution, footprint)")
    pre.add_argument("--dates", nargs="+", type=date_or_auto, metavar="DATE", help="one date per frame (YYYY-MM-DD, or 'auto' to read it)")
    pre.add_argument("--target-date", required=True, type=date, help="date to predict, YYYY-MM-DD (past, future or in between)")
    pre.add_argument("--reference-frame", type=int, default=0, help="index of the frame whose grid the output takes")
    pre.add_argument("--like", help="a raster whose grid the output takes instead (e.g. a smaller area)")
    pre.add_argument("--bands", type=int, nargs=3, action="append", metavar=("R", "G", "B"),
                     help="1-based red, green, blue bands: once for every frame, or once per frame in order")
    pre.add_argument("--prompt", default="a fmow satellite image")
    pre.add_argument("--negative-prompt", default="")
    pre.add_argument("--cloud-cover", type=fraction, help="target cloud cover fraction 0..1")
    pre.add_argument("--control-scale", type=float, default=1.0, help="multiplier of the ControlNet's residuals")
    _add_sampling_arguments(pre)
    add_lora_argument(pre)
    pre.set_defaults(model="demo-controlnet-3d", steps=50, guidance=1.0)
    pre.add_argument("-o", "--output", required=True)
    pre.add_argument("--preview", help="also write a PNG preview here")
    add_engine_arguments(pre)
    add_threads_argument(pre)
    pre.set_defaults(func=cmd_predict)

    sr = sub.add_parser("superres", help="super-resolve a Sentinel-2 scene to RGB (DiffusionSat 2D ControlNet)")
    sr.add_argument("image", help="Sentinel-2 raster with 10 or 13 bands")
    sr.add_argument("--bands", help="Sentinel-2 name of each band in order, e.g. B2,B3,B4,B5,B6,B7,B8,B8A,B11,B12")
    sr.add_argument("--extent", nargs=4, type=float, action=ExtentAction, metavar=("XMIN", "YMIN", "XMAX", "YMAX"),
                    help="in the scene's CRS")
    sr.add_argument("--resolution", type=positive_float, help="output pixel size in metres (default: an eighth of the scene's)")
    sr.add_argument("--date", type=date, help="acquisition date (default: read from the scene)")
    sr.add_argument("--cloud-cover", type=fraction)
    sr.add_argument("--prompt", default="a fmow satellite image")
    sr.add_argument("--negative-prompt", default="")
    sr.add_argument("--control-scale", type=float, default=1.0)
    _add_sampling_arguments(sr)
    sr.set_defaults(model="demo-superres")
    sr.add_argument("-o", "--output", required=True)
    sr.add_argument("--preview", help="also write a PNG preview here")
    add_engine_arguments(sr)
    add_threads_argument(sr)
    sr.set_defaults(func=cmd_superres)

    from engine.evaluate.cli import add_parser as add_evaluate_parser

    add_evaluate_parser(sub)

    seq = sub.add_parser("sequence", help="generate the first date, then predict each next date from the frames so far")
    _add_grid_arguments(seq)
    seq.add_argument("--dates", nargs="+", required=True, type=date, metavar="DATE")
    seq.add_argument("--prompt", required=True)
    seq.add_argument("--negative-prompt", default="")
    seq.add_argument("--cloud-cover", type=fraction)
    seq.add_argument("--predictor", default="demo-controlnet-3d", help="temporal ControlNet model")
    seq.add_argument("--predict-guidance", type=float, default=1.0, help="guidance scale of the predicted frames")
    _add_sampling_arguments(seq)
    seq.add_argument("--output-dir", required=True, help="folder for frame_<date>.tif (created when missing)")
    seq.add_argument("--preview", action="store_true", help="also write a PNG preview beside each frame")
    add_engine_arguments(seq)
    add_threads_argument(seq)
    seq.set_defaults(func=cmd_sequence)

    serve = sub.add_parser("serve", help="run the engine: HTTP API v1 with a job queue (see docs/api.md)")
    add_serve_arguments(serve)
    serve.set_defaults(func=run_serve)

    xbd = sub.add_parser("xbd-import", help="xBD label JSON -> georeferenced polygons (and the PNG -> GeoTIFF)")
    xbd.add_argument("labels", help="xBD label JSON ({disaster}_{id}_{pre|post}_disaster.json)")
    xbd.add_argument("-o", "--output", required=True, help="polygons out: .gpkg or .geojson")
    xbd.add_argument("--image", help="the PNG these labels are for (the JSON's img_name), to georeference")
    xbd.add_argument("--image-output", help="GeoTIFF for --image")
    xbd.add_argument("--overwrite", action="store_true", help="replace outputs that exist (default: refuse)")
    xbd.set_defaults(func=cmd_xbd_import)

    demo = sub.add_parser("demo", help="build the demo models and generate over the bundled sample area")
    demo.add_argument("-o", "--output", default="demo_output")
    demo.add_argument("--steps", type=positive_int, default=20)
    demo.set_defaults(func=cmd_demo)

    from engine.cli_train import add_train_parser

    add_train_parser(sub)

    models = sub.add_parser("models", help="list, import or fetch models")
    msub = models.add_subparsers(dest="models_command", required=True)
    mlist = msub.add_parser("list", help="list the models found in the models folder, with their readiness")
    mlist.add_argument("--json", action="store_true")
    mimport = msub.add_parser("import", help="import a model folder, a released zip or a single-file .safetensors checkpoint")
    mimport.add_argument("path")
    mimport.add_argument("--name", help="model name (default: the folder's, zip's or file's name)")
    mimport.add_argument("--config", metavar="FOLDER",
                         help="single-file checkpoints: a local diffusers-layout model of the same family whose "
                              "configs, tokenizers and scheduler are used (default: one in the models folder)")
    add_fetch_parsers(msub)
    models.set_defaults(func=cmd_models)

    from engine.cli_dataset import add_dataset_parser

    add_dataset_parser(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that a job is cancelled (on an engine too) and cleans up
    exactly as for Ctrl-C."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def _one_line(exc: BaseException) -> str | None:
    """A user-facing line for errors from files and libraries (GDAL, the OS, pydantic); None: a bug."""
    rasterio_errors, gdal_errors = sys.modules.get("rasterio.errors"), sys.modules.get("rasterio._err")
    if (rasterio_errors is not None and isinstance(exc, rasterio_errors.RasterioError)) or (
        gdal_errors is not None and isinstance(exc, gdal_errors.CPLE_BaseError)
    ):
        reason = exc.__cause__ or exc.__context__ or exc  # rasterio's "Read failed" hides GDAL's reason
        return f"GDAL could not read or write the data ({reason}): the file may be truncated or damaged"
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        reason = exc.strerror or str(exc)
        hint = "; check the path and its permissions" if isinstance(exc, (PermissionError, FileNotFoundError)) else ""
        return f"{reason}:{where}{hint}" if where else f"{reason}{hint}"
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(exc, pydantic.ValidationError):
        parts = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error.get("loc", ()))
            parts.append(f"{field}: {error.get('msg', '')}" if field else error.get("msg", ""))
        return "; ".join(parts)
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (an embedding application): leave SIGTERM alone
        pass
    try:
        return args.func(args)
    except Cancelled as exc:
        print(f"gfm4d: {exc}", file=sys.stderr)
        return 130
    except Terminated as exc:
        print(f"gfm4d: terminated; {interrupt_outcome(exc)}", file=sys.stderr)
        return 143
    except KeyboardInterrupt as exc:
        print(f"gfm4d: cancelled; {interrupt_outcome(exc)}", file=sys.stderr)
        return 130
    except GFM4DError as exc:
        print(f"gfm4d: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        line = _one_line(exc)
        if line is None:
            raise
        print(f"gfm4d: error: {line}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
