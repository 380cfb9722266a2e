"""DiffusionSat metadata vector, tile-centre lon/lat, ground sampling distance, STAC grids."""

import datetime
import math
import warnings

import numpy as np
import pyproj
import pytest
import rasterio
from rasterio.transform import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import InputError
from engine.geo.metadata import (
    METADATA_FIELDS,
    SatMetadata,
    centre_lonlat,
    cloud_fraction_from_percent,
    gsd_metres,
    normalise_batch,
    pixel_size_metres,
)
from engine.geo.stac import grid_from_stac

# specs/diffusionsat.md §1, from the DiffusionSat authors' notebook.
WORKED_VECTOR = [925.8798, 345.2111, 411.4541, 0.0, 308.3333, 166.6667, 354.8387]

# WGS84 ellipsoid, for independent ground-distance formulas.
WGS84_A = 6378137.0
WGS84_E2 = (1 / 298.257223563) * (2 - 1 / 298.257223563)


# --- the metadata vector -------------------------------------------------------------------------


def test_worked_example_normalises_to_the_authors_vector():
    meta = SatMetadata(lon=153.3167, lat=-27.862, gsd_m=0.4114541, cloud_cover=0.0, date=datetime.date(2017, 2, 11))
    vector = meta.normalised()
    assert vector.dtype == np.float32 and vector.shape == (7,)
    np.testing.assert_allclose(vector, WORKED_VECTOR, atol=1e-3)


def test_worked_example_gsd_as_printed_is_within_its_rounding():
    # The spec prints the GSD rounded to 0.4115 m: 0.4115 * 1000 is 0.05 away from 411.4541.
    vector = SatMetadata(153.3167, -27.862, 0.4115, 0.0, datetime.date(2017, 2, 11)).normalised()
    assert abs(vector[2] - WORKED_VECTOR[2]) < 0.05


def test_worked_example_reads_back_from_the_vector():
    meta = SatMetadata.from_normalised(WORKED_VECTOR)
    assert meta.lon == pytest.approx(153.3167, abs=1e-3)
    assert meta.lat == pytest.approx(-27.862, abs=1e-3)
    assert meta.gsd_m == pytest.approx(0.4115, abs=1e-3)
    assert meta.cloud_cover is None  # cloud 0 and unknown are the same number (the spec's choice)
    assert meta.date == datetime.date(2017, 2, 11)


def test_field_order_and_hand_computed_values():
    assert METADATA_FIELDS == ("lon", "lat", "gsd", "cloud_cover", "year", "month", "day")
    vector = SatMetadata(lon=0.0, lat=0.0, gsd_m=10.0, cloud_cover=0.25, date=datetime.date(2100, 12, 31)).normalised()
    # lon 0 -> 180/360, lat 0 -> 90/180, 10 m -> 10000 (not clipped), 2100 -> 120/120, December, 31st.
    np.testing.assert_allclose(vector, [500, 500, 10000, 250, 1000, 1000, 1000], atol=1e-3)


def test_unknown_fields_are_zero_each_on_its_own():
    np.testing.assert_array_equal(SatMetadata(None, None, None, None, None).normalised(), np.zeros(7))
    only_gsd = SatMetadata(lon=None, lat=None, gsd_m=2.5, cloud_cover=None, date=None).normalised()
    np.testing.assert_allclose(only_gsd, [0, 0, 2500, 0, 0, 0, 0])
    only_date = SatMetadata(None, None, None, None, datetime.date(1980, 6, 15)).normalised()
    # 1980 is the origin of the year scale, so it is 0 like an unknown year.
    np.testing.assert_allclose(only_date, [0, 0, 0, 0, 0, 500, 15 / 31 * 1000], atol=1e-3)


@pytest.mark.parametrize(
    ("lon", "wrapped"),
    [(190.0, -170.0), (-190.0, 170.0), (180.0, 180.0), (-180.0, -180.0), (540.0, -180.0), (359.5, -0.5)],
)
def test_longitudes_outside_the_range_are_wrapped(lon, wrapped):
    meta = SatMetadata(lon=lon, lat=0.0, gsd_m=None, cloud_cover=None, date=None)
    assert meta.lon == pytest.approx(wrapped)
    assert meta.normalised()[0] == pytest.approx((wrapped + 180) / 360 * 1000, abs=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"lat": 91.0}, "latitude"),
        ({"lat": -90.5}, "latitude"),
        ({"gsd_m": 0.0}, "positive"),
        ({"gsd_m": -1.0}, "positive"),
        ({"cloud_cover": 1.5}, "cloud_fraction_from_percent"),
        ({"cloud_cover": 45}, "cloud_fraction_from_percent"),
        ({"cloud_cover": -0.1}, "outside 0..1"),
        ({"lon": float("nan")}, "finite"),
        ({"lon": True}, "number"),
        ({"gsd_m": "ten"}, "number"),
        ({"date": "2017-13-01"}, "2017-13-01"),
    ],
)
def test_out_of_range_values_raise_clear_input_errors(kwargs, words):
    fields = {"lon": 10.0, "lat": 10.0, "gsd_m": 1.0, "cloud_cover": 0.1, "date": None} | kwargs
    with pytest.raises(InputError, match=words):
        SatMetadata(**fields)


