"""Builders of the raster kinds found in the wild (specs: geodata.md), small and deterministic.

Every builder writes one GeoTIFF (or container) of about 64 x 64 px under a folder and returns the
path the user would give. All of them lie over one place (UTM 33N around 500 000 E, 4 000 000 N,
about 36.1 N 15 E) unless their CRS cannot be there (NAD27 and ESRI Albers: North America; the
geostationary full disk; the antimeridian).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import pyproj
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning
from rasterio.rpc import RPC

N = 64
PX = 10.0
UTM33 = CRS.from_epsg(32633)
X0, Y0 = 500000.0, 4000000.0
NORTH_UP = Affine(PX, 0, X0, 0, -PX, Y0)
RGB = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
GEOS = ("+proj=geos +h=35785831 +lon_0=0 +sweep=y +ellps=WGS84 +units=m +no_defs")
MARS = (
    'GEOGCS["Mars 2000",DATUM["D_Mars_2000",SPHEROID["Mars_2000_IAU_IAG",3396190.0,169.89444722361179]],'
    'PRIMEM["Greenwich",0],UNIT["Decimal_Degree",0.0174532925199433]]'
)
WKT_ONLY = (
    'PROJCS["unnamed transverse mercator",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
    'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],'
    'PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",15],PARAMETER["scale_factor",0.9996],'
    'PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1]]'
)


def pixels(count: int = 3, dtype: str = "uint8", low: float = 1, high: float = 250, n: int = N) -> np.ndarray:
    """Smooth, distinct bands (a textured image), never below `low`: no pixel is a hole by accident."""
    rows, cols = np.mgrid[0:n, 0:n] / max(n - 1, 1)
    bands = [np.sin(3 * rows + k) * np.cos(4 * cols - k) * 0.5 + 0.5 for k in range(count)]
    data = low + np.stack(bands) * (high - low)
    return data.astype(dtype)


def write(path: Path, data: np.ndarray, crs=UTM33, transform=NORTH_UP, colorinterp=None, env=None,
          after=None, **profile) -> Path:
    data = np.asarray(data)
    kwargs = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                  dtype=data.dtype.name, crs=crs, transform=transform)
    kwargs.update(profile)
    with warnings.catch_warnings(), rasterio.Env(**(env or {})):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **{k: v for k, v in kwargs.items() if v is not None}) as dst:
            dst.write(data)
            if colorinterp:
                dst.colorinterp = colorinterp
            if after:
                after(dst)
    return Path(path)


def _lonlat_grid(crs, lon, lat, size_m=N * PX):
    """A north-up transform in `crs` whose N x N pixels cover about size_m around (lon, lat)."""
    x, y = pyproj.Transformer.from_crs("EPSG:4326", crs.to_wkt(), always_xy=True).transform(lon, lat)
    if CRS.from_user_input(crs).is_geographic:
        dx = size_m / N / (111320 * math.cos(math.radians(lat)))
        dy = size_m / N / 110574
    else:
        dx = dy = size_m / N
    return Affine(dx, 0, x - dx * N / 2, 0, -dy, y + dy * N / 2)


def _lonlat_of_centre():
    return pyproj.Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(X0 + N * PX / 2, Y0 - N * PX / 2)


# --- CRSs --------------------------------------------------------------------------------------


def utm(folder):
    return write(folder / "utm.tif", pixels(), colorinterp=RGB)


def geographic(folder):
    lon, lat = _lonlat_of_centre()
    return write(folder / "wgs84.tif", pixels(), crs=CRS.from_epsg(4326), transform=_lonlat_grid(CRS.from_epsg(4326), lon, lat),
                 colorinterp=RGB)


def web_mercator(folder):
    lon, lat = _lonlat_of_centre()
    crs = CRS.from_epsg(3857)
    return write(folder / "webmercator.tif", pixels(), crs=crs, transform=_lonlat_grid(crs, lon, lat), colorinterp=RGB)


def nad27(folder):
    crs = CRS.from_epsg(26717)  # NAD27 / UTM 17N
    return write(folder / "nad27.tif", pixels(), crs=crs, transform=_lonlat_grid(crs, -81.0, 36.0), colorinterp=RGB)


def esri_only(folder):
    crs = CRS.from_user_input("ESRI:102003")  # USA Contiguous Albers Equal Area Conic
    return write(folder / "albers.tif", pixels(), crs=crs, transform=_lonlat_grid(crs, -98.0, 39.0), colorinterp=RGB)


def wkt_only(folder):
    return write(folder / "wkt_only.tif", pixels(), crs=CRS.from_wkt(WKT_ONLY), colorinterp=RGB)


def no_crs(folder):
    return write(folder / "no_crs.tif", pixels(), crs=None, colorinterp=RGB)


def mars(folder):
    return write(folder / "mars.tif", pixels(), crs=CRS.from_wkt(MARS), transform=Affine(0.001, 0, 10, 0, -0.001, 20),
                 colorinterp=RGB)


# --- geotransforms -----------------------------------------------------------------------------


def south_up(folder):
    # Row 0 is the southern edge: the same ground as `utm`, stored upside down.
    flipped = pixels()[:, ::-1, :]
    return write(folder / "south_up.tif", np.ascontiguousarray(flipped), transform=Affine(PX, 0, X0, 0, PX, Y0 - N * PX),
                 colorinterp=RGB)


def rotated(folder):
    angle = math.radians(20)
    transform = Affine(PX * math.cos(angle), PX * math.sin(angle), X0, PX * math.sin(angle), -PX * math.cos(angle), Y0)
    return write(folder / "rotated.tif", pixels(), transform=transform, colorinterp=RGB)


def gcp_only(folder):
    # Four corner GCPs of the `utm` grid, slightly rotated: no geotransform at all.
    gcps = [GroundControlPoint(0, 0, X0, Y0), GroundControlPoint(0, N, X0 + N * PX, Y0 - 40),
            GroundControlPoint(N, 0, X0 + 40, Y0 - N * PX), GroundControlPoint(N, N, X0 + N * PX + 40, Y0 - N * PX - 40)]

    def set_gcps(dst):
        dst.gcps = (gcps, UTM33)

    return write(folder / "gcps.tif", pixels(), crs=None, transform=None, colorinterp=RGB, after=set_gcps)


def rpc_only(folder):
    rpcs = RPC(height_off=0, height_scale=100, lat_off=36, lat_scale=0.01, line_den_coeff=[1] + [0] * 19,
               line_num_coeff=[0, 0, -1] + [0] * 17, line_off=32, line_scale=32, long_off=15, long_scale=0.01,
               samp_den_coeff=[1] + [0] * 19, samp_num_coeff=[0, 1] + [0] * 18, samp_off=32, samp_scale=32)

    def set_rpcs(dst):
        dst.rpcs = rpcs

    return write(folder / "rpcs.tif", pixels(), crs=None, transform=None, colorinterp=RGB, after=set_rpcs)


def antimeridian(folder):
    crs = CRS.from_epsg(4326)
    transform = _lonlat_grid(crs, 179.999, -17.0)  # Fiji: the footprint runs past 180 E
    return write(folder / "antimeridian.tif", pixels(), crs=crs, transform=transform, colorinterp=RGB)


def geostationary(folder):
    """A full disk: its corners lie in space, outside the projection's domain."""
    n, extent = 128, 5434177.8
    size = 2 * extent / n
    return write(folder / "full_disk.tif", pixels(n=n), crs=CRS.from_proj4(GEOS),
                 transform=Affine(size, 0, -extent, 0, -size, extent), colorinterp=RGB)


