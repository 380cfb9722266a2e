"""The evaluate task: how close a result is to reality.

Pairs: `result` and `reference` rasters -> MSE/PSNR/SSIM overall, per window and inside/outside a
`mask`, optional LPIPS/CLIP score (results: report JSON, table CSV, plot PNG, error_map GeoTIFF).
Sets: `set_a` and `set_b` images -> FID/KID/IS/CLIP score with bootstrap intervals (report, table,
plot). Learned metrics read their networks from a folder in the engine's models directory named
by `networks` (see engine.evaluate.networks), never from a path a client names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from engine.errors import InputError

from . import Input, inputs_named, task
from .base import TaskParams

_FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class EvaluateParams(TaskParams):
    """How to compare: bands, grid, data range, windows, metrics and their networks."""

    model: str | None = Field(None, description="unused: evaluation runs no diffusion model")
    bands: list[int] | None = Field(None, max_length=64, description="result bands to compare (default: all image bands)")
    reference_bands: list[int] | None = Field(None, max_length=64, description="reference bands, in the same order")
    reverse: bool = Field(False, description="warp the result onto the reference's grid instead of the reference onto the result's")
    resampling: Literal["nearest", "bilinear", "cubic", "average"] = "bilinear"
    data_range: float | None = Field(None, gt=0, description="span of possible values for PSNR/SSIM (default: from the data type)")
    window: int = Field(256, ge=7, le=8192, description="metric window in pixels")
    learned: list[Literal["lpips", "clip"]] = Field(default_factory=list, description="learned metrics of a pair")
    set_metrics: list[Literal["fid", "kid", "is", "clip"]] = Field(["fid", "kid"], description="metrics of two image sets")
    prompt: str | None = Field(None, max_length=2000, description="prompt for the CLIP score")
    networks: str | None = Field(None, description="folder in the engine's models directory holding the metric networks")
    input_size: int = Field(299, ge=32, le=1024, description="image size the feature network sees")
    bootstrap: int = Field(100, ge=0, le=2000, description="bootstrap resamples for the set metrics' intervals (0: none)")
    confidence: float = Field(0.95, gt=0, lt=1)
    is_splits: int = Field(10, ge=1, le=100)
    kid_subsets: int = Field(100, ge=1, le=1000)
    kid_subset_size: int = Field(1000, ge=2, le=100000)
    seed: int = Field(0, ge=0, le=2**32 - 1)

    @field_validator("networks")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and (not _FOLDER_NAME.fullmatch(value) or ".." in value):
            raise ValueError("networks is the name of a folder in the engine's models directory (letters, digits, . _ -), not a path")
        return value


def _mode(inputs) -> str:
    pair = "result" in inputs or "reference" in inputs
    sets = bool(inputs_named(inputs, "set_a") or inputs_named(inputs, "set_b"))
    if pair and sets:
        raise InputError("give either a result and a reference raster, or two image sets (set_a, set_b), not both")
    if pair:
        if not ("result" in inputs and "reference" in inputs):
            raise InputError("a pair evaluation needs both a result and a reference raster")
        return "pair"
    if not sets:
        raise InputError("give a result and a reference raster, or two image sets (set_a.0, ..., set_b.0, ...)")
    return "sets"


def check(params: EvaluateParams, inputs) -> None:
    """Refuse a request with a missing half before it is queued."""
    if _mode(inputs) == "sets":
        if any(m in params.set_metrics for m in ("fid", "kid")) and not inputs_named(inputs, "set_b"):
            raise InputError("FID and KID compare two sets: give set_b (e.g. the real images) as well as set_a")
        if not inputs_named(inputs, "set_a"):
            raise InputError("give set_a: the images to score (e.g. the generated ones)")
    elif "mask" in inputs and not Path(inputs["mask"]).suffix:
        raise InputError("the mask file needs its extension (.tif for a label raster; .gpkg, .geojson, .zip for polygons)")


@task(
    "evaluate",
    EvaluateParams,
    inputs={
        "result": Input("raster", "the generated or predicted raster"),
        "reference": Input("raster", "the real image of that place and date (any CRS/resolution)"),
        "mask": Input("file", "optional: label raster (.tif) or polygons: metrics inside and outside it too"),
        "set_a": Input("file", "images to score, e.g. generated chips (set_a.0, set_a.1, ...)", many=True),
        "set_b": Input("file", "images to compare with, e.g. real chips (set_b.0, ...)", many=True),
    },
    check=check,
    summary="result vs reference raster -> MSE/PSNR/SSIM (+LPIPS/CLIP), or two image sets -> FID/KID/IS "
            "(results: report, table, plot, error_map)",
)
def run(registry, params: EvaluateParams, inputs, out_dir: Path, progress, cancel) -> dict[str, Path]:
    from engine.evaluate.networks import NetworkPaths
    from engine.evaluate.run import PairOptions, SetOptions, evaluate_pair, evaluate_sets

    networks = NetworkPaths()
    if params.networks:
        folder = Path(registry.models_dir) / params.networks
        if not folder.is_dir():
            raise InputError(f"the engine's models directory has no networks folder {params.networks!r}; put the "
                             "metric networks (inception.pt, lpips_net.pt, lpips_weights.pth, clip/) in a folder there")
        networks = NetworkPaths.from_folder(folder)
    outputs = {"report": out_dir / "report.json", "table": out_dir / "table.csv", "plot": out_dir / "plot.png"}
    if _mode(inputs) == "pair":
        outputs["error_map"] = out_dir / "error_map.tif"
        options = PairOptions(bands=params.bands, reference_bands=params.reference_bands, reverse=params.reverse,
                              resampling=params.resampling, data_range=params.data_range, window=params.window,
                              mask=inputs.get("mask"), learned=params.learned, prompt=params.prompt, networks=networks)
        evaluate_pair(inputs["result"], inputs["reference"], outputs, options, progress, cancel)
    else:
        options = SetOptions(metrics=params.set_metrics, input_size=params.input_size, bootstrap=params.bootstrap,
                             confidence=params.confidence, kid_subsets=params.kid_subsets,
                             kid_subset_size=params.kid_subset_size, is_splits=params.is_splits, prompt=params.prompt,
                             seed=params.seed, networks=networks)
        evaluate_sets(inputs_named(inputs, "set_a"), inputs_named(inputs, "set_b"), outputs, options, progress, cancel)
    return outputs
