"""Input rasters found in the wild: each one is presented north-up or rejected with a clear message.

Expected numbers are derived independently of the code under test: pixel counts from the raw
bands read with plain rasterio, ground pixel sizes from closed-form map-projection formulas or
PROJ's analytic scale factors (the code measures geodesic distances instead).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyproj
import pytest
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning
from rasterio.rpc import RPC
from rasterio.windows import Window

from engine.errors import InputError
from engine.geo.crs import crosses_antimeridian, is_geographic, metres_per_pixel, require_earth_crs, to_wgs84
from engine.geo.raster import MIN_SIDE_PX, RasterInfo, open_raster, require_rgb

WGS84_A = 6378137.0
WGS84_E2 = 6.69437999014e-3
UTM33 = CRS.from_epsg(32633)
NORTH_UP_10M = Affine(10, 0, 500000, 0, -10, 4000000)


def write_raster(path, data, crs=UTM33, transform=NORTH_UP_10M, **profile):
    """A GeoTIFF of `data` (bands, rows, cols); extra profile keys go to rasterio."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    kwargs = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                  dtype=data.dtype.name, crs=crs, transform=transform)
    kwargs.update(profile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # some cases are meant to lack it
        with rasterio.open(path, "w", **{k: v for k, v in kwargs.items() if v is not None}) as dst:
            dst.write(data)
    return path


def ramp(shape, dtype="uint8", start=1):
    """Distinct values per pixel (mod the dtype's range), never 0."""
    values = np.arange(int(np.prod(shape))).reshape(shape) % 250 + start
    return values.astype(dtype)


def ellipsoid_radii(lat_deg):
    """Meridional (M) and prime-vertical (N) radii of curvature of WGS84 at a latitude."""
    s2 = math.sin(math.radians(lat_deg)) ** 2
    n = WGS84_A / math.sqrt(1 - WGS84_E2 * s2)
    m = WGS84_A * (1 - WGS84_E2) / (1 - WGS84_E2 * s2) ** 1.5
    return m, n


def scale_factors(crs, x, y):
    """PROJ's analytic (parallel, meridional) scale factors at a projected point."""
    pcrs = pyproj.CRS.from_user_input(crs.to_wkt())
    lon, lat = pyproj.Transformer.from_crs(pcrs, pcrs.geodetic_crs, always_xy=True).transform(x, y)
    factors = pyproj.Proj(pcrs).get_factors(lon, lat)
    return factors.parallel_scale, factors.meridional_scale


def centre(info: RasterInfo):
    return info.transform @ (info.width / 2, info.height / 2)


# --- real files ------------------------------------------------------------------------------


def test_rgb_byte_nodata_collar_is_masked_where_all_bands_are_zero(rasters_dir):
    path = rasters_dir / "RGB.byte.tif"
    with rasterio.open(path) as raw:
        all_zero = (raw.read() == 0).all(axis=0)
    with open_raster(path) as src:
        image = src.read()
        assert src.info.mask_kind == "nodata"
        assert src.info.nodata == 0
        assert image.shape == (3, 718, 791)
        assert int(image.mask[0].sum()) == int(all_zero.sum())
        assert 0.30 < all_zero.mean() < 0.35  # the ~32 % collar of the manifest
        # nodata is per band: a pixel black in one band only stays valid
        one_band_zero = (image.data == 0).any(axis=0) & ~all_zero
        assert one_band_zero.sum() > 0
        assert not image.mask[0][one_band_zero].any()


def test_rgb_byte_utm_pixel_size_is_ground_size(rasters_dir):
    with open_raster(rasters_dir / "RGB.byte.tif") as src:
        info = src.info
    assert info.crs.to_epsg() == 32618 and not info.is_geographic
    k_parallel, k_meridian = scale_factors(info.crs, *centre(info))
    assert k_parallel > 1.0005  # far from the central meridian: nominal metres are too long
    assert info.pixel_size_m[0] == pytest.approx(info.transform.a / k_parallel, rel=1e-5)
    assert info.pixel_size_m[1] == pytest.approx(-info.transform.e / k_meridian, rel=1e-5)
    assert info.rgb_bands == (1, 2, 3) and info.rgb_rule == "colorinterp"
    assert info.source_orientation == "north-up" and not info.crosses_antimeridian


def test_rgba_uint16_blue_green_red_alpha(rasters_dir):
    path = rasters_dir / "RGBA.uint16.tif"
    with rasterio.open(path) as raw:
        bands = raw.read()
    with open_raster(path) as src:
        info = src.info
        assert info.colorinterp == ("blue", "green", "red", "alpha")
        assert info.rgb_bands == (3, 2, 1)
        assert info.alpha_band == 4 and info.mask_kind == "alpha"
        assert info.data_bands == (1, 2, 3)
        image = src.read()
        assert image.shape == (3, 411, 634) and image.dtype == np.uint16
        assert int(image.mask[0].sum()) == int((bands[3] == 0).sum()) > 0
        rgb = src.read(bands=info.rgb_bands)
        np.testing.assert_array_equal(rgb.data[0], bands[2])  # red first
        np.testing.assert_array_equal(rgb.data[2], bands[0])


def test_cogeo_web_mercator_true_ground_size_is_smaller(rasters_dir):
    with open_raster(rasters_dir / "cogeo.tif") as src:
        info = src.info
        assert info.mask_kind == "internal"
        # the file's internal mask marks every pixel valid
        with rasterio.open(rasters_dir / "cogeo.tif") as raw:
            file_invalid = int((raw.dataset_mask() == 0).sum())
        assert int(src.read().mask[0].sum()) == file_invalid == 0
    assert info.crs.to_epsg() == 3857
    x, y = centre(info)
    lat = math.degrees(2 * math.atan(math.exp(y / WGS84_A)) - math.pi / 2)
    m, n = ellipsoid_radii(lat)
    # a Web Mercator unit spans 1/R rad of longitude and cos(lat)/R rad of latitude
    cos_lat = math.cos(math.radians(lat))
    expected_x = info.transform.a * n * cos_lat / WGS84_A
    expected_y = -info.transform.e * m * cos_lat / WGS84_A
    assert info.pixel_size_m[0] == pytest.approx(expected_x, rel=1e-4)
    assert info.pixel_size_m[1] == pytest.approx(expected_y, rel=1e-4)
    assert info.pixel_size_m[0] < 0.8 * info.transform.a  # nominal ~0.6 m


def test_naip_rgb_nir_maps_rgb_and_ignores_nir(rasters_dir):
    with open_raster(rasters_dir / "m_3607824_se_17_1_20160620_sub.tif") as src:
        info = src.info
        assert info.count == 4 and info.rgb_bands == (1, 2, 3)
        assert info.colorinterp[3] == "undefined" and info.alpha_band is None
        assert info.mask_kind == "none" and int(src.read().mask.sum()) == 0
        assert info.tags["TIFFTAG_IMAGEDESCRIPTION"].startswith("USDA-FSA-APFO")
        assert info.imagery_tags == {}


def test_geographic_post_tile_pixel_size_in_metres(rasters_dir):
    with open_raster(rasters_dir / "xv2deploy_post_tile_32524-5137.tif") as src:
        info = src.info
    assert info.is_geographic and info.crs.to_epsg() == 4326
    _, lat = centre(info)
    m, n = ellipsoid_radii(lat)
    expected_x = math.radians(info.transform.a) * n * math.cos(math.radians(lat))
    expected_y = math.radians(-info.transform.e) * m
    assert info.pixel_size_m[0] == pytest.approx(expected_x, rel=1e-4)
    assert info.pixel_size_m[1] == pytest.approx(expected_y, rel=1e-4)
    assert 0.5 < info.pixel_size_m[0] < 0.6  # the manifest's "~0.55 m"


def test_nad83_pre_tile_is_accepted(rasters_dir):
    with open_raster(rasters_dir / "xv2deploy_pre_tile_1361-10160.tif") as src:
        assert src.info.crs.to_epsg() == 26915
        assert src.info.pixel_size_m == pytest.approx((0.6, 0.6), rel=1e-3)


# --- CRSs --------------------------------------------------------------------------------------


def test_nad27_raster(tmp_path):
    path = write_raster(tmp_path / "nad27.tif", ramp((16, 16)), crs=CRS.from_epsg(26717))
    with open_raster(path) as src:
        info = src.info
    assert info.crs.to_epsg() == 26717
    k_parallel, k_meridian = scale_factors(info.crs, *centre(info))
    assert info.pixel_size_m == pytest.approx((10 / k_parallel, 10 / k_meridian), rel=1e-4)


def test_esri_only_code_raster(tmp_path):
    albers = CRS.from_user_input("ESRI:102003")
    transform = Affine(30, 0, 0, 0, -30, 1_600_000)
    path = write_raster(tmp_path / "albers.tif", ramp((16, 16)), crs=albers, transform=transform)
    with open_raster(path) as src:
        info = src.info
    assert info.crs.to_epsg() is None and info.crs == albers
    k_parallel, k_meridian = scale_factors(info.crs, *centre(info))
    assert info.pixel_size_m == pytest.approx((30 / k_parallel, 30 / k_meridian), rel=1e-4)


def test_wkt_only_crs_raster(tmp_path):
    wkt = (
        'PROJCS["custom TM",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
        'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],'
        'PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",13.3],PARAMETER["scale_factor",1],'
        'PARAMETER["false_easting",0],PARAMETER["false_northing",0],UNIT["metre",1]]'
    )
    # centred on the central meridian, where a scale-1 transverse Mercator is true to scale
    transform = Affine(10, 0, -80, 0, -10, 5_800_000)
    path = write_raster(tmp_path / "wkt.tif", ramp((16, 16)), crs=CRS.from_wkt(wkt), transform=transform)
    with open_raster(path) as src:
        info = src.info
    assert info.crs.to_epsg() is None
    assert info.pixel_size_m == pytest.approx((10.0, 10.0), rel=1e-5)


def test_raster_without_crs_is_rejected(tmp_path):
    path = write_raster(tmp_path / "nocrs.tif", ramp((16, 16)), crs=None)
    with pytest.raises(InputError, match="no coordinate reference system") as err:
        open_raster(path)
    assert str(path) in str(err.value) and "gdal_edit.py -a_srs" in str(err.value)


def test_mars_raster_is_rejected(tmp_path):
    mars = CRS.from_user_input("IAU_2015:49900")
    degrees = Affine(0.01, 0, 10, 0, -0.01, 10)
    path = write_raster(tmp_path / "mars.tif", ramp((16, 16)), crs=mars, transform=degrees)
    with pytest.raises(InputError, match="another celestial body") as err:
        open_raster(path)
    assert "3,396,190 m" in str(err.value) and "impossible" in str(err.value)


@pytest.mark.parametrize(
    "crs",
    [
        "IAU_2015:49900",
        'GEOGCS["Moon 2000",DATUM["D_Moon_2000",SPHEROID["Moon_2000_IAU_IAG",1737400.0,0.0]],'
        'PRIMEM["Reference_Meridian",0.0],UNIT["Degree",0.0174532925199433]]',
    ],
)
def test_require_earth_crs_rejects_other_bodies(crs):
    with pytest.raises(InputError, match="another celestial body"):
        require_earth_crs(crs, "raster moon.tif")


@pytest.mark.parametrize("crs", [None, "", CRS()])
def test_require_earth_crs_rejects_missing(crs):
    with pytest.raises(InputError, match="raster x.tif has no coordinate reference system"):
        require_earth_crs(crs, "raster x.tif")


def test_require_earth_crs_rejects_unknown_code():
    with pytest.raises(InputError, match="PROJ cannot read"):
        require_earth_crs("EPSG:999999", "raster odd.tif")


def test_require_earth_crs_rejects_engineering_crs():
    local = CRS.from_wkt('LOCAL_CS["arbitrary",UNIT["metre",1],AXIS["Easting",EAST],AXIS["Northing",NORTH]]')
    with pytest.raises(InputError, match="not tied to the Earth"):
        require_earth_crs(local, "raster local.tif")


@pytest.mark.parametrize("crs", ["EPSG:4326", "ESRI:102003", "EPSG:4267", pyproj.CRS("EPSG:32633"), 3857])
def test_require_earth_crs_accepts_earth_crs(crs):
    result = require_earth_crs(crs, "x")
    assert isinstance(result, CRS) and result == CRS.from_user_input(crs)


def test_to_wgs84_and_is_geographic():
    lons, lats = to_wgs84(CRS.from_epsg(32633), [500000.0], [0.0])
    assert lons[0] == pytest.approx(15.0, abs=1e-9) and lats[0] == pytest.approx(0.0, abs=1e-9)
    assert is_geographic(CRS.from_epsg(4326)) and not is_geographic(CRS.from_epsg(3857))


def test_metres_per_pixel_at_equator_in_degrees():
    # 1e-4 degree of longitude at the equator is a * 1e-4 rad
    size_x, size_y = metres_per_pixel(CRS.from_epsg(4326), Affine(1e-4, 0, 10, 0, -1e-4, 0.005), 100, 100)
    assert size_x == pytest.approx(WGS84_A * math.radians(1e-4), rel=1e-6)
    assert size_y == pytest.approx(ellipsoid_radii(0.0)[0] * math.radians(1e-4), rel=1e-6)


# --- geotransforms ------------------------------------------------------------------------------


def test_south_up_is_flipped_exactly(tmp_path):
    data = ramp((3, 20, 30))
    south_up = Affine(10, 0, 500000, 0, 10, 4000000)  # row 0 is the southernmost row
    path = write_raster(tmp_path / "south.tif", data, transform=south_up, photometric="RGB")
    with open_raster(path) as src:
        info = src.info
        image = src.read()
    assert info.source_orientation == "south-up"
    assert info.transform == Affine(10, 0, 500000, 0, -10, 4000200)
    assert tuple(info.bounds) == (500000, 4000000, 500300, 4000200)
    np.testing.assert_array_equal(image.data, data[:, ::-1, :])
    assert not image.mask.any()
    # source pixel (row 0, col 2) covers x 500020..500030, y 4000000..4000010
    col, row = ~info.transform @ (500025, 4000005)
    np.testing.assert_array_equal(image.data[:, int(row), int(col)], data[:, 0, 2])


def test_south_up_keeps_its_nodata_mask(tmp_path):
    data = ramp((1, 20, 30))
    data[0, :4, :5] = 0
    path = write_raster(tmp_path / "south_nd.tif", data, transform=Affine(10, 0, 0, 0, 10, 0), nodata=0)
    with open_raster(path) as src:
        mask = src.read().mask[0]
    assert int(mask.sum()) == 20 and mask[-4:, :5].all()


@pytest.mark.parametrize("nodata", [None, 0])
def test_rotated_raster_is_warped_north_up(tmp_path, nodata):
    # 6x6-pixel blocks of constant value so that resampling leaves block centres exact
    blocks = np.kron(np.arange(1, 21, dtype="uint8").reshape(4, 5), np.ones((6, 6), dtype="uint8"))
    rotated = NORTH_UP_10M @ Affine.rotation(30)
    path = write_raster(tmp_path / "rotated.tif", blocks, transform=rotated, nodata=nodata)
    with open_raster(path) as src:
        info = src.info
        image = src.read()
    assert info.source_orientation == "rotated"
    assert info.transform.b == 0 and info.transform.d == 0 and info.transform.e < 0
    # block (row 2, col 3) has value 14; its centre is source pixel (15, 21)
    x, y = rotated @ (21, 15)
    col, row = ~info.transform @ (x, y)
    assert image.data[0, int(row), int(col)] == 14 and not image.mask[0, int(row), int(col)]
    # valid pixels cover the source's area; the corners of the north-up grid are masked
    valid_area = (~image.mask[0]).sum() * info.transform.a * -info.transform.e
    assert valid_area == pytest.approx(24 * 30 * 100, rel=0.05)
    assert image.mask[0, 0, 0] and image.mask[0, -1, -1]


def test_rotated_raster_with_an_alpha_band_keeps_it_as_its_mask(tmp_path):
    """The alpha band masks the rotated view (it is not warped as a fourth image band), and the
    corners outside the footprint are masked too."""
    rgb = np.kron(np.arange(1, 21, dtype="uint8").reshape(4, 5), np.ones((6, 6), dtype="uint8"))
    alpha = np.full(rgb.shape, 255, "uint8")
    alpha[:, :12] = 0  # the two western block columns are transparent
    rotated = NORTH_UP_10M @ Affine.rotation(30)
    path = write_raster(tmp_path / "rotated_rgba.tif", np.stack([rgb, rgb, rgb, alpha]), transform=rotated)
    with rasterio.open(path, "r+") as dst:
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    with open_raster(path) as src:
        info = src.info
        image = src.read()
    assert info.alpha_band == 4 and info.mask_kind == "alpha" and image.shape[0] == 3
    transparent, opaque = rotated @ (3, 3), rotated @ (27, 15)  # source (col, row) centres
    for (x, y), masked in ((transparent, True), (opaque, False)):
        col, row = ~info.transform @ (x, y)
        assert image.mask[0, int(row), int(col)] == masked
    assert image.mask[0, 0, 0] and image.mask[0, -1, -1]
    valid_area = (~image.mask[0]).sum() * info.transform.a * -info.transform.e
    assert valid_area == pytest.approx(24 * 18 * 100, rel=0.06)


def test_alpha_band_of_a_five_band_raster_is_its_mask(tmp_path):
    """GDAL uses an alpha band as the mask only in 2- and 4-band files; a 5-band R, G, B, NIR,
    alpha file must still be masked by it."""
    data = np.stack([ramp((16, 16))] * 4 + [np.where(np.arange(16) < 5, 0, 255).astype("uint8")[None].repeat(16, 0)])
    path = write_raster(tmp_path / "rgbn_alpha.tif", data, photometric="MINISBLACK")
    with rasterio.open(path, "r+") as dst:
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined, ColorInterp.alpha]
    with open_raster(path) as src:
        assert src.info.mask_kind == "alpha" and src.info.data_bands == (1, 2, 3, 4)
        valid = src.valid_mask()
    assert not valid[:, :5].any() and valid[:, 5:].all()


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_gcp_only_raster_is_warped_with_its_gcps(tmp_path):
    data = ramp((20, 30))
    path = tmp_path / "gcps.tif"
    write_raster(path, data, crs=None, transform=None)
    corners = [(0, 0), (0, 30), (20, 0), (20, 30)]
    gcps = [GroundControlPoint(row, col, *(NORTH_UP_10M @ (col, row))) for row, col in corners]
    with rasterio.open(path, "r+") as dst:
        dst.gcps = (gcps, UTM33)
    with open_raster(path) as src:
        info = src.info
        image = src.read()
    assert info.source_orientation == "gcps" and info.crs == UTM33
    assert tuple(info.transform)[:6] == pytest.approx(tuple(NORTH_UP_10M)[:6], abs=1e-6)
    np.testing.assert_array_equal(image.data[0], data)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_rpc_only_raster_is_rejected(tmp_path):
    path = write_raster(tmp_path / "rpc.tif", ramp((16, 16)), crs=CRS.from_epsg(4326), transform=None)
    rpc = RPC(height_off=0, height_scale=1, lat_off=45, lat_scale=0.1, long_off=10, long_scale=0.1,
              line_off=8, line_scale=8, samp_off=8, samp_scale=8,
              line_num_coeff=[0, 0, -1] + [0] * 17, line_den_coeff=[1] + [0] * 19,
              samp_num_coeff=[0, 1] + [0] * 18, samp_den_coeff=[1] + [0] * 19)
    with rasterio.open(path, "r+") as dst:
        dst.rpcs = rpc
    with pytest.raises(InputError, match="RPC") as err:
        open_raster(path)
    assert "Orthorectify" in str(err.value) and "gdalwarp -rpc" in str(err.value)


