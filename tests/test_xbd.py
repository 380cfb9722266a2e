"""xBD labels: reading, the fitted georeference of the PNGs, and export to GIS formats."""

import collections
import json

import numpy as np
import pyogrio
import pyproj
import pytest
import rasterio
import shapely
from PIL import Image

from engine.errors import InputError
from engine.geo.damage_classes import classify_polygons
from engine.geo.xbd import export_xbd_polygons, fit_xbd_georeference, read_xbd_labels, xbd_png_to_geotiff

SANTA_ROSA = "santa-rosa-wildfire_00000273"
FLORENCE = "hurricane-florence_00000363"


def _labels(xbd_dir, name, when="post", **kwargs):
    return read_xbd_labels(xbd_dir / f"{name}_{when}_disaster.json", **kwargs)


def _raw(xbd_dir, name, when="post"):
    return json.loads((xbd_dir / f"{name}_{when}_disaster.json").read_text())


def test_santa_rosa_post_buildings_and_damage(xbd_dir):
    labels = _labels(xbd_dir, SANTA_ROSA)
    assert len(labels.polygons) == 13
    assert labels.polygons.crs.to_epsg() == 4326
    damage = collections.Counter(a["subtype"] for a in labels.polygons.attributes)
    assert damage == {"destroyed": 9, "major-damage": 1, "no-damage": 2, "un-classified": 1}  # per the data manifest
    assert labels.disaster_type == "fire" and labels.is_post_disaster
    assert labels.capture_date.date().isoformat() == "2017-10-11"
    assert labels.image_size == (1024, 1024)


def test_pre_disaster_labels_have_no_damage(xbd_dir):
    labels = _labels(xbd_dir, SANTA_ROSA, "pre")
    assert len(labels.polygons) == 13 and not labels.is_post_disaster
    with pytest.raises(InputError, match="pre-disaster"):
        classify_polygons(labels.polygons, "subtype")


def test_xy_labels_are_pixels_without_crs(xbd_dir):
    labels = _labels(xbd_dir, SANTA_ROSA, use="xy")
    assert labels.polygons.crs is None
    raw = _raw(xbd_dir, SANTA_ROSA)["features"]["xy"]
    assert labels.polygons.geometries[0].equals_exact(shapely.from_wkt(raw[0]["wkt"]), 0)
    left, bottom, right, top = labels.polygons.bounds()
    assert 0 <= left < right <= 1024 and 0 <= bottom < top <= 1024