def test_percent_cloud_cover_only_through_the_explicit_helper():
    assert cloud_fraction_from_percent(45) == pytest.approx(0.45)
    assert SatMetadata(None, None, None, cloud_fraction_from_percent(12.5), None).normalised()[3] == pytest.approx(125)
    with pytest.raises(InputError, match="0..100"):
        cloud_fraction_from_percent(101)


def test_years_outside_the_trained_range_warn_and_inside_do_not():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SatMetadata(None, None, None, None, datetime.date(1980, 1, 1))
        SatMetadata(None, None, None, None, datetime.date(2100, 12, 31))
    with pytest.warns(UserWarning, match="1975"):
        meta = SatMetadata(None, None, None, None, datetime.date(1975, 7, 1))
    assert meta.normalised()[4] == pytest.approx(-5 / 120 * 1000, abs=1e-3)


def test_date_strings_and_datetimes_become_utc_dates():
    late_evening_new_york = SatMetadata(None, None, None, None, "2017-02-11T23:30:00-05:00")
    assert late_evening_new_york.date == datetime.date(2017, 2, 12)
    aware = datetime.datetime(2017, 2, 11, 1, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=10)))
    assert SatMetadata(None, None, None, None, aware).date == datetime.date(2017, 2, 10)


def test_normalise_batch_stacks_rows_in_order():
    items = [
        SatMetadata(153.3167, -27.862, 0.4114541, 0.0, datetime.date(2017, 2, 11)),
        SatMetadata(None, None, 10.0, None, None),
    ]
    batch = normalise_batch(items)
    assert batch.shape == (2, 7) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0], WORKED_VECTOR, atol=1e-3)
    np.testing.assert_allclose(batch[1], [0, 0, 10000, 0, 0, 0, 0])
    assert normalise_batch([]).shape == (0, 7)


@pytest.mark.parametrize(
    ("vector", "words"),
    [
        ([0, 0, 0, 0, 500, 0, 0], "year but no month"),
        ([0, 0, 0, 0, 500, 500, 0], "calendar|whole"),  # day 0 next to a month
        ([0, 0, 0, 0, 308.3333, 166.6667, 1000], "calendar"),  # 31 February
        ([0, 0, 0, 0, 308.3333, 208.3333, 354.8387], "month"),  # month 2.5
        ([1, 2, 3], "7 finite numbers"),
        ([0, 0, np.nan, 0, 0, 0, 0], "7 finite numbers"),
    ],
)
def test_from_normalised_rejects_vectors_no_metadata_produces(vector, words):
    with pytest.raises(InputError, match=words):
        SatMetadata.from_normalised(vector)


def test_from_normalised_reads_year_1980_when_month_and_day_are_known():
    assert SatMetadata.from_normalised([0, 0, 0, 0, 0, 1000, 1000]).date == datetime.date(1980, 12, 31)


@settings(max_examples=150, deadline=None)
@given(
    lon=st.floats(-179.999, 180.0),
    lat=st.floats(-89.999, 90.0),
    gsd=st.floats(0.01, 1000.0),
    cloud=st.floats(0.001, 1.0),
    day=st.dates(datetime.date(1981, 1, 1), datetime.date(2100, 12, 31)),
)
def test_round_trip_through_the_float32_vector(lon, lat, gsd, cloud, day):
    back = SatMetadata.from_normalised(SatMetadata(lon, lat, gsd, cloud, day).normalised())
    # float32 keeps ~7 significant digits of values up to ~1000 (1e6 for the gsd).
    assert back.lon == pytest.approx(lon, abs=1e-4)
    assert back.lat == pytest.approx(lat, abs=1e-4)
    assert back.gsd_m == pytest.approx(gsd, rel=1e-6)
    assert back.cloud_cover == pytest.approx(cloud, abs=1e-6)
    assert back.date == day


# --- tile centre in WGS84 ----------------------------------------------------------------------