def test_raster_without_geotransform_is_rejected(tmp_path):
    path = write_raster(tmp_path / "noxf.tif", ramp((16, 16)), transform=None)
    with pytest.raises(InputError, match="no geotransform") as err:
        open_raster(path)
    assert "-a_ullr" in str(err.value)


@pytest.mark.parametrize(
    "crs, transform, width, expected",
    [
        (CRS.from_epsg(4326), Affine(0.01, 0, 179.5, 0, -0.01, 10), 100, True),  # 179.5 .. 180.5
        (CRS.from_epsg(4326), Affine(0.01, 0, -180.5, 0, -0.01, 10), 100, True),  # -180.5 .. -179.5
        (CRS.from_epsg(4326), Affine(0.01, 0, 179.0, 0, -0.01, 10), 100, False),  # touches 180 only
        # UTM zone 60 (central meridian 177E): 179.7E .. 179.4W
        (CRS.from_epsg(32660), Affine(100, 0, 800_000, 0, -100, 10_000), 1000, True),
        (CRS.from_epsg(32660), Affine(100, 0, 600_000, 0, -100, 10_000), 1000, False),
    ],
)
def test_crosses_antimeridian(crs, transform, width, expected):
    assert crosses_antimeridian(crs, transform, width, 100) is expected


def test_antimeridian_raster_is_flagged(tmp_path):
    path = write_raster(tmp_path / "am.tif", ramp((16, 16)), crs=CRS.from_epsg(4326),
                        transform=Affine(1 / 16, 0, 179.5, 0, -1 / 16, -16.0))
    with open_raster(path) as src:
        assert src.info.crosses_antimeridian
        assert src.info.pixel_size_m[0] == pytest.approx(
            math.radians(1 / 16) * ellipsoid_radii(-16.5)[1] * math.cos(math.radians(-16.5)), rel=1e-4)


