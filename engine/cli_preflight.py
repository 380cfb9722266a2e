"""What `gfm4d` checks before a job starts, without importing torch.

- outputs: never an input, never an existing file unless `--overwrite`, in a writable folder;
- where: an extent typed in degrees with a projected CRS (a 1 x 1 px result) is refused;
- model: it exists, it is made for the task, it has every part it needs (SD-2.1 components);
- size: the job's pixels, windows and model evaluations, and a rough time, printed in one line;
  above a threshold the job needs `--yes`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InputError, ModelError

# A job estimated to take longer than this, or with more output pixels than this, needs --yes.
CONFIRM_MINUTES_ENV = "GFM4D_CONFIRM_MINUTES"
DEFAULT_CONFIRM_MINUTES = 30.0
CONFIRM_MEGAPIXELS = 256.0

# Seconds per UNet evaluation ~ overhead + K x parameters x latent cells of a window. K was measured
# on one CPU thread with the demo models (8e-11; it also gives the ~4-5 min one thread takes for an
# SD-2.1 evaluation at 512 px); on a GPU in half precision an SD-2.1 evaluation takes ~0.03 s.
_K_CPU_THREAD = 8e-11
_K_GPU = 1e-14
_OVERHEAD_S = {"cpu": 0.01, "cuda": 0.002}

_DIFFUSIONSAT_HINT = (
    "released DiffusionSat runs are imported with `gfm4d models import PATH --name {name}` "
    "(see the README, 'Real DiffusionSat checkpoints')"
)


# --- outputs --------------------------------------------------------------------------------


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(outputs: dict[str, Path], inputs: list[Path], overwrite: bool) -> None:
    """Refuse outputs that would replace an input, each other, or an existing file (without --overwrite)."""
    resolved: dict[Path, str] = {}
    for name, path in outputs.items():
        path = Path(path)
        key = Path(os.path.abspath(path))
        if key in resolved:
            raise InputError(f"the {name} and {resolved[key]} outputs are the same file {path}; give each its own name")
        resolved[key] = name
        for source in inputs:
            if key == Path(os.path.abspath(source)) or _same_file(path, Path(source)):
                raise InputError(
                    f"the {name} output {path} is an input of this command; inputs are never modified: "
                    "give the output another name"
                )
        if path.is_dir():
            raise InputError(f"the {name} output {path} is a folder; give a file name")
        if name in ("image", "label") and path.suffix.lower() not in (".tif", ".tiff"):
            raise InputError(f"the {name} output {path} must be a GeoTIFF (.tif or .tiff)")
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise InputError(f"the folder {parent} for {path.name} does not exist; create it first")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(f"the folder {parent} is not writable; choose another location for {path.name}")
        if path.exists() and not overwrite:
            raise InputError(f"{path} already exists; add --overwrite to replace it, or choose another name")


# --- inputs ---------------------------------------------------------------------------------

_VECTOR_SLOTS = ("polygons", "aoi")
_EITHER_SLOTS = ("mask",)  # evaluate's mask: a label raster or polygons
_VECTOR_SUFFIXES = (".shp", ".gpkg", ".geojson", ".json", ".fgb", ".zip", ".geojsonl", ".geojsons")


def check_inputs(files: dict[str, Path]) -> None:
    """Open every input file the way its task will (rasters with GDAL, polygons with OGR), so a
    missing, empty or unreadable file is reported before the engine starts."""
    from engine.geo.vectors import read_polygons

    for name, path in files.items():
        slot = name.partition(".")[0]
        if slot in _VECTOR_SLOTS or (slot in _EITHER_SLOTS and Path(path).suffix.lower() in _VECTOR_SUFFIXES):
            read_polygons(Path(path))
        else:
            raster_size(Path(path))


def raster_size(path: Path) -> tuple[int, int]:
    """Width and height of a raster GDAL can open; InputError naming the file otherwise."""
    from engine.geo.raster import subdataset_file

    container = subdataset_file(str(path))  # NETCDF:"a.nc":var and friends: the file is the container
    if container is not None:
        if not Path(container).is_file():
            raise InputError(f"the input {path} names {container}, which does not exist")
        return _opened_size(str(path))
    path = Path(path)
    if not path.exists():
        raise InputError(f"the input {path} does not exist")
    if path.is_dir():
        raise InputError(f"the input {path} is a folder; give a raster file")
    if path.stat().st_size == 0:
        raise InputError(f"the input {path} is empty (0 bytes)")
    return _opened_size(str(path))


def _opened_size(path: str) -> tuple[int, int]:
    import rasterio
    from rasterio.errors import RasterioError

    from engine.geo.raster import check_complete

    try:
        with rasterio.open(path) as source:
            check_complete(source, path)  # a file cut off mid-download fails here, before the job's line
            return source.width, source.height
    except RasterioError as exc:
        raise InputError(f"GDAL cannot open {path} as a raster ({exc}); give a GeoTIFF or another raster GDAL reads") from None


# --- where ----------------------------------------------------------------------------------


def check_extent_units(extent, crs_text: str | None) -> None:
    """Longitude/latitude typed with a projected CRS would give a grid of a pixel or two: refuse it."""
    if not extent or not crs_text:
        return
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        crs = CRS.from_user_input(crs_text)
    except (CRSError, ValueError, TypeError) as exc:
        raise InputError(f"--crs {crs_text!r} is not a CRS GDAL knows ({exc}); give e.g. EPSG:32618") from None
    xmin, ymin, xmax, ymax = extent
    in_degree_range = all(-180 <= x <= 180 for x in (xmin, xmax)) and all(-90 <= y <= 90 for y in (ymin, ymax))
    if crs.is_projected and in_degree_range:
        units = crs.linear_units or "metres"
        raise InputError(
            f"--extent {xmin:g} {ymin:g} {xmax:g} {ymax:g} looks like longitude/latitude, but {crs_text} is projected "
            f"(its units are {units}): give the extent in {units}, or use --crs EPSG:4326 for degrees"
        )


# --- model ----------------------------------------------------------------------------------


def check_model(registry, name: str, task: str):
    """The model's ModelInfo, if it exists, runs `task` and has all its parts; InputError otherwise."""
    try:
        info = registry.get(name)
    except ModelError as exc:
        message = str(exc)
        if name.lower().startswith("diffusionsat"):
            message += "; " + _DIFFUSIONSAT_HINT.format(name=name)
        raise InputError(message) from None
    if task not in info.tasks:
        fitting = [i.name for i in registry.scan().models if task in i.tasks]
        raise InputError(
            f"the model {name} ({info.description}) is made for {', '.join(info.tasks) or 'no task'}, not {task}; "
            f"models for {task}: {', '.join(fitting) or 'none here'}"
        )
    if info.kind and not info.ready:
        if info.missing_components:
            raise InputError(
                f"the model {name} lacks {', '.join(info.missing_components)} (the Stable Diffusion 2.1 parts "
                "a released DiffusionSat run does not ship): give --sd21-dir FOLDER or set GFM4D_SD21_DIR to a "
                "local stable-diffusion-2-1 folder in diffusers layout"
            )
        raise InputError(
            f"the model {name} is not ready: its ControlNet has no base UNet; add {{\"base_model\": \"NAME\"}} to "
            f"{info.path / 'gfm4d.json'}"
        )
    return info


