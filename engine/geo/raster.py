"""Input rasters: opened once, validated, and presented north-up to every pipeline.

Files found in the wild are south-up, rotated, GCP-only, palette-coloured, masked five different
ways or not georeferenced at all. `open_raster` decides once what each file means and either
presents it as a plain north-up grid with a per-pixel validity mask, or raises `InputError` saying
what is wrong and which command fixes it. Pipelines then read windows without caring.

Decisions (each one tested):
- south-up rasters are flipped exactly (nearest-neighbour WarpedVRT onto the mirrored grid);
  rotated/sheared and GCP-only rasters are warped to a north-up grid in their own CRS with GDAL's
  suggested resolution (bilinear; nearest for palettes); pixels outside the source footprint are
  invalid. RPC-only rasters and rasters without a geotransform are rejected.
- palette rasters are expanded to R, G, B through their colour map; entries with alpha 0 are invalid.
- a pixel is valid when GDAL's mask says any of the read bands is valid (nodata is per band, so a
  black red channel is not a hole) and none of them is NaN.
- R, G, B come from, in order: the caller's explicit choice, the colour interpretation, band
  descriptions naming red/green/blue; bands 1, 2, 3 are taken as R, G, B only when no band has a
  colour interpretation other than gray/undefined and no band has a description. Otherwise
  `rgb_bands` is None and `require_rgb` says how to choose.
- an alpha band is the validity mask (graded values: valid where > 0) in any band count (GDAL
  itself uses one only in 2- and 4-band files), and stays the alpha band in warped views.
- rasters smaller than `min_size` pixels on a side (default 8: one latent cell of the models' VAE)
  and rasters with no valid pixel are rejected (the latter unless only the grid is wanted).
- GeoTIFFs cut off before their last block are rejected at open; any other read failure (a
  damaged block) becomes one InputError naming the file.
- GDAL subdataset names (`NETCDF:"f.nc":var`, `HDF5:f.h5://var`) are opened as GDAL opens them.
- `GridView` shows a source on any other grid (co-registration) with the same band, palette and
  validity rules.
"""

from __future__ import annotations

import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.coords import BoundingBox
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.transform import array_bounds
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from engine.errors import InputError
from engine.geo.crs import crosses_antimeridian, is_geographic, metres_per_pixel, require_earth_crs

MIN_SIDE_PX = 8
_SCAN_TILE_PX = 1024
_UNINFORMATIVE_INTERP = frozenset({"undefined", "gray"})
# "Red Edge" bands (Sentinel-2 B5-B7) are not red.
_COLOUR_WORD = re.compile(r"\b(red|green|blue)\b(?![\s_-]*edge)", re.IGNORECASE)
_COMPLEX_DTYPES = frozenset({"complex", "complex64", "complex128", "complex_int16"})


@dataclass(frozen=True)
class RasterInfo:
    """Everything a pipeline needs to know about an input raster, as presented (north-up).

    `count`, `dtypes`, `colorinterp` and band indices describe the bands `read` returns (for a
    palette raster: the three expanded colour bands). `mask_kind` says how the *file* marks invalid
    pixels: 'none', 'nodata', 'alpha', 'internal', 'sidecar' (.msk file) or 'palette' (colour map
    entries with alpha 0). Warped views additionally mask everything outside the source footprint.
    """

    path: str
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]
    crs: CRS
    transform: Affine
    bounds: BoundingBox
    nodata: float | None
    mask_kind: str
    alpha_band: int | None
    colorinterp: tuple[str, ...]
    descriptions: tuple[str | None, ...]
    rgb_bands: tuple[int, int, int] | None
    rgb_rule: str | None  # 'user' | 'colorinterp' | 'description' | 'position' | 'palette'
    scales: tuple[float, ...]
    offsets: tuple[float, ...]
    is_palette: bool
    is_geographic: bool
    pixel_size_m: tuple[float, float]
    source_orientation: str  # 'north-up' | 'south-up' | 'rotated' | 'gcps'
    crosses_antimeridian: bool
    tags: dict[str, str] = field(default_factory=dict, hash=False)
    imagery_tags: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def data_bands(self) -> tuple[int, ...]:
        """1-based indices of the image bands (every band but the alpha band)."""
        return tuple(i for i in range(1, self.count + 1) if i != self.alpha_band)


