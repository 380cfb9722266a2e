"""Polygons -> label rasters and soft masks, checked against independent rasterisations."""

import numpy as np
import pyogrio
import pyproj
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from engine.errors import InputError
from engine.geo.damage_classes import FLOODED_AREA, classify_polygons, normalise_disaster_type
from engine.geo.grid import OutputGrid, grid_from_extent
from engine.geo.masks import (
    dilate,
    label_raster,
    masked_bounds,
    place_on_grid,
    soft_mask,
    windows_touching_mask,
)
from engine.geo.tiling import plan_windows
from engine.geo.vectors import PolygonLayer, read_polygons

PRE_TILE = "xv2deploy_pre_tile_1361-10160.tif"
CEMS = "cems_EMSR332_flood/EMSR332_08PORDENONE_DEL_v1_observed_event_a.shp"


@pytest.fixture(scope="module")
def joplin(rasters_dir, vectors_dir):
    with rasterio.open(rasters_dir / PRE_TILE) as src:
        grid = OutputGrid(src.crs, src.transform, src.width, src.height)
    return grid, read_polygons(vectors_dir / "xview2_deploy_joplin" / "damage.shp")


def _independent_labels(shp, grid):
    """Reproject vertex arrays with pyproj and test pixel centres with shapely: no OGR/GDAL burning."""
    _, _, wkb, fields = pyogrio.raw.read(shp)
    to_raster = pyproj.Transformer.from_crs(32615, 26915, always_xy=True)
    t = grid.transform
    labels = np.zeros((grid.height, grid.width), dtype=np.uint8)
    for geometry, code in zip(shapely.from_wkb(wkb), fields[0]):
        coords = shapely.get_coordinates(geometry)
        x, y = to_raster.transform(coords[:, 0], coords[:, 1])
        moved = shapely.set_coordinates(geometry, np.column_stack([x, y]))
        left, bottom, right, top = moved.bounds
        c0, c1 = max(0, int((left - t.c) / t.a) - 1), min(grid.width, int((right - t.c) / t.a) + 2)
        r0, r1 = max(0, int((t.f - top) / -t.e) - 1), min(grid.height, int((t.f - bottom) / -t.e) + 2)
        if c1 <= c0 or r1 <= r0:
            continue
        cols, rows = np.meshgrid(np.arange(c0, c1), np.arange(r0, r1))
        inside = shapely.contains_xy(moved, t.c + (cols + 0.5) * t.a, t.f + (rows + 0.5) * t.e)
        block = labels[r0:r1, c0:c1]
        block[inside] = np.maximum(block[inside], code)
    return labels


def test_joplin_labels_match_an_independent_rasterisation(joplin, vectors_dir):
    grid, layer = joplin
    assert layer.crs.to_epsg() == 32615 and grid.crs.to_epsg() == 26915
    labels = label_raster(layer, classify_polygons(layer, "dmg"), grid, Window(0, 0, grid.width, grid.height))
    expected = _independent_labels(vectors_dir / "xview2_deploy_joplin" / "damage.shp", grid)
    assert labels.dtype == np.uint8
    counts = np.bincount(labels.ravel(), minlength=5)
    assert counts.tolist() == np.bincount(expected.ravel(), minlength=5).tolist()
    assert all(counts[1:] > 0)  # every damage grade is present on this tile
    assert np.array_equal(labels, expected)


def test_joplin_report_lists_polygons_that_miss_the_tile(joplin):
    grid, layer = joplin
    placed = place_on_grid(layer, grid)
    tile = shapely.box(*grid.bounds)
    to_raster = pyproj.Transformer.from_crs(32615, 26915, always_xy=True)
    def moved(geometry):
        return shapely.transform(geometry, lambda xy: np.column_stack(to_raster.transform(xy[:, 0], xy[:, 1])))

    missing = [i for i, g in enumerate(layer.geometries) if not tile.intersects(moved(g))]
    assert placed.report.outside == missing
    assert placed.report.used == len(layer) - len(missing) == len(placed)
    assert placed.report.repaired == [] and placed.report.empty == []
    assert f"{len(missing)} outside the raster" in placed.report.summary()


def test_label_raster_in_four_windows_equals_the_whole(joplin):
    grid, layer = joplin
    placed = place_on_grid(layer, grid)
    classes = classify_polygons(layer, "dmg")
    whole = label_raster(placed, classes, grid, Window(0, 0, grid.width, grid.height))
    stitched = np.zeros_like(whole)
    for row, col, height, width in [(0, 0, 400, 700), (0, 700, 400, 324), (400, 0, 624, 700), (400, 700, 624, 324)]:
        stitched[row : row + height, col : col + width] = label_raster(placed, classes, grid, Window(col, row, width, height))
    assert np.array_equal(stitched, whole)


