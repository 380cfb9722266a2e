"""Input files that name other files are refused: a job must not read the engine's disk through them.

Some GDAL/OGR formats hold no data of their own but point at other files (a VRT's SourceFilename,
an OGR VRT's SrcDataSource, an `.aux.xml` sidecar's OVERVIEW_FILE, `/vsi*` paths inside them,
network sources). Accepting one as an upload or server path would let a request read any file the
engine can, or make the engine fetch URLs. So an input is accepted only when

- it opens with a driver from a short list of formats that keep their data in the file itself
  (rasters: GeoTIFF, PNG, JPEG, JPEG 2000, WebP, GIF, BMP, GeoPackage; vectors: GeoJSON,
  GeoPackage, Shapefile (zipped), FlatGeobuf; xBD label JSON, read as plain JSON);
- every file GDAL reads for it lies in the input's own folder (the upload's folder, or the folder
  of a server path), and none is an `.aux.xml`/`.aux` sidecar (which can point elsewhere);
- a zip holds plain relative member names, no links, and no such pointer formats.

Checks run before any other part of the engine opens the file, so a refused file is never read.
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

from engine.errors import InputError

RASTER_DRIVERS = ("GTiff", "PNG", "JPEG", "JP2OpenJPEG", "WEBP", "GIF", "BMP", "GPKG")
VECTOR_DRIVERS = ("GeoJSON", "GeoJSONSeq", "GPKG", "ESRI Shapefile", "FlatGeobuf")
SIDECARS = (".aux.xml", ".aux")
POINTER_SUFFIXES = (".vrt", ".ovf", ".xml", ".gti", ".wms", ".aux")
_POINTER_MARKERS = (b"<vrtdataset", b"<ogrvrtdatasource", b"<gdal_wms", b"<gdaltileindexdataset", b"<wms",
                    b"<gdal_wcs", b"/vsi")
_HEAD_BYTES = 64 * 1024
_RASTER_NAMES = "GeoTIFF, PNG, JPEG, JPEG 2000, WebP, GIF, BMP or GeoPackage"
_VECTOR_NAMES = "GeoJSON, GeoPackage, zipped Shapefile, FlatGeobuf or xBD label JSON"


def check_self_contained(path: Path, kind: str, folder: Path | None = None) -> None:
    """Refuse (InputError naming `path`) a raster or vector input that points at other files.

    `folder`: where every file of the dataset must lie (default: the file's own folder).
    """
    path = Path(path)
    folder = Path(os.path.realpath(folder if folder is not None else path.parent))
    if kind not in ("raster", "vector"):
        return
    _check_plain_file(path)
    _check_head(path)
    if zipfile.is_zipfile(path):
        _check_zip(path)
    if kind == "raster":
        _check_raster(path, folder)
    else:
        _check_vector(path, folder)


def _pointer_error(path: Path, what: str) -> InputError:
    return InputError(
        f"{path} {what}; the engine reads only files that hold their own data (a VRT, OGR VRT, .aux.xml "
        "sidecar or /vsi path would let a job read other files): save the data itself, e.g. "
        "`gdal_translate in.vrt out.tif` or `ogr2ogr out.gpkg in.vrt`, and send that"
    )


def _check_plain_file(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        raise InputError(f"{path} does not exist or cannot be read; check the file") from None
    if not stat.S_ISREG(mode):
        raise InputError(f"{path} is not a regular file; send the file itself")


def _check_head(path: Path) -> None:
    """Text formats that name other files are recognised by their first bytes, whatever their name."""
    with open(path, "rb") as handle:
        head = handle.read(_HEAD_BYTES).lower()
    if any(marker in head for marker in _POINTER_MARKERS):
        raise _pointer_error(path, "names other files or network sources")
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        raise _pointer_error(path, "is an XML file (a VRT or similar)")


def _check_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InputError(f"{path} is not a readable zip file ({exc}); zip it again") from None
    for member in members:
        name = member.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            raise _pointer_error(path, f"holds a member with a path outside the zip ({name!r})")
        if stat.S_ISLNK(member.external_attr >> 16):
            raise _pointer_error(path, f"holds a symbolic link ({name!r})")
        lower = name.lower()
        if lower.endswith(SIDECARS) or (lower.endswith(POINTER_SUFFIXES) and not lower.endswith(".shp.xml")):
            raise _pointer_error(path, f"holds {name!r}, a file that can point at other files")


def _check_files(path: Path, files: list[str], folder: Path) -> None:
    for name in files:
        if name.startswith("/vsi"):
            continue  # the engine's own /vsizip/ view of an uploaded zip (its members were checked)
        real = Path(os.path.realpath(name))
        if real.name.lower().endswith(SIDECARS) and real != Path(os.path.realpath(path)):
            raise _pointer_error(path, f"comes with a sidecar {real.name!r}; remove the sidecar")
        if real != folder and not real.is_relative_to(folder):
            raise _pointer_error(path, "reads a file outside its own folder")


def _check_raster(path: Path, folder: Path) -> None:
    import rasterio
    from rasterio.errors import RasterioError

    for driver in RASTER_DRIVERS:
        try:
            with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="NO"), rasterio.open(path, driver=driver) as dataset:
                files = list(dataset.files)
        except (RasterioError, OSError, ValueError, TypeError):
            continue
        _check_files(path, files, folder)
        return
    raise InputError(
        f"{path} cannot be opened as a {_RASTER_NAMES} raster; the engine reads only formats that keep "
        "their pixels in the file itself: convert it to GeoTIFF (e.g. `gdal_translate in out.tif`)"
    )


def _check_vector(path: Path, folder: Path) -> None:
    from engine.geo.vectors import _is_xbd_labels, _ogr_path

    try:
        if _is_xbd_labels(path):
            return  # read as plain JSON, not through OGR
    except RecursionError:
        raise InputError(f"{path} is JSON nested too deeply to be polygons; send GeoJSON or an xBD label file") from None
    import pyogrio

    try:
        info = pyogrio.read_info(_ogr_path(path))
    except Exception:  # pyogrio raises several error types; the task's reader names the problem
        return
    driver = info.get("driver")
    if driver not in VECTOR_DRIVERS:
        raise InputError(
            f"{path} is a {driver} file; the engine reads only polygon formats that keep their data in the file "
            f"itself ({_VECTOR_NAMES}): convert it, e.g. `ogr2ogr out.gpkg in`"
        )
