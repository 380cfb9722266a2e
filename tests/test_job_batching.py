"""Jobs on one model share network calls (engine.runtime.denoiser_batching), and the CPU thread setting.

What must hold: each job's result equals its run alone (batching only regroups rows; on the CPU a
batched convolution may sum in another order, so latents are compared within 1e-5 and 8-bit
pixels within one level), the network really sees rows of several jobs in one call, no job
starves another, and the queue stays first-come first-served.
"""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch

from engine.geo.tiling import Span, plan_windows
from engine.pipelines.sampling import CanvasJob, denoise_canvas, encode_prompt, position_noise
from engine.runtime.denoiser_batching import DenoiserBatcher, job_scope
from engine.tasks import DeviceRegistry, run_task_locally

PATIENT_S = 5.0  # partners wait this long for each other here, so that batching does not depend on timing
UTM = "EPSG:32632"


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_job():
    """Two jobs' threads at once: one torch thread each (as the engine's default on a small machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(models_dir):
    return DeviceRegistry(models_dir, device="cpu").load("demo-satunet")


@pytest.fixture
def batcher(model):
    """A fresh batcher on the shared model, patient enough that partners always meet."""
    model.denoiser_batcher = DenoiserBatcher(max_wait_s=PATIENT_S)
    yield model.denoiser_batcher
    model.denoiser_batcher = None


def canvas_latents(model, seed: int, cells: int, steps: int, batch: int) -> torch.Tensor:
    """A whole canvas denoised by the shared loop, with per-window metadata and guidance."""
    windows = plan_windows(cells, cells, 16, 4)
    metadata = [np.linspace(0.1, 0.7, 7, dtype=np.float32) * (k + 1) / len(windows) for k in range(len(windows))]
    job = CanvasJob(noise=position_noise(seed, Span(0, 0, cells, cells), 4), windows=windows, window_metadata=metadata, overlap=4)
    text = encode_prompt(model, "a fmow satellite image of a farm", "", 3.0)
    return denoise_canvas(model, model.make_scheduler(None), job, text, num_inference_steps=steps, guidance_scale=3.0,
                          batch_size=batch, generator=torch.Generator().manual_seed(seed))


def run_as_jobs(model, jobs: dict[str, tuple], start_after: dict[str, str] | None = None) -> tuple[dict, dict]:
    """Each job in its own thread and job scope; (latents, finish time) by name.

    `start_after[b] = a`: b starts once a network call of a has run (b joins a running job).
    """
    out, finished, errors = {}, {}, []

    def work(name: str) -> None:
        try:
            with job_scope(name):
                out[name] = canvas_latents(model, *jobs[name])
                finished[name] = time.monotonic()
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = {}
    for name in jobs:
        after = (start_after or {}).get(name)
        if after is not None:
            deadline = time.monotonic() + 60
            while not any(after == job for call in model.denoiser_batcher.network_calls for job, _ in call):
                assert time.monotonic() < deadline and not errors, errors
                time.sleep(0.01)
        threads[name] = threading.Thread(target=work, args=(name,))
        threads[name].start()
    for thread in threads.values():
        thread.join(120)
    assert not errors, errors
    return out, finished


def test_jobs_batched_together_get_their_solo_latents(model, batcher):
    # Different seeds, canvases (4 windows vs 1), step counts (their timesteps differ in a shared
    # call) and windows per call.
    jobs = {"big": (1, 24, 4, 3), "small": (2, 16, 3, 1)}
    batched, _ = run_as_jobs(model, jobs)
    shared = [call for call in batcher.network_calls if len(call) > 1]
    assert shared, f"no network call held rows of both jobs: {batcher.network_calls}"
    assert all({job for job, _ in call} == {"big", "small"} for call in shared)
    # 4 windows at 3 per call run as two even calls of 2 (engine.pipelines.staging.batch_layout), plus the
    # small job's 1 window; both guidance halves of each.
    assert max(sum(rows for _, rows in call) for call in shared) == 4 + 2

    model.denoiser_batcher = None  # solo: the plain backbone call, outside any job scope
    for name, args in jobs.items():
        solo = canvas_latents(model, *args)
        assert batched[name].shape == solo.shape
        torch.testing.assert_close(batched[name], solo, rtol=0, atol=1e-5)


def test_a_small_job_is_not_starved_by_a_big_one(model, batcher):
    # The big job sends 8 rows a call (4 windows), the small one 2; a network call holds 4 rows.
    batcher.max_rows = 4
    jobs = {"big": (3, 24, 3, 4), "small": (4, 16, 2, 1)}
    batched, finished = run_as_jobs(model, jobs, start_after={"small": "big"})

    calls = batcher.network_calls
    assert max(sum(rows for _, rows in call) for call in calls) <= 4
    with_small = [i for i, call in enumerate(calls) if any(job == "small" for job, _ in call)]
    during = calls[with_small[0] : with_small[-1] + 1]
    assert all({job for job, _ in call} == {"big", "small"} for call in during), (
        f"once the small job waits, every network call serves both jobs: {calls}")
    assert finished["small"] < finished["big"], "the small job, started second, finishes first"

    model.denoiser_batcher = None  # the big job's calls were split across network calls: still its own result
    for name, args in jobs.items():
        torch.testing.assert_close(batched[name], canvas_latents(model, *args), rtol=0, atol=1e-5)


class RowBackbone:
    """A denoiser whose output row is its input row plus the row's timestep; optionally out of memory past `fits` rows."""

    classifier_free_guidance = True

    def __init__(self, fits: int | None = None):
        self.fits = fits
        self.calls: list[int] = []

    def predict(self, model, x, timestep, hidden, pooled, guidance_scale, window, kwargs):
        self.calls.append(x.shape[0])
        if self.fits is not None and x.shape[0] > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        t = torch.as_tensor(timestep, dtype=x.dtype).reshape(-1, 1, 1, 1)
        return x + t + kwargs["metadata"][:, :1, None, None]


