"""Output grids: the requested extent and resolution, to within half a pixel, in any CRS."""

import math

import pyproj
import pytest
from rasterio.crs import CRS

from engine.errors import InputError
from engine.geo.grid import grid_from_extent, grid_like

GEOD = pyproj.Geod(ellps="WGS84")


def test_utm_extent_gives_exact_grid():
    grid = grid_from_extent((500000, 4000000, 501000, 4000600), "EPSG:32618", resolution_m=10)
    assert (grid.width, grid.height) == (100, 60)
    assert tuple(grid.transform)[:6] == (10.0, 0.0, 500000.0, 0.0, -10.0, 4000600.0)
    assert grid.bounds == (500000.0, 4000000.0, 501000.0, 4000600.0)


def test_extent_not_a_multiple_lines_up_within_half_a_pixel():
    grid = grid_from_extent((0, 0, 1004, 996), "EPSG:32618", resolution_m=10)
    left, bottom, right, top = grid.bounds
    assert (left, top) == (0.0, 996.0)
    assert abs(right - 1004) <= 5 and abs(bottom - 0) <= 5
    assert grid.pixel_size == (10.0, 10.0)


def test_geographic_crs_resolution_is_ground_metres():
    lat = 45.0
    grid = grid_from_extent((10.0, lat - 0.01, 10.02, lat + 0.01), "EPSG:4326", resolution_m=5)
    size_x, size_y = grid.pixel_size
    _, _, ground_x = GEOD.inv(10.01, lat, 10.01 + size_x, lat)
    _, _, ground_y = GEOD.inv(10.01, lat, 10.01, lat + size_y)
    assert ground_x == pytest.approx(5.0, rel=2e-3)
    assert ground_y == pytest.approx(5.0, rel=2e-3)
    # about 1558 m wide / 5 m, 2222 m tall / 5 m
    assert abs(grid.width - round(0.02 / size_x)) <= 1 and 300 < grid.width < 320
    assert 440 < grid.height < 450


def test_web_mercator_far_from_equator_uses_true_ground_scale():
    transformer = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    x, y = transformer.transform(10.0, 60.0)
    grid = grid_from_extent((x, y, x + 2000, y + 2000), "EPSG:3857", resolution_m=1)
    # At 60 degrees north one Web Mercator unit is half a ground metre.
    assert grid.pixel_size[0] == pytest.approx(1 / math.cos(math.radians(60.004)), rel=1e-3)


def test_us_survey_feet_crs_converts_metres():
    grid = grid_from_extent((980000, 190000, 981000, 191000), "EPSG:2263", resolution_m=1)
    assert grid.pixel_size[0] == pytest.approx(1 / 0.3048006096, rel=1e-9)


def test_pixel_size_in_crs_units_is_kept_exactly():
    grid = grid_from_extent((-100.0, 30.0, -99.0, 30.5), "EPSG:4326", pixel_size=0.001)
    assert (grid.width, grid.height) == (1000, 500)
    assert grid.crs == CRS.from_epsg(4326)


@pytest.mark.parametrize(
    "bounds, kwargs, words",
    [
        ((10, 0, 0, 10), {"resolution_m": 1}, "empty or inverted"),
        ((0, 0, 10, 10), {}, "exactly one"),
        ((0, 0, 10, 10), {"resolution_m": 1, "pixel_size": 1}, "exactly one"),
        ((0, 0, 10, 10), {"resolution_m": -1}, "positive"),
        ((0, 0, float("nan"), 10), {"resolution_m": 1}, "non-finite"),
    ],
)
def test_bad_extents_and_resolutions_are_explained(bounds, kwargs, words):
    with pytest.raises(InputError, match=words):
        grid_from_extent(bounds, "EPSG:32618", **kwargs)


def test_grid_like_refuses_rotated_transforms():
    from affine import Affine

    with pytest.raises(InputError, match="north-up"):
        grid_like(CRS.from_epsg(32618), Affine(1, 0.5, 0, 0, -1, 0), 10, 10)
