"""Evaluate a result raster against a reference (pairs) or one image set against another (sets).

    from engine.evaluate.run import PairOptions, evaluate_pair
    report = evaluate_pair("predicted.tif", "real.tif", {"report": "eval.json", "table": "eval.csv",
                           "plot": "eval.png", "error_map": "error.tif"}, PairOptions(window=256))

Both return the report dict that is also written as JSON; outputs not named are not written.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from engine.errors import Cancelled, InputError
from engine.evaluate import images, pixels, report, sets
from engine.evaluate.networks import FeatureNetwork, NetworkPaths

PAIR_OUTPUTS = ("report", "table", "plot", "error_map")
SET_OUTPUTS = ("report", "table", "plot")
PAIR_LEARNED = ("lpips", "clip")
SET_METRICS = ("fid", "kid", "is", "clip")


def _library() -> str:
    import skimage

    return (f"scikit-image {skimage.__version__} (skimage.metrics.mean_squared_error, peak_signal_noise_ratio, "
            "structural_similarity with its default 7x7 window)")


@dataclass
class PairOptions:
    """How to compare a pair; every field has the default a user gets from the CLI."""

    bands: Sequence[int] | None = None  # result bands to compare (default: all image bands)
    reference_bands: Sequence[int] | None = None
    reverse: bool = False  # warp the result onto the reference's grid instead
    resampling: str = "bilinear"
    data_range: float | None = None  # default: from the dtype (uint8: 255)
    window: int = 256  # metric window in pixels
    mask: Path | None = None  # label raster or polygons: metrics inside and outside it too
    learned: Sequence[str] = ()  # any of PAIR_LEARNED
    prompt: str | None = None  # for the CLIP score
    networks: NetworkPaths = field(default_factory=NetworkPaths)


def _check(cancel) -> None:
    if cancel is not None and cancel():
        raise Cancelled("the evaluation was cancelled; nothing was written")


def _check_outputs(outputs: dict, allowed: Sequence[str]) -> dict[str, Path]:
    unknown = sorted(set(outputs) - set(allowed))
    if unknown:
        raise InputError(f"unknown evaluation output(s) {', '.join(unknown)}; the outputs are {', '.join(allowed)}")
    chosen = {k: Path(v) for k, v in outputs.items() if v}
    if not chosen:
        raise InputError(f"name at least one output ({', '.join(allowed)})")
    for name, path in chosen.items():
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise InputError(f"the folder {parent} for the {name} output {path.name} does not exist; create it first")
    if "error_map" in chosen:
        from engine.geo.writer import check_destination

        check_destination(chosen["error_map"])
    return chosen


def _need_prompt(metrics: Sequence[str], prompt: str | None) -> None:
    if "clip" in metrics and not (prompt or "").strip():
        raise InputError("the CLIP score measures how well images match a prompt: give the prompt")


def _unknown(chosen: Sequence[str], allowed: Sequence[str], what: str) -> None:
    bad = [m for m in chosen if m not in allowed]
    if bad:
        raise InputError(f"unknown {what} {', '.join(bad)}; choose from {', '.join(allowed)}")


def evaluate_pair(result: Path, reference: Path, outputs: dict, options: PairOptions | None = None,
                  progress: Callable | None = None, cancel: Callable[[], bool] | None = None) -> dict:
    """Compare a result raster with a reference raster of the same place; write the named outputs.

    The report holds the grid and overlap used, the pixel metrics overall, per window and inside/
    outside the mask, the learned metrics asked for, and the library that computed them.
    """
    from engine.evaluate.pairs import align, mask_on_grid
    from engine.progress import Progress

    options = options or PairOptions()
    _unknown(options.learned, PAIR_LEARNED, "learned metric(s) for a pair")
    _need_prompt(options.learned, options.prompt)
    chosen = _check_outputs(outputs, PAIR_OUTPUTS)
    say = progress or (lambda p: None)
    total = 4 + len(options.learned)
    scorers = {name: _load_scorer(name, options.networks) for name in options.learned}  # fail before any work
    pair = align(Path(result), Path(reference), options.bands, options.reference_bands, options.reverse,
                 options.resampling)
    if pair.dtype is None and options.data_range is None:
        raise InputError("the result and the reference have different data types, so the data range of PSNR/SSIM "
                         "cannot come from the type: give it (e.g. 255 for 8-bit, 10000 for reflectance x 10000)")
    dtype = pair.dtype if pair.dtype is not None else np.float64
    data_range = pixels.data_range_for(dtype, options.data_range)
    mask = mask_on_grid(options.mask, pair.grid) if options.mask is not None else None
    _check(cancel)
    say(Progress(1, total, "pixel metrics"))
    overall, local_ssim = pixels.compare(pair.result, pair.reference, data_range=data_range, ssim_map=True)
    valid = pair.valid
    abs_error = np.where(valid, np.abs(np.ma.getdata(pair.result).astype(np.float64)
                                       - np.ma.getdata(pair.reference).astype(np.float64)).mean(axis=0), np.nan)
    out = {
        "kind": "pair",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "result": str(result),
        "reference": str(reference),
        "grid": {"on": pair.on, "crs": pair.grid.crs.to_string(), "transform": list(pair.grid.transform)[:6],
                 "width": pair.grid.width, "height": pair.grid.height},
        "resampling": options.resampling,
        "overlap": pair.overlap(),
        "bands": {"result": list(pair.result_bands), "reference": list(pair.reference_bands)},
        "data_range": data_range,
        "library": _library(),
        "overall": overall.as_dict(),
    }
    rows = report.metric_rows("overall", overall)
    if mask is not None:
        out["mask"] = {"source": str(options.mask), "pixels_inside": int((mask & valid).sum()),
                       "pixels_outside": int((~mask & valid).sum())}
        for scope, where in (("inside_mask", mask), ("outside_mask", ~mask)):
            if (where & valid).any():
                metrics = pixels.compare(pair.result, pair.reference, mask=where, data_range=data_range)
                out[scope] = metrics.as_dict()
                rows += report.metric_rows(scope, metrics)
            else:
                out[scope] = None
    _check(cancel)
    say(Progress(2, total, "per-window metrics"))
    windows = pixels.per_window(pair.result, pair.reference, options.window, data_range=data_range)
    out["window"] = options.window
    out["windows"] = [{"col_off": w.col_off, "row_off": w.row_off, "width": w.width, "height": w.height,
                       **({"mse": w.metrics.mse, "psnr": w.metrics.psnr, "ssim": w.metrics.ssim,
                           "pixels": w.metrics.pixels} if w.metrics else {"mse": None, "psnr": None, "ssim": None,
                                                                        "pixels": 0})} for w in windows]
    for w in windows:
        if w.metrics is not None:
            rows += report.metric_rows("window", w.metrics, w)
    learned = {}
    for step, name in enumerate(options.learned, start=3):
        _check(cancel)
        say(Progress(step, total, name))
        learned[name] = _pair_learned(name, scorers[name], pair, windows, options)
    if learned:
        out["learned"] = learned
    _check(cancel)
    say(Progress(total - 1, total, "writing"))
    if "error_map" in chosen:
        report.write_error_map(chosen["error_map"], pair.grid, abs_error, local_ssim,
                               {"GFM4D_EVALUATION_RESULT": Path(result).name,
                                "GFM4D_EVALUATION_REFERENCE": Path(reference).name,
                                "GFM4D_EVALUATION_SSIM": f"{overall.ssim:.6g}", "GFM4D_EVALUATION_PSNR": f"{overall.psnr:.6g}"})
    if "table" in chosen:
        report.write_csv(rows, chosen["table"])
    if "plot" in chosen:
        report.plot_pair(chosen["plot"], abs_error, windows, (pair.grid.height, pair.grid.width), options.window,
                         f"{Path(result).name} vs {Path(reference).name}: MSE {overall.mse:.4g}, PSNR "
                         f"{overall.psnr:.4g} dB, SSIM {overall.ssim:.3f} over {overall.pixels} px")
    out["outputs"] = {k: str(v) for k, v in chosen.items()}
    if "report" in chosen:
        report.write_json(out, chosen["report"])
    say(Progress(total, total, "done"))
    return out


def _unit(pair, array: np.ma.MaskedArray) -> np.ndarray:
    """Pixels in [0, 1] with the reference's stretch; pixels not valid in both take the reference's value."""
    data = np.where(pair.valid, np.ma.getdata(array), np.ma.getdata(pair.reference))
    return pair.stretch.to_unit(data)


def _load_scorer(name: str, networks: NetworkPaths):
    """The LPIPS or CLIP-score network of a learned metric."""
    from engine.evaluate.learned import LPIPS, CLIPScore

    if name == "clip":
        return CLIPScore.load(networks.clip)
    return LPIPS.load(networks.lpips_net, networks.lpips_weights)


def _pair_learned(name: str, scorer, pair, windows, options: PairOptions) -> dict:
    if len(pair.result_bands) != 3:
        raise InputError(f"{name.upper()} needs three bands (red, green, blue); {len(pair.result_bands)} are compared: "
                         "choose three with the band options")
    result, reference = _unit(pair, pair.result), _unit(pair, pair.reference)
    if name == "clip":
        return {"prompt": options.prompt, "result": float(scorer(result[None], options.prompt or "")[0]),
                "reference": float(scorer(reference[None], options.prompt or "")[0])}
    lpips = scorer
    scores, weights = [], []
    for w in windows:
        if w.metrics is None:
            continue
        cut = (slice(None), slice(w.row_off, w.row_off + w.height), slice(w.col_off, w.col_off + w.width))
        scores.append(float(lpips(result[cut][None], reference[cut][None])[0]))
        weights.append(w.metrics.pixels)
    if not scores:
        raise InputError("no window has enough valid pixels for LPIPS; use a smaller window")
    return {"mean": float(np.average(scores, weights=weights)), "windows": len(scores),
            "per_window": scores, "note": "mean over the metric windows, weighted by their valid pixels"}


@dataclass
class SetOptions:
    """How to compare two image sets."""

    metrics: Sequence[str] = ("fid", "kid")  # any of SET_METRICS
    input_size: int = 299  # images are resized to this for the feature network
    bootstrap: int = 100  # resamples for the confidence intervals (0: none)
    confidence: float = 0.95
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    is_splits: int = 10
    prompt: str | None = None  # for the CLIP score of set A
    seed: int = 0
    networks: NetworkPaths = field(default_factory=NetworkPaths)


def _minimum_for(metrics: Sequence[str], options: SetOptions) -> int:
    return max([2] + ([options.is_splits] if "is" in metrics else []))


def evaluate_sets(set_a, set_b, outputs: dict, options: SetOptions | None = None,
                  progress: Callable | None = None, cancel: Callable[[], bool] | None = None) -> dict:
    """FID / KID / Inception Score / CLIP score of image set A (e.g. generated) against set B (real).

    `set_a`, `set_b`: a folder, a manifest file or a list of image paths. The Inception Score and
    CLIP score are of set A. Each metric comes with the set sizes and a bootstrap interval.
    """
    from engine.progress import Progress

    options = options or SetOptions()
    metrics = list(options.metrics)
    if not metrics:
        raise InputError(f"choose at least one set metric: {', '.join(SET_METRICS)}")
    _unknown(metrics, SET_METRICS, "set metric(s)")
    _need_prompt(metrics, options.prompt)
    chosen = _check_outputs(outputs, SET_OUTPUTS)
    say = progress or (lambda p: None)
    total = 3 + len(metrics)
    minimum = _minimum_for(metrics, options)
    needs_network = any(m in metrics for m in ("fid", "kid", "is"))
    metric_names = "/".join(m.upper() for m in metrics if m != "clip")
    network = (FeatureNetwork.load(options.networks.inception, metric=metric_names, input_size=options.input_size)
               if needs_network else None)
    size = options.input_size
    clip = _load_scorer("clip", options.networks) if "clip" in metrics else None
    images_a, paths_a = images.load_set(set_a, size, minimum, "first image set")
    needs_b = any(m in metrics for m in ("fid", "kid"))
    images_b, paths_b = images.load_set(set_b, size, minimum, "second image set") if needs_b else (None, [])
    _check(cancel)
    say(Progress(1, total, "features"))
    feats_a = feats_b = None
    if needs_b:
        feats_a, feats_b = network.features(images_a), network.features(images_b)
    out = {"kind": "sets", "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "set_a": {"source": str(set_a) if not isinstance(set_a, list) else "list", "count": len(paths_a)},
           "set_b": {"source": str(set_b) if not isinstance(set_b, list) else "list", "count": len(paths_b)},
           "input_size": size, "bootstrap": {"resamples": options.bootstrap, "confidence": options.confidence},
           "metrics": {}}
    intervals = {}
    for step, name in enumerate(metrics, start=2):
        _check(cancel)
        say(Progress(step, total, name))
        value, statistic, data = _set_metric(name, network if name != "clip" else clip, images_a, feats_a, feats_b,
                                             options)
        entry = dict(value)
        if options.bootstrap:
            interval = sets.bootstrap(statistic, *data, resamples=options.bootstrap, confidence=options.confidence,
                                      seed=options.seed)
            entry.update(low=interval.low, high=interval.high)
            intervals[name.upper()] = {"value": entry["value"], "low": interval.low, "high": interval.high}
        out["metrics"][name] = entry
    rows = [{"metric": name, **{k: v for k, v in entry.items() if k in ("value", "std", "low", "high")},
             "count_a": len(paths_a), "count_b": len(paths_b)} for name, entry in out["metrics"].items()]
    say(Progress(total - 1, total, "writing"))
    if "table" in chosen:
        report.write_csv(rows, chosen["table"], ("metric", "value", "std", "low", "high", "count_a", "count_b"))
    if "plot" in chosen:
        report.plot_sets(chosen["plot"], intervals, feats_a, feats_b,
                         f"set A: {len(paths_a)} images" + (f", set B: {len(paths_b)} images" if needs_b else ""))
    out["outputs"] = {k: str(v) for k, v in chosen.items()}
    if "report" in chosen:
        report.write_json(out, chosen["report"])
    say(Progress(total, total, "done"))
    return out


def _set_metric(name, network, images_a, feats_a, feats_b, options: SetOptions):
    """(report entry, statistic for the bootstrap, its data) of one set metric."""
    if name == "fid":
        return {"value": sets.frechet_distance(feats_a, feats_b)}, sets.frechet_distance, (feats_a, feats_b)
    if name == "kid":
        kid = sets.kernel_inception_distance(feats_a, feats_b, options.kid_subsets, options.kid_subset_size, options.seed)

        def statistic(a, b):
            return sets.kernel_inception_distance(a, b, max(1, options.kid_subsets // 10), options.kid_subset_size,
                                                  options.seed).mean

        return ({"value": kid.mean, "std": kid.std, "subsets": kid.subsets, "subset_size": kid.subset_size},
                statistic, (feats_a, feats_b))
    if name == "is":
        probabilities = network.probabilities(images_a)
        mean, std = sets.inception_score(probabilities, options.is_splits)
        return ({"value": mean, "std": std, "splits": options.is_splits},
                lambda p: sets.inception_score(p, options.is_splits)[0], (probabilities,))
    scores = network(images_a, options.prompt or "")
    return {"value": float(scores.mean()), "prompt": options.prompt}, lambda s: float(np.mean(s)), (scores,)