def call_together(batcher, backbone, model, calls: dict[str, tuple[torch.Tensor, int]]) -> dict:
    """Each (x, timestep) from its own job thread at once; the outputs or errors by name."""
    out = {}
    ready = threading.Barrier(len(calls))

    def work(name):
        x, t = calls[name]
        with job_scope(name) as scope:
            batcher.join(scope)
            ready.wait()
            try:
                out[name] = batcher.predict(scope, backbone, model, x, torch.tensor(t), torch.zeros(len(x), 3, 8), None,
                                            1.0, (4, 4), {"metadata": torch.full((len(x), 7), float(t))})
            except Exception as exc:
                out[name] = exc

    threads = [threading.Thread(target=work, args=(name,)) for name in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return out


def test_rows_keep_their_own_timestep_and_conditions_in_a_shared_call():
    batcher, backbone = DenoiserBatcher(max_wait_s=PATIENT_S), RowBackbone()
    calls = {"a": (torch.randn(4, 4, 4, 4), 981), "b": (torch.randn(2, 4, 4, 4), 21)}
    out = call_together(batcher, backbone, SimpleNamespace(device=torch.device("cpu")), calls)
    assert backbone.calls == [6]
    for name, (x, t) in calls.items():
        torch.testing.assert_close(out[name], (x + t) + t, rtol=0, atol=0)


def test_a_shared_call_out_of_gpu_memory_is_retried_per_job():
    # Together the calls do not fit; each alone does: each job gets its own result, nobody an error.
    batcher, backbone = DenoiserBatcher(max_wait_s=PATIENT_S), RowBackbone(fits=4)
    calls = {"a": (torch.randn(4, 4, 4, 4), 5), "b": (torch.randn(2, 4, 4, 4), 7)}
    out = call_together(batcher, backbone, SimpleNamespace(device=torch.device("cpu")), calls)
    assert backbone.calls[0] == 6 and sorted(backbone.calls[1:]) == [2, 4]
    for name, (x, t) in calls.items():
        torch.testing.assert_close(out[name], (x + t) + t, rtol=0, atol=0)
    # A call too big on its own gets the error, so that its job halves its batch (BatchSize.shrink).
    out = call_together(batcher, RowBackbone(fits=3), SimpleNamespace(device=torch.device("cpu")), {"a": calls["a"]})
    assert isinstance(out["a"], torch.cuda.OutOfMemoryError)


def test_on_a_gpu_a_shared_call_holds_what_free_memory_holds(monkeypatch, model):
    import engine.runtime.device as device

    per_row = device.window_bytes(model.unet.config, 4, 4, model.dtype, 1)
    monkeypatch.setattr(device, "free_memory", lambda _: int(per_row * 5 / (1 - device.MEMORY_RESERVE)) + 1)
    on_gpu = SimpleNamespace(device=torch.device("cuda"), unet=model.unet, dtype=model.dtype)
    batcher, backbone = DenoiserBatcher(max_wait_s=PATIENT_S), RowBackbone()
    calls = {"a": (torch.randn(4, 4, 4, 4), 5), "b": (torch.randn(4, 4, 4, 4), 7)}
    out = call_together(batcher, backbone, on_gpu, calls)
    assert backbone.calls == [5, 3]  # 5 rows fit: 3 of the oldest call and 2 of the other, then the rest
    for name, (x, t) in calls.items():
        torch.testing.assert_close(out[name], (x + t) + t, rtol=0, atol=0)
    # Never less than one job's own call, which it would have run alone anyway.
    backbone = RowBackbone()
    out = call_together(batcher, backbone, on_gpu, {"a": (torch.randn(8, 4, 4, 4), 5), "b": (torch.randn(2, 4, 4, 4), 7)})
    assert backbone.calls == [8, 2]


# --- through the engine's job manager ------------------------------------------------------------------


def generate_params(seed: int, size_px: int, steps: int, model_name: str = "demo-satunet", **extra) -> dict:
    x0, y0 = 600000.0 + 1000 * seed, 5100000.0
    return {"task": "generate", "model": model_name, "extent": [x0, y0, x0 + 2 * size_px, y0 + 2 * size_px], "crs": UTM,
            "resolution_m": 2.0, "prompt": "a fmow satellite image of a farm in italy", "steps": steps,
            "guidance_scale": 3.0, "seed": seed, **extra}


@pytest.fixture
def manager(models_dir, tmp_path):
    from engine.server.jobs import JobManager
    from engine.server.security import PathPolicy
    from engine.server.settings import ServerSettings

    settings = ServerSettings(models_dir=models_dir, work_dir=tmp_path / "work", sd21_dir=None, device="cpu",
                              concurrent_jobs=2, threads=torch.get_num_threads())
    jobs = JobManager(settings, DeviceRegistry(models_dir, device="cpu"), PathPolicy(()))
    jobs.start()
    yield jobs
    jobs.stop()


def submit(manager, params: dict) -> str:
    return manager.submit(json.dumps(params), [], manager.new_staging_dir()).id


def wait_all(manager, ids: list[str], timeout: float = 120.0) -> list:
    deadline = time.monotonic() + timeout
    while True:
        records = [manager.get(job_id) for job_id in ids]
        if all(r.state.value in ("succeeded", "failed", "cancelled") for r in records):
            return records
        assert time.monotonic() < deadline, [(r.id, r.state, r.message) for r in records]
        time.sleep(0.05)


def test_engine_runs_two_jobs_on_one_model_in_shared_calls(manager, models_dir, tmp_path):
    assert manager.concurrent_jobs == 2
    model = manager.registry.load("demo-satunet")  # the object the jobs will run: its batcher is theirs
    model.denoiser_batcher = DenoiserBatcher(max_wait_s=PATIENT_S)
    try:
        params = {"first": generate_params(5, 192, 6, batch_size=4), "second": generate_params(6, 128, 4)}
        ids = {name: submit(manager, p) for name, p in params.items()}
        records = wait_all(manager, list(ids.values()))
        assert [r.state.value for r in records] == ["succeeded", "succeeded"], [r.error for r in records]
        first, second = records
        assert second.started_at < first.finished_at, "the second job ran beside the first"
        shared = [call for call in model.denoiser_batcher.network_calls if len(call) > 1]
        assert shared and all({job for job, _ in call} == set(ids.values()) for call in shared)
    finally:
        model.denoiser_batcher = None

    solo_registry = DeviceRegistry(models_dir, device="cpu")
    for name, job_id in ids.items():
        served = manager.result_path(job_id, "image")
        solo = run_task_locally(solo_registry, params[name], {}, {"image": tmp_path / f"{name}-solo.tif"})["image"]
        with rasterio.open(served) as a, rasterio.open(solo) as b:
            pixels, expected = a.read().astype(int), b.read().astype(int)
            assert (a.crs, a.transform) == (b.crs, b.transform)
        # Latents agree within ~1e-6; a pixel right at a rounding edge may land one level apart.
        assert np.abs(pixels - expected).max() <= 1, f"{name}: batched pixels differ from the solo run"
        assert (pixels == expected).mean() > 0.99


def test_a_job_on_another_model_is_not_overtaken(manager):
    # first (demo-satunet) runs; other (demo-sd) cannot run beside it; then (demo-satunet) could,
    # but must not overtake `other`, which came before it.
    ids = [submit(manager, generate_params(7, 64, 40)),
           submit(manager, generate_params(8, 64, 2, model_name="demo-sd")),
           submit(manager, generate_params(9, 64, 2))]
    first, other, then = wait_all(manager, ids)
    assert [r.state.value for r in (first, other, then)] == ["succeeded"] * 3, [r.error for r in (first, other, then)]
    assert other.started_at >= first.finished_at, "a job on another model waits for the running one"
    assert then.started_at >= other.finished_at, "a later job on the running model does not overtake it"


# --- threads -----------------------------------------------------------------------------------------


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_default_threads_leave_room_for_the_rest_of_the_machine():
    from engine.runtime.threads import default_threads

    assert [default_threads(cores) for cores in (1, 2, 3, 4, 8, 16, 64)] == [1, 1, 1, 2, 4, 4, 4]


def test_threads_from_the_setting_or_the_environment(monkeypatch, restore_threads):
    from engine.errors import InputError
    from engine.runtime.threads import apply_threads, default_threads

    monkeypatch.delenv("GFM4D_THREADS", raising=False)
    assert apply_threads() == default_threads() == torch.get_num_threads()
    monkeypatch.setenv("GFM4D_THREADS", "3")
    assert apply_threads() == 3 == torch.get_num_threads()
    assert apply_threads(2) == 2 == torch.get_num_threads()  # the option wins over the environment
    monkeypatch.setenv("GFM4D_THREADS", "many")
    with pytest.raises(InputError, match="GFM4D_THREADS must be a whole number of CPU threads"):
        apply_threads()


def test_threads_option_of_task_commands_and_serve(models_dir, tmp_path, monkeypatch, restore_threads):
    import argparse

    from engine.cli import build_parser, main
    from engine.server.cli_support import add_serve_arguments

    parser = build_parser()
    for command in (["generate", "--prompt", "x", "-o", "o.tif"], ["dataset", "r.yaml", "-o", "d"]):
        assert parser.parse_args([*command, "--threads", "3"]).threads == 3
    serve = argparse.ArgumentParser()
    add_serve_arguments(serve)
    parsed = serve.parse_args(["--threads", "2", "--concurrent-jobs", "3"])
    assert (parsed.threads, parsed.concurrent_jobs) == (2, 3)
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "--prompt", "x", "-o", "o.tif", "--threads", "0"])

    # A real local run sets torch's threads before it works.
    monkeypatch.delenv("GFM4D_THREADS", raising=False)
    wanted = 3 if torch.get_num_threads() != 3 else 2
    x0, y0 = 600000.0, 5100000.0
    status = main(["--models-dir", str(models_dir), "--device", "cpu", "generate", "--model", "demo-satunet",
                   "--extent", str(x0), str(y0), str(x0 + 128), str(y0 + 128), "--crs", UTM, "--resolution", "2",
                   "--prompt", "a farm", "--steps", "1", "-o", str(tmp_path / "out.tif"), "--threads", str(wanted)])
    assert status == 0 and (tmp_path / "out.tif").is_file()
    assert torch.get_num_threads() == wanted