# --- pixels -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32", "float64"])
def test_pixel_types_round_trip(tmp_path, dtype):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    low, high = (info.min, info.max) if info else (-1e6, 1e6)
    data = rng.uniform(low, high, size=(2, 12, 12)).astype(dtype)
    path = write_raster(tmp_path / f"{dtype}.tif", data, photometric="MINISBLACK")
    with open_raster(path) as src:
        image = src.read()
        assert src.info.dtypes == (dtype, dtype)
    assert image.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(image.data, data)


def test_nan_nodata_is_masked(tmp_path):
    data = ramp((1, 12, 12), dtype="float32")
    data[0, 2:5, 3:7] = np.nan
    path = write_raster(tmp_path / "nan.tif", data, nodata=np.nan)
    with open_raster(path) as src:
        assert src.info.mask_kind == "nodata" and math.isnan(src.info.nodata)
        assert int(src.read().mask.sum()) == 12
        assert int((~src.valid_mask()).sum()) == 12


def test_nan_without_declared_nodata_is_masked(tmp_path):
    data = ramp((2, 12, 12), dtype="float64")
    data[1, 5, 5] = np.nan  # one band NaN is enough to make the pixel unusable
    path = write_raster(tmp_path / "nan2.tif", data, photometric="MINISBLACK")
    with open_raster(path) as src:
        assert src.info.mask_kind == "none"
        mask = src.read().mask
        assert mask[:, 5, 5].all() and int(mask[0].sum()) == 1
        assert not src.valid_mask()[5, 5]