# --- size -----------------------------------------------------------------------------------


@dataclass
class JobSize:
    """How big a job is: its output grid, the model windows and the UNet evaluations."""

    width: int
    height: int
    windows: int
    evaluations: int
    seconds: float | None  # None when the device is not known (an engine elsewhere)
    partial: bool = False  # windows is an upper bound (inpainting touches only masked windows)

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


def _weights_bytes(folder: Path | None) -> int:
    from engine.models.weights import WEIGHT_FILE_NAMES

    if folder is None:
        return 0
    for name in WEIGHT_FILE_NAMES:
        path = Path(folder) / name
        if path.is_file():
            return path.stat().st_size // (2 if ".fp16." in name else 4)
    return 0


def _vae_factor(info) -> int:
    vae = info.components.get("vae")
    try:
        config = json.loads((Path(vae) / "config.json").read_text(encoding="utf-8"))
        return 2 ** (len(config["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return 8


def _threads() -> int:
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(variable, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return os.cpu_count() or 1


def estimate(info, width: int, height: int, steps: int, guidance: float, window: int | None, overlap: int | None,
             device: str | None, frames: int = 1, repeats: int = 1, partial: bool = False) -> JobSize:
    """Pixels, windows, UNet evaluations and a rough duration of a job with this model."""
    from engine.geo.tiling import plan_windows

    factor = _vae_factor(info)
    window = window or info.native_resolution
    overlap = overlap if overlap is not None else window // 4
    cells = max(1, window // factor)
    overlap_cells = min(max(0, overlap // factor), cells - 1)
    try:
        windows = len(plan_windows(max(1, math.ceil(height / factor)), max(1, math.ceil(width / factor)), cells, overlap_cells))
    except InputError:
        windows = math.ceil(height / window) * math.ceil(width / window)
    windows *= repeats
    guidance = info.default_guidance if guidance is None else guidance
    evaluations = windows * steps * (2 if guidance > 1 else 1)
    seconds = None
    if device is not None:
        params = _weights_bytes(info.unet_path)
        controlnet = info.components.get("controlnet")
        params += _weights_bytes(controlnet) * max(1, frames)
        kind = "cuda" if device.startswith("cuda") else "cpu"
        k = _K_GPU if kind == "cuda" else _K_CPU_THREAD / max(1.0, 0.7 * _threads())
        seconds = evaluations * (_OVERHEAD_S[kind] + k * params * cells * cells) * 1.05  # + VAE decoding
    return JobSize(width, height, windows, evaluations, seconds, partial)


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def describe(task: str, model: str, device: str | None, size: JobSize, steps: int, guidance: float) -> str:
    """The line printed before a job: which model runs where, and how big the job is."""
    where = f" on {device}" if device else ""
    cfg = " x 2 (guidance)" if guidance is None or guidance > 1 else ""
    bound = "up to " if size.partial else ""
    time_text = f", roughly {duration(size.seconds)}" if size.seconds is not None else ""
    return (
        f"gfm4d: {task} with model {model}{where}: {size.width} x {size.height} px ({size.megapixels:.2f} Mpx), "
        f"{bound}{size.windows} windows x {steps} steps{cfg}{time_text}"
    )


def confirm_minutes() -> float:
    value = os.environ.get(CONFIRM_MINUTES_ENV, "")
    try:
        return float(value) if value else DEFAULT_CONFIRM_MINUTES
    except ValueError:
        return DEFAULT_CONFIRM_MINUTES


def check_confirmed(size: JobSize, yes: bool) -> None:
    """Refuse a job above the size or time threshold unless the user said --yes."""
    if yes:
        return
    limit = confirm_minutes()
    too_long = size.seconds is not None and size.seconds > limit * 60
    too_big = size.megapixels > CONFIRM_MEGAPIXELS
    if too_long or too_big:
        why = (
            f"it would take roughly {duration(size.seconds)} (more than {limit:g} min)"
            if too_long
            else f"it would write {size.megapixels:.0f} Mpx (more than {CONFIRM_MEGAPIXELS:g})"
        )
        raise InputError(
            f"not started: {why}; add --yes to run it, or use fewer steps, a coarser resolution or a smaller area "
            f"(threshold: env {CONFIRM_MINUTES_ENV})"
        )