def test_joplin_soft_mask_window_is_a_crop_of_the_whole(joplin):
    grid, layer = joplin
    placed = place_on_grid(layer, grid)
    whole = soft_mask(placed, grid, None, feather_m=6.0)
    window = Window(300, 700, 200, 150)
    assert np.array_equal(soft_mask(placed, grid, window, feather_m=6.0), whole[700:850, 300:500])
    assert 0 < ((whole > 0) & (whole < 1)).sum()  # a feather exists


def test_overlaps_take_the_higher_code():
    grid = OutputGrid(CRS.from_epsg(32633), Affine(1, 0, 500000, 0, -1, 5000100), 100, 100)
    squares = [shapely.box(500020, 5000020, 500060, 5000060), shapely.box(500040, 5000040, 500080, 5000080)]
    layer = PolygonLayer(squares, [{}, {}], grid.crs, "squares")
    labels = label_raster(layer, [4, 2], grid)
    assert (labels == 4).sum() == 40 * 40 and (labels == 2).sum() == 40 * 40 - 20 * 20
    assert labels[100 - 50, 50] == 4  # the overlap (x 500050, y 5000050)


def test_polygons_that_miss_the_raster_fail_with_both_extents(joplin, vectors_dir):
    grid, _ = joplin
    italy = read_polygons(vectors_dir / CEMS)
    with pytest.raises(InputError) as caught:
        label_raster(italy, [1] * len(italy), grid, Window(0, 0, 256, 256))
    message = str(caught.value)
    assert "none of the 43 polygons" in message
    assert "(367257, 4.10328e+06, 367871, 4.1039e+06)" in message  # the tile, in its own CRS
    assert "EPSG:26915" in message


def test_cems_flood_on_a_utm_grid_over_pordenone(vectors_dir):
    flood = read_polygons(vectors_dir / CEMS)
    utm = flood.to_crs("EPSG:32632")
    grid = grid_from_extent(utm.bounds(), "EPSG:32632", resolution_m=20)
    classes = classify_polygons(flood, "notation")  # the disaster type comes from event_type "5-Flood"
    assert set(classes.codes.tolist()) == {FLOODED_AREA}
    assert classes.prompt(FLOODED_AREA) == (
        "a fmow satellite image after being affected by a flooding natural disaster with flooded areas"
    )
    labels = label_raster(flood, classes, grid)
    geod = pyproj.Geod(ellps="WGS84")
    area_m2 = sum(abs(geod.geometry_area_perimeter(g)[0]) for g in flood.geometries)
    assert (labels == FLOODED_AREA).sum() * 20 * 20 == pytest.approx(area_m2, rel=0.01)
    assert place_on_grid(flood, grid).report.used == 43


def test_bow_tie_is_repaired_and_reported():
    grid = OutputGrid(CRS.from_epsg(32633), Affine(1, 0, 500000, 0, -1, 5000200), 200, 200)
    bow_tie = shapely.Polygon([(500050, 5000050), (500150, 5000150), (500150, 5000050), (500050, 5000150)])
    assert not bow_tie.is_valid
    geometries = [bow_tie, shapely.Polygon(), None]
    layer = PolygonLayer(geometries, [{}, {}, {}], grid.crs, "bow tie", ids=["tie", "hollow", "nothing"])
    placed = place_on_grid(layer, grid)
    assert placed.report.repaired == ["tie"] and placed.report.empty == ["hollow", "nothing"]
    labels = label_raster(placed, [3, 3, 3], grid)
    # Two triangles of 100 m base and 50 m height each: 5000 m2 = 5000 pixels, give or take the
    # pixels whose centres lie on the diagonals.
    assert abs(int((labels == 3).sum()) - 5000) <= 110


def test_dilation_is_in_ground_metres_in_any_crs():
    square = shapely.box(500000, 5000000, 500010, 5000010)
    utm = PolygonLayer([square], [{}], CRS.from_epsg(32632), "square")
    grown = dilate(utm, 5.0).geometries[0]
    assert grown.area == pytest.approx(100 + 4 * 10 * 5 + np.pi * 25, rel=0.005)
    # The same square in lon/lat at 45 N, dilated by 5 m there, is the same shape on the ground.
    geographic = dilate(utm.to_crs("EPSG:4326"), 5.0)
    back = geographic.to_crs("EPSG:32632").geometries[0]
    assert back.hausdorff_distance(grown) < 0.05
    with pytest.raises(InputError, match=">= 0"):
        dilate(utm, -1)


def _square_grid(crs="EPSG:32633", size=1.0):
    return OutputGrid(CRS.from_user_input(crs), Affine(size, 0, 500000, 0, -size, 5000300), 300, 300)