def test_scale_and_offset_are_exposed_and_applied(tmp_path):
    data = np.full((1, 10, 10), 2500, dtype="uint16")
    data[0, 0, 0] = 10000
    path = write_raster(tmp_path / "scaled.tif", data)
    with rasterio.open(path, "r+") as dst:
        dst.scales = (1e-4,)
        dst.offsets = (-0.1,)
    with open_raster(path) as src:
        assert src.info.scales == (1e-4,) and src.info.offsets == (-0.1,)
        raw = src.read()
        reflectance = src.read(scaled=True)
    assert raw.dtype == np.uint16 and raw[0, 1, 1] == 2500
    assert reflectance.dtype == np.float32
    assert reflectance[0, 1, 1] == pytest.approx(0.15, abs=1e-6)
    assert reflectance[0, 0, 0] == pytest.approx(0.9, abs=1e-6)


def _palette_indices():
    indices = np.zeros((1, 10, 10), dtype="uint8")
    indices[0, :, :4] = 1
    indices[0, :, 4:] = 2
    indices[0, 0, :3] = 0
    return indices


def test_palette_is_expanded_to_rgb(tmp_path):
    path = write_raster(tmp_path / "palette.tif", _palette_indices(), photometric="palette", nodata=0)
    with rasterio.open(path, "r+") as dst:
        dst.write_colormap(1, {0: (0, 0, 0), 1: (255, 10, 20), 2: (0, 128, 255)})
    with open_raster(path) as src:
        info = src.info
        image = src.read()
    assert info.is_palette and info.count == 3 and info.rgb_bands == (1, 2, 3) and info.rgb_rule == "palette"
    assert info.mask_kind == "nodata"
    assert image.shape == (3, 10, 10) and image.dtype == np.uint8
    assert tuple(image.data[:, 5, 0]) == (255, 10, 20)
    assert tuple(image.data[:, 5, 9]) == (0, 128, 255)
    assert int(image.mask[0].sum()) == 3 and image.mask[:, 0, :3].all()


