"""Pixel metrics of a result against a reference: MSE, PSNR and SSIM, per band and overall.

The formulas are scikit-image's (`skimage.metrics.mean_squared_error`, `peak_signal_noise_ratio`,
`structural_similarity`), so the numbers are the ones a reader can reproduce with that library.
What this module adds is what rasters need around them:

- a validity mask: only pixels valid in both images count. MSE and PSNR are computed on exactly
  those pixels. SSIM is a windowed statistic, so it is computed on the whole image (invalid pixels
  set to the same value in both images, so they add no difference) and its per-pixel map is then
  averaged over the valid pixels at least 3 pixels from the image's edge (scikit-image leaves that
  border out of its mean, where the 7 x 7 window is cut off); with every pixel valid this equals
  scikit-image's own SSIM.
- "overall" means all bands together: MSE over every valid value of every band, PSNR from that
  MSE, SSIM as the mean of the per-band SSIM maps (scikit-image's `channel_axis` convention).
- the data range (the span of possible values, which PSNR and SSIM need) comes from the dtype of
  integer images (uint8: 255, uint16: 65535) or is given; floating-point images need it given.

This module has no dependency on GIS or server code: `compare` takes plain numpy arrays and is
the API other tools (e.g. model training) call to score samples against held-out chips.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from engine.errors import InputError

SSIM_WINDOW = 7  # scikit-image's default Gaussian-free window; needs images of at least 7 x 7 pixels


@dataclass
class PixelMetrics:
    """MSE, PSNR and SSIM over some pixels: overall and per band (lists in band order)."""

    mse: float
    psnr: float
    ssim: float
    mse_per_band: list[float] = field(default_factory=list)
    psnr_per_band: list[float] = field(default_factory=list)
    ssim_per_band: list[float] = field(default_factory=list)
    pixels: int = 0  # pixels (per band) that counted
    data_range: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def data_range_for(dtype, given: float | None = None) -> float:
    """The data range PSNR/SSIM use: `given`, else the span of an integer dtype."""
    if given is not None:
        if not (isinstance(given, (int, float)) and math.isfinite(given) and given > 0):
            raise InputError(f"the data range must be a positive number, not {given!r}")
        return float(given)
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return 1.0
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.max) - float(info.min)
    raise InputError(
        f"the images are floating point ({dtype}), so their data range (the span of possible values, e.g. 1.0 "
        "for reflectance 0..1 or 10000 for Sentinel-2 L2A digital numbers) cannot be known: give it explicitly"
    )


def _as_bands(array: np.ndarray, name: str) -> np.ndarray:
    array = np.ma.asarray(array)  # keeps the mask of a masked array
    if array.ndim == 2:
        return array[None]
    if array.ndim != 3:
        raise InputError(f"the {name} must be a (bands, rows, cols) or (rows, cols) array, not shape {array.shape}")
    return array


def compare(
    result: np.ndarray,
    reference: np.ndarray,
    mask: np.ndarray | None = None,
    data_range: float | None = None,
    ssim_map: bool = False,
) -> PixelMetrics | tuple[PixelMetrics, np.ndarray]:
    """MSE, PSNR and SSIM of `result` against `reference`.

    `result`, `reference`: (bands, rows, cols) or (rows, cols) arrays of the same shape; numpy masked
    arrays mark invalid pixels (a pixel masked in any band of either image is left out).
    `mask`: optional (rows, cols) bool, True where pixels count (e.g. inside a damage polygon).
    `data_range`: span of possible values; default from the integer dtype (uint8: 255).
    `ssim_map=True` also returns the (rows, cols) local SSIM (mean over bands), NaN where not counted.

    A result identical to the reference gives MSE 0, PSNR inf and SSIM 1. Raises InputError when the
    shapes differ, no pixel counts, or the images are smaller than SSIM's 7 x 7 window.
    """
    a, b = _as_bands(result, "result"), _as_bands(reference, "reference")
    if a.shape != b.shape:
        raise InputError(f"the result has shape {a.shape} and the reference {b.shape}; they must be the same "
                         "(bands, rows, cols)")
    if min(a.shape[1:]) < SSIM_WINDOW:
        raise InputError(f"images of {a.shape[2]} x {a.shape[1]} pixels are too small for SSIM's {SSIM_WINDOW} x "
                         f"{SSIM_WINDOW} window; compare larger areas")
    dtype = np.result_type(np.ma.getdata(a).dtype, np.ma.getdata(b).dtype)
    span = data_range_for(dtype, data_range)
    valid = ~(np.ma.getmaskarray(a).any(axis=0) | np.ma.getmaskarray(b).any(axis=0))
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != valid.shape:
            raise InputError(f"the mask has shape {mask.shape}, the images {valid.shape}; they must be the same")
        valid &= mask
    count = int(valid.sum())
    if count == 0:
        raise InputError("no pixel is valid in both the result and the reference (and inside the mask): "
                         "there is nothing to compare")
    a64 = np.ma.getdata(a).astype(np.float64)
    b64 = np.ma.getdata(b).astype(np.float64)
    # Invalid pixels take the same value in both images, so SSIM's windows see no difference there.
    a64 = np.where(valid, a64, b64)

    mse_bands = [float(mean_squared_error(b64[i][valid], a64[i][valid])) for i in range(a.shape[0])]
    psnr_bands = [_psnr(b64[i][valid], a64[i][valid], span) for i in range(a.shape[0])]
    ssim_maps = []
    for i in range(a.shape[0]):
        _, local = structural_similarity(b64[i], a64[i], data_range=span, full=True)
        ssim_maps.append(local)
    pad = (SSIM_WINDOW - 1) // 2
    interior = np.zeros_like(valid)
    interior[pad:-pad, pad:-pad] = True
    ssim_pixels = valid & interior if (valid & interior).any() else valid
    ssim_bands = [float(local[ssim_pixels].mean()) for local in ssim_maps]
    overall_mse = float(mean_squared_error(b64[:, valid], a64[:, valid]))
    metrics = PixelMetrics(
        mse=overall_mse,
        psnr=_psnr(b64[:, valid], a64[:, valid], span),
        ssim=float(np.mean(ssim_bands)),
        mse_per_band=mse_bands,
        psnr_per_band=psnr_bands,
        ssim_per_band=ssim_bands,
        pixels=count,
        data_range=span,
    )
    if not ssim_map:
        return metrics
    local = np.mean(ssim_maps, axis=0)
    return metrics, np.where(valid, local, np.nan)


def _psnr(reference: np.ndarray, result: np.ndarray, span: float) -> float:
    """scikit-image's PSNR; identical images give inf (scikit-image divides by zero to get it)."""
    if np.array_equal(reference, result):
        return math.inf
    return float(peak_signal_noise_ratio(reference, result, data_range=span))