def test_soft_mask_falls_off_monotonically_over_the_feather():
    grid = _square_grid()
    layer = PolygonLayer([shapely.box(500100, 5000100, 500200, 5000200)], [{}], grid.crs, "square")
    mask = soft_mask(layer, grid, None, feather_m=30.0)
    assert mask.dtype == np.float32 and mask.min() == 0.0 and mask.max() == 1.0
    assert (mask[100:200, 100:200] == 1.0).all()  # rows/cols 100..199 are inside the square
    # Leaving the square to the east along row 150: pixel 200 is the first outside.
    ray = mask[150, 199:260]
    assert np.all(np.diff(ray) <= 0)
    assert ray[0] == 1.0 and 0.4 < ray[16] < 0.6  # half-way at half the feather (centre at 15.5 m)
    assert (mask[150, 200 + 31 :] == 0).all()  # nothing beyond the feather (plus a pixel of rounding)
    # Along the diagonal from the corner outwards too.
    diagonal = np.array([mask[99 - k, 200 + k] for k in range(40)])
    assert np.all(np.diff(diagonal) <= 0) and diagonal[-1] == 0


def test_soft_mask_windows_equal_crops_of_the_whole():
    grid = _square_grid()
    polygons = [shapely.Point(500000 + x, 5000000 + y).buffer(r) for x, y, r in ((60, 250, 25), (150, 150, 40), (280, 20, 15))]
    layer = PolygonLayer(polygons, [{}] * 3, grid.crs, "discs")
    whole = soft_mask(layer, grid, None, feather_m=24.0)
    for window in (Window(0, 0, 128, 128), Window(128, 64, 150, 100), Window(250, 250, 50, 50), Window(97, 211, 3, 89)):
        crop = whole[window.row_off : window.row_off + window.height, window.col_off : window.col_off + window.width]
        assert np.array_equal(soft_mask(layer, grid, window, feather_m=24.0), crop)


def test_soft_mask_feather_is_metres_on_a_geographic_grid():
    # 1e-5 degree pixels at 60 N: 0.56 m wide, 1.11 m tall. A 20 m feather spans ~36 columns, ~18 rows.
    grid = OutputGrid(CRS.from_epsg(4326), Affine(1e-5, 0, 10.0, 0, -1e-5, 60.002), 400, 200)
    block = shapely.box(10.001, 60.0, 10.002, 60.001)
    layer = PolygonLayer([block], [{}], grid.crs, "block")
    mask = soft_mask(layer, grid, None, feather_m=20.0)
    east = mask[150, 200:260]  # column 200 is the first east of the block
    north = mask[99::-1, 150][:40]  # row 99 is the first north of the block
    assert np.argmax(east == 0) == pytest.approx(20 / 0.557, abs=2)
    assert np.argmax(north == 0) == pytest.approx(20 / 1.113, abs=2)


def test_only_selected_classes_enter_the_soft_mask(joplin):
    grid, layer = joplin
    classes = classify_polygons(layer, "dmg")
    inpainted = np.isin(classes.codes, classes.inpainted_codes)
    labels = label_raster(layer, classes, grid)
    mask = soft_mask(layer, grid, None, feather_m=0.0, only=inpainted)
    # No feather: the mask is exactly the pixels of inpainted polygons (no-damage excluded).
    only_inpainted = label_raster(layer, np.where(inpainted, classes.codes, 0), grid)
    assert np.array_equal(mask == 1, only_inpainted > 0)
    assert ((labels == 1) & (mask == 0)).sum() == (labels == 1).sum() > 0


def test_masked_bounds_and_windows_cover_the_whole_mask():
    grid = _square_grid()
    layer = PolygonLayer([shapely.box(500100, 5000100, 500140, 5000130)], [{}], grid.crs, "box")
    grown = dilate(layer, 5.0)
    mask = soft_mask(grown, grid, None, feather_m=21.0)
    bounds = masked_bounds(layer, grid, dilation_m=5.0, feather_m=21.0)
    rows, cols = np.nonzero(mask)
    assert bounds.col_off <= cols.min() and cols.max() < bounds.col_off + bounds.width
    assert bounds.row_off <= rows.min() and rows.max() < bounds.row_off + bounds.height
    assert bounds.width <= 40 + 2 * (5 + 21 + 1) and bounds.height <= 30 + 2 * (5 + 21 + 1)  # tight
    tiles = [Window(s.col, s.row, s.width, s.height) for s in plan_windows(grid.height, grid.width, 64, 0)]
    touched = windows_touching_mask(layer, grid, tiles, dilation_m=5.0, feather_m=21.0)
    assert 0 < len(touched) < len(tiles)
    for tile in tiles:
        if tile not in touched:
            assert not mask[tile.row_off : tile.row_off + tile.height, tile.col_off : tile.col_off + tile.width].any()