def test_transparent_palette_entries_are_masked(tmp_path):
    # PNG palettes carry alpha; two transparent entries cannot be expressed as one nodata value
    indices = _palette_indices()
    indices[0, 9, :2] = 3
    path = tmp_path / "palette.png"
    with rasterio.open(path, "w", driver="PNG", width=10, height=10, count=1, dtype="uint8",
                       crs=UTM33, transform=NORTH_UP_10M) as dst:
        dst.write(indices)
        colours = {0: (0, 0, 0, 0), 1: (255, 10, 20, 255), 2: (0, 128, 255, 255), 3: (9, 9, 9, 0)}
        dst.write_colormap(1, colours)
    with open_raster(path) as src:
        assert src.info.mask_kind == "palette" and src.info.nodata is None
        mask = src.read().mask
    assert int(mask[0].sum()) == 5 and mask[0, 9, :2].all() and mask[0, 0, :3].all()


@pytest.mark.parametrize("size", [1, 2])
def test_tiny_rasters_are_rejected(tmp_path, size):
    path = write_raster(tmp_path / f"tiny{size}.tif", ramp((size, size)))
    with pytest.raises(InputError, match=f"is {size}x{size} pixels; at least {MIN_SIDE_PX}x{MIN_SIDE_PX}"):
        open_raster(path)


