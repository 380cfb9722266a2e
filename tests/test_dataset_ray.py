"""Scale-out on a real local Ray cluster (2 CPU workers, no mocks): same bytes, lost workers, resume, large extents."""

import json
import os
import signal

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from engine.dataset import build_dataset, parse_recipe
from engine.errors import Cancelled

from test_dataset import _records, _sample_files, recipe_data


@pytest.fixture(scope="module")
def registry(models_dir):
    from engine.tasks import DeviceRegistry

    return DeviceRegistry(models_dir, device="cpu")


@pytest.fixture(scope="module")
def reference(registry, tmp_path_factory):
    """The dataset made in this process, without Ray."""
    root = tmp_path_factory.mktemp("reference") / "ds"
    build_dataset(parse_recipe(recipe_data()), root, registry=registry)
    return root


def test_ray_gives_the_same_bytes_and_a_killed_worker_loses_and_duplicates_nothing(ray_cluster, registry, reference, tmp_path):
    root = tmp_path / "ray"
    pools, killed = [], []

    def kill_a_worker(record):
        if not killed:  # mid-run: one sample is recorded, the others are in flight on both actors
            pid = ray_cluster.get(pools[0].actors[0].pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    summary = build_dataset(parse_recipe(recipe_data()), root, registry=registry, ray_address="auto", ray_workers=2,
                            on_record=kill_a_worker, ray_options={"on_pool": pools.append})
    assert killed and summary.made == summary.planned == 4
    ids = [r["id"] for r in _records(root)]
    assert len(ids) == len(set(ids)) == 4
    assert _sample_files(root) == _sample_files(reference)
    assert not (root / ".scratch").exists()
    # a worker wrote each sample straight into the folder; the catalogue lists them all
    catalog = json.loads((root / "stac" / "catalog.json").read_text())
    assert len([link for link in catalog["links"] if link["rel"] == "child"]) == 2


def test_interrupted_ray_run_is_finished_by_running_it_again(ray_cluster, registry, reference, tmp_path):
    root = tmp_path / "resumed"
    seen = []
    with pytest.raises(Cancelled):
        build_dataset(parse_recipe(recipe_data()), root, registry=registry, ray_address="auto", ray_workers=2,
                      on_record=seen.append, cancel=lambda: len(seen) >= 1)
    assert 1 <= len(_records(root)) < 4
    summary = build_dataset(parse_recipe(recipe_data()), root, registry=registry, ray_address="auto", ray_workers=2)
    assert summary.already_done + summary.made == 4
    ids = [r["id"] for r in _records(root)]
    assert len(ids) == len(set(ids)) == 4
    assert _sample_files(root) == _sample_files(reference)


def test_large_extent_on_ray_equals_one_process_pixel_for_pixel(ray_cluster, registry, tmp_path):
    from engine.geo.grid import OutputGrid
    from engine.pipelines.generate import GenerateRequest, generate, plan_regions
    from engine.scaleout.regions import generate_on_ray, region_waves

    model = registry.load("demo-satunet")
    grid = OutputGrid(CRS.from_epsg(32618), Affine(1.0, 0, 500000, 0, -1.0, 4100000), 512, 368)
    request = GenerateRequest(grid=grid, prompt="a fmow satellite image", steps=2, guidance_scale=1.0, seed=3,
                              max_region_cells=32)
    _, regions, _, _ = plan_regions(request, model)
    waves = region_waves(regions)
    assert len(regions) == 6 and len(waves) == 5 and max(len(w) for w in waves) == 2
    for wave in waves:  # regions of one wave are disjoint, and each comes after every earlier region it overlaps
        for a in wave:
            for b in wave:
                assert a == b or regions[a].intersection(regions[b]) is None
    single = generate(model, request, tmp_path / "single.tif")
    on_ray = generate_on_ray(registry, "demo-satunet", request, tmp_path / "ray.tif", address="auto", workers=2)
    assert single.regions == on_ray.regions == 6
    with rasterio.open(tmp_path / "single.tif") as a, rasterio.open(tmp_path / "ray.tif") as b:
        assert a.profile == b.profile and a.tags() == b.tags()
        assert np.array_equal(a.read(), b.read())
