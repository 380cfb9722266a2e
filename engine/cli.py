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


def _progress_bar(description: str):
    """A tqdm bar fed by pipeline Progress reports."""
    from tqdm import tqdm

    bar = tqdm(total=1, desc=description, unit="step", dynamic_ncols=True, leave=True)

    def update(progress) -> None:
        if bar.total != progress.total:
            bar.total = progress.total
        bar.n = progress.done
        bar.set_postfix_str(progress.message, refresh=False)
        bar.refresh()

    update.close = bar.close
    return update


def _registry(args):
    from engine.models.registry import ModelRegistry

    return ModelRegistry(Path(args.models_dir), Path(args.sd21_dir) if args.sd21_dir else None)


def _load_model(args, name: str):
    import torch

    device = torch.device(args.device) if args.device else config.device()
    return _registry(args).load(name, device=device, dtype=config.dtype_for(device))


def _grid_from_args(args):
    """The output grid from --like, --aoi or --extent/--crs, with --resolution or --pixel-size."""
    from rasterio.crs import CRS

    from engine.geo.grid import grid_from_extent, grid_like

    if args.like:
        from engine.geo.raster import open_raster

        with open_raster(args.like) as source:
            info = source.info
            return grid_like(info.crs, info.transform, info.width, info.height), None
    if (args.resolution is None) == (args.pixel_size is None):
        raise InputError("give --resolution (metres) or --pixel-size (CRS units), or --like RASTER")
    aoi = None
    if args.aoi:
        from engine.geo.vectors import read_polygons

        layer = read_polygons(args.aoi)
        crs = CRS.from_user_input(args.crs) if args.crs else layer.crs
        layer = layer.to_crs(crs)
        bounds = layer.bounds()
        aoi = [g for g in layer.geometries if g is not None and not g.is_empty]
    elif args.extent:
        if not args.crs:
            raise InputError("--extent needs --crs (e.g. --crs EPSG:32618) to say what its numbers mean")
        crs = CRS.from_user_input(args.crs)
        bounds = tuple(args.extent)
    else:
        raise InputError("say where to generate: --extent XMIN YMIN XMAX YMAX with --crs, --aoi FILE, or --like RASTER")
    return grid_from_extent(bounds, crs, resolution_m=args.resolution, pixel_size=args.pixel_size), aoi


def _date(value):
    from engine.geo.dates import parse_date

    return parse_date(value) if value else None


def cmd_generate(args) -> int:
    from engine.geo.writer import write_preview_png
    from engine.pipelines.generate import GenerateRequest, generate

    grid, aoi = _grid_from_args(args)
    model = _load_model(args, args.model)
    request = GenerateRequest(
        grid=grid,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        date=_date(args.date),
        cloud_cover=args.cloud_cover,
        steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
        scheduler=args.scheduler,
        window=args.window,
        overlap=args.overlap,
        batch_size=args.batch_size,
        aoi=aoi,
    )
    bar = _progress_bar("generate")
    try:
        result = generate(model, request, args.output, progress=bar)
    finally:
        bar.close()
    print(f"wrote {result.path} ({grid.width} x {grid.height} px, {grid.crs.to_string()}, {result.windows} windows, {result.seconds:.1f} s)")
    if args.preview:
        print(f"preview {write_preview_png(result.path, args.preview)}")
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
        mapping[int(key) if key.isdigit() else key] = value
    return mapping


def cmd_inpaint(args) -> int:
    from engine.pipelines.inpaint import InpaintOutputs, InpaintRequest, inpaint

    output = Path(args.output)
    inpaint_classes = {c: True for c in args.inpaint_class or []}
    inpaint_classes.update({c: False for c in args.skip_class or []})
    request = InpaintRequest(
        image=Path(args.image),
        polygons=Path(args.polygons),
        class_field=args.class_field,
        class_prompts=_class_mapping(args.class_prompt, "--class-prompt"),
        inpaint_classes={int(k) if k.isdigit() else k: v for k, v in inpaint_classes.items()} or None,
        disaster_type=args.disaster_type,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        date=_date(args.date),
        cloud_cover=args.cloud_cover,
        strength=args.strength,
        dilation_m=args.dilation,
        feather_m=args.feather,
        rgb_bands=tuple(args.bands) if args.bands else None,
        steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
        scheduler=args.scheduler,
        window=args.window,
        overlap=args.overlap,
        batch_size=args.batch_size,
    )
    outputs = InpaintOutputs(
        image=output,
        label=Path(args.label) if args.label else output.with_name(output.stem + "_label.tif"),
        polygons=Path(args.label_polygons) if args.label_polygons else None,
    )
    model = _load_model(args, args.model)
    bar = _progress_bar("inpaint")
    try:
        result = inpaint(model, request, outputs, progress=bar)
    finally:
        bar.close()
    print(f"polygons: {result.report}")
    print(f"processed {result.windows} of {result.windows_total} windows in {result.regions} region(s), {result.seconds:.1f} s")
    print(f"wrote {outputs.image} and the label raster {outputs.label}" + (f" and {outputs.polygons}" if outputs.polygons else ""))
    return 0