def test_smallest_accepted_raster_and_caller_minimum(tmp_path):
    with open_raster(write_raster(tmp_path / "eight.tif", ramp((8, 8)))) as src:
        assert src.read().shape == (1, 8, 8)
    with open_raster(write_raster(tmp_path / "one.tif", np.full((1, 1), 7, "uint8")), min_size=1) as src:
        assert int(src.read()[0, 0, 0]) == 7


def test_entirely_nodata_raster_is_rejected(tmp_path):
    path = write_raster(tmp_path / "empty.tif", np.zeros((3, 16, 16), "uint8"), nodata=0)
    with pytest.raises(InputError, match="no valid pixel") as err:
        open_raster(path)
    assert "gdal_edit.py -unsetnodata" in str(err.value)


def test_big_endian_tiff(tmp_path):
    data = ramp((1, 12, 12), dtype="uint16") * 257
    path = write_raster(tmp_path / "be.tif", data, ENDIANNESS="BIG")
    assert path.read_bytes()[:2] == b"MM"
    with open_raster(path) as src:
        np.testing.assert_array_equal(src.read().data, data)


def test_bigtiff(tmp_path):
    data = ramp((1, 12, 12), dtype="int16") - 100
    path = write_raster(tmp_path / "big.tif", data, BIGTIFF="YES")
    assert path.read_bytes()[2:4] == b"\x2b\x00"  # little-endian BigTIFF version 43
    with open_raster(path) as src:
        np.testing.assert_array_equal(src.read().data, data)


