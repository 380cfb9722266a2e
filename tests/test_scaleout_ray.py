"""`--ray` on generate, inpaint and serve, on a real local Ray cluster (2 CPU workers): the pixels of one process."""

import json
import sys

import numpy as np
import pytest
import rasterio

from engine.cli import main
from engine.errors import Cancelled

RASTER = "xv2deploy_pre_tile_1361-10160.tif"  # 1024 x 1024 px, 0.6 m, EPSG:26915
# 512 x 368 px in regions of 256 px (32 latent cells of demo-satunet's 16-cell windows): 6 regions, 5 waves
GENERATE = ["generate", "--extent", "500000", "4099632", "500512", "4100000", "--crs", "EPSG:32618", "--pixel-size", "1",
            "--prompt", "a fmow satellite image", "--steps", "2", "--guidance", "1", "--seed", "3", "--region-size", "256"]
HTTP_GENERATE = {"extent": [500000, 4099632, 500512, 4100000], "crs": "EPSG:32618", "pixel_size": 1,
                 "prompt": "a fmow satellite image", "steps": 2, "guidance_scale": 1, "seed": 3, "region_size": 256}


@pytest.fixture(scope="module")
def single_generate(models_dir, tmp_path_factory):
    """The reference: `gfm4d generate` in this process, without Ray."""
    out = tmp_path_factory.mktemp("single") / "single.tif"
    assert main(["--models-dir", str(models_dir), "--device", "cpu", *GENERATE, "-o", str(out)]) == 0
    return out


def _same_raster(a_path, b_path) -> None:
    with rasterio.open(a_path) as a, rasterio.open(b_path) as b:
        assert a.profile == b.profile
        assert {k: v for k, v in a.tags().items()} == {k: v for k, v in b.tags().items()}
        assert np.array_equal(a.read(), b.read())


def _four_squares(path) -> None:
    """Four 12 m destroyed buildings near the tile's corners: four disjoint regions of windows."""
    left, top = 367257.0, 4103896.8
    features = []
    for row, col in ((150, 150), (150, 850), (850, 150), (850, 850)):
        x, y = left + col * 0.6, top - row * 0.6
        ring = [[x, y], [x + 12, y], [x + 12, y - 12], [x, y - 12], [x, y]]
        features.append({"type": "Feature", "properties": {"dmg": 4}, "geometry": {"type": "Polygon", "coordinates": [ring]}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features,
                                "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::26915"}}}))


def test_generate_command_on_ray_equals_one_process_and_reports_waves(ray_cluster, models_dir, single_generate,
                                                                       tmp_path, capsys):
    out = tmp_path / "ray.tif"
    code = main(["--models-dir", str(models_dir), "--device", "cpu", *GENERATE, "-o", str(out),
                 "--ray", "auto", "--workers", "2"])
    assert code == 0
    _same_raster(single_generate, out)
    assert "wave 5/5: 6/6 regions done" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["ray.tif"]


def test_inpaint_command_on_ray_equals_one_process(ray_cluster, models_dir, rasters_dir, tmp_path, capsys):
    from engine.geo.raster import open_raster
    from engine.models.registry import ModelRegistry
    from engine.pipelines.inpaint import InpaintRequest, plan_inpaint

    polygons = tmp_path / "damage.geojson"
    _four_squares(polygons)
    model = ModelRegistry(models_dir).load("demo-satunet")
    with open_raster(rasters_dir / RASTER) as source:
        job = plan_inpaint(model, InpaintRequest(image=rasters_dir / RASTER, polygons=polygons, class_field="dmg"), source)
    assert len(job.regions) == 4

    common = ["--models-dir", str(models_dir), "--device", "cpu", "inpaint", str(rasters_dir / RASTER),
              "--polygons", str(polygons), "--class-field", "dmg", "--disaster-type", "wind", "--steps", "2",
              "--guidance", "1", "--seed", "5"]
    assert main([*common, "-o", str(tmp_path / "single.tif")]) == 0
    assert main([*common, "-o", str(tmp_path / "ray.tif"), "--ray", "auto"]) == 0
    assert "wave 1/1: 4/4 regions done" in capsys.readouterr().err
    _same_raster(tmp_path / "single.tif", tmp_path / "ray.tif")
    _same_raster(tmp_path / "single_label.tif", tmp_path / "ray_label.tif")
    with rasterio.open(tmp_path / "ray.tif") as post, rasterio.open(rasters_dir / RASTER) as pre:
        assert (post.read() != pre.read()).any()  # the squares were painted