# --- pixels ------------------------------------------------------------------------------------


def uint16_reflectance(folder):
    return write(folder / "uint16.tif", pixels(dtype="uint16", low=200, high=9000), colorinterp=RGB)


def uint16_11bit(folder):
    return write(folder / "uint16_11bit.tif", pixels(dtype="uint16", low=50, high=2047), colorinterp=RGB)


def int16_nodata(folder):
    data = pixels(dtype="int16", low=-500, high=3000)
    data[:, :8, :] = -9999
    return write(folder / "int16.tif", data, nodata=-9999, colorinterp=RGB)


def float32(folder):
    return write(folder / "float32.tif", pixels(dtype="float32", low=0.01, high=0.6), colorinterp=RGB)


def float64(folder):
    return write(folder / "float64.tif", pixels(dtype="float64", low=0.01, high=0.6), colorinterp=RGB)


def nan_nodata(folder):
    data = pixels(dtype="float32", low=0.01, high=0.6)
    data[:, :, :8] = np.nan
    return write(folder / "nan_nodata.tif", data, nodata=float("nan"), colorinterp=RGB)


def scale_offset(folder):
    def set_scale(dst):
        dst.scales = (0.0001,) * 3
        dst.offsets = (-0.1,) * 3

    return write(folder / "scale_offset.tif", pixels(dtype="uint16", low=1000, high=6000), colorinterp=RGB, after=set_scale)