def test_complex_raster_is_rejected(tmp_path):
    path = write_raster(tmp_path / "slc.tif", np.ones((1, 8, 8), "complex64"))
    with pytest.raises(InputError, match="complex-valued"):
        open_raster(path)


# --- masks --------------------------------------------------------------------------------------


def _masked_raster(path, internal: bool):
    data = ramp((3, 16, 16))
    valid = np.ones((16, 16), dtype=bool)
    valid[3:8, 2:9] = False  # 35 pixels
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=internal):
        with rasterio.open(path, "w", driver="GTiff", width=16, height=16, count=3, dtype="uint8",
                           crs=UTM33, transform=NORTH_UP_10M) as dst:
            dst.write(data)
            dst.write_mask(valid)
    return path


def test_internal_mask(tmp_path):
    path = _masked_raster(tmp_path / "internal.tif", internal=True)
    assert not (tmp_path / "internal.tif.msk").exists()
    with open_raster(path) as src:
        assert src.info.mask_kind == "internal"
        mask = src.read().mask
        assert int(mask[0].sum()) == 35 and mask[:, 3:8, 2:9].all()


def test_sidecar_msk_mask(tmp_path):
    path = _masked_raster(tmp_path / "sidecar.tif", internal=False)
    assert (tmp_path / "sidecar.tif.msk").exists()
    with open_raster(path) as src:
        assert src.info.mask_kind == "sidecar"
        assert int(src.read().mask[0].sum()) == 35
        assert int((~src.valid_mask()).sum()) == 35


# --- band semantics -----------------------------------------------------------------------------


def _four_band(path, colorinterp=None, descriptions=None):
    write_raster(path, ramp((4, 8, 8)), photometric="MINISBLACK")
    with rasterio.open(path, "r+") as dst:
        if colorinterp:
            dst.colorinterp = colorinterp
        if descriptions:
            dst.descriptions = descriptions
    return path


def test_bgr_nir_by_colour_interpretation(tmp_path):
    ci = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined]
    with open_raster(_four_band(tmp_path / "bgrn.tif", colorinterp=ci)) as src:
        assert src.info.rgb_bands == (3, 2, 1) and src.info.rgb_rule == "colorinterp"
        assert src.info.alpha_band is None


def test_bgr_nir_by_band_description(tmp_path):
    path = _four_band(tmp_path / "desc.tif", descriptions=("Blue", "Green", "Red", "NIR (near infrared)"))
    with open_raster(path) as src:
        assert src.info.colorinterp[:2] == ("gray", "undefined")
        assert src.info.rgb_bands == (3, 2, 1) and src.info.rgb_rule == "description"


def test_red_edge_description_is_not_red(tmp_path):
    path = _four_band(tmp_path / "s2.tif", descriptions=("Blue", "Green", "Red", "Red Edge 1"))
    with open_raster(path) as src:
        assert src.info.rgb_bands == (3, 2, 1)