# --- opening ---------------------------------------------------------------------------------


# Two letters at least (not a Windows drive), and not a URL scheme (`https://`).
_DRIVER_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9_]+):(?!//)(.+)$")


def subdataset_file(path: str) -> str | None:
    """The file inside a GDAL subdataset name, None for a plain path.

    `NETCDF:"a.nc":var`, `NETCDF:a.nc:var`, `HDF5:a.h5://group/var`, `GTIFF_DIR:2:a.tif` and
    `HDF4_SDS:UNKNOWN:"a.hdf":0` all name a.nc, a.h5, a.tif, a.hdf: a quoted part, else the part
    between colons that exists as a file, else the first part that looks like a file name.
    """
    match = _DRIVER_PREFIX.match(path)
    if match is None:
        return None
    rest = match.group(2)
    quoted = re.search(r'"([^"]+)"', rest)
    if quoted:
        return quoted.group(1)
    parts = rest.split(":")
    for start in range(len(parts)):
        for stop in range(len(parts), start, -1):
            candidate = ":".join(parts[start:stop])
            if candidate and os.path.isfile(candidate):
                return candidate
    return next((part for part in parts if "." in part or "/" in part), parts[0])


def _is_local_path(path: str) -> bool:
    return "://" not in path and not path.startswith("/vsi")


def _open_dataset(path: str) -> rasterio.io.DatasetReader:
    """Open with GDAL; missing and unreadable files become InputErrors naming the path."""
    inner = subdataset_file(path)
    if inner is not None and not os.path.exists(path):
        if not os.path.exists(inner):
            raise InputError(
                f"raster {path} names the file {inner}, which does not exist; check the path "
                "(and the working directory)."
            )
    elif _is_local_path(path) and not os.path.exists(path):
        raise InputError(f"raster {path} does not exist; check the path (and the working directory).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as exc:
        raise InputError(
            f"raster {path} cannot be opened as a raster ({exc}). Check that it is a complete, "
            f"uncorrupted raster file (`gdalinfo {path}` shows what GDAL sees); an image in another "
            "format can be converted with `gdal_translate <in> out.tif`."
        ) from exc


# --- checks on the opened file ----------------------------------------------------------------


def _check_has_bands(ds, path: str) -> None:
    if ds.count > 0:
        return
    if ds.subdatasets:
        raise InputError(
            f"raster {path} is a container of {len(ds.subdatasets)} subdatasets and has no bands "
            f"of its own; open one of them instead, e.g. {ds.subdatasets[0]!r} "
            f"(`gdalinfo {path}` lists them)."
        )
    raise InputError(f"raster {path} has no bands; check the file with `gdalinfo {path}`.")


def _check_dtypes(ds, path: str) -> None:
    complex_bands = [i + 1 for i, d in enumerate(ds.dtypes) if d in _COMPLEX_DTYPES]
    if complex_bands:
        raise InputError(
            f"raster {path} has complex-valued bands {complex_bands} (e.g. SAR single-look "
            "complex data), which are not images; convert to amplitude first, e.g. "
            f"`gdal_translate -ot Float32 -b 1 {path} amplitude.tif` after `gdal_calc.py "
            "--calc='absolute(A)'`."
        )


def _check_size(ds, path: str, min_size: int) -> None:
    if ds.width < min_size or ds.height < min_size:
        raise InputError(
            f"raster {path} is {ds.width}x{ds.height} pixels; at least {min_size}x{min_size} are "
            "needed (the models see images in 8x8-pixel latent cells). Use a larger extent or "
            "resample to a finer grid, e.g. `gdalwarp -tr <smaller pixel size> ...`."
        )


def check_complete(ds, path: str) -> None:
    """A GeoTIFF cut off before its last block (an interrupted download or copy) fails now, before
    any work, instead of at the first read of its missing part."""
    if ds.driver != "GTiff" or not ds.files or not os.path.isfile(ds.files[0]):
        return
    size = os.path.getsize(ds.files[0])
    block_rows, block_cols = ds.block_shapes[0]
    last_row, last_col = (ds.height - 1) // block_rows, (ds.width - 1) // block_cols
    for band in range(1, ds.count + 1):
        offset = ds.get_tag_item(f"BLOCK_OFFSET_{last_col}_{last_row}", "TIFF", bidx=band)
        length = ds.get_tag_item(f"BLOCK_SIZE_{last_col}_{last_row}", "TIFF", bidx=band)
        if offset and length and int(offset) + int(length) > size:
            raise InputError(
                f"raster {path} is incomplete: its data stops at byte {size} but its last block ends at "
                f"byte {int(offset) + int(length)} (an interrupted download or copy?). Copy or download it again."
            )


@contextmanager
def _reading(path: str):
    """Read errors (a damaged or cut-off file) as one line naming the file."""
    try:
        yield
    except RasterioIOError as exc:
        raise InputError(
            f"raster {path} cannot be read ({exc}): the file is damaged or incomplete (an interrupted "
            f"download or copy?). Copy it again, or check it with `gdalinfo -checksum {path}`."
        ) from exc


def _source_orientation(ds, path: str) -> str:
    """'north-up', 'south-up', 'rotated' or 'gcps'; rejects files with no usable geotransform."""
    transform = ds.transform
    gcps, _ = ds.gcps
    if gcps and transform.is_identity:
        return "gcps"
    if transform.is_identity and ds.rpcs is not None:
        raise InputError(
            f"raster {path} is georeferenced only by RPC coefficients (a sensor model, typical of "
            "unprocessed satellite scenes): it has no map grid and its bounds are meaningless. "
            f"Orthorectify it first, e.g. `gdalwarp -rpc -t_srs EPSG:<code> "
            f"[-to RPC_DEM=dem.tif] {path} ortho.tif`."
        )
    if transform.is_identity:
        raise InputError(
            f"raster {path} has no geotransform, so its pixels have no position on the ground; "
            f"georeference it, e.g. `gdal_edit.py -a_srs EPSG:<code> -a_ullr <ulx> <uly> <lrx> <lry> "
            f"{path}` or with QGIS's Georeferencer."
        )
    if transform.determinant == 0:
        raise InputError(
            f"raster {path} has a degenerate geotransform {tuple(transform)[:6]} (zero pixel size); "
            f"fix it, e.g. `gdal_edit.py -a_ullr <ulx> <uly> <lrx> <lry> {path}`."
        )
    if transform.b == 0 and transform.d == 0 and transform.a > 0:
        return "north-up" if transform.e < 0 else "south-up"
    return "rotated"


def _source_crs(ds, orientation: str, path: str) -> CRS:
    crs = ds.gcps[1] if orientation == "gcps" else ds.crs
    return require_earth_crs(crs, f"raster {path}")


# --- band semantics -----------------------------------------------------------------------------


def _alpha_band(ds) -> int | None:
    alphas = [i + 1 for i, c in enumerate(ds.colorinterp) if c == ColorInterp.alpha]
    return alphas[-1] if alphas else None


def _palette_lut(ds) -> np.ndarray | None:
    """(N, 4) uint8 RGBA lookup table of a single-band palette raster, else None."""
    if ds.count != 1 or ds.colorinterp[0] != ColorInterp.palette:
        return None
    colormap = ds.colormap(1)
    size = max(max(colormap) + 1, 256 if ds.dtypes[0] == "uint8" else 65536)
    lut = np.zeros((size, 4), dtype="uint8")
    for index, rgba in colormap.items():
        lut[index] = rgba
    return lut


def _mask_kind(ds, alpha_band: int | None, lut: np.ndarray | None) -> str:
    """How the file marks invalid pixels, as GDAL resolves it for the first image band (an alpha
    band always: GDAL itself uses one only in 2- and 4-band files)."""
    if alpha_band is not None:
        return "alpha"
    data_bands = [i for i in range(1, ds.count + 1) if i != alpha_band] or [1]
    flags = ds.mask_flag_enums[data_bands[0] - 1]
    if MaskFlags.alpha in flags:
        return "alpha"
    if MaskFlags.per_dataset in flags:
        return "sidecar" if any(f.lower().endswith(".msk") for f in ds.files) else "internal"
    if MaskFlags.nodata in flags:
        return "nodata"
    if lut is not None and bool((lut[:, 3] == 0).any()):
        return "palette"
    return "none"


def _rgb_from_colorinterp(colorinterp: Sequence[str]) -> tuple[int, int, int] | None:
    found = [[i + 1 for i, c in enumerate(colorinterp) if c == name] for name in ("red", "green", "blue")]
    if all(len(bands) == 1 for bands in found):
        return found[0][0], found[1][0], found[2][0]
    return None


def _rgb_from_descriptions(descriptions: Sequence[str | None]) -> tuple[int, int, int] | None:
    words = [set(w.lower() for w in _COLOUR_WORD.findall(d or "")) for d in descriptions]
    found = [[i + 1 for i, w in enumerate(words) if w == {name}] for name in ("red", "green", "blue")]
    if all(len(bands) == 1 for bands in found):
        return found[0][0], found[1][0], found[2][0]
    return None


def _check_explicit_rgb(
    rgb_bands: Sequence[int], count: int, alpha_band: int | None, path: str
) -> tuple[int, int, int]:
    try:
        bands = tuple(int(b) for b in rgb_bands)
    except (TypeError, ValueError):
        bands = ()
    shown = " ".join(str(b) for b in rgb_bands) if isinstance(rgb_bands, (list, tuple)) else str(rgb_bands)
    if len(bands) != 3 or any(b < 1 or b > count for b in bands):
        raise InputError(
            f"--bands {shown} does not fit raster {path}, which has {count} band{'s' if count != 1 else ''}: "
            f"give three band numbers between 1 and {count}, red, green and blue in that order (e.g. "
            "--bands 3 2 1 for a blue-green-red file; `rgb_bands` over HTTP)."
        )
    if alpha_band in bands:
        raise InputError(
            f"--bands {shown} for raster {path} includes band {alpha_band}, which is its alpha "
            "(transparency) band; choose the red, green and blue bands instead."
        )
    return bands  # type: ignore[return-value]


def _resolve_rgb(
    colorinterp: Sequence[str],
    descriptions: Sequence[str | None],
    alpha_band: int | None,
    explicit: Sequence[int] | None,
    path: str,
) -> tuple[tuple[int, int, int] | None, str | None]:
    """(R, G, B) band indices and the rule that found them; see the module docstring."""
    if explicit is not None:
        return _check_explicit_rgb(explicit, len(colorinterp), alpha_band, path), "user"
    by_interp = _rgb_from_colorinterp(colorinterp)
    if by_interp is not None:
        return by_interp, "colorinterp"
    by_description = _rgb_from_descriptions(descriptions)
    if by_description is not None:
        return by_description, "description"
    data_bands = [i + 1 for i in range(len(colorinterp)) if i + 1 != alpha_band]
    silent = all(c in _UNINFORMATIVE_INTERP for c in colorinterp) and not any(descriptions)
    if silent and len(data_bands) >= 3:
        return (data_bands[0], data_bands[1], data_bands[2]), "position"
    return None, None


def require_rgb(info: RasterInfo) -> tuple[int, int, int]:
    """The raster's (R, G, B) band indices, or InputError saying how to choose them."""
    if info.rgb_bands is not None:
        return info.rgb_bands
    described = ", ".join(
        f"{i}: {interp}{f' ({desc})' if desc else ''}"
        for i, (interp, desc) in enumerate(zip(info.colorinterp, info.descriptions), start=1)
    )
    if len(info.data_bands) < 3:
        count = len(info.data_bands)
        raise InputError(
            f"raster {info.path} has {count} image band{'s' if count != 1 else ''} ({described}), but the models "
            "work on red, green and blue: give an RGB raster (a grey image can be repeated into three bands "
            f"with `gdal_translate -b 1 -b 1 -b 1 {info.path} rgb.tif`)."
        )
    raise InputError(
        f"cannot tell which bands of raster {info.path} are red, green and blue (bands {described}). "
        "Choose them with --bands R G B (e.g. --bands 3 2 1 for a blue-green-red file; `rgb_bands` over HTTP), "
        "or record them in the file: `gdal_edit.py -colorinterp_1 red -colorinterp_2 green -colorinterp_3 blue "
        f"{info.path}` (with the numbers of your red, green and blue bands)."
    )


# --- the north-up view ------------------------------------------------------------------------


def warp_mask_options(ds, alpha_band: int | None) -> dict:
    """WarpedVRT options that carry a source's validity to the warped view.

    An alpha band stays the alpha band (graded values kept); without one, nodata marks invalid
    pixels; with neither, an alpha band is added, which GDAL fills from the source's internal or
    sidecar mask and sets to 0 outside the source footprint.
    """
    if alpha_band is not None:
        return {"src_alpha": alpha_band, "dst_alpha": alpha_band}
    if ds.nodata is None:
        return {"add_alpha": True}
    return {}


def _north_up_view(ds, crs: CRS, orientation: str, alpha_band: int | None, is_palette: bool):
    """The dataset itself when north-up, else a WarpedVRT presenting it north-up in its own CRS."""
    if orientation == "north-up":
        return ds
    # Pixels outside the source footprint (and masked source pixels) need somewhere to go.
    masking = warp_mask_options(ds, alpha_band)
    if orientation == "south-up":
        t = ds.transform
        flipped = Affine(t.a, 0.0, t.c, 0.0, -t.e, t.f + t.e * ds.height)
        return WarpedVRT(
            ds, crs=crs, transform=flipped, width=ds.width, height=ds.height,
            resampling=Resampling.nearest, **masking,
        )
    resampling = Resampling.nearest if is_palette else Resampling.bilinear
    src_crs = crs if orientation == "gcps" else None
    return WarpedVRT(ds, src_crs=src_crs, crs=crs, resampling=resampling, **masking)


def _describe(
    ds, view, path: str, crs: CRS, orientation: str, alpha_band: int | None,
    lut: np.ndarray | None, explicit_rgb: Sequence[int] | None,
) -> RasterInfo:
    if lut is not None:
        count, dtypes = 3, ("uint8",) * 3
        colorinterp, descriptions = ("red", "green", "blue"), (None, None, None)
        scales, offsets = (1.0,) * 3, (0.0,) * 3
        rgb, rgb_rule = _resolve_rgb(colorinterp, descriptions, None, explicit_rgb, path)
        rgb_rule = "palette" if rgb_rule == "colorinterp" else rgb_rule
    else:
        count, dtypes = ds.count, tuple(ds.dtypes)
        colorinterp = tuple(c.name for c in ds.colorinterp)
        descriptions = tuple(ds.descriptions)
        scales, offsets = tuple(ds.scales), tuple(ds.offsets)
        rgb, rgb_rule = _resolve_rgb(colorinterp, descriptions, alpha_band, explicit_rgb, path)
    transform, width, height = view.transform, view.width, view.height
    return RasterInfo(
        path=path, width=width, height=height, count=count, dtypes=dtypes, crs=crs,
        transform=transform, bounds=BoundingBox(*array_bounds(height, width, transform)),
        nodata=ds.nodata, mask_kind=_mask_kind(ds, alpha_band, lut), alpha_band=alpha_band,
        colorinterp=colorinterp, descriptions=descriptions, rgb_bands=rgb, rgb_rule=rgb_rule,
        scales=scales, offsets=offsets, is_palette=lut is not None, is_geographic=is_geographic(crs),
        pixel_size_m=metres_per_pixel(crs, transform, width, height), source_orientation=orientation,
        crosses_antimeridian=crosses_antimeridian(crs, transform, width, height),
        tags=dict(ds.tags()), imagery_tags=dict(ds.tags(ns="IMAGERY")),
    )


# --- windows ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _WindowPlan:
    """A requested window, the part of it inside the raster, and where that part goes."""

    height: int
    width: int
    inside: Window | None
    rows: slice
    cols: slice


def _plan_window(window: Window | None, width: int, height: int) -> _WindowPlan:
    if window is None:
        window = Window(0, 0, width, height)
    col, row = int(round(window.col_off)), int(round(window.row_off))
    w, h = int(round(window.width)), int(round(window.height))
    if w <= 0 or h <= 0:
        raise InputError(f"window {window} is empty; a window needs a positive width and height.")
    col0, row0 = max(col, 0), max(row, 0)
    col1, row1 = min(col + w, width), min(row + h, height)
    if col1 <= col0 or row1 <= row0:
        return _WindowPlan(h, w, None, slice(0, 0), slice(0, 0))
    inside = Window(col0, row0, col1 - col0, row1 - row0)
    return _WindowPlan(h, w, inside, slice(row0 - row, row1 - row), slice(col0 - col, col1 - col))


# --- the source ---------------------------------------------------------------------------------


class RasterSource:
    """An opened, validated raster presented north-up; read windows of it as masked arrays.

    Windows may reach past the raster's edges: the outside part is returned masked. Use as a
    context manager, or call `close()`.
    """

    def __init__(
        self, path: str | os.PathLike, rgb_bands: Sequence[int] | None = None, min_size: int = MIN_SIDE_PX,
        require_valid: bool = True,
    ):
        path = os.fspath(path)
        self._dataset = _open_dataset(path)
        self._view = self._dataset
        try:
            self._validate(path, rgb_bands, min_size, require_valid)
        except BaseException:
            self.close()
            raise

    def _validate(self, path: str, rgb_bands: Sequence[int] | None, min_size: int, require_valid: bool) -> None:
        ds = self._dataset
        _check_has_bands(ds, path)
        _check_dtypes(ds, path)
        _check_size(ds, path, min_size)
        check_complete(ds, path)
        orientation = _source_orientation(ds, path)
        crs = _source_crs(ds, orientation, path)
        alpha_band = _alpha_band(ds)
        self._lut = _palette_lut(ds)
        self._view = _north_up_view(ds, crs, orientation, alpha_band, self._lut is not None)
        self.info = _describe(ds, self._view, path, crs, orientation, alpha_band, self._lut, rgb_bands)
        if require_valid:
            self._require_valid_pixels()

    @property
    def dataset(self):
        """The north-up rasterio dataset behind this source (a WarpedVRT for re-oriented files;
        palette indices, not colours, for palette files), for rasterio.warp and friends."""
        return self._view

    def _band_list(self, bands: int | Sequence[int] | None) -> list[int]:
        if bands is None:
            return list(self.info.data_bands)
        chosen = [bands] if isinstance(bands, (int, np.integer)) else [int(b) for b in bands]
        if not chosen or any(b < 1 or b > self.info.count for b in chosen):
            raise InputError(
                f"bands {bands} do not exist in raster {self.info.path}, which has bands 1 to "
                f"{self.info.count}; choose bands from that range."
            )
        return chosen

    def _dtype_of(self, bands: list[int]) -> np.dtype:
        """One dtype that holds every band read (bands of one file rarely differ)."""
        return np.result_type(*[self.info.dtypes[b - 1] for b in bands])

    def _mask_inside(self, window: Window, bands: list[int]) -> np.ndarray:
        """GDAL's validity of a window inside the raster: the alpha band when the view has one (GDAL
        ignores an alpha band in files of other than 2 or 4 bands), else any band's mask."""
        alpha = _alpha_band(self._view)
        if alpha is not None:
            return self._view.read(alpha, window=window) > 0
        return (self._view.read_masks(bands, window=window) > 0).any(axis=0)

    def _read_inside(self, window: Window, bands: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Pixels and validity of a window that lies inside the raster."""
        if self._lut is not None:
            indices = self._view.read(1, window=window)
            colours = self._lut[np.clip(indices, 0, len(self._lut) - 1)]
            data = np.moveaxis(colours[..., [b - 1 for b in bands]], -1, 0)
            valid = self._mask_inside(window, [1]) & (colours[..., 3] > 0)
            return data, valid
        dtype = self._dtype_of(bands)
        data = self._view.read(bands, window=window, out_dtype=dtype)
        valid = self._mask_inside(window, bands)
        if np.issubdtype(dtype, np.floating):
            valid &= ~np.isnan(data).any(axis=0)
        return data, valid

    def read(
        self,
        window: Window | None = None,
        bands: int | Sequence[int] | None = None,
        out_dtype=None,
        scaled: bool = False,
    ) -> np.ma.MaskedArray:
        """(bands, rows, cols) pixels of a window (default: the whole raster, image bands only).

        Masked where invalid: nodata, alpha 0, internal/sidecar mask, NaN, outside the footprint
        or outside the raster. `scaled=True` applies the file's scale/offset (value*scale+offset,
        as floats); `out_dtype` casts the result last.
        """
        band_list = self._band_list(bands)
        plan = _plan_window(window, self.info.width, self.info.height)
        dtype = self._dtype_of(band_list)
        data = np.zeros((len(band_list), plan.height, plan.width), dtype=dtype)
        valid = np.zeros((plan.height, plan.width), dtype=bool)
        if plan.inside is not None:
            with _reading(self.info.path):
                inside_data, inside_valid = self._read_inside(plan.inside, band_list)
            data[:, plan.rows, plan.cols] = inside_data
            valid[plan.rows, plan.cols] = inside_valid
        if scaled:
            data = self._apply_scale(data, band_list)
        if out_dtype is not None:
            data = data.astype(out_dtype)
        return np.ma.MaskedArray(data, mask=np.broadcast_to(~valid, data.shape).copy())

    def _apply_scale(self, data: np.ndarray, bands: list[int]) -> np.ndarray:
        float_dtype = np.float64 if data.dtype == np.float64 else np.float32
        scales = np.array([self.info.scales[b - 1] for b in bands], dtype=float_dtype)[:, None, None]
        offsets = np.array([self.info.offsets[b - 1] for b in bands], dtype=float_dtype)[:, None, None]
        return data.astype(float_dtype) * scales + offsets

    def valid_mask(
        self, window: Window | None = None, bands: int | Sequence[int] | None = None
    ) -> np.ndarray:
        """(rows, cols) bool, True where `read` with the same arguments would not be masked."""
        band_list = self._band_list(bands)
        plan = _plan_window(window, self.info.width, self.info.height)
        valid = np.zeros((plan.height, plan.width), dtype=bool)
        if plan.inside is None:
            return valid
        needs_pixels = self._lut is not None or np.issubdtype(self._dtype_of(band_list), np.floating)
        with _reading(self.info.path):
            if needs_pixels:  # NaN and transparent palette entries live in the pixels, not the mask
                _, inside_valid = self._read_inside(plan.inside, band_list)
            else:
                inside_valid = self._mask_inside(plan.inside, band_list)
        valid[plan.rows, plan.cols] = inside_valid
        return valid

    def _require_valid_pixels(self) -> None:
        """Scan tile by tile, stopping at the first valid pixel (cheap unless the file is empty)."""
        for row in range(0, self.info.height, _SCAN_TILE_PX):
            for col in range(0, self.info.width, _SCAN_TILE_PX):
                if self.valid_mask(Window(col, row, _SCAN_TILE_PX, _SCAN_TILE_PX)).any():
                    return
        raise InputError(
            f"raster {self.info.path} contains no valid pixel: every pixel is nodata, masked or NaN "
            f"(mask: {self.info.mask_kind}, nodata={self.info.nodata}). Check that it is the right "
            f"file (`gdalinfo -stats {self.info.path}`); if its nodata value is wrong, unset or "
            f"change it with `gdal_edit.py -unsetnodata {self.info.path}` or `-a_nodata <value>`."
        )

    def close(self) -> None:
        if self._view is not self._dataset:
            self._view.close()
        self._dataset.close()

    def __enter__(self) -> RasterSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class GridView(RasterSource):
    """A source seen on another grid (any CRS and pixel size): windows of it as masked arrays, with
    the bands, palette colours and validity of the source, masked where the source has no data.

    Warped straight from the file (one resampling, rotation and south-up included), except GCP-only
    files: rasterio cannot warp those onto a given grid, so they go through their north-up view.
    Palette rasters are warped as indices with nearest neighbour and coloured after: colours are
    never blended. Owns only its warped view; close it before its source.
    """

    def __init__(self, source: RasterSource, crs: CRS, transform: Affine, width: int, height: int,
                 resampling: Resampling = Resampling.bilinear):
        info = source.info
        base = source._view if info.source_orientation == "gcps" else source._dataset
        self._dataset = source._dataset
        self._lut = source._lut
        if self._lut is not None:
            resampling = Resampling.nearest
        self._view = WarpedVRT(base, crs=crs, transform=transform, width=width, height=height,
                               resampling=resampling, **warp_mask_options(base, _alpha_band(base)))
        self.info = replace(
            info, width=width, height=height, crs=crs, transform=transform,
            bounds=BoundingBox(*array_bounds(height, width, transform)), source_orientation="north-up",
            pixel_size_m=metres_per_pixel(crs, transform, width, height),
        )

    def valid_fraction(self) -> float:
        """Fraction of the grid where the source has valid pixels (read at up to 256 px a side)."""
        scale = max(self.info.width, self.info.height) / 256
        if scale <= 1:
            return float(self.valid_mask().mean())
        shape = (max(1, round(self.info.height / scale)), max(1, round(self.info.width / scale)))
        with _reading(self.info.path):
            if self._lut is not None:
                indices = self._view.read(1, out_shape=shape, resampling=Resampling.nearest)
                valid = (self._view.read_masks(1, out_shape=shape, resampling=Resampling.nearest) > 0)
                valid &= self._lut[np.clip(indices, 0, len(self._lut) - 1)][..., 3] > 0
            else:
                bands = list(self.info.data_bands)
                masks = self._view.read_masks(bands, out_shape=(len(bands), *shape), resampling=Resampling.nearest)
                valid = (masks > 0).any(axis=0)
        return float(valid.mean())

    def close(self) -> None:
        self._view.close()


def open_raster(
    path: str | os.PathLike, rgb_bands: Sequence[int] | None = None, min_size: int = MIN_SIDE_PX,
    require_valid: bool = True,
) -> RasterSource:
    """Open and validate a raster; InputError (naming the file and the fix) when it is unusable.

    `rgb_bands` is the caller's explicit (R, G, B) choice of 1-based bands; it overrides anything
    the file says. `min_size` is the smallest acceptable width and height in pixels.
    `require_valid=False` accepts rasters without a valid pixel (when only their grid is used).
    """
    return RasterSource(path, rgb_bands=rgb_bands, min_size=min_size, require_valid=require_valid)
