"""The evaluate task through a real engine process: the CLI with --engine gives the in-process numbers,
the Python client scores two image sets with a networks folder the engine finds by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from engine.cli import main
from engine.client import EngineClient, JobFailed
from engine.server.launcher import start_engine
from evaluate_networks import TinyStyleGANInception, save_script

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval-models")
    (folder / "metrics").mkdir()
    save_script(TinyStyleGANInception(), folder / "metrics" / "inception.pt")
    return folder


@pytest.fixture(scope="module")
def engine(models_dir, tmp_path_factory):
    process = start_engine(models_dir, tmp_path_factory.mktemp("work"))
    yield process
    process.stop()


def _crop(src, dst, col, row, size):
    with rasterio.open(src) as s:
        window = Window(col, row, size, size)
        profile = {**s.profile, "width": size, "height": size, "transform": s.window_transform(window)}
        with rasterio.open(dst, "w", **profile) as d:
            d.write(s.read(window=window))
    return dst


def test_cli_on_the_engine_gives_the_in_process_report(engine, tmp_path, vectors_dir):
    pre = _crop(SHARED / "rasters" / "xv2deploy_pre_tile_1361-10160.tif", tmp_path / "pre.tif", 300, 200, 300)
    post = SHARED / "rasters" / "xv2deploy_post_tile_32524-5137.tif"
    mask = vectors_dir / "xview2_deploy_joplin" / "damage.shp"
    reports = {}
    for where, extra in (("local", []), ("remote", ["--engine", engine.url])):
        folder = tmp_path / where
        folder.mkdir()
        assert main(["evaluate", str(pre), str(post), "--mask", str(mask), "--window", "100",
                     "-o", str(folder / "e.json"), *extra]) == 0
        reports[where] = json.loads((folder / "e.json").read_text())
    local, remote = reports["local"], reports["remote"]
    for scope in ("overall", "inside_mask", "outside_mask"):
        assert remote[scope] == local[scope]
    assert remote["overlap"] == local["overlap"] and remote["windows"] == local["windows"]
    with rasterio.open(tmp_path / "local" / "e_error.tif") as a, rasterio.open(tmp_path / "remote" / "e_error.tif") as b:
        assert (a.crs, a.transform) == (b.crs, b.transform)
        np.testing.assert_array_equal(a.read(), b.read())


def _chips(folder: Path, date: str) -> list[Path]:
    folder.mkdir()
    source = SHARED / "train" / f"naip_m_4709963_se_14_1_{date}.tif"
    return [_crop(source, folder / f"{i}.tif", 100 + 120 * i, 300, 64) for i in range(4)]


def test_the_python_client_scores_two_sets_with_the_engines_networks(engine, tmp_path):
    client = EngineClient(engine.url)
    assert "evaluate" in [t["name"] for t in client.tasks()]
    early, late = _chips(tmp_path / "a", "20090818"), _chips(tmp_path / "b", "20200831")
    files = {**{f"set_a.{i}": p for i, p in enumerate(early)}, **{f"set_b.{i}": p for i, p in enumerate(late)}}
    results = client.run("evaluate", {"networks": "metrics", "set_metrics": ["fid", "kid"], "input_size": 64,
                                      "bootstrap": 10, "kid_subsets": 5}, files, out_dir=tmp_path / "out")
    report = json.loads(results["report"].read_text())
    assert report["set_a"]["count"] == 4 and report["set_b"]["count"] == 4
    assert report["metrics"]["fid"]["value"] > 0 and report["metrics"]["fid"]["low"] <= report["metrics"]["fid"]["high"]
    assert set(results) == {"report", "table", "plot"}
    with pytest.raises(JobFailed, match="no networks folder 'absent'"):
        client.run("evaluate", {"networks": "absent"}, files, out_dir=tmp_path / "none")
