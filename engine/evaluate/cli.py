"""`gfm4d evaluate`: a result raster against a reference, or two image sets, from the command line.

    gfm4d evaluate predicted.tif real.tif -o eval.json            # + eval.csv, eval.png, eval_error.tif
    gfm4d evaluate generated/ real_chips/ --sets --metrics fid kid --networks metrics/ -o sets.json

Runs in this process (networks: a folder path, or a folder name in --models-dir) or, with
--engine, on an engine (networks: a folder name in the engine's models directory).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from engine.errors import InputError


def add_parser(sub) -> argparse.ArgumentParser:
    """The `evaluate` subcommand on the top-level parser's subparsers."""
    from engine.server.cli_support import add_engine_arguments

    ev = sub.add_parser("evaluate", help="how close a result is to a reference raster (MSE/PSNR/SSIM, LPIPS), "
                                         "or one image set to another (FID/KID/IS/CLIP)")
    ev.add_argument("result", help="result raster (with --sets: the images to score: a folder or a manifest)")
    ev.add_argument("reference", help="reference raster of the same place, any CRS/resolution (with --sets: the "
                                      "images to compare with)")
    ev.add_argument("-o", "--output", required=True, help="report JSON; the table, plot and error map go beside it")
    ev.add_argument("--table", help="CSV table (default: OUTPUT.csv)")
    ev.add_argument("--plot", help="PNG plot (default: OUTPUT.png)")
    ev.add_argument("--error-map", help="error-map GeoTIFF on the compared grid (default: OUTPUT_error.tif)")
    pair = ev.add_argument_group("pairs")
    pair.add_argument("--bands", type=int, nargs="+", help="result bands to compare (default: all image bands)")
    pair.add_argument("--reference-bands", type=int, nargs="+", help="reference bands, in the same order")
    pair.add_argument("--reverse", action="store_true", help="warp the result onto the reference's grid instead")
    pair.add_argument("--resampling", default="bilinear", choices=["nearest", "bilinear", "cubic", "average"])
    pair.add_argument("--data-range", type=float, help="span of possible values (default: from the data type, 255 for 8-bit)")
    pair.add_argument("--window", type=int, default=256, help="metric window in pixels (default 256)")
    pair.add_argument("--mask", help="label raster or polygons: metrics inside and outside it as well")
    pair.add_argument("--lpips", action="store_true", help="also LPIPS (needs lpips_net and lpips_weights networks)")
    pair.add_argument("--clip-score", action="store_true", help="also the CLIP score of both images against --prompt")
    sets = ev.add_argument_group("sets")
    sets.add_argument("--sets", action="store_true", help="compare two image sets (folders or manifests)")
    sets.add_argument("--metrics", nargs="+", default=["fid", "kid"], choices=["fid", "kid", "is", "clip"])
    sets.add_argument("--input-size", type=int, default=299, help="image size the feature network sees")
    sets.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples for the intervals (0: none)")
    sets.add_argument("--splits", type=int, default=10, help="Inception Score splits")
    sets.add_argument("--seed", type=int, default=0)
    nets = ev.add_argument_group("networks (local files only; nothing is downloaded)")
    nets.add_argument("--prompt", help="prompt for the CLIP score")
    nets.add_argument("--networks", help="metrics folder (inception.pt, lpips_net.pt, lpips_weights.pth, clip/); a "
                                         "path, or a folder name in --models-dir")
    nets.add_argument("--inception", help="feature network for FID/KID/IS (TorchScript .pt or torch.export .pt2)")
    nets.add_argument("--lpips-net", help="LPIPS backbone (TorchScript or .pt2)")
    nets.add_argument("--lpips-weights", help="LPIPS linear weights (e.g. alex.pth of the lpips package)")
    nets.add_argument("--clip", help="CLIP model folder in transformers layout")
    add_engine_arguments(ev)
    ev.set_defaults(func=cmd_evaluate)
    return ev


def _outputs(args) -> dict[str, Path]:
    report = Path(args.output)
    if report.suffix.lower() != ".json":
        raise InputError(f"the report {report} must be a .json file; the table, plot and error map go beside it")
    outputs = {"report": report, "table": Path(args.table) if args.table else report.with_suffix(".csv"),
               "plot": Path(args.plot) if args.plot else report.with_suffix(".png")}
    if not args.sets:
        outputs["error_map"] = Path(args.error_map) if args.error_map else report.with_name(report.stem + "_error.tif")
    return outputs


