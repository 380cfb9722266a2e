"""`gfm4d` command line: the engine's tasks, its models and the demo, with progress bars.

Errors a user can fix print one line (`gfm4d: error: ...`) and exit with status 2; Ctrl-C
cancels the job, leaves no output file and exits with status 130.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine import __version__, config
from engine.errors import Cancelled, GFM4DError, InputError


class _ProgressBar:
    """A tqdm bar fed by Progress reports, shown from the first report on (so an input error that
    comes before any work prints alone, on one line)."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.bar = None

    def __call__(self, progress) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=progress.total, desc=self.description, unit="step", dynamic_ncols=True)
        self.bar.total = progress.total
        self.bar.n = progress.done
        self.bar.set_postfix_str(progress.message, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


_progress_bar = _ProgressBar


def _registry(args):
    from engine.models.registry import ModelRegistry

    return ModelRegistry(Path(args.models_dir), Path(args.sd21_dir) if args.sd21_dir else None)


def _load_model(args, name: str):
    import torch

    device = torch.device(args.device) if args.device else config.device()
    return _registry(args).load(name, device=device, dtype=config.dtype_for(device))


def _check_outputs(outputs: dict[str, Path]) -> None:
    from engine.geo.writer import check_destination

    for name, path in outputs.items():
        if path.suffix.lower() in (".tif", ".tiff") or name in ("image", "label"):
            check_destination(path)
        elif not (path.parent if str(path.parent) else Path(".")).is_dir():
            raise InputError(f"the folder {path.parent} for {path.name} does not exist; create it first")


def _run_task(args, task: str, params: dict, files: dict[str, Path], outputs: dict[str, Path]) -> dict[str, Path]:
    """Run a task in this process, or on the engine named by --engine: same params, same results."""
    params = {key: value for key, value in params.items() if value is not None}
    outputs = {name: Path(path) for name, path in outputs.items() if path}
    _check_outputs(outputs)
    bar = _progress_bar(task)
    try:
        if getattr(args, "engine", None):
            from engine.server.cli_support import run_on_engine
            from engine.server.settings import default_token

            return run_on_engine(args.engine, args.engine_token or default_token(), task, params, files, outputs, bar)
        from engine.tasks import DeviceRegistry, run_task_locally

        registry = DeviceRegistry(Path(args.models_dir), Path(args.sd21_dir) if args.sd21_dir else None, device=args.device)
        return run_task_locally(registry, {"task": task, **params}, files, outputs, progress=bar)
    finally:
        bar.close()


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
    }


def _where_params(args) -> tuple[dict, dict[str, Path]]:
    params = {"extent": args.extent, "crs": args.crs, "resolution_m": args.resolution, "pixel_size": args.pixel_size}
    files = {name: Path(value) for name, value in (("like", args.like), ("aoi", args.aoi)) if value}
    return params, files


def cmd_generate(args) -> int:
    where, files = _where_params(args)
    params = {**_sampling_params(args), **where, "prompt": args.prompt, "date": args.date}
    _report(_run_task(args, "generate", params, files, {"image": args.output, "preview": args.preview}))
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
    _report(_run_task(args, "inpaint", params, files, outputs))
    return 0


def cmd_predict(args) -> int:
    dates = [None if d in ("", "-", "auto") else d for d in args.dates] if args.dates else None
    params = {**_sampling_params(args), "prompt": args.prompt, "target_date": args.target_date, "dates": dates,
              "reference": args.reference_frame, "control_scale": args.control_scale}
    files = {f"frames.{i}": Path(frame) for i, frame in enumerate(args.frames)}
    if args.like:
        files["reference"] = Path(args.like)
    _report(_run_task(args, "predict", params, files, {"image": args.output, "preview": args.preview}))
    return 0


def cmd_superres(args) -> int:
    params = {**_sampling_params(args), "prompt": args.prompt, "bands": args.bands.split(",") if args.bands else None,
              "extent": args.extent, "resolution_m": args.resolution, "date": args.date,
              "control_scale": args.control_scale}
    _report(_run_task(args, "superres", params, {"image": Path(args.image)}, {"image": args.output, "preview": args.preview}))
    return 0


def cmd_sequence(args) -> int:
    from engine.pipelines.sequence import SequenceRequest, generate_sequence
    from engine.tasks.generate import GenerateParams, output_grid

    where, files = _where_params(args)
    grid, _ = output_grid(GenerateParams(prompt=args.prompt, **{k: v for k, v in where.items() if v is not None}), files)
    out_dir = Path(args.output_dir)
    if not out_dir.is_dir():
        raise InputError(f"the output folder {out_dir} does not exist; create it first")
    generator = _load_model(args, args.model)
    predictor = _load_model(args, args.predictor)
    request = SequenceRequest(grid=grid, dates=args.dates, prompt=args.prompt, cloud_cover=args.cloud_cover,
                              steps=args.steps, guidance_scale=args.guidance, seed=args.seed)
    bar = _progress_bar("sequence")
    try:
        paths = generate_sequence(generator, predictor, request, out_dir, progress=bar)
    finally:
        bar.close()
    _report({f"frame {i + 1}": path for i, path in enumerate(paths)})
    return 0


