"""Every task end to end through a real engine process: same pixels as the in-process CLI."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.windows import Window

from engine.cli import main
from engine.server.launcher import start_engine


@pytest.fixture(scope="module")
def engine(models_dir, tmp_path_factory):
    process = start_engine(models_dir, tmp_path_factory.mktemp("work"))
    yield process
    process.stop()


def _crop(src_path, dst_path, col, row, size):
    with rasterio.open(src_path) as src:
        window = Window(col, row, size, size)
        profile = {**src.profile, "width": size, "height": size, "transform": src.window_transform(window)}
        with rasterio.open(dst_path, "w", **profile) as dst:
            dst.write(src.read(window=window))
    return dst_path


def _same(a, b):
    with rasterio.open(a) as x, rasterio.open(b) as y:
        assert x.crs == y.crs and x.transform == y.transform and x.shape == y.shape
        np.testing.assert_array_equal(x.read(), y.read())
        np.testing.assert_array_equal(x.dataset_mask(), y.dataset_mask())


def _both(models_dir, engine, tmp_path, argv, outputs):
    """Run argv in-process and on the engine; compare every named output."""
    for where, extra in (("local", []), ("remote", ["--engine", engine.url])):
        folder = tmp_path / where
        folder.mkdir()
        resolved = [a.replace("{out}", str(folder)) for a in argv]
        assert main(["--models-dir", str(models_dir), "--device", "cpu", *resolved, *extra]) == 0
    for name in outputs:
        _same(tmp_path / "local" / name, tmp_path / "remote" / name)


def test_inpaint_over_http_matches_the_cli(models_dir, engine, rasters_dir, tmp_path):
    raster = _crop(rasters_dir / "m_3607824_se_17_1_20160620_sub.tif", tmp_path / "naip.tif", 0, 0, 160)
    with rasterio.open(raster) as src:
        x0, y0 = src.transform @ (40, 40)
        x1, y1 = src.transform @ (90, 90)
        crs = src.crs
    polygons = tmp_path / "burn.geojson"
    import json

    polygons.write_text(json.dumps({"type": "FeatureCollection",
                                    "crs": {"type": "name", "properties": {"name": crs.to_string()}},
                                    "features": [{"type": "Feature", "properties": {"dmg": 4},
                                                  "geometry": shapely.geometry.mapping(shapely.box(x0, y1, x1, y0))}]}))
    _both(models_dir, engine, tmp_path,
          ["inpaint", str(raster), "--polygons", str(polygons), "--class-field", "dmg", "--disaster-type", "fire",
           "--steps", "2", "--seed", "9", "-o", "{out}/post.tif", "--label", "{out}/label.tif"],
          ["post.tif", "label.tif"])


def test_predict_over_http_matches_the_cli(models_dir, engine, rasters_dir, tmp_path):
    reference = _crop(rasters_dir / "xv2deploy_pre_tile_1361-10160.tif", tmp_path / "ref.tif", 800, 300, 128)
    _both(models_dir, engine, tmp_path,
          ["predict", str(rasters_dir / "xv2deploy_pre_tile_1361-10160.tif"), str(rasters_dir / "xv2deploy_post_tile_32524-5137.tif"),
           "--dates", "2011-05-20", "2011-05-26", "--target-date", "2011-06-10", "--like", str(reference),
           "--steps", "2", "--seed", "3", "-o", "{out}/predicted.tif"],
          ["predicted.tif"])


def test_superres_over_http_matches_the_cli(models_dir, engine, tmp_path):
    from rasterio.transform import from_origin

    scene = tmp_path / "S2A_MSIL2A_20210704T101031_N0301_R022_T32TQR_20210704T130000.tif"
    names = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]
    rng = np.random.default_rng(1)
    with rasterio.open(scene, "w", driver="GTiff", width=16, height=16, count=10, dtype="uint16", crs="EPSG:32632",
                       transform=from_origin(700000, 5100160, 10, 10)) as dst:
        dst.write(rng.integers(200, 3000, (10, 16, 16)).astype(np.uint16))
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
    _both(models_dir, engine, tmp_path,
          ["superres", str(scene), "--steps", "2", "--guidance", "1", "-o", "{out}/sr.tif"], ["sr.tif"])
    with rasterio.open(tmp_path / "local" / "sr.tif") as out:
        assert out.res == (1.25, 1.25) and out.bounds == (700000.0, 5100000.0, 700160.0, 5100160.0)
    # The acquisition date is only in the file name: the engine must see the uploaded file's own name.
    with rasterio.open(tmp_path / "remote" / "sr.tif") as out:
        assert out.tags()["GFM4D_DATE"] == "2021-07-04"
