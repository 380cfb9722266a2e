"""Temporal prediction: real frames in different CRSs co-registered onto one grid, dates from every source."""

import json
import shutil

import numpy as np
import pyproj
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from engine.errors import InputError, ModelError
from engine.geo.coregister import WarpedFrame, check_coverage, open_frames
from engine.geo.grid import OutputGrid
from engine.pipelines.predict import PredictRequest, predict

PRE = "xv2deploy_pre_tile_1361-10160.tif"  # EPSG:26915, 0.6 m
POST = "xv2deploy_post_tile_32524-5137.tif"  # EPSG:4326, 6e-6 degrees


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from engine.models.demo import build_demo_models
    from engine.models.registry import ModelRegistry

    path = tmp_path_factory.mktemp("predict-models")
    build_demo_models(path)
    return ModelRegistry(path)


def _overlap_grid(rasters_dir, size=128):
    """A size x size px part of the pre tile's grid inside the post tile's footprint."""
    with rasterio.open(rasters_dir / PRE) as pre:
        # The post tile overlaps the pre tile's east half (see test_post_tile_lands_on_the_pre_grid).
        transform = pre.transform @ rasterio.Affine.translation(800, 300)
        return OutputGrid(pre.crs, transform, size, size)


def test_post_tile_lands_on_the_pre_grid_pixel_for_pixel(rasters_dir):
    frames = open_frames([rasters_dir / PRE, rasters_dir / POST], dates=["2011-05-20", "2011-05-26"])
    try:
        with rasterio.open(rasters_dir / PRE) as pre:
            grid = OutputGrid(pre.crs, pre.transform, pre.width, pre.height)
        pre_cover, post_cover = check_coverage(frames, grid)
        assert pre_cover == pytest.approx(1.0)
        assert 0.3 < post_cover < 0.6  # the manifest: the post tile overlaps ~46 % of the pre tile
        warped = WarpedFrame(frames[1], grid, Resampling.nearest)
        unit = warped.read_unit(Window(0, 0, grid.width, grid.height))
        warped.close()
        valid = ~np.ma.getmaskarray(unit).any(axis=0)
        assert valid.mean() == pytest.approx(post_cover, abs=0.03)
        # Independent check: sample the post tile at the geographic position of pre-grid pixel centres.
        to_wgs84 = pyproj.Transformer.from_crs(grid.crs.to_wkt(), "EPSG:4326", always_xy=True)
        rows, cols = np.nonzero(valid)
        pick = np.linspace(0, len(rows) - 1, 200).astype(int)
        xs, ys = grid.transform @ (cols[pick] + 0.5, rows[pick] + 0.5)
        lons, lats = to_wgs84.transform(xs, ys)
        with rasterio.open(rasters_dir / POST) as post:
            post_rows, post_cols = rasterio.transform.rowcol(post.transform, lons, lats)
            raw = post.read([1, 2, 3])
        expected = raw[:, post_rows, post_cols].astype(np.float32) / 255.0
        got = np.ma.getdata(unit)[:, rows[pick], cols[pick]]
        # Nearest neighbour: identical except where a pixel centre falls on a post-pixel boundary.
        assert (np.abs(got - expected).max(axis=0) < 1e-6).mean() > 0.95
    finally:
        for frame in frames:
            frame.close()


