"""The `gfm4d` command: generate, models, demo, and one-line errors with exit status 2."""

import json
import re
import subprocess
import sys

import pytest
import rasterio
import rasterio.windows

from engine.cli import main


def test_generate_over_an_aoi_masks_outside_the_polygon(models_dir, tmp_path):
    aoi = tmp_path / "aoi.geojson"
    # A triangle in UTM 32N: half of its bounding box lies outside it.
    aoi.write_text(json.dumps({
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32632"}},
        "features": [{"type": "Feature", "properties": {}, "geometry": {
            "type": "Polygon", "coordinates": [[[600000, 5100000], [600256, 5100000], [600000, 5100256], [600000, 5100000]]]}}],
    }))
    out = tmp_path / "aoi.tif"
    code = main(["--models-dir", str(models_dir), "generate", "--aoi", str(aoi), "--resolution", "2",
                 "--prompt", "a fmow satellite image of a farm", "--date", "2020-05-01", "--steps", "2",
                 "-o", str(out), "--preview", str(tmp_path / "aoi.png")])
    assert code == 0
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 32632 and (src.width, src.height) == (128, 128)
        assert src.bounds == (600000.0, 5100000.0, 600256.0, 5100256.0)
        valid = src.dataset_mask() > 0
    # The triangle is the lower-left half: pixel (row, col) has its centre inside when col < row.
    assert valid[127, 0] and not valid[0, 127]
    assert abs(int(valid.sum()) - 128 * 127 // 2) <= 128
    assert (tmp_path / "aoi.png").stat().st_size > 0


def test_models_list_json_shows_the_demo_models(models_dir, capsys):
    assert main(["--models-dir", str(models_dir), "models", "list", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert listed["demo-satunet"]["kind"] == "satunet"
    assert "generate" in listed["demo-satunet"]["tasks"]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["generate", "--prompt", "x", "-o", "x.tif", "--resolution", "1"], "say where to generate"),
        (["generate", "--prompt", "x", "-o", "x.tif", "--extent", "0", "0", "10", "10", "--resolution", "1"], "needs `crs`"),
        (["generate", "--prompt", "x", "-o", "x.tif", "--extent", "0", "0", "10", "10", "--crs", "EPSG:32632",
          "--resolution", "1", "--date", "2020-13-45"], "2020-13-45"),
        (["generate", "--prompt", "x", "-o", "x.tif", "--extent", "500000", "5000000", "500010", "5000010",
          "--crs", "EPSG:32632", "--resolution", "1", "--model", "no-such-model"], "no-such-model"),
    ],
)
def test_user_errors_are_one_line_with_status_2(models_dir, tmp_path, argv, words):
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "--models-dir", str(models_dir), *argv],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    # Argument errors name the command (`gfm4d generate: error: ...`), the others `gfm4d: error: ...`.
    errors = re.findall(r"^gfm4d( [a-z-]+)?: error: .*$", proc.stderr, flags=re.M)
    assert len(errors) == 1 and words in proc.stderr, proc.stderr
    assert not (tmp_path / "x.tif").exists()


def test_inpaint_command_writes_image_label_and_polygons(models_dir, rasters_dir, vectors_dir, tmp_path):
    out = tmp_path / "post.tif"
    code = main(["--models-dir", str(models_dir), "inpaint", str(rasters_dir / "xv2deploy_pre_tile_1361-10160.tif"),
                 "--polygons", str(vectors_dir / "xview2_deploy_joplin" / "damage.shp"), "--class-field", "dmg",
                 "--disaster-type", "wind", "--class-prompt", "4=a fmow satellite image of flattened houses",
                 "--date", "2011-05-23", "--steps", "1", "--guidance", "1", "-o", str(out),
                 "--label-polygons", str(tmp_path / "labels.gpkg")])
    assert code == 0
    with rasterio.open(out) as post, rasterio.open(tmp_path / "post_label.tif") as label:
        assert post.transform == label.transform and post.crs == label.crs
        assert "flattened houses" in post.tags()["GFM4D_PROMPTS"]
        assert label.nodata == 255 and (label.read(1) == 4).sum() > 0
    assert (tmp_path / "labels.gpkg").exists()