def cmd_predict(args) -> int:
    from engine.pipelines.predict import PredictRequest, predict

    reference = args.reference_frame
    if args.extent or args.like or args.aoi:
        reference, _ = _grid_from_args(args)
    dates = [None if d in ("", "-", "auto") else d for d in args.dates] if args.dates else None
    request = PredictRequest(
        frames=[Path(f) for f in args.frames], dates=dates, target_date=args.target_date, reference=reference,
        prompt=args.prompt, negative_prompt=args.negative_prompt, cloud_cover=args.cloud_cover,
        control_scale=args.control_scale, steps=args.steps, guidance_scale=args.guidance, seed=args.seed,
        scheduler=args.scheduler, window=args.window, overlap=args.overlap, batch_size=args.batch_size,
    )
    model = _load_model(args, args.model)
    bar = _progress_bar("predict")
    try:
        result = predict(model, request, args.output, progress=bar)
    finally:
        bar.close()
    for name, date, fraction in result.frames:
        print(f"frame {name}: {date}, covers {fraction:.0%} of the grid")
    grid = result.generated.grid
    print(f"wrote {result.generated.path} ({grid.width} x {grid.height} px, {grid.crs.to_string()}, {result.generated.seconds:.1f} s)")
    return 0


def cmd_superres(args) -> int:
    from engine.pipelines.superres import SuperresRequest, superres

    request = SuperresRequest(
        image=Path(args.image), bands=args.bands.split(",") if args.bands else None,
        extent=tuple(args.extent) if args.extent else None, resolution_m=args.resolution, date=args.date,
        cloud_cover=args.cloud_cover, prompt=args.prompt, negative_prompt=args.negative_prompt,
        control_scale=args.control_scale, steps=args.steps, guidance_scale=args.guidance, seed=args.seed,
        scheduler=args.scheduler, batch_size=args.batch_size,
    )
    model = _load_model(args, args.model)
    bar = _progress_bar("superres")
    try:
        result = superres(model, request, args.output, progress=bar)
    finally:
        bar.close()
    grid = result.grid
    print(f"wrote {result.path} ({grid.width} x {grid.height} px at {grid.pixel_size[0]:g} {grid.crs.to_string()} units, {result.seconds:.1f} s)")
    return 0


def cmd_sequence(args) -> int:
    from engine.pipelines.sequence import SequenceRequest, generate_sequence

    grid, _ = _grid_from_args(args)
    generator = _load_model(args, args.model)
    predictor = _load_model(args, args.predictor)
    out_dir = Path(args.output_dir)
    if not out_dir.is_dir():
        raise InputError(f"the output folder {out_dir} does not exist; create it first")
    request = SequenceRequest(grid=grid, dates=args.dates, prompt=args.prompt, cloud_cover=args.cloud_cover,
                              steps=args.steps, guidance_scale=args.guidance, seed=args.seed)
    bar = _progress_bar("sequence")
    try:
        paths = generate_sequence(generator, predictor, request, out_dir, progress=bar)
    finally:
        bar.close()
    for path in paths:
        print(f"wrote {path}")
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
    how.add_argument("--batch-size", type=int, default=4)


def _add_grid_arguments(parser, required: bool = True) -> None:
    where = parser.add_argument_group("where" if required else "reference grid (default: the reference frame's)")
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
    inp.add_argument("--label-polygons", help="also write the label polygons (.gpkg or .geojson)")
    inp.set_defaults(func=cmd_inpaint)

    pre = sub.add_parser("predict", help="predict the image at a target date from a stack of dated rasters")
    pre.add_argument("frames", nargs="+", help="rasters of one place (any CRS, resolution, footprint)")
    pre.add_argument("--dates", nargs="+", metavar="DATE", help="one date per frame (YYYY-MM-DD, or 'auto' to read it)")
    pre.add_argument("--target-date", required=True, help="date to predict, YYYY-MM-DD (past, future or in between)")
    pre.add_argument("--reference-frame", type=int, default=0, help="index of the frame whose grid the output takes")
    _add_grid_arguments(pre, required=False)
    pre.add_argument("--prompt", default="a fmow satellite image")
    pre.add_argument("--negative-prompt", default="")
    pre.add_argument("--cloud-cover", type=float, help="target cloud cover fraction 0..1")
    pre.add_argument("--control-scale", type=float, default=1.0, help="multiplier of the ControlNet's residuals")
    _add_sampling_arguments(pre)
    pre.set_defaults(model="demo-controlnet-3d", steps=50, guidance=1.0)
    pre.add_argument("-o", "--output", required=True)
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