def test_naip_centre_is_at_its_quarter_quad_corner(rasters_dir):
    # NAIP name m_3607824_se: the 1° block with its SE corner at 36°N 78°W, 7.5' quads numbered 1..64
    # row by row from the NW corner, so quad 24 (La Crosse) spans 36.625..36.75°N, 78.125..78.0°W;
    # "se" is its south-east quarter, whose SE corner is (36.625, -78.0). The 300 m sample sits there
    # (DOQQs carry a ~300 m buffer beyond the quarter-quad).
    with rasterio.open(rasters_dir / "m_3607824_se_17_1_20160620_sub.tif") as src:
        lon, lat = centre_lonlat(src.crs, *(src.transform @ (src.width / 2, src.height / 2)))
    assert abs(lat - 36.625) < 0.006 and abs(lon + 78.0) < 0.006


def test_web_mercator_centre_matches_the_spherical_inverse(rasters_dir):
    with rasterio.open(rasters_dir / "cogeo.tif") as src:
        x, y = src.transform @ (src.width / 2, src.height / 2)
        lon, lat = centre_lonlat(src.crs, x, y)
    assert lon == pytest.approx(math.degrees(x / WGS84_A), abs=1e-9)
    assert lat == pytest.approx(math.degrees(math.atan(math.sinh(y / WGS84_A))), abs=1e-9)


def test_centre_longitudes_are_wrapped_across_the_antimeridian():
    half_world = math.pi * WGS84_A
    lon, lat = centre_lonlat("EPSG:3857", half_world + 111_319.49, 0.0)  # 1° east of 180°
    assert lon == pytest.approx(-179.0, abs=1e-6) and lat == pytest.approx(0.0, abs=1e-9)
    lon, _ = centre_lonlat("EPSG:3857", half_world, 0.0)  # exactly 180° -> -180
    assert lon == pytest.approx(-180.0, abs=1e-6)
    # UTM zone 60 (central meridian 177°E) far east of its zone: past the antimeridian.
    lon, _ = centre_lonlat("EPSG:32660", 900_000.0, 1_000.0)
    assert -180.0 <= lon < -179.0


def test_centre_lonlat_accepts_crs_objects_of_both_libraries():
    from rasterio.crs import CRS

    expected = centre_lonlat("EPSG:32618", 500_000.0, 0.0)
    assert expected == pytest.approx((-75.0, 0.0), abs=1e-9)  # UTM 18N central meridian, equator
    assert centre_lonlat(CRS.from_epsg(32618), 500_000.0, 0.0) == pytest.approx(expected)
    assert centre_lonlat(pyproj.CRS.from_epsg(32618), 500_000.0, 0.0) == pytest.approx(expected)


def test_centre_lonlat_rejects_missing_and_non_earth_crs():
    from rasterio.crs import CRS

    with pytest.raises(InputError, match="no CRS"):
        centre_lonlat(None, 0.0, 0.0)
    with pytest.raises(InputError, match="no CRS"):
        centre_lonlat(CRS(), 0.0, 0.0)
    with pytest.raises(InputError, match="Earth"):
        centre_lonlat("IAU_2015:49900", 10.0, 10.0)  # Mars
    with pytest.raises(InputError, match="EPSG code or WKT"):
        centre_lonlat("EPSG:999999", 0.0, 0.0)


# --- ground sampling distance -------------------------------------------------------------------


def test_projected_metre_grids_use_their_pixel_size(rasters_dir):
    with rasterio.open(rasters_dir / "m_3607824_se_17_1_20160620_sub.tif") as src:
        assert pixel_size_metres(src.crs, src.transform, 150, 150) == pytest.approx((1.0, 1.0))
    with rasterio.open(rasters_dir / "RGB.byte.tif") as src:
        nominal = (src.transform.a, -src.transform.e)
        assert pixel_size_metres(src.crs, src.transform, 0.5, 0.5) == pytest.approx(nominal)
        assert nominal[0] == pytest.approx(300.04, abs=0.01)


def test_us_survey_feet_and_international_feet_convert_exactly():
    ten_feet = Affine(10.0, 0.0, 6_000_000.0, 0.0, -10.0, 2_000_000.0)
    # 1 US survey foot = 1200/3937 m; 1 international foot = 0.3048 m.
    assert gsd_metres("EPSG:2227", ten_feet, 0, 0) == pytest.approx(10 * 1200 / 3937, rel=1e-12)
    assert gsd_metres("EPSG:3361", ten_feet, 0, 0) == pytest.approx(3.048, rel=1e-12)


