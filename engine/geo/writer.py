"""Atomic, COG-ready GeoTIFF output.

Blocks are written window by window into a tiled scratch GeoTIFF next to the destination; on
success GDAL's COG driver copies it (internal overviews, compression) to a second scratch name
that is renamed onto the destination in one step. Any failure or cancellation removes both
scratch files, so the destination is either the complete new file or untouched.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import ColorInterp
from rasterio.windows import Window

from engine.errors import InputError
from engine.geo.grid import OutputGrid

_BLOCK = 512


def _scratch_path(destination: Path, suffix: str) -> Path:
    return destination.with_name(f".{destination.name}.{uuid.uuid4().hex[:8]}.{suffix}")


def _remove_quietly(path: Path) -> None:
    for candidate in (path, path.with_name(path.name + ".aux.xml"), path.with_name(path.name + ".msk")):
        try:
            candidate.unlink()
        except FileNotFoundError:
            pass


def check_destination(path: str | os.PathLike) -> Path:
    """Fail before any work if the destination cannot be written."""
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise InputError(f"output {path} must be a GeoTIFF (.tif or .tiff)")
    if path.is_dir():
        raise InputError(f"output {path} is a folder; give a file name ending in .tif")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"the folder {parent} for output {path.name} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise InputError(f"the folder {parent} is not writable; choose another output location")
    return path


class GeoTIFFWriter:
    """Write a raster on an `OutputGrid` window by window; publish it atomically on close.

    Use as a context manager: leaving the block with an exception (including `Cancelled`)
    discards everything written.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        grid: OutputGrid,
        count: int,
        dtype: str,
        *,
        nodata: float | None = None,
        with_mask: bool = False,
        colorinterp: Sequence[ColorInterp] | None = None,
        band_descriptions: Sequence[str] | None = None,
        tags: dict[str, str] | None = None,
        scales: Sequence[float] | None = None,
        offsets: Sequence[float] | None = None,
        compress: str = "DEFLATE",
    ) -> None:
        self.path = check_destination(path)
        self.grid = grid
        self._with_mask = with_mask
        self._compress = compress
        self._scratch = _scratch_path(self.path, "partial.tif")
        profile = dict(
            driver="GTiff",
            width=grid.width,
            height=grid.height,
            count=count,
            dtype=dtype,
            crs=grid.crs,
            transform=grid.transform,
            nodata=nodata,
            tiled=True,
            blockxsize=_BLOCK,
            blockysize=_BLOCK,
            compress="ZSTD" if compress.upper() != "NONE" else "NONE",
            BIGTIFF="IF_SAFER",
        )
        self._profile = profile
        self._dataset = None
        self._colorinterp = colorinterp
        self._band_descriptions = band_descriptions
        self._tags = tags or {}
        self._scales, self._offsets = scales, offsets

    def __enter__(self) -> "GeoTIFFWriter":
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            self._dataset = rasterio.open(self._scratch, "w", **self._profile)
        if self._colorinterp:
            self._dataset.colorinterp = list(self._colorinterp)
        for index, description in enumerate(self._band_descriptions or (), start=1):
            self._dataset.set_band_description(index, description)
        if self._tags:
            self._dataset.update_tags(**self._tags)
        if self._scales is not None:
            self._dataset.scales = tuple(self._scales)
        if self._offsets is not None:
            self._dataset.offsets = tuple(self._offsets)
        return self

    def write(self, data: np.ndarray, window: Window) -> None:
        """Write (bands, rows, cols) pixels at a window of the grid."""
        self._dataset.write(data, window=window)

    def write_mask(self, valid: np.ndarray, window: Window) -> None:
        """Write the validity mask (True = valid) of a window; needs `with_mask=True`."""
        if not self._with_mask:
            raise ValueError("this writer was created without a mask")
        self._dataset.write_mask(np.where(valid, 255, 0).astype(np.uint8), window=window)

    def __exit__(self, exc_type, exc, tb) -> None:
        dataset, self._dataset = self._dataset, None
        try:
            dataset.close()
            if exc_type is None:
                self._publish()
        finally:
            _remove_quietly(self._scratch)

    def _publish(self) -> None:
        final_scratch = _scratch_path(self.path, "cog.tif")
        try:
            with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True, GDAL_NUM_THREADS="ALL_CPUS"):
                rasterio.shutil.copy(
                    self._scratch,
                    final_scratch,
                    driver="COG",
                    COMPRESS=self._compress,
                    PREDICTOR="YES" if self._compress.upper() in ("DEFLATE", "ZSTD", "LZW") else "NO",
                    BLOCKSIZE=_BLOCK,
                    OVERVIEW_RESAMPLING="AVERAGE",
                    BIGTIFF="IF_SAFER",
                )
            os.replace(final_scratch, self.path)
        finally:
            _remove_quietly(final_scratch)


def _preview_bands(colorinterp: Sequence[ColorInterp], count: int) -> list[int]:
    """Red, green, blue by colour interpretation (a blue-green-red-alpha file shows in colour), else
    the first three bands, else the first band as grey."""
    found = [[i + 1 for i, c in enumerate(colorinterp) if c == want] for want in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)]
    if all(len(bands) == 1 for bands in found):
        return [bands[0] for bands in found]
    return [1, 2, 3] if count >= 3 else [1]


def write_preview_png(geotiff: str | os.PathLike, png: str | os.PathLike, max_size: int = 1024) -> Path:
    """A quick-look PNG of a GeoTIFF's colours, read from its overviews (cheap at any size)."""
    from PIL import Image

    with rasterio.open(geotiff) as src:
        bands = _preview_bands(src.colorinterp, src.count)
        scale = max(src.width, src.height) / max_size
        shape = (len(bands), max(1, round(src.height / max(scale, 1))), max(1, round(src.width / max(scale, 1))))
        data = src.read(bands, out_shape=shape, resampling=rasterio.enums.Resampling.average)
        if src.dtypes[0] != "uint8":
            lo, hi = np.nanpercentile(data, (2, 98))
            data = np.nan_to_num(np.clip((data - lo) / max(hi - lo, 1e-9) * 255, 0, 255)).astype(np.uint8)
    rgb = np.moveaxis(data[:3] if data.shape[0] >= 3 else np.repeat(data[:1], 3, axis=0), 0, -1)
    png = Path(png)
    scratch = _scratch_path(png, "partial.png")
    try:
        Image.fromarray(rgb).save(scratch, format="PNG")
        os.replace(scratch, png)
    finally:
        _remove_quietly(scratch)
    return png