# --- classes per polygon --------------------------------------------------------------------------


def _layer_with(values, field="grade"):
    boxes = [shapely.box(i, 0, i + 1, 1) for i in range(len(values))]
    return PolygonLayer(boxes, [{field: v} for v in values], CRS.from_epsg(32633), "test")


def test_numeric_damage_field_uses_the_xbd_scale(joplin):
    _, layer = joplin
    classes = classify_polygons(layer, "dmg", disaster_type="wind")
    assert classes.codes.tolist() == [a["dmg"] for a in layer.attributes]
    assert {c.name for c in classes.classes.values()} == {"no-damage", "minor-damage", "major-damage", "destroyed"}
    assert classes.prompt(4) == "a fmow satellite image after being affected by a wind natural disaster with destroyed buildings"
    assert classes.inpainted_codes == (2, 3, 4)  # no-damage is labelled but not inpainted


def test_constant_class_when_no_field_is_given():
    classes = classify_polygons(_layer_with([None, None]), disaster_type="fire")
    assert classes.codes.tolist() == [6, 6] and classes.classes[6].inpaint
    assert classes.prompt(6) == "a fmow satellite image after being affected by a fire natural disaster"
    assert classify_polygons(_layer_with([1]), constant="destroyed").codes.tolist() == [4]


def test_text_classes_known_and_unknown():
    layer = _layer_with(["Flood trace", "Flooded area", "Landslide", "Debris", "Completely destroyed", "No visible damage"])
    classes = classify_polygons(layer, "grade")
    # Known CEMS notations and gradings have fixed codes; others get 10, 11, ... alphabetically.
    assert classes.codes.tolist() == [7, 8, 11, 10, 4, 1]
    assert classes.classes[11].name == "Landslide" and classes.classes[11].inpaint
    assert classes.prompt(11) == "a fmow satellite image after being affected by a natural disaster"


def test_overrides_of_codes_prompts_and_inpainting():
    layer = _layer_with(["a", "b", "no-damage"])
    classes = classify_polygons(
        layer,
        "grade",
        value_codes={"a": 3, "b": 4},
        prompts={"destroyed": "rubble", 3: "cracked roofs"},
        inpaint={"no-damage": True, "major-damage": False},
    )
    assert classes.codes.tolist() == [3, 4, 1]
    assert classes.prompt(4) == "rubble" and classes.prompt(3) == "cracked roofs"
    assert classes.inpainted_codes == (1, 4)
    with pytest.raises(InputError, match="destoryed"):
        classify_polygons(layer, "grade", value_codes={"a": 3, "b": 4}, prompts={"destoryed": "typo"})


def test_numbers_above_the_damage_scale_are_generic_classes():
    classes = classify_polygons(_layer_with([8, 2.0, "4"]), "grade")
    assert classes.codes.tolist() == [8, 2, 4]
    assert classes.classes[8].name == "class-8"
    assert classes.prompt(8) == "a fmow satellite image after being affected by a natural disaster"


@pytest.mark.parametrize(
    "values, field, message",
    [
        ([1, 2], "dmg", "no attribute 'dmg'"),
        ([1, None], "grade", r"1 polygons .* have no 'grade' value"),
        ([1.5], "grade", "whole numbers"),
        ([300], "grade", "whole numbers"),
    ],
)
def test_unusable_class_fields_are_refused(values, field, message):
    with pytest.raises(InputError, match=message):
        classify_polygons(_layer_with(values), field)


def test_disaster_types_from_free_text():
    assert normalise_disaster_type("5-Flood") == "flooding"
    assert normalise_disaster_type("Wildfire") == "fire"
    assert normalise_disaster_type("Hurricane") == "wind"
    assert normalise_disaster_type("volcano") == "volcano"
    with pytest.raises(InputError, match="flooding, fire, wind"):
        normalise_disaster_type("locusts")


def test_a_mask_becomes_polygons_that_burn_back_into_the_same_mask():
    from engine.geo.masks import mask_polygons

    mask = np.zeros((40, 50), dtype=bool)
    mask[5:15, 10:30] = True
    mask[25:38, 3:9] = True
    transform = Affine(5.0, 0, 485900.0, 0, -5.0, 5209245.0)
    layer = mask_polygons(mask, transform, "EPSG:26914", {"notation": "Flooded area"}, "test mask")
    assert len(layer) == 2 and layer.crs.to_epsg() == 26914
    assert all(a == {"notation": "Flooded area"} for a in layer.attributes)
    assert sum(g.area for g in layer.geometries) == pytest.approx(mask.sum() * 25.0)
    burnt = rasterio.features.rasterize(layer.geometries, out_shape=mask.shape, transform=transform).astype(bool)
    assert np.array_equal(burnt, mask)