def _networks(args):
    from engine.evaluate.networks import NetworkPaths

    base = NetworkPaths()
    if args.networks:
        folder = Path(args.networks)
        base = NetworkPaths.from_folder(folder if folder.is_dir() else Path(args.models_dir) / args.networks)
    given = {k: Path(v) for k, v in (("inception", args.inception), ("lpips_net", args.lpips_net),
                                     ("lpips_weights", args.lpips_weights), ("clip", args.clip)) if v}
    from dataclasses import replace

    return replace(base, **given)


def _learned(args) -> list[str]:
    return (["lpips"] if args.lpips else []) + (["clip"] if args.clip_score else [])


def _params(args) -> dict:
    return {"bands": args.bands, "reference_bands": args.reference_bands, "reverse": args.reverse,
            "resampling": args.resampling, "data_range": args.data_range, "window": args.window,
            "learned": _learned(args), "set_metrics": args.metrics, "prompt": args.prompt, "networks": args.networks,
            "input_size": args.input_size, "bootstrap": args.bootstrap, "is_splits": args.splits, "seed": args.seed}


def _on_engine(args, outputs) -> dict:
    import json

    from engine.cli import _run_task

    if any((args.inception, args.lpips_net, args.lpips_weights, args.clip)):
        raise InputError("with --engine, name the metric networks with --networks (a folder in the engine's models "
                         "directory); the engine does not read files by path")
    if args.sets:
        from engine.evaluate.images import image_paths

        files = {f"set_a.{i}": p for i, p in enumerate(image_paths(Path(args.result)))}
        files.update({f"set_b.{i}": p for i, p in enumerate(image_paths(Path(args.reference)))})
    else:
        files = {"result": Path(args.result), "reference": Path(args.reference)}
        if args.mask:
            files["mask"] = Path(args.mask)
    _run_task(args, "evaluate", _params(args), files, outputs)
    return json.loads(outputs["report"].read_text())


def cmd_evaluate(args) -> int:
    from engine.cli import _progress_bar

    outputs = _outputs(args)
    if getattr(args, "engine", None):
        report = _on_engine(args, outputs)
    else:
        from engine.evaluate.run import PairOptions, SetOptions, evaluate_pair, evaluate_sets

        bar = _progress_bar("evaluate")
        try:
            if args.sets:
                options = SetOptions(metrics=args.metrics, input_size=args.input_size, bootstrap=args.bootstrap,
                                     is_splits=args.splits, prompt=args.prompt, seed=args.seed, networks=_networks(args))
                report = evaluate_sets(Path(args.result), Path(args.reference), outputs, options, bar)
            else:
                options = PairOptions(bands=args.bands, reference_bands=args.reference_bands, reverse=args.reverse,
                                      resampling=args.resampling, data_range=args.data_range, window=args.window,
                                      mask=Path(args.mask) if args.mask else None, learned=_learned(args),
                                      prompt=args.prompt, networks=_networks(args))
                report = evaluate_pair(Path(args.result), Path(args.reference), outputs, options, bar)
        finally:
            bar.close()
    for line in summary(report):
        print(line)
    for name, path in outputs.items():
        print(f"wrote {name}: {path}")
    return 0


def _num(value, digits: int = 4) -> str:
    if value in ("inf", None) or (isinstance(value, float) and math.isinf(value)):
        return "inf" if value is not None else "n/a"
    return f"{value:.{digits}g}"


def summary(report: dict) -> list[str]:
    """A few human lines of a report (the same report the JSON holds)."""
    if report["kind"] == "sets":
        lines = [f"set A: {report['set_a']['count']} images, set B: {report['set_b']['count']} images"]
        for name, entry in report["metrics"].items():
            interval = f" [{_num(entry['low'])}, {_num(entry['high'])}]" if "low" in entry else ""
            lines.append(f"{name.upper()}: {_num(entry['value'])}{interval}")
        return lines
    overlap = report["overlap"]
    lines = [f"compared {overlap['pixels']} pixels ({overlap['fraction_of_grid']:.1%} of the {report['grid']['on']}'s grid, "
             f"{report['grid']['crs']}), data range {_num(report['data_range'])}"]
    for scope in ("overall", "inside_mask", "outside_mask"):
        m = report.get(scope)
        if m:
            lines.append(f"{scope.replace('_', ' ')}: MSE {_num(m['mse'])}, PSNR {_num(m['psnr'])} dB, "
                         f"SSIM {_num(m['ssim'], 3)} ({m['pixels']} px)")
    for name, value in report.get("learned", {}).items():
        if name == "lpips":
            lines.append(f"LPIPS: {_num(value['mean'])} (mean of {value['windows']} windows)")
        else:
            lines.append(f"CLIP score: result {_num(value['result'])}, reference {_num(value['reference'])}")
    return lines
