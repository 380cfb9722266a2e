"""Nothing hangs, nothing is lost: a real engine process refuses what cannot run and ends every job it takes."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import requests
from rasterio.transform import Affine

from engine.client import EngineClient, JobLost
from engine.server.launcher import start_engine

UTM = "EPSG:32632"
ORIGIN = (600000.0, 5100000.0)
PROMPT = "a fmow satellite image of a farm in italy"
MAX_OUTPUT_MPX = 0.02  # 20000 px: 64 x 64 passes, 256 x 256 does not
MAX_QUEUED = 3


def extent(size_px: int = 64, resolution: float = 2.0) -> list[float]:
    return [ORIGIN[0], ORIGIN[1], ORIGIN[0] + size_px * resolution, ORIGIN[1] + size_px * resolution]


def params(**kw) -> dict:
    base = {"task": "generate", "extent": extent(), "crs": UTM, "resolution_m": 2.0, "prompt": PROMPT, "steps": 2,
            "guidance_scale": 3.0, "seed": 1}
    base.update(kw)
    return base


def write_raster(path: Path, size: int = 64) -> Path:
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs=UTM,
                   transform=Affine(2.0, 0.0, ORIGIN[0], 0.0, -2.0, ORIGIN[1] + 2 * size))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.random.default_rng(0).integers(0, 255, (3, size, size), dtype=np.uint8))
    return path


def wait(url: str, job_id: str, until=lambda job: job["state"] in ("succeeded", "failed", "cancelled"), timeout=120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = requests.get(f"{url}/v1/jobs/{job_id}", timeout=30).json()
        if until(job):
            return job
        assert job["state"] not in ("succeeded", "failed", "cancelled"), job
        assert time.monotonic() < deadline, f"still {job['state']}: {job}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def engine(models_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    process = start_engine(models_dir, work, env={"GFM4D_DEVICE": "cpu"}, extra_args=[
        "--max-output-mpx", str(MAX_OUTPUT_MPX), "--max-queued", str(MAX_QUEUED), "--max-upload-mb", "1"])
    yield SimpleNamespace(url=process.url, work=work, process=process)
    process.stop()


def total_jobs(url: str) -> int:
    return requests.get(f"{url}/v1/jobs", timeout=10).json()["total"]


# --- refused at submit ---------------------------------------------------------------------------------


def test_a_job_without_its_required_files_is_refused_naming_them(engine, tmp_path):
    raster = write_raster(tmp_path / "scene.tif")
    before = total_jobs(engine.url)
    cases = [
        (requests.post(f"{engine.url}/v1/jobs", json={"task": "superres"}, timeout=10), "`image`"),
        (requests.post(f"{engine.url}/v1/jobs", json={"task": "predict", "target_date": "2020-01-01"}, timeout=10), "`frames`"),
        (requests.post(f"{engine.url}/v1/jobs", data={"params": json.dumps({"task": "inpaint"})},
                       files={"image": ("scene.tif", raster.read_bytes())}, timeout=10), "`polygons`"),
    ]
    for response, slot in cases:
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert "needs" in detail and slot in detail, detail
    assert total_jobs(engine.url) == before


BAD = [
    (params(window=4), "latent cell"),
    (params(window=12), "latent cell"),
    (params(window=64, overlap=64), "smaller than the window"),
    (params(window=64, overlap=96), "smaller than the window"),
    (params(overlap=4), "latent cell"),
    (params(extent=[0, 0, 1e300, 1e300]), "resolution_m / pixel_size"),
    (params(extent=[-1e308, -1e308, 1e308, 1e308]), "resolution_m / pixel_size"),
    (params(resolution_m=1e-300), "resolution_m / pixel_size"),
    (params(resolution_m=None, pixel_size=1e-300), "resolution_m / pixel_size"),
    (params(extent=extent(256)), "--max-output-mpx"),
    (params(paths={"like": "/" + "a" * 100_000}), "at most 4096 characters"),
    (params(paths={"like": "/" + "a/" * 3000 + "x.tif"}), "at most 4096 characters"),
    (params(paths={"like": "/" + "b" * 300 + "/x.tif"}), "path"),
]


@pytest.mark.parametrize("job, words", BAD, ids=range(len(BAD)))
def test_a_job_that_cannot_run_is_refused_with_one_line(engine, job, words):
    response = requests.post(f"{engine.url}/v1/jobs", json=job, timeout=30)
    assert 400 <= response.status_code < 500, response.text
    detail = response.json()["detail"]
    assert words in detail and "\n" not in detail, detail


def test_deeply_nested_json_is_refused(engine, tmp_path):
    image = write_raster(tmp_path / "image.tif").read_bytes()
    polygons = b'{"features": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    response = requests.post(f"{engine.url}/v1/jobs", data={"params": json.dumps({"task": "inpaint"})},
                             files={"image": ("image.tif", image), "polygons": ("labels.json", polygons)}, timeout=30)
    assert response.status_code == 422 and "nested too deeply" in response.json()["detail"], response.text
    for depth in (100, 5000, 100_000):
        body = "[" * depth + "]" * depth
        response = requests.post(f"{engine.url}/v1/jobs", data=body, headers={"Content-Type": "application/json"}, timeout=30)
        assert response.status_code == 422, (depth, response.text)
        nested = json.dumps(params())[:-1] + ', "class_prompts": ' + '{"a": ' * depth + "1" + "}" * depth + "}"
        response = requests.post(f"{engine.url}/v1/jobs", data={"params": nested}, files={"like": ("x.tif", b"1")}, timeout=30)
        assert response.status_code == 422, (depth, response.text)


def test_health_shows_the_limits_and_an_oversized_output_is_refused(engine):
    health = requests.get(f"{engine.url}/v1/health", timeout=10).json()
    assert health["max_output_pixels"] == int(MAX_OUTPUT_MPX * 1e6)
    assert health["max_queued_jobs"] == MAX_QUEUED
    assert health["work_dir_quota_bytes"] == 50 * 10**9 and health["work_dir_used_bytes"] >= 0
    response = requests.post(f"{engine.url}/v1/jobs", json=params(extent=extent(256)), timeout=10)
    assert response.status_code == 422
    assert "256 x 256 px" in response.json()["detail"]


# --- queue, progress, cancel -------------------------------------------------------------------------------


def test_a_full_queue_is_503_and_progress_is_known_from_submission(engine):
    running = requests.post(f"{engine.url}/v1/jobs", json=params(steps=500, seed=2), timeout=10).json()
    assert running["total"] > 0 and running["progress"] == 0, "the job's size is known when it is accepted"
    wait(engine.url, running["id"], until=lambda job: job["state"] == "running")
    queued = [requests.post(f"{engine.url}/v1/jobs", json=params(seed=3 + k), timeout=10) for k in range(MAX_QUEUED)]
    assert all(r.status_code == 202 for r in queued), [r.text for r in queued]
    refused = requests.post(f"{engine.url}/v1/jobs", json=params(seed=9), timeout=10)
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert "jobs waiting" in refused.json()["detail"]
    for response in queued:
        assert requests.post(f"{engine.url}/v1/jobs/{response.json()['id']}/cancel", timeout=10).json()["state"] == "cancelled"
    job = requests.get(f"{engine.url}/v1/jobs/{running['id']}", timeout=10).json()
    assert job["state"] == "running" and job["total"] >= 500
    requests.post(f"{engine.url}/v1/jobs/{running['id']}/cancel", timeout=10)
    assert wait(engine.url, running["id"])["state"] == "cancelled"
    assert requests.post(f"{engine.url}/v1/jobs", json=params(seed=10), timeout=10).status_code == 202


def test_a_cancel_after_the_job_finished_keeps_its_results(engine, tmp_path):
    job_id = requests.post(f"{engine.url}/v1/jobs", json=params(seed=21), timeout=10).json()["id"]
    assert wait(engine.url, job_id)["state"] == "succeeded"
    late = requests.post(f"{engine.url}/v1/jobs/{job_id}/cancel", timeout=10)
    assert late.status_code == 200 and late.json()["state"] == "succeeded" and not late.json()["deleted"]
    client = EngineClient(engine.url)
    assert client.cancel(job_id)["state"] == "succeeded"
    path = client.download(job_id, "image", tmp_path / "image.tif")
    with rasterio.open(path) as src:
        assert src.shape == (64, 64)
    gone = client.delete(job_id)
    assert gone["deleted"] is True and not (engine.work / job_id).exists()
    with pytest.raises(JobLost, match="no longer knows"):
        client.wait(job_id, poll_interval=0.05)


def test_a_job_whose_folder_vanishes_fails_and_says_so(engine):
    import shutil

    job_id = requests.post(f"{engine.url}/v1/jobs", json=params(steps=500, seed=31), timeout=10).json()["id"]
    wait(engine.url, job_id, until=lambda job: job["state"] == "running" and job["done"] >= 1)
    shutil.rmtree(engine.work / job_id)
    job = wait(engine.url, job_id)
    assert job["state"] == "failed", job
    assert "folder was removed" in job["error"] and "submit the job again" in job["error"]
    assert str(engine.work) not in job["error"]
    assert requests.get(f"{engine.url}/v1/health", timeout=10).json()["running"] is None
    follow = requests.post(f"{engine.url}/v1/jobs", json=params(seed=32), timeout=10).json()["id"]
    assert wait(engine.url, follow)["state"] == "succeeded", "the worker goes on with the next job"


# --- the connection ----------------------------------------------------------------------------------


def test_the_connection_stays_usable_after_error_responses(engine, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (2 * 1024 * 1024))
    session = requests.Session()
    errors = [
        lambda: session.post(f"{engine.url}/v1/jobs", json={"task": "nope"}, timeout=10),
        lambda: session.get(f"{engine.url}/v1/jobs/nope", timeout=10),
        lambda: session.post(f"{engine.url}/v1/jobs", data=b"x=1", headers={"Content-Type": "text/plain"}, timeout=10),
        lambda: session.post(f"{engine.url}/v1/jobs", data=json.dumps(params(window=4)),
                             headers={"Content-Type": "application/json"}, timeout=10),
        lambda: session.post(f"{engine.url}/v1/jobs", data={"params": json.dumps(params())},
                             files={"like": ("big.tif", big.read_bytes())}, timeout=10),
        lambda: session.get(f"{engine.url}/v1/health", headers={"Origin": "https://evil.example"}, timeout=10),
    ]
    for make in errors:
        response = make()
        assert 400 <= response.status_code < 500, response.text
        assert response.json()["detail"]
        follow = session.get(f"{engine.url}/v1/health", timeout=10)
        assert follow.status_code == 200

    # On one raw keep-alive connection: an error answer, then a good request on the same socket.
    host, port = engine.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        body = b'{"task": "nope"}'
        sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        first = _read_response(sock)
        assert first.startswith(b"HTTP/1.1 422")
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert _read_response(sock).startswith(b"HTTP/1.1 200")


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(rest) < length:
        rest += sock.recv(65536)
    return head


# --- storage -------------------------------------------------------------------------------------------


FSIZE_WRAPPER = """#!{python}
import os, resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))  # files over this size cannot be written: a full disk
os.execv({python!r}, [{python!r}, *sys.argv[1:]])
"""


def test_a_full_disk_fails_the_job_with_what_to_do_and_a_quota_refuses_with_507(models_dir, tmp_path):
    wrapper = tmp_path / "python-small-files"
    wrapper.write_text(FSIZE_WRAPPER.format(python=sys.executable, limit=48 * 1024))
    wrapper.chmod(0o755)
    work = tmp_path / "work"
    with start_engine(models_dir, work, python=str(wrapper), env={"GFM4D_DEVICE": "cpu"}, log_path=tmp_path / "log",
                      extra_args=["--work-quota-gb", "0.00005"]) as engine:
        job_id = requests.post(f"{engine.url}/v1/jobs", json=params(extent=extent(192), steps=1), timeout=10).json()["id"]
        job = wait(engine.url, job_id)
        assert job["state"] == "failed", job
        error = job["error"]
        assert "could not write the job's files" in error and "disk" in error and "submit the job again" in error, error
        assert "bug" not in error and str(work) not in error
        assert job["results"] == [] and not any((work / job_id / "results").iterdir())

        upload = write_raster(tmp_path / "like.tif", size=160)  # 77 kB, over what the quota has left
        with open(upload, "rb") as handle:
            response = requests.post(f"{engine.url}/v1/jobs", data={"params": json.dumps({"task": "generate", "prompt": PROMPT})},
                                     files={"like": ("like.tif", handle)}, timeout=30)
        assert response.status_code == 507, response.text
        assert "quota" in response.json()["detail"] and "DELETE /v1/jobs/ID" in response.json()["detail"]
        assert str(work) not in response.text
        assert requests.delete(f"{engine.url}/v1/jobs/{job_id}", timeout=10).json()["deleted"] is True


def test_storage_errors_map_to_507_and_503_with_what_to_do():
    import errno

    from engine.server.errors import InsufficientStorage, ServiceUnavailable
    from engine.server.jobs import storage_failure, storage_refusal

    assert isinstance(storage_refusal(OSError(errno.ENOSPC, "No space left on device")), InsufficientStorage)
    assert isinstance(storage_refusal(OSError(errno.EROFS, "Read-only file system")), ServiceUnavailable)
    assert "--work-dir" in str(storage_refusal(OSError(errno.EACCES, "Permission denied")))
    assert "read-only" in storage_failure(OSError(errno.EROFS, "Read-only file system"))


# --- many jobs ------------------------------------------------------------------------------------------


def test_thousands_of_stored_jobs_start_and_list_a_page_at_a_time(models_dir, tmp_path):
    from engine.server.jobs import JOB_FILE, JobRecord, utc_now, write_json_atomic
    from engine.server.schemas import JobState

    work = tmp_path / "work"
    now = utc_now()
    count = 2500
    for index in range(count):
        folder = work / f"{index:032x}"
        (folder / "results").mkdir(parents=True)
        record = JobRecord(id=folder.name, task="generate", state=JobState.succeeded, params={"steps": 2},
                           created_at=now, finished_at=now)
        write_json_atomic(folder / JOB_FILE, record.model_dump_json(), durable=False)
    started = time.monotonic()
    with start_engine(models_dir, work, env={"GFM4D_DEVICE": "cpu"}) as engine:
        print(f"engine with {count} stored jobs answered after {time.monotonic() - started:.1f} s")
        page = requests.get(f"{engine.url}/v1/jobs", timeout=30).json()
        assert len(page["jobs"]) == 100 and page["total"] == count and page["next_offset"] == 100
        client = EngineClient(engine.url, timeout=60)
        every = client.jobs(page_size=1000)
        assert len({job["id"] for job in every}) == count
        last = requests.get(f"{engine.url}/v1/jobs", params={"offset": count - 5, "limit": 1000}, timeout=30).json()
        assert len(last["jobs"]) == 5 and last["next_offset"] is None
        assert requests.get(f"{engine.url}/v1/jobs", params={"limit": 5000}, timeout=30).status_code == 422


# --- cancel granularity --------------------------------------------------------------------------------


def test_cancel_takes_effect_within_a_batch_of_windows_not_a_whole_step(models_dir, tmp_path):
    from engine.errors import Cancelled
    from engine.geo.grid import grid_from_extent
    from engine.models.registry import ModelRegistry
    from engine.pipelines.generate import GenerateRequest, generate

    model = ModelRegistry(models_dir).load("demo-satunet")
    calls = []
    unet_forward = model.unet.forward

    def counting_forward(*args, **kwargs):
        calls.append(1)
        return unet_forward(*args, **kwargs)

    model.unet.forward = counting_forward
    grid = grid_from_extent(tuple(extent(64)), UTM, resolution_m=2.0)
    # 64 px in 16 px windows without overlap: 16 windows, one UNet call each, per denoising step.
    request = GenerateRequest(grid=grid, prompt=PROMPT, steps=3, guidance_scale=3.0, window=16, overlap=0, batch_size=1)
    checks = []

    def cancel_on_the_fifth_check() -> bool:
        checks.append(1)
        return len(checks) >= 5

    with pytest.raises(Cancelled):
        generate(model, request, tmp_path / "out.tif", cancel=cancel_on_the_fifth_check)
    assert len(calls) < 16, f"{len(calls)} UNet calls: the job ran on past a batch after it was cancelled"
    assert not (tmp_path / "out.tif").exists()