def test_rotated_grids_measure_along_the_pixel_axes():
    rotated = Affine.translation(500_000, 4_000_000) @ Affine.rotation(30) @ Affine.scale(2.0, -3.0)
    assert pixel_size_metres("EPSG:32617", rotated, 10, 10) == pytest.approx((2.0, 3.0))
    assert gsd_metres("EPSG:32617", rotated, 10, 10) == pytest.approx(2.5)


def test_web_mercator_pixels_shrink_with_cos_latitude(rasters_dir):
    with rasterio.open(rasters_dir / "cogeo.tif") as src:
        col, row = src.width / 2, src.height / 2
        x, y = src.transform @ (col, row)
        nominal = src.transform.a
        size_x, size_y = pixel_size_metres(src.crs, src.transform, col, row)
    lat = math.atan(math.sinh(y / WGS84_A))
    assert size_x == pytest.approx(nominal * math.cos(lat), rel=1e-9)
    assert size_y == pytest.approx(nominal * math.cos(lat), rel=1e-9)
    assert size_x == pytest.approx(0.4727, abs=1e-4)  # 0.597 m at 37.67°N, not 0.597 m
    # Within half a percent of the geodesic distance between the pixel's edges on WGS84.
    to_lonlat = pyproj.Transformer.from_crs(3857, 4326, always_xy=True)
    lon1, lat1 = to_lonlat.transform(x - nominal / 2, y)
    lon2, lat2 = to_lonlat.transform(x + nominal / 2, y)
    geodesic = pyproj.Geod(ellps="WGS84").inv(lon1, lat1, lon2, lat2)[2]
    assert size_x == pytest.approx(geodesic, rel=5e-3)


def test_world_mercator_is_corrected_by_its_point_scale():
    x, y = pyproj.Transformer.from_crs(4326, 3395, always_xy=True).transform(10.0, 60.0)
    grid = Affine(10.0, 0.0, x - 5.0, 0.0, -10.0, y + 5.0)  # the point is the centre of pixel (0, 0)
    lat = math.radians(60.0)
    scale = math.sqrt(1 - WGS84_E2 * math.sin(lat) ** 2) / math.cos(lat)  # Mercator (variant A), k0 = 1
    assert pixel_size_metres("EPSG:3395", grid, 0.5, 0.5) == pytest.approx((10 / scale, 10 / scale), rel=1e-6)


def test_geographic_grids_use_ellipsoidal_distances(rasters_dir):
    with rasterio.open(rasters_dir / "xv2deploy_post_tile_32524-5137.tif") as src:
        col, row = src.width / 2, src.height / 2
        _, lat_deg = src.transform @ (col, row)
        step = src.transform.a
        size_x, size_y = pixel_size_metres(src.crs, src.transform, col, row)
        mean = gsd_metres(src.crs, src.transform, col, row)
    lat = math.radians(lat_deg)
    w = 1 - WGS84_E2 * math.sin(lat) ** 2
    parallel_radius = WGS84_A * math.cos(lat) / math.sqrt(w)
    meridian_radius = WGS84_A * (1 - WGS84_E2) / w**1.5
    assert size_x == pytest.approx(parallel_radius * math.radians(step), rel=1e-6)
    assert size_y == pytest.approx(meridian_radius * math.radians(step), rel=1e-6)
    assert mean == pytest.approx((size_x + size_y) / 2)
    assert 0.53 < size_x < 0.54 and 0.66 < size_y < 0.67  # 6e-6° at 37°N


def test_geographic_grids_in_grads_are_converted():
    # NTF (Paris) in grads: 100 grad = 90°, on the Clarke 1880 (IGN) ellipsoid.
    a, b = 6378249.2, 6356515.0
    e2 = 1 - (b / a) ** 2
    grid = Affine(1e-4, 0.0, 0.0, 0.0, -1e-4, 50.0)  # 50 grad = 45°N
    lat = math.radians(45.0)
    expected_x = a * math.cos(lat) / math.sqrt(1 - e2 * math.sin(lat) ** 2) * math.radians(0.9e-4)
    size_x, _ = pixel_size_metres("EPSG:4807", grid, 0, 0)
    assert size_x == pytest.approx(expected_x, rel=1e-6)


def test_compound_crs_uses_its_horizontal_part():
    assert pixel_size_metres("EPSG:26917+5703", Affine(1.0, 0, 768269, 0, -1.0, 4057292), 0, 0) == pytest.approx((1.0, 1.0))