def test_xbd_import_command(xbd_dir, tmp_path):
    code = main(["xbd-import", str(xbd_dir / "santa-rosa-wildfire_00000273_post_disaster.json"), "-o", str(tmp_path / "b.geojson"),
                 "--image", str(xbd_dir / "santa-rosa-wildfire_00000273_post_disaster.png"), "--image-output", str(tmp_path / "post.tif")])
    assert code == 0
    layer = json.loads((tmp_path / "b.geojson").read_text())
    assert sorted(f["properties"]["damage"] for f in layer["features"]).count("destroyed") == 9
    with rasterio.open(tmp_path / "post.tif") as src:
        assert src.crs.is_projected and (src.width, src.height) == (1024, 1024)


def test_predict_command_on_a_like_grid(models_dir, rasters_dir, tmp_path):
    crop = tmp_path / "ref.tif"
    with rasterio.open(rasters_dir / "xv2deploy_pre_tile_1361-10160.tif") as src:
        window = rasterio.windows.Window(800, 300, 128, 128)
        profile = {**src.profile, "width": 128, "height": 128, "transform": src.window_transform(window)}
        with rasterio.open(crop, "w", **profile) as dst:
            dst.write(src.read(window=window))
    out = tmp_path / "pred.tif"
    code = main(["--models-dir", str(models_dir), "predict", str(rasters_dir / "xv2deploy_pre_tile_1361-10160.tif"),
                 str(rasters_dir / "xv2deploy_post_tile_32524-5137.tif"), "--dates", "2011-05-20", "2011-05-26",
                 "--target-date", "2011-07-01", "--like", str(crop), "--steps", "1", "-o", str(out)])
    assert code == 0
    with rasterio.open(out) as a, rasterio.open(crop) as b:
        assert a.transform == b.transform and a.crs == b.crs and a.shape == b.shape


def test_sequence_command_writes_one_file_per_date(models_dir, tmp_path):
    code = main(["--models-dir", str(models_dir), "sequence", "--extent", "600000", "5100000", "600256", "5100256",
                 "--crs", "EPSG:32632", "--resolution", "2", "--dates", "2020-01-01", "2020-07-01", "2021-01-01",
                 "--prompt", "a fmow satellite image of a farm", "--steps", "1", "--output-dir", str(tmp_path)])
    assert code == 0
    written = sorted(p.name for p in tmp_path.glob("*.tif"))
    assert written == ["frame_2020-01-01.tif", "frame_2020-07-01.tif", "frame_2021-01-01.tif"]
    transforms, tasks = set(), []
    for name in written:
        with rasterio.open(tmp_path / name) as src:
            transforms.add(tuple(src.transform))
            tasks.append(src.tags()["GFM4D_TASK"])
    assert len(transforms) == 1
    assert tasks == ["generate", "predict", "predict"]


def test_sequence_interrupted_as_a_frame_finishes_stops_and_leaves_no_partial_series(models_dir, tmp_path, monkeypatch,
                                                                                      capsys):
    import os
    import signal
    import time

    import engine.tasks

    real_run, calls = engine.tasks.run_task_locally, []

    def run_then_ctrl_c(*args, **kwargs):  # on the job thread: Ctrl-C lands just as frame 2 is written
        result = real_run(*args, **kwargs)
        calls.append(result)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.3)
        return result

    monkeypatch.setattr(engine.tasks, "run_task_locally", run_then_ctrl_c)
    code = main(["--models-dir", str(models_dir), "sequence", "--extent", "600000", "5100000", "600256", "5100256",
                 "--crs", "EPSG:32632", "--resolution", "2", "--dates", "2020-01-01", "2020-07-01", "2021-01-01",
                 "--prompt", "a fmow satellite image of a farm", "--steps", "1", "--output-dir", str(tmp_path)])
    assert code == 130 and len(calls) == 2  # the third frame was never started
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().err.rstrip().endswith("gfm4d: cancelled; no output was written")
