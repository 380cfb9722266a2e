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
    where = gen.add_argument_group("where")
    where.add_argument("--extent", nargs=4, type=float, metavar=("XMIN", "YMIN", "XMAX", "YMAX"))
    where.add_argument("--crs", help="CRS of --extent and of the output, e.g. EPSG:32618 (default with --aoi: the AOI's)")
    where.add_argument("--aoi", help="polygon file (GeoJSON, GPKG, Shapefile): generate over its extent, mask outside")
    where.add_argument("--like", help="raster whose grid (CRS, transform, size) the output takes")
    where.add_argument("--resolution", type=float, help="output pixel size in ground metres")
    where.add_argument("--pixel-size", type=float, help="output pixel size in CRS units")
    what = gen.add_argument_group("what")
    what.add_argument("--prompt", required=True)
    what.add_argument("--negative-prompt", default="")
    what.add_argument("--date", help="acquisition date to condition on, YYYY-MM-DD")
    what.add_argument("--cloud-cover", type=float, help="cloud cover fraction 0..1")
    how = gen.add_argument_group("how")
    how.add_argument("--model", default=config.DEMO_MODEL)
    how.add_argument("--steps", type=int, default=30)
    how.add_argument("--guidance", type=float, default=7.5)
    how.add_argument("--seed", type=int, default=0)
    how.add_argument("--scheduler", help="ddim, dpm++, euler, pndm, unipc (default: the model's)")
    how.add_argument("--window", type=int, help="window size in pixels (default: the model's native resolution)")
    how.add_argument("--overlap", type=int, help="window overlap in pixels (default: a quarter window)")
    how.add_argument("--batch-size", type=int, default=4)
    gen.add_argument("-o", "--output", required=True, help="output GeoTIFF")
    gen.add_argument("--preview", help="also write a PNG preview here")
    gen.set_defaults(func=cmd_generate)

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