def cmd_xbd_import(args) -> int:
    from engine.geo.xbd import export_xbd_polygons, xbd_png_to_geotiff

    print(f"wrote {export_xbd_polygons(Path(args.labels), Path(args.output))}")
    if args.image:
        if not args.image_output:
            raise InputError("--image needs --image-output (a .tif path) for the georeferenced GeoTIFF")
        print(f"wrote {xbd_png_to_geotiff(Path(args.image), Path(args.labels), Path(args.image_output))}")
    return 0


def _add_sampling_arguments(parser) -> None:
    """Model and sampler options shared by every task."""
    how = parser.add_argument_group("how")
    how.add_argument("--model", default=config.DEMO_MODEL)
    how.add_argument("--steps", type=int, default=30)
    how.add_argument("--guidance", type=float, default=7.5)
    how.add_argument("--seed", type=int, default=0)
    how.add_argument("--scheduler", help="ddim, dpm++, euler, pndm, unipc (default: the model's)")
    how.add_argument("--window", type=int, help="window size in pixels (default: the model's native resolution)")
    how.add_argument("--overlap", type=int, help="window overlap in pixels (default: a quarter window)")
    how.add_argument("--batch-size", type=int, help="windows per UNet call (default: what free GPU memory holds; 4 on CPU)")


def _add_grid_arguments(parser) -> None:
    where = parser.add_argument_group("where")
    where.add_argument("--extent", nargs=4, type=float, metavar=("XMIN", "YMIN", "XMAX", "YMAX"))
    where.add_argument("--crs", help="CRS of --extent and of the output, e.g. EPSG:32618 (default with --aoi: the AOI's)")
    where.add_argument("--aoi", help="polygon file (GeoJSON, GPKG, Shapefile): its extent (generate also masks outside)")
    where.add_argument("--like", help="raster whose grid (CRS, transform, size) the output takes")
    where.add_argument("--resolution", type=float, help="output pixel size in ground metres")
    where.add_argument("--pixel-size", type=float, help="output pixel size in CRS units")


def cmd_demo(args) -> int:
    from engine.demo import run_demo

    for line in run_demo(Path(args.output), Path(args.models_dir), steps=args.steps):
        print(line)
    return 0


def cmd_models(args) -> int:
    registry = _registry(args)
    if args.models_command == "import":
        info = registry.import_model(Path(args.path), name=args.name)
        print(f"imported {info.name} ({info.kind}) into {info.path}")
        return 0
    infos = registry.list()
    if args.json:
        print(json.dumps([_info_dict(i) for i in infos], indent=2))
    elif not infos:
        print(f"no models in {args.models_dir}; run `gfm4d demo` to build the demo models or `gfm4d models import PATH`")
    else:
        for info in infos:
            print(f"{info.name:24} {info.kind:24} {info.native_resolution:5d} px  {', '.join(info.tasks)}  {info.path}")
    return 0


def _info_dict(info) -> dict:
    return {
        "name": info.name,
        "kind": info.kind,
        "path": str(info.path),
        "native_resolution": info.native_resolution,
        "tasks": list(info.tasks),
    }