@pytest.mark.parametrize("name", [SANTA_ROSA, FLORENCE])
def test_fitted_georeference_is_subpixel_in_local_utm(xbd_dir, name):
    labels = _labels(xbd_dir, name)
    transform, crs, residual = fit_xbd_georeference(labels)
    lon, lat = np.vstack([shapely.get_coordinates(g) for g in labels.lng_lat]).mean(axis=0)
    assert crs.to_epsg() == 32600 + int((lon + 180) // 6) + 1
    assert residual < 1.0
    # Pixels are square on the ground: the geodesic length of a building edge equals its pixel
    # length times the pixel size, up to UTM's scale error (under 0.5 % within a zone).
    assert transform.a == pytest.approx(-transform.e, rel=1e-6)
    geod = pyproj.Geod(ellps="WGS84")
    (lon0, lat0), (lon1, lat1) = shapely.get_coordinates(labels.lng_lat[0])[:2]
    (x0, y0), (x1, y1) = shapely.get_coordinates(labels.xy[0])[:2]
    ground = geod.inv(lon0, lat0, lon1, lat1)[2]
    assert ground == pytest.approx(np.hypot(x1 - x0, y1 - y0) * transform.a, rel=5e-3)


def test_pixel_corner_convention_matches_the_data(xbd_dir):
    """A building cut by the image's bottom edge has xy vertices at y = 1024 = height: (0, 0) is a corner."""
    labels = _labels(xbd_dir, SANTA_ROSA, "pre")
    georeference = fit_xbd_georeference(labels)
    to_utm = pyproj.Transformer.from_crs(4326, georeference.crs.to_epsg(), always_xy=True)
    found = 0
    for xy, lng_lat in zip(labels.xy, labels.lng_lat):
        pixels, lonlat = shapely.get_coordinates(xy), shapely.get_coordinates(lng_lat)
        on_edge = pixels[:, 1] == 1024.0
        if on_edge.any():
            east, north = to_utm.transform(lonlat[on_edge, 0], lonlat[on_edge, 1])
            _, rows = ~georeference.transform @ (east, north)
            assert np.allclose(rows, 1024.0, atol=1e-3)
            found += int(on_edge.sum())
    assert found >= 2


def test_too_few_or_collinear_vertices_are_refused(tmp_path):
    features = {
        "lng_lat": [{"properties": {"uid": "a"}, "wkt": "POLYGON ((10 45, 10.001 45.001, 10.002 45.002, 10 45))"}],
        "xy": [{"properties": {"uid": "a"}, "wkt": "POLYGON ((0 0, 10 10, 20 20, 0 0))"}],
    }
    path = tmp_path / "flat_post_disaster.json"
    path.write_text(json.dumps({"features": features, "metadata": {"width": 1024, "height": 1024}}))
    with pytest.raises(InputError, match="not collinear"):
        fit_xbd_georeference(read_xbd_labels(path))


def test_inconsistent_xy_and_lng_lat_are_refused(xbd_dir, tmp_path):
    content = _raw(xbd_dir, SANTA_ROSA)
    rng = np.random.default_rng(0)
    for feature in content["features"]["xy"]:
        geometry = shapely.from_wkt(feature["wkt"])
        coords = shapely.get_coordinates(geometry)
        coords = coords + rng.normal(0, 8, size=coords.shape)
        coords[-1] = coords[0]  # keep the ring closed
        feature["wkt"] = shapely.set_coordinates(geometry, coords).wkt
    path = tmp_path / "edited_post_disaster.json"
    path.write_text(json.dumps(content))
    with pytest.raises(InputError, match="px RMS"):
        fit_xbd_georeference(read_xbd_labels(path))


def test_png_to_geotiff_is_georeferenced_and_pixel_identical(xbd_dir, tmp_path):
    png = xbd_dir / f"{SANTA_ROSA}_post_disaster.png"
    labels_json = xbd_dir / f"{SANTA_ROSA}_post_disaster.json"
    out = xbd_png_to_geotiff(png, labels_json, tmp_path / "post.tif")
    labels = read_xbd_labels(labels_json)
    georeference = fit_xbd_georeference(labels)
    with rasterio.open(out) as src:
        assert src.crs == georeference.crs and src.transform == georeference.transform
        assert (src.width, src.height, src.count) == (1024, 1024, 3)
        assert np.array_equal(np.moveaxis(src.read(), 0, -1), np.asarray(Image.open(png).convert("RGB")))
        assert src.tags()["XBD_DISASTER_TYPE"] == "fire"
        footprint = shapely.box(*src.bounds)
    to_utm = pyproj.Transformer.from_crs(4326, georeference.crs.to_epsg(), always_xy=True)
    for polygon in labels.lng_lat:
        coords = shapely.get_coordinates(polygon)
        east, north = to_utm.transform(coords[:, 0], coords[:, 1])
        assert footprint.contains(shapely.Polygon(np.column_stack([east, north])))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["post.tif"]


def test_png_of_another_size_is_refused(xbd_dir, tmp_path):
    small = tmp_path / "small.png"
    Image.new("RGB", (512, 512)).save(small)
    with pytest.raises(InputError, match="512x512"):
        xbd_png_to_geotiff(small, xbd_dir / f"{SANTA_ROSA}_post_disaster.json", tmp_path / "out.tif")
    assert not (tmp_path / "out.tif").exists()


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_export_polygons_with_damage_codes(xbd_dir, tmp_path, suffix):
    out = export_xbd_polygons(xbd_dir / f"{SANTA_ROSA}_post_disaster.json", tmp_path / f"buildings{suffix}")
    meta, _, wkb, fields = pyogrio.raw.read(out)
    names = list(meta["fields"])
    assert names == ["uid", "damage", "damage_code", "disaster", "disaster_type", "capture_date"]
    columns = dict(zip(names, fields))
    assert meta["dtypes"][names.index("damage_code")].startswith("int")
    assert collections.Counter(columns["damage_code"].tolist()) == {4: 9, 3: 1, 1: 2, 5: 1}
    assert set(columns["disaster_type"]) == {"fire"}
    raw = {f["properties"]["uid"]: shapely.from_wkt(f["wkt"]) for f in _raw(xbd_dir, SANTA_ROSA)["features"]["lng_lat"]}
    for uid, geometry in zip(columns["uid"], shapely.from_wkb(wkb)):
        assert geometry.equals(raw[uid])


def test_florence_is_flooding_with_nothing_inpainted_by_default(xbd_dir):
    labels = _labels(xbd_dir, FLORENCE)
    classes = classify_polygons(labels.polygons, "subtype", disaster_type=labels.disaster_type)
    assert classes.codes.tolist() == [1] * 5
    assert classes.inpainted_codes == ()
    assert "flooding natural disaster" in classes.prompt(1)


def test_xy_polygons_placed_with_the_fitted_georeference(xbd_dir):
    lonlat = _labels(xbd_dir, SANTA_ROSA)
    georeference = fit_xbd_georeference(lonlat)
    placed = _labels(xbd_dir, SANTA_ROSA, use="xy", georeference=georeference)
    assert placed.polygons.crs == georeference.crs
    expected = lonlat.polygons.to_crs(georeference.crs)
    pixel = georeference.transform.a
    for got, want in zip(placed.polygons.geometries, expected.geometries):
        assert got.hausdorff_distance(want) < 0.01 * pixel
