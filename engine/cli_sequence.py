"""`gfm4d sequence`: the first date generated, each next date predicted from the frames so far.

Built from the engine's own tasks (one `generate`, then one `predict` per later date), so it runs
in this process or on an engine (`--engine`) alike, with every sampler option the tasks take
(`--window`, `--scheduler`, ...) and their checks. Frames are written as `frame_<date>.tif` into
the output folder (created when missing); a failed or cancelled sequence removes the frames it
wrote, and the folder if it made it.
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import InputError


def _dates(texts: list[str]) -> list:
    from engine.geo.dates import parse_date

    dates = sorted(parse_date(text) for text in texts)
    if len(dates) < 2:
        raise InputError("a sequence needs at least two dates: the first is generated, the others predicted")
    if len(set(dates)) != len(dates):
        raise InputError("the sequence's dates must all differ")
    return dates


def _preflight(args, where: dict, files: dict, frames: list[Path], previews: list[Path], size) -> int:
    """Output, unit and model checks and the size line; the predictor's number of conditioning frames."""
    from engine import cli_preflight as pre
    from engine.cli import _device, _registry
    from engine.cli_args import stderr_line

    outputs = {f"frame {i + 1}": p for i, p in enumerate(frames)}
    outputs.update({f"preview {i + 1}": p for i, p in enumerate(previews)})
    pre.check_outputs(outputs, list(files.values()), args.overwrite)
    pre.check_extent_units(where["extent"], where["crs"])
    if args.engine:
        from engine.server.cli_support import engine_device

        line = (f"gfm4d: sequence of {len(frames)} frames with models {args.model} and {args.predictor} "
                f"on the engine at {args.engine} ({engine_device(args.engine, args.engine_token)})")
        if size is not None:
            job = pre.JobSize(size[0], size[1] * len(frames), 0, 0, None)
            line += f": {len(frames)} x {size[0]} x {size[1]} px"
            pre.check_confirmed(job, args.yes)
        stderr_line(line)
        return 3
    registry = _registry(args)
    generator = pre.check_model(registry, args.model, "generate")
    predictor = pre.check_model(registry, args.predictor, "predict")
    window = predictor.num_frames or 3
    if size is None:
        stderr_line(f"gfm4d: sequence of {len(frames)} frames with models {args.model} and {args.predictor}")
        return window
    device = _device(args)
    first = pre.estimate(generator, *size, args.steps, args.guidance, args.window, args.overlap, device)
    rest = pre.estimate(predictor, *size, args.steps, args.predict_guidance, args.window, args.overlap, device,
                        frames=window, repeats=len(frames) - 1)
    total = pre.JobSize(size[0], size[1] * len(frames), first.windows + rest.windows,
                        first.evaluations + rest.evaluations, first.seconds + rest.seconds)
    stderr_line(
        f"gfm4d: sequence with models {args.model} then {args.predictor} on {device}: {len(frames)} frames of "
        f"{size[0]} x {size[1]} px, {total.windows} windows x {args.steps} steps, roughly {pre.duration(total.seconds)}"
    )
    pre.check_confirmed(total, args.yes)
    return window


def run_sequence(args, sampling: dict, where: dict, files: dict[str, Path], where_size) -> dict[str, Path]:
    """Write one GeoTIFF per date into --output-dir; frame name -> path."""
    from engine.cli import _run_task

    dates = _dates(args.dates)
    out_dir = Path(args.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--output-dir {out_dir} is a file; give a folder")
    made_folder = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {out_dir}: {exc.strerror}; choose another --output-dir") from None
    frames = [out_dir / f"frame_{d.isoformat()}.tif" for d in dates]
    previews = [p.with_suffix(".png") for p in frames] if args.preview else []
    written: list[Path] = []
    try:
        window = _preflight(args, where, files, frames, previews, where_size(where, files))
        for index, (date, path) in enumerate(zip(dates, frames)):
            outputs = {"image": path, "preview": previews[index] if previews else None}
            label = f"frame {index + 1}/{len(dates)}"
            if index == 0:
                params = {**sampling, **where, "prompt": args.prompt, "date": date.isoformat()}
                result = _run_task(args, "generate", params, files, outputs, checked=True, label=label)
            else:
                recent = frames[max(0, index - window):index]
                params = {
                    **sampling, "model": args.predictor, "prompt": args.prompt, "guidance_scale": args.predict_guidance,
                    "seed": args.seed + index, "target_date": date.isoformat(),
                    "dates": [d.isoformat() for d in dates[index - len(recent):index]],
                }
                inputs = {f"frames.{i}": frame for i, frame in enumerate(recent)}
                result = _run_task(args, "predict", params, inputs, outputs, checked=True, label=label)
            written.extend(result.values())
    except BaseException as exc:  # failed, cancelled or terminated: no partial sequence is left behind
        written.extend(vars(exc).pop("finished_outputs", {}).values())  # a frame finished as the interrupt came
        for path in written:
            path.unlink(missing_ok=True)
        if made_folder and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    return {f"frame {i + 1}": path for i, path in enumerate(frames)}