def build_parser() -> argparse.ArgumentParser:
    from engine.server.cli_support import add_engine_arguments, add_serve_arguments, run_serve

    parser = argparse.ArgumentParser(prog="gfm4d", description="Diffusion models for satellite imagery, georeferenced.")
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
    what.add_argument("--date", help="acquisition date to condition on, YYYY-MM-DD")
    what.add_argument("--cloud-cover", type=float, help="cloud cover fraction 0..1")
    _add_sampling_arguments(gen)
    gen.add_argument("-o", "--output", required=True, help="output GeoTIFF")
    gen.add_argument("--preview", help="also write a PNG preview here")
    add_engine_arguments(gen)
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
    post.add_argument("--date", help="post-event date, YYYY-MM-DD")
    post.add_argument("--cloud-cover", type=float, help="cloud cover fraction 0..1")
    post.add_argument("--strength", type=float, default=1.0, help="1 repaints the mask fully; lower keeps more of the input")
    post.add_argument("--dilation", type=float, default=0.0, help="grow the mask by this many metres")
    post.add_argument("--feather", type=float, help="feathered edge width in metres (default: three pixels)")
    post.add_argument("--bands", type=int, nargs=3, metavar=("R", "G", "B"), help="1-based red, green, blue bands")
    _add_sampling_arguments(inp)
    inp.add_argument("-o", "--output", required=True, help="post-event GeoTIFF")
    inp.add_argument("--label", help="label raster (default: OUTPUT_label.tif)")
    inp.add_argument("--label-polygons", help="also write the label polygons (.gpkg)")
    add_engine_arguments(inp)
    inp.set_defaults(func=cmd_inpaint)

    pre = sub.add_parser("predict", help="predict the image at a target date from a stack of dated rasters")
    pre.add_argument("frames", nargs="+", help="rasters of one place (any CRS, resolution, footprint)")
    pre.add_argument("--dates", nargs="+", metavar="DATE", help="one date per frame (YYYY-MM-DD, or 'auto' to read it)")
    pre.add_argument("--target-date", required=True, help="date to predict, YYYY-MM-DD (past, future or in between)")
    pre.add_argument("--reference-frame", type=int, default=0, help="index of the frame whose grid the output takes")
    pre.add_argument("--like", help="a raster whose grid the output takes instead (e.g. a smaller area)")
    pre.add_argument("--prompt", default="a fmow satellite image")
    pre.add_argument("--negative-prompt", default="")
    pre.add_argument("--cloud-cover", type=float, help="target cloud cover fraction 0..1")
    pre.add_argument("--control-scale", type=float, default=1.0, help="multiplier of the ControlNet's residuals")
    _add_sampling_arguments(pre)
    pre.set_defaults(model="demo-controlnet-3d", steps=50, guidance=1.0)
    pre.add_argument("-o", "--output", required=True)
    pre.add_argument("--preview", help="also write a PNG preview here")
    add_engine_arguments(pre)
    pre.set_defaults(func=cmd_predict)

    sr = sub.add_parser("superres", help="super-resolve a Sentinel-2 scene to RGB (DiffusionSat 2D ControlNet)")
    sr.add_argument("image", help="Sentinel-2 raster with 10 or 13 bands")
    sr.add_argument("--bands", help="Sentinel-2 name of each band in order, e.g. B2,B3,B4,B5,B6,B7,B8,B8A,B11,B12")
    sr.add_argument("--extent", nargs=4, type=float, metavar=("XMIN", "YMIN", "XMAX", "YMAX"), help="in the scene's CRS")
    sr.add_argument("--resolution", type=float, help="output pixel size in metres (default: an eighth of the scene's)")
    sr.add_argument("--date", help="acquisition date (default: read from the scene)")
    sr.add_argument("--cloud-cover", type=float)
    sr.add_argument("--prompt", default="a fmow satellite image")
    sr.add_argument("--negative-prompt", default="")
    sr.add_argument("--control-scale", type=float, default=1.0)
    _add_sampling_arguments(sr)
    sr.set_defaults(model="demo-superres")
    sr.add_argument("-o", "--output", required=True)
    sr.add_argument("--preview", help="also write a PNG preview here")
    add_engine_arguments(sr)
    sr.set_defaults(func=cmd_superres)

    seq = sub.add_parser("sequence", help="generate the first date, then predict each next date from the frames so far")
    _add_grid_arguments(seq)
    seq.add_argument("--dates", nargs="+", required=True)
    seq.add_argument("--prompt", required=True)
    seq.add_argument("--cloud-cover", type=float)
    seq.add_argument("--predictor", default="demo-controlnet-3d", help="temporal ControlNet model")
    _add_sampling_arguments(seq)
    seq.add_argument("--output-dir", required=True)
    seq.set_defaults(func=cmd_sequence)

    serve = sub.add_parser("serve", help="run the engine: HTTP API v1 with a job queue (see docs/api.md)")
    add_serve_arguments(serve)
    serve.set_defaults(func=run_serve)

    xbd = sub.add_parser("xbd-import", help="xBD label JSON -> georeferenced polygons (and the PNG -> GeoTIFF)")
    xbd.add_argument("labels", help="xBD label JSON ({disaster}_{id}_{pre|post}_disaster.json)")
    xbd.add_argument("-o", "--output", required=True, help="polygons out: .gpkg or .geojson")
    xbd.add_argument("--image", help="the matching xBD PNG, to georeference")
    xbd.add_argument("--image-output", help="GeoTIFF for --image")
    xbd.set_defaults(func=cmd_xbd_import)

    demo = sub.add_parser("demo", help="build the demo models and generate over the bundled sample area")
    demo.add_argument("-o", "--output", default="demo_output")
    demo.add_argument("--steps", type=int, default=20)
    demo.set_defaults(func=cmd_demo)

    models = sub.add_parser("models", help="list or import models")
    msub = models.add_subparsers(dest="models_command", required=True)
    mlist = msub.add_parser("list", help="list the models found in the models folder")
    mlist.add_argument("--json", action="store_true")
    mimport = msub.add_parser("import", help="import a model folder or a released zip")
    mimport.add_argument("path")
    mimport.add_argument("--name")
    models.set_defaults(func=cmd_models)

    from engine.cli_dataset import add_dataset_parser

    add_dataset_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Cancelled as exc:
        print(f"gfm4d: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("gfm4d: cancelled; no output was written", file=sys.stderr)
        return 130
    except GFM4DError as exc:
        print(f"gfm4d: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