def test_cancel_stops_the_waves_and_leaves_no_output(ray_cluster, models_dir, tmp_path):
    from engine.geo.grid import grid_from_extent
    from engine.pipelines.generate import GenerateRequest
    from engine.scaleout.regions import generate_on_ray
    from engine.tasks import DeviceRegistry

    grid = grid_from_extent([500000, 4099632, 500512, 4100000], "EPSG:32618", pixel_size=1)
    request = GenerateRequest(grid=grid, prompt="a fmow satellite image", steps=2, guidance_scale=1.0, seed=3,
                              max_region_cells=32)
    seen = []
    with pytest.raises(Cancelled):
        generate_on_ray(DeviceRegistry(models_dir, device="cpu"), "demo-satunet", request, tmp_path / "out.tif",
                        address="auto", workers=2, progress=seen.append, cancel=lambda: any("regions done" in p.message for p in seen))
    done = [p for p in seen if "regions done" in p.message]
    assert len(done) == 1 and done[0].message.startswith("wave 1/5")  # no later wave was scheduled
    assert list(tmp_path.iterdir()) == []


def test_serve_with_ray_runs_http_jobs_on_the_cluster(ray_cluster, models_dir, single_generate, tmp_path):
    from engine.client import EngineClient
    from engine.server.launcher import start_engine

    address = ray_cluster.get_runtime_context().gcs_address
    with start_engine(models_dir, tmp_path / "jobs", extra_args=["--device", "cpu", "--ray", address]) as engine:
        client = EngineClient(engine.url)
        job_id = client.submit("generate", {"model": "demo-satunet", **HTTP_GENERATE}, {})
        job = client.wait(job_id)
        assert job["state"] == "succeeded", engine.log()
        client.download(job_id, "image", tmp_path / "http.tif")
    _same_raster(single_generate, tmp_path / "http.tif")
    # progress counted regions (then decoded blocks), not each region's denoising steps as one process does
    from engine.models.registry import ModelRegistry
    from engine.pipelines.canvas import decode_blocks
    from engine.pipelines.generate import GenerateRequest, plan_regions

    with rasterio.open(single_generate) as src:
        grid = _grid_of(src)
    request = GenerateRequest(grid=grid, prompt="", max_region_cells=32)
    canvas, regions, _, _ = plan_regions(request, ModelRegistry(models_dir).load("demo-satunet"))
    assert job["done"] == job["total"] == len(regions) + len(decode_blocks(canvas, 64, 8))


def _grid_of(src):
    from engine.geo.grid import OutputGrid

    return OutputGrid(src.crs, src.transform, src.width, src.height)


def test_ray_errors_are_one_line(models_dir, tmp_path, monkeypatch, capsys):
    import subprocess

    from engine.server.launcher import free_port

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    assert main(["--models-dir", str(models_dir), *GENERATE, "-o", str(tmp_path / "x.tif"), "--ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install "gfm4d[ray]"' in err
    monkeypatch.undo()

    nobody = f"127.0.0.1:{free_port()}"
    run = subprocess.run([sys.executable, "-m", "engine.server", "--work-dir", str(tmp_path / "jobs"), "--ray", nobody],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"gfm4d serve: error: could not connect to the Ray cluster at '{nobody}' (Connection refused); "
        "is `ray start --head` running there?"
    ]
    assert not (tmp_path / "x.tif").exists()