def test_prediction_with_the_3d_controlnet_is_on_the_reference_grid(registry, rasters_dir, tmp_path):
    model = registry.load("demo-controlnet-3d")
    grid = _overlap_grid(rasters_dir)
    request = PredictRequest(frames=[rasters_dir / PRE, rasters_dir / POST, rasters_dir / PRE],
                             dates=["2011-05-20", "2011-05-26", "2011-04-01"], target_date="2011-06-15",
                             reference=grid, steps=2, seed=4)
    result = predict(model, request, tmp_path / "predicted.tif")
    with rasterio.open(tmp_path / "predicted.tif") as out:
        assert out.crs == grid.crs and out.transform == grid.transform
        assert (out.width, out.height) == (grid.width, grid.height)
        tags = out.tags()
        image = out.read()
    assert tags["GFM4D_TASK"] == "predict" and tags["GFM4D_TARGET_DATE"] == "2011-06-15"
    # Frames are ordered by date in the conditioning.
    assert [date for _, date, _ in result.frames] == ["2011-04-01", "2011-05-20", "2011-05-26"]
    assert image.std() > 0

    # The frames condition the result: another post frame gives another image.
    darker = tmp_path / "post_dark.tif"
    with rasterio.open(rasters_dir / POST) as src:
        profile = src.profile
        data = (src.read() // 3).astype(np.uint8)
    with rasterio.open(darker, "w", **profile) as dst:
        dst.write(data)
    request.frames = [rasters_dir / PRE, darker, rasters_dir / PRE]
    predict(model, request, tmp_path / "predicted_dark.tif")
    with rasterio.open(tmp_path / "predicted_dark.tif") as out:
        assert not np.array_equal(out.read(), image)


def test_reference_frame_index_gives_that_frames_grid(registry, rasters_dir, tmp_path):
    # A small frame as the reference keeps the job small: a 128 px crop of the pre tile.
    crop = tmp_path / "pre_crop.tif"
    with rasterio.open(rasters_dir / PRE) as src:
        window = Window(800, 300, 128, 128)
        profile = {**src.profile, "width": 128, "height": 128, "transform": src.window_transform(window)}
        data = src.read(window=window)
    with rasterio.open(crop, "w", **profile) as dst:
        dst.write(data)
    model = registry.load("demo-prepost")
    result = predict(model, PredictRequest(frames=[crop], dates=["2011-05-20"], target_date="2011-05-26", steps=2),
                     tmp_path / "post_predicted.tif")
    with rasterio.open(tmp_path / "post_predicted.tif") as out, rasterio.open(crop) as ref:
        assert out.crs == ref.crs and out.transform == ref.transform and out.shape == ref.shape
    assert result.frames[0][2] == pytest.approx(1.0)


def test_a_frame_outside_the_target_extent_is_named(registry, rasters_dir, tmp_path):
    model = registry.load("demo-controlnet-3d")
    elsewhere = rasters_dir / "m_3607824_se_17_1_20160620_sub.tif"  # Virginia, not Joplin
    with pytest.raises(InputError, match="m_3607824_se_17_1_20160620_sub.tif .*has no valid pixel on the target extent"):
        predict(model, PredictRequest(frames=[rasters_dir / PRE, elsewhere], dates=["2011-05-20", None],
                                      target_date="2011-06-01", reference=_overlap_grid(rasters_dir), steps=1),
                tmp_path / "x.tif")
    assert list(tmp_path.iterdir()) == []


def test_models_without_a_controlnet_cannot_predict(registry, rasters_dir, tmp_path):
    with pytest.raises(ModelError, match="cannot predict"):
        predict(registry.load("demo-satunet"), PredictRequest(frames=[rasters_dir / PRE], dates=["2011-05-20"],
                                                              target_date="2011-06-01"), tmp_path / "x.tif")
    with pytest.raises(InputError, match="takes one frame"):
        predict(registry.load("demo-prepost"), PredictRequest(frames=[rasters_dir / PRE, rasters_dir / POST],
                                                              target_date="2011-06-01"), tmp_path / "x.tif")


def _crop(src_path, dst_path, tags=None):
    with rasterio.open(src_path) as src:
        window = Window(0, 0, 64, 64)
        profile = {**src.profile, "width": 64, "height": 64, "transform": src.window_transform(window)}
        data = src.read(window=window)
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data)
        if tags:
            dst.update_tags(ns="IMAGERY", **tags)
    return dst_path


def test_frame_dates_come_from_every_source(rasters_dir, tmp_path):
    naip = rasters_dir / "m_3607824_se_17_1_20160620_sub.tif"  # date only in the file name
    imagery = _crop(naip, tmp_path / "scene_a.tif", {"ACQUISITIONDATETIME": "2016-07-04 10:20:30", "CLOUDCOVER": "12"})
    stac = _crop(naip, tmp_path / "scene_b.tif")
    (tmp_path / "scene_b.json").write_text(json.dumps({
        "type": "Feature", "stac_version": "1.0.0", "id": "scene_b", "geometry": None,
        "properties": {"datetime": None, "start_datetime": "2016-08-01T00:00:00Z", "end_datetime": "2016-08-03T00:00:00Z",
                       "eo:cloud_cover": 40}}))
    explicit = shutil.copy(naip, tmp_path / "no_date.tif")
    frames = open_frames([naip, imagery, stac, explicit], dates=[None, None, None, "2016-09-09"])
    try:
        got = [(f.date.isoformat(), f.date_source, f.cloud_cover) for f in frames]
    finally:
        for frame in frames:
            frame.close()
    assert got == [
        ("2016-06-20", "filename", None),
        ("2016-07-04", "imagery-metadata", pytest.approx(0.12)),
        ("2016-08-02", "stac", pytest.approx(0.40)),
        ("2016-09-09", "explicit", None),
    ]
    with pytest.raises(InputError, match="no acquisition date found for no_date.tif"):
        open_frames([explicit])