def test_position_rule_only_when_nothing_tells(tmp_path):
    with open_raster(_four_band(tmp_path / "silent.tif")) as src:
        assert src.info.rgb_bands == (1, 2, 3) and src.info.rgb_rule == "position"


def test_uninformative_descriptions_give_no_rgb(tmp_path):
    path = _four_band(tmp_path / "s2codes.tif", descriptions=("B2", "B3", "B4", "B8"))
    with open_raster(path) as src:
        assert src.info.rgb_bands is None
        with pytest.raises(InputError, match="which bands .* are red, green and blue") as err:
            require_rgb(src.info)
    message = str(err.value)
    assert "--bands R G B" in message and "gdal_edit.py -colorinterp_1 red" in message
    assert "rgb_bands=(r, g, b)" not in message  # the Python API's words are not the user's


def test_partial_colour_interpretation_is_not_overridden_by_position(tmp_path):
    ci = [ColorInterp.blue, ColorInterp.undefined, ColorInterp.undefined, ColorInterp.undefined]
    with open_raster(_four_band(tmp_path / "partial.tif", colorinterp=ci)) as src:
        assert src.info.rgb_bands is None


def test_single_band_has_no_rgb(tmp_path):
    with open_raster(write_raster(tmp_path / "gray.tif", ramp((8, 8)))) as src:
        assert src.info.rgb_bands is None and src.info.colorinterp == ("gray",)
        with pytest.raises(InputError, match="has 1 image band .*red, green and blue") as err:
            require_rgb(src.info)
    # a 1-band file is not told to fix bands 2 and 3, nor to choose bands it does not have
    assert "colorinterp_2" not in str(err.value) and "--bands" not in str(err.value)
    assert "gdal_translate -b 1 -b 1 -b 1" in str(err.value)


def test_explicit_rgb_choice_wins(tmp_path, rasters_dir):
    with open_raster(rasters_dir / "m_3607824_se_17_1_20160620_sub.tif", rgb_bands=(4, 2, 1)) as src:
        assert src.info.rgb_bands == (4, 2, 1) and src.info.rgb_rule == "user"


@pytest.mark.parametrize("choice, message", [((5, 2, 1), "between 1 and 4"), ((1, 2), "three band numbers"),
                                             ("3,2,1", "three band numbers"), ((3, 2, 4), "alpha")])
def test_invalid_explicit_rgb_choice(rasters_dir, choice, message):
    with pytest.raises(InputError, match=message):
        open_raster(rasters_dir / "RGBA.uint16.tif" if message == "alpha"
                    else rasters_dir / "m_3607824_se_17_1_20160620_sub.tif", rgb_bands=choice)


# --- unreadable files ---------------------------------------------------------------------------


def test_text_file_named_tif(tmp_path):
    path = tmp_path / "not_a_raster.tif"
    path.write_text("hello, I am not a GeoTIFF\n")
    with pytest.raises(InputError, match="cannot be opened as a raster") as err:
        open_raster(path)
    assert str(path) in str(err.value)


def test_missing_path(tmp_path):
    path = tmp_path / "nowhere" / "scene.tif"
    with pytest.raises(InputError, match="does not exist") as err:
        open_raster(path)
    assert str(path) in str(err.value)


# --- windows --------------------------------------------------------------------------------------


def test_window_past_the_edge_is_masked_outside(rasters_dir):
    path = rasters_dir / "xv2deploy_pre_tile_1361-10160.tif"
    with rasterio.open(path) as raw:
        corner = raw.read(window=Window(0, 0, 6, 4))
    with open_raster(path) as src:
        part = src.read(window=Window(-10, -5, 16, 9))
        assert part.shape == (3, 9, 16)
        assert int(part.mask[0].sum()) == 9 * 16 - 4 * 6
        np.testing.assert_array_equal(part.data[:, 5:, 10:], corner)
        assert not part.mask[:, 5:, 10:].any()
        assert not src.valid_mask(Window(1020, 1020, 8, 8))[4:, :].any()


def test_valid_mask_matches_read_mask(rasters_dir):
    with open_raster(rasters_dir / "RGB.byte.tif") as src:
        window = Window(0, 0, 300, 300)
        np.testing.assert_array_equal(src.valid_mask(window), ~src.read(window=window).mask[0])


def test_unknown_band_is_rejected(rasters_dir):
    with open_raster(rasters_dir / "RGB.byte.tif") as src:
        with pytest.raises(InputError, match="bands 1 to 3"):
            src.read(bands=[4])
