"""The evaluation's files: JSON report, CSV table, PNG plot and the error-map GeoTIFF.

Every file is written to a scratch name beside its destination and renamed onto it, so a failed
run leaves no half-written report (the GeoTIFF through the engine's atomic `GeoTIFFWriter`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import uuid
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from engine.evaluate.pixels import PixelMetrics, WindowMetrics
from engine.geo.grid import OutputGrid
from engine.geo.writer import GeoTIFFWriter

ERROR_MAP_BANDS = ("absolute error (mean over bands, in pixel units)", "local SSIM (mean over bands)")
CSV_FIELDS = ("scope", "col_off", "row_off", "width", "height", "band", "mse", "psnr", "ssim", "pixels")


def write_atomically(path: Path, data: bytes) -> Path:
    path = Path(path)
    scratch = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        scratch.write_bytes(data)
        os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)
    return path


def _finite(value):
    """JSON has no inf/NaN: PSNR of identical images is written as the string "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else None)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(report: dict, path: Path) -> Path:
    return write_atomically(path, (json.dumps(_finite(report), indent=2) + "\n").encode())


def metric_rows(scope: str, metrics: PixelMetrics, window: WindowMetrics | None = None) -> list[dict]:
    """CSV rows of one set of pixel metrics: the overall row ("band" all) then one per band."""
    where = dict(col_off="", row_off="", width="", height="")
    if window is not None:
        where = dict(col_off=window.col_off, row_off=window.row_off, width=window.width, height=window.height)
    rows = [dict(scope=scope, **where, band="all", mse=metrics.mse, psnr=metrics.psnr, ssim=metrics.ssim,
                 pixels=metrics.pixels)]
    for band, (mse, psnr, ssim) in enumerate(zip(metrics.mse_per_band, metrics.psnr_per_band, metrics.ssim_per_band), 1):
        rows.append(dict(scope=scope, **where, band=band, mse=mse, psnr=psnr, ssim=ssim, pixels=metrics.pixels))
    return rows


def write_csv(rows: list[dict], path: Path, fields=CSV_FIELDS) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_atomically(path, buffer.getvalue().encode())


def write_error_map(path: Path, grid: OutputGrid, abs_error: np.ndarray, local_ssim: np.ndarray, tags: dict) -> Path:
    """Two float32 bands on `grid` (NaN = not compared): absolute error and local SSIM."""
    data = np.stack([abs_error, local_ssim]).astype(np.float32)
    with GeoTIFFWriter(path, grid, 2, "float32", nodata=float("nan"), band_descriptions=ERROR_MAP_BANDS,
                       tags={k: str(v) for k, v in tags.items()}) as writer:
        writer.write(data, Window(0, 0, grid.width, grid.height))
    return Path(path)


def _figure_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def plot_pair(path: Path, abs_error: np.ndarray, windows: list[WindowMetrics], grid_shape: tuple[int, int],
              window: int, title: str) -> Path:
    """Three panels: the absolute-error map, SSIM per window, and the histogram of absolute errors."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 4.2), layout="constrained")
    ax_map, ax_win, ax_hist = figure.subplots(1, 3)
    finite = abs_error[np.isfinite(abs_error)]
    top = float(np.percentile(finite, 99)) if finite.size else 1.0
    shown = ax_map.imshow(abs_error, cmap="magma", vmin=0, vmax=max(top, 1e-9), interpolation="nearest")
    figure.colorbar(shown, ax=ax_map, shrink=0.85, label="absolute error")
    ax_map.set_title("absolute error (mean over bands)")
    ax_map.set_axis_off()

    rows, cols = math.ceil(grid_shape[0] / window), math.ceil(grid_shape[1] / window)
    ssim = np.full((rows, cols), np.nan)
    for item in windows:
        if item.metrics is not None:
            ssim[item.row_off // window, item.col_off // window] = item.metrics.ssim
    tiles = ax_win.imshow(ssim, cmap="viridis", vmin=min(0.0, float(np.nanmin(ssim)) if np.isfinite(ssim).any() else 0.0),
                          vmax=1, interpolation="nearest")
    for (r, c), value in np.ndenumerate(ssim):
        if np.isfinite(value):
            ax_win.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white" if value < 0.6 else "black")
    figure.colorbar(tiles, ax=ax_win, shrink=0.85, label="SSIM")
    ax_win.set_title(f"SSIM per {window} x {window} px window")
    ax_win.set_xticks([])
    ax_win.set_yticks([])

    ax_hist.hist(finite, bins=64, range=(0, max(top, 1e-9)), color="#b5523b")
    ax_hist.set_title("histogram of absolute errors")
    ax_hist.set_xlabel("absolute error (pixel units)")
    ax_hist.set_ylabel("pixels")
    figure.suptitle(title, fontsize=10)
    return write_atomically(path, _figure_bytes(figure))


def plot_sets(path: Path, intervals: dict, features_a: np.ndarray | None, features_b: np.ndarray | None,
              title: str) -> Path:
    """Each set metric with its bootstrap interval, and the two sets' features along the line between their means."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="constrained")
    ax_bar, ax_hist = figure.subplots(1, 2)
    names = list(intervals)
    for i, name in enumerate(names):
        item = intervals[name]
        ax_bar.errorbar([i], [item["value"]], yerr=[[item["value"] - item["low"]], [item["high"] - item["value"]]],
                        fmt="o", capsize=6)
    ax_bar.set_xticks(range(len(names)), names)
    ax_bar.set_xlim(-0.5, max(len(names) - 0.5, 0.5))
    ax_bar.set_title("set metrics (bars: bootstrap interval)")
    if features_a is not None and features_b is not None:
        direction = features_b.mean(axis=0) - features_a.mean(axis=0)
        norm = np.linalg.norm(direction)
        direction = direction / norm if norm > 0 else np.eye(len(direction))[0]
        ax_hist.hist(features_a @ direction, bins=30, alpha=0.6, label="set A")
        ax_hist.hist(features_b @ direction, bins=30, alpha=0.6, label="set B")
        ax_hist.legend()
        ax_hist.set_xlabel("feature projected on mean(B) - mean(A)")
    ax_hist.set_title("feature histogram")
    figure.suptitle(title, fontsize=10)
    return write_atomically(path, _figure_bytes(figure))