def test_gsd_rejects_grids_it_cannot_measure():
    with pytest.raises(InputError, match="no CRS"):
        gsd_metres(None, Affine(1, 0, 0, 0, -1, 0), 0, 0)
    with pytest.raises(InputError, match="degenerate"):
        gsd_metres("EPSG:32617", Affine(0, 0, 0, 0, 0, 0), 0, 0)
    with pytest.raises(InputError, match="beyond the poles"):
        gsd_metres("EPSG:4326", Affine(1.0, 0, 0, 0, -1.0, 200.0), 0, 0)
    with pytest.raises(InputError, match="neither geographic nor projected"):
        gsd_metres("EPSG:4978", Affine(1.0, 0, 0, 0, -1.0, 0.0), 0, 0)  # geocentric


# --- STAC grids --------------------------------------------------------------------------------


def _item(properties, assets=None):
    return {"type": "Feature", "stac_version": "1.1.0", "id": "x", "properties": properties, "assets": assets or {}}


def test_stac_grid_matches_the_raster_it_describes(rasters_dir):
    item = _item(
        {
            "datetime": "2016-06-20T00:00:00Z",
            "proj:code": "EPSG:26917",
            "proj:shape": [300, 300],
            "proj:transform": [1.0, 0.0, 768269.0, 0.0, -1.0, 4057292.0],
        }
    )
    crs, transform, shape = grid_from_stac(item)
    with rasterio.open(rasters_dir / "m_3607824_se_17_1_20160620_sub.tif") as src:
        assert crs == src.crs
        assert transform == src.transform
        assert shape == (src.height, src.width)


def test_stac_grid_from_older_epsg_and_nine_numbers():
    item = _item(
        {
            "proj:epsg": 32633,
            "proj:shape": [1830, 915],
            "proj:transform": [60, 0, 600000, 0, -60, 5000040, 0, 0, 1],
        }
    )
    crs, transform, shape = grid_from_stac(item)
    assert crs.to_epsg() == 32633
    assert transform == Affine(60, 0, 600000, 0, -60, 5000040)
    assert shape == (1830, 915)  # rows first


def test_stac_grid_from_wkt2_when_epsg_is_null():
    wkt = pyproj.CRS.from_epsg(2227).to_wkt()
    item = _item({"proj:epsg": None, "proj:wkt2": wkt, "proj:shape": [2, 3], "proj:transform": [10, 0, 0, 0, -10, 0]})
    crs, _, shape = grid_from_stac(item)
    assert pyproj.CRS.from_user_input(crs).equals(pyproj.CRS.from_epsg(2227))
    assert shape == (2, 3)


def test_stac_asset_grid_overrides_the_item():
    item = _item(
        {"proj:code": "EPSG:32633"},
        {
            "B04": {"href": "B04.tif", "proj:shape": [10980, 10980], "proj:transform": [10, 0, 600000, 0, -10, 5000040]},
            "B01": {"href": "B01.tif", "proj:shape": [1830, 1830], "proj:bbox": [600000, 4890240, 709800, 5000040]},
        },
    )
    _, transform, shape = grid_from_stac(item, asset="B04")
    assert (transform.a, shape) == (10, (10980, 10980))
    # B01 has only a bbox: 109800 m over 1830 pixels = 60 m, origin at the top-left corner.
    _, transform, shape = grid_from_stac(item, asset="B01")
    assert transform == Affine(60, 0, 600000, 0, -60, 5000040)
    with pytest.raises(InputError, match=r"\['B01', 'B04'\]"):
        grid_from_stac(item)  # no grid at item level: the message lists the assets that have one
    with pytest.raises(InputError, match="no asset 'B08'"):
        grid_from_stac(item, asset="B08")


@pytest.mark.parametrize(
    ("properties", "words"),
    [
        ({"proj:shape": [2, 2], "proj:transform": [1, 0, 0, 0, -1, 0]}, "no CRS"),
        ({"proj:code": "EPSG:32633", "proj:shape": [2, 2], "proj:transform": [1, 0, 0, 0, -1, 0, 0, 1, 1]}, "not affine"),
        ({"proj:code": "EPSG:32633", "proj:shape": [2, 2], "proj:transform": [1, 0, 0, 0]}, "6 or 9"),
        ({"proj:code": "EPSG:32633", "proj:shape": [2, 0], "proj:transform": [1, 0, 0, 0, -1, 0]}, "positive"),
        ({"proj:code": "EPSG:32633", "proj:shape": [2, 2]}, "neither proj:transform"),
        ({"proj:code": "EPSG:32633", "proj:shape": [2, 2], "proj:transform": [0, 0, 0, 0, 0, 0]}, "degenerate"),
        ({"proj:code": "not a crs", "proj:shape": [2, 2], "proj:transform": [1, 0, 0, 0, -1, 0]}, "cannot be read"),
    ],
)
def test_stac_grid_errors_say_what_is_wrong(properties, words):
    with pytest.raises(InputError, match=words):
        grid_from_stac(_item(properties))