@dataclass
class WindowMetrics:
    """The metrics of one window of the compared area (pixel offsets in the compared grid)."""

    col_off: int
    row_off: int
    width: int
    height: int
    metrics: PixelMetrics | None  # None when too few pixels of the window count


def per_window(
    result: np.ndarray,
    reference: np.ndarray,
    window: int,
    mask: np.ndarray | None = None,
    data_range: float | None = None,
    min_valid_fraction: float = 0.5,
) -> list[WindowMetrics]:
    """`compare` on each `window` x `window` tile (row by row; edge tiles are smaller).

    A tile where fewer than `min_valid_fraction` of the pixels count, or that is smaller than SSIM's
    window, gets `metrics=None` rather than a number from a handful of pixels.
    """
    a, b = _as_bands(result, "result"), _as_bands(reference, "reference")
    if window < SSIM_WINDOW:
        raise InputError(f"the metric window must be at least {SSIM_WINDOW} pixels, not {window}")
    rows, cols = a.shape[1:]
    valid = ~(np.ma.getmaskarray(a).any(axis=0) | np.ma.getmaskarray(b).any(axis=0))
    if mask is not None:
        valid &= np.asarray(mask, dtype=bool)
    out = []
    for r in range(0, rows, window):
        for c in range(0, cols, window):
            tile = (slice(None), slice(r, r + window), slice(c, c + window))
            tile_valid = valid[tile[1:]]
            h, w = tile_valid.shape
            metrics = None
            if min(h, w) >= SSIM_WINDOW and tile_valid.sum() >= max(1, min_valid_fraction * h * w):
                metrics = compare(a[tile], b[tile], mask=tile_valid, data_range=data_range)
            out.append(WindowMetrics(c, r, w, h, metrics))
    return out
