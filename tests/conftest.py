"""Shared fixtures: the real sample data."""

import importlib.util
import os
from pathlib import Path

import pytest

# Requests that name no model run on the tiny demo SatUNet in tests (the product's default is the
# built-in GFM4D-mini); subprocesses and engines the tests start inherit this.
os.environ.setdefault("GFM4D_DEFAULT_MODEL", "demo-satunet")

# One CPU thread count for the engines and commands the tests start and for the tests' own
# computations (GFM4D's default, engine.runtime.threads), so that results compared byte for byte
# are summed in the same order everywhere. Not in the QGIS tests' Python, which has no torch and
# must never import the engine (tests/qgis check that).
if "GFM4D_THREADS" not in os.environ and importlib.util.find_spec("torch") is not None:
    from engine.runtime.threads import default_threads

    os.environ["GFM4D_THREADS"] = str(default_threads())


@pytest.fixture(scope="session", autouse=True)
def engine_thread_count():
    if importlib.util.find_spec("torch") is None or "GFM4D_THREADS" not in os.environ:  # QGIS's Python: no torch
        yield
        return
    import torch

    torch.set_num_threads(int(os.environ["GFM4D_THREADS"]))
    yield

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"
# Non-commercial samples (xBD) are not copied into the repository; they live beside it.
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """A folder of the demo models, built afresh for each test module (modules may add models to it)."""
    from engine.models.demo import build_demo_models

    folder = tmp_path_factory.mktemp("models")
    build_demo_models(folder)
    return folder


@pytest.fixture(scope="session")
def rasters_dir() -> Path:
    return TEST_DATA / "rasters"


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    return TEST_DATA / "vectors"


@pytest.fixture(scope="session")
def xbd_dir() -> Path:
    path = SHARED_DATA / "xbd"
    if not path.is_dir():
        pytest.skip(f"xBD samples (non-commercial licence, not in the repository) not found at {path}")
    return path


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPU workers) for every Ray test: its start-up is slow, its reuse is not."""
    from engine.scaleout.cluster import connect

    ray = connect("local", init_options={"num_cpus": 2})
    yield ray
    ray.shutdown()