PALETTE = {0: (0, 0, 0, 255), 1: (200, 30, 30, 255), 2: (30, 160, 40, 255), 3: (20, 40, 200, 255), 4: (240, 230, 90, 255)}


def palette(folder):
    index = (np.add.outer(np.arange(N) // 8, np.arange(N) // 16) % 4 + 1).astype("uint8")
    index[:4, :] = 0  # the nodata index: invalid (TIFF palettes hold no alpha)

    def set_palette(dst):
        dst.write_colormap(1, PALETTE)

    return write(folder / "palette.tif", index[None], photometric="palette", nodata=0, after=set_palette)


def one_by_one(folder):
    return write(folder / "one.tif", pixels(n=1), transform=Affine(PX, 0, X0, 0, -PX, Y0), colorinterp=RGB)


def two_by_two(folder):
    return write(folder / "two.tif", pixels(n=2), colorinterp=RGB)


def all_nodata(folder):
    return write(folder / "all_nodata.tif", np.zeros((3, N, N), "uint8"), nodata=0, colorinterp=RGB)


def big_endian(folder):
    return write(folder / "big_endian.tif", pixels(dtype="uint16", low=200, high=9000), colorinterp=RGB, ENDIANNESS="BIG")


def bigtiff(folder):
    return write(folder / "bigtiff.tif", pixels(), colorinterp=RGB, BIGTIFF="YES")


# --- masks -------------------------------------------------------------------------------------


def nodata_collar(folder):
    data = pixels()
    data[:, :, :10] = 0
    return write(folder / "nodata.tif", data, nodata=0, colorinterp=RGB)


def _alpha(graded: bool) -> np.ndarray:
    alpha = np.full((1, N, N), 255, "uint8")
    alpha[:, :, :10] = 0
    if graded:
        alpha[:, :, 10:20] = 128
        alpha[:, 40:, :] = 200
    return alpha


def alpha_band(folder):
    return write(folder / "rgba.tif", np.concatenate([pixels(), _alpha(False)]), colorinterp=RGB + [ColorInterp.alpha])


def graded_alpha(folder):
    return write(folder / "rgba_graded.tif", np.concatenate([pixels(), _alpha(True)]), colorinterp=RGB + [ColorInterp.alpha])


def _mask_writer(mask):
    def write_mask(dst):
        dst.write_mask(mask)

    return write_mask


def _mask() -> np.ndarray:
    mask = np.full((N, N), 255, "uint8")
    mask[:, :10] = 0
    return mask


def internal_mask(folder):
    return write(folder / "internal_mask.tif", pixels(), colorinterp=RGB, env={"GDAL_TIFF_INTERNAL_MASK": True},
                 after=_mask_writer(_mask()))


def msk_sidecar(folder):
    path = write(folder / "sidecar.tif", pixels(), colorinterp=RGB, env={"GDAL_TIFF_INTERNAL_MASK": False},
                 after=_mask_writer(_mask()))
    assert (folder / "sidecar.tif.msk").exists()
    return path


# --- band semantics ----------------------------------------------------------------------------


def bgr_alpha_uint16(folder):
    data = np.concatenate([pixels(dtype="uint16", low=200, high=9000), _alpha(False).astype("uint16") * 257])
    return write(folder / "bgra_uint16.tif", data, colorinterp=[ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.alpha])


def rgb_nir(folder):
    # As NAIP stores them: photometric RGB, the fourth sample "unspecified" (GDAL would default to alpha).
    return write(folder / "rgbn.tif", pixels(count=4), photometric="RGB", alpha="UNSPECIFIED")


def bgr_nir(folder):
    return write(folder / "bgrn.tif", pixels(count=4), photometric="MINISBLACK", alpha="UNSPECIFIED",
                 colorinterp=[ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined])


def gray(folder):
    return write(folder / "gray.tif", pixels(count=1), colorinterp=[ColorInterp.gray])


def band_codes(folder):
    """Four bands named only by Sentinel-2 codes: which is red cannot be told without --bands."""
    def describe(dst):
        for index, name in enumerate(("B2", "B3", "B4", "B8"), start=1):
            dst.set_band_description(index, name)

    return write(folder / "codes.tif", pixels(count=4), photometric="MINISBLACK", alpha="UNSPECIFIED", after=describe)


# --- damaged files and containers --------------------------------------------------------------


def truncated(folder):
    """A tiled GeoTIFF whose data stops two thirds in (its header, at the start, is whole)."""
    path = write(folder / "truncated.tif", pixels(n=256), transform=NORTH_UP, colorinterp=RGB, tiled=True,
                 blockxsize=64, blockysize=64)
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(size * 2 // 3)
    return path


def netcdf_subdataset(folder):
    """A NetCDF file with two variables (a container): its `rgb` variable, as GDAL names it."""
    from scipy.io import netcdf_file

    path = folder / "scene.nc"
    lon, lat = _lonlat_of_centre()
    step = 1e-4
    with netcdf_file(path, "w") as nc:
        nc.createDimension("band", 3)
        nc.createDimension("lat", N)
        nc.createDimension("lon", N)
        lat_var = nc.createVariable("lat", "f8", ("lat",))
        lat_var[:] = lat + step * (N / 2 - 0.5 - np.arange(N))
        lat_var.units = "degrees_north"
        lon_var = nc.createVariable("lon", "f8", ("lon",))
        lon_var[:] = lon + step * (np.arange(N) - N / 2 + 0.5)
        lon_var.units = "degrees_east"
        crs_var = nc.createVariable("crs", "i4", ())
        crs_var.grid_mapping_name = "latitude_longitude"
        crs_var.semi_major_axis = 6378137.0
        crs_var.inverse_flattening = 298.257223563
        for name, count in (("rgb", 3), ("quality", 1)):
            dims = ("band", "lat", "lon") if count == 3 else ("lat", "lon")
            var = nc.createVariable(name, "i2", dims)
            var[:] = pixels(count=count, dtype="int16")[0 if count == 1 else slice(None)]
            var.grid_mapping = "crs"
    return f"NETCDF:{path}:rgb"


KINDS = {
    # name: builder
    "utm": utm, "geographic": geographic, "web-mercator": web_mercator, "nad27": nad27, "esri-only": esri_only,
    "wkt-only": wkt_only, "no-crs": no_crs, "mars": mars,
    "south-up": south_up, "rotated": rotated, "gcp-only": gcp_only, "rpc-only": rpc_only,
    "antimeridian": antimeridian, "geostationary": geostationary,
    "uint16": uint16_reflectance, "uint16-11bit": uint16_11bit, "int16-nodata": int16_nodata, "float32": float32,
    "float64": float64, "nan-nodata": nan_nodata, "scale-offset": scale_offset, "palette": palette,
    "1x1": one_by_one, "2x2": two_by_two, "all-nodata": all_nodata, "big-endian": big_endian, "bigtiff": bigtiff,
    "nodata": nodata_collar, "alpha": alpha_band, "graded-alpha": graded_alpha, "internal-mask": internal_mask,
    "msk-sidecar": msk_sidecar,
    "bgr-alpha-uint16": bgr_alpha_uint16, "rgb-nir": rgb_nir, "bgr-nir": bgr_nir, "gray": gray, "band-codes": band_codes,
    "truncated": truncated, "netcdf-subdataset": netcdf_subdataset,
}

# Kinds no command can use, and the words of the one line each gets.
REJECTED = {
    "no-crs": "no coordinate reference system",
    "mars": "another celestial body",
    "rpc-only": "RPC coefficients",
    "1x1": "at least 8x8",
    "2x2": "at least 8x8",
    "truncated": "is incomplete",
}
# Kinds whose pixels cannot be painted (inpaint, predict frames) while their grid is usable (--like).
NO_RGB = {
    "gray": "has 1 image band",
    "band-codes": "--bands R G B",
}
NO_VALID_PIXEL = {"all-nodata": "no valid pixel"}
NOT_NORTH_UP = ("south-up", "rotated", "gcp-only")
