"""The engine's HTTP API v1 against real uvicorn processes on loopback with the demo models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.transform import Affine

from engine import __version__
from engine.server.launcher import start_engine

UTM = "EPSG:32632"
ORIGIN = (600000.0, 5100000.0)
UPLOAD_LIMIT_MB = 0.25  # 262144 bytes: the small rasters below pass, the NAIP sample (360 kB) does not


def tiny_extent(size_px: int = 64, resolution: float = 2.0, shift: float = 0.0) -> list[float]:
    x0, y0 = ORIGIN[0] + shift, ORIGIN[1]
    return [x0, y0, x0 + size_px * resolution, y0 + size_px * resolution]


def tiny_params(seed: int = 1, **kw) -> dict:
    params = {"task": "generate", "extent": tiny_extent(), "crs": UTM, "resolution_m": 2.0,
              "prompt": "a fmow satellite image of a farm in italy", "steps": 2, "guidance_scale": 3.0, "seed": seed}
    params.update(kw)
    return params


def long_params(**kw) -> dict:
    # The tiny canvas (shapes the engine has already run, so no warm-up) for 500 steps: about 10 s
    # on 2 CPU cores, far longer than the tests take to cancel or kill it.
    return tiny_params(steps=500, **kw)


def write_small_raster(path: Path, size: int = 64, crs: str = UTM) -> Path:
    rng = np.random.default_rng(0)
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs=crs,
                   transform=Affine(2.0, 0.0, ORIGIN[0], 0.0, -2.0, ORIGIN[1] + 2 * size))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(rng.integers(0, 255, (3, size, size), dtype=np.uint8))
    return path


def post_job(url: str, params, files: dict | None = None, headers: dict | None = None) -> requests.Response:
    if files is None:
        return requests.post(f"{url}/v1/jobs", json=params, headers=headers, timeout=30)
    fields = {"params": json.dumps(params) if not isinstance(params, str) else params}
    opened = {name: (Path(path).name, open(path, "rb")) for name, path in files.items()}
    try:
        return requests.post(f"{url}/v1/jobs", data=fields, files=opened, headers=headers, timeout=30)
    finally:
        for _, handle in opened.values():
            handle.close()


def wait_for(url: str, job_id: str, until=lambda job: job["state"] in ("succeeded", "failed", "cancelled"),
             timeout: float = 90.0, headers: dict | None = None, poll: float = 0.1) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = requests.get(f"{url}/v1/jobs/{job_id}", headers=headers, timeout=30).json()
        if until(job):
            return job
        assert job["state"] not in ("succeeded", "failed", "cancelled"), f"job {job_id} ended before the awaited moment: {job}"
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']} after {timeout} s: {job}"
        time.sleep(poll)


def download(url: str, job_id: str, name: str, dest: Path) -> Path:
    response = requests.get(f"{url}/v1/jobs/{job_id}/results/{name}", timeout=30)
    assert response.status_code == 200, response.text
    dest.write_bytes(response.content)
    return dest


def read_raster(path: Path):
    with rasterio.open(path) as src:
        return src.read(), src.crs, src.transform, src.tags()


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("files")
    allowed, outside = root / "allowed", root / "outside"
    allowed.mkdir()
    outside.mkdir()
    write_small_raster(allowed / "small.tif")
    write_small_raster(outside / "secret.tif")
    (allowed / "escape.tif").symlink_to(outside / "secret.tif")
    (allowed / "linked_dir").symlink_to(outside, target_is_directory=True)
    (root / "not_a_raster.tif").write_text("this is not a GeoTIFF")
    (root / "points.geojson").write_text(json.dumps({
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32632"}},
        "features": [{"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": list(ORIGIN)}}],
    }))
    return SimpleNamespace(root=root, allowed=allowed, outside=outside, small=allowed / "small.tif",
                           naip=Path(__file__).parent / "data" / "rasters" / "m_3607824_se_17_1_20160620_sub.tif")


@pytest.fixture(scope="module")
def engine(models_dir, files, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    process = start_engine(models_dir, work, allowed_dirs=[files.allowed],
                           extra_args=["--max-upload-mb", str(UPLOAD_LIMIT_MB)], env={"GFM4D_DEVICE": "cpu"})
    yield SimpleNamespace(url=process.url, work=work, process=process)
    process.stop()


@pytest.fixture(scope="module")
def demo_model(models_dir):
    from engine.models.registry import ModelRegistry

    return ModelRegistry(models_dir).load("demo-satunet")


# --- health, models, OpenAPI ---------------------------------------------------------------------


def test_health_and_models_describe_this_engine(engine):
    health = requests.get(f"{engine.url}/v1/health", timeout=10).json()
    assert health["version"] == __version__
    assert (health["device"], health["dtype"], health["gpu_free_bytes"]) == ("cpu", "float32", None)
    assert "generate" in health["tasks"]
    assert health["max_upload_bytes"] == int(UPLOAD_LIMIT_MB * 1024 * 1024)
    assert health["server_paths"] is True

    models = {m["name"]: m for m in requests.get(f"{engine.url}/v1/models", timeout=10).json()["models"]}
    assert {"demo-satunet", "demo-sd"} <= set(models)  # other demo models may come along
    assert models["demo-satunet"]["kind"] == "satunet" and models["demo-satunet"]["native_resolution"] == 128
    assert models["demo-satunet"]["uses_metadata"] and not models["demo-sd"]["uses_metadata"]
    assert "generate" in models["demo-sd"]["tasks"]


def test_openapi_publishes_each_tasks_params(engine):
    schema = requests.get(f"{engine.url}/openapi.json", timeout=10).json()
    components = schema["components"]["schemas"]
    union = components["JobParams"]
    assert union["discriminator"]["mapping"]["generate"] == "#/components/schemas/GenerateJob"
    generate = components["GenerateJob"]
    assert {"task", "prompt"} <= set(generate["required"])
    assert generate["properties"]["steps"]["minimum"] == 1
    assert generate["additionalProperties"] is False
    body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}


# --- generating -----------------------------------------------------------------------------------


def test_generate_over_http_equals_generate_in_process(engine, files, demo_model, tmp_path):
    from engine.geo.grid import grid_from_extent, grid_like
    from engine.pipelines.generate import GenerateRequest, generate

    response = post_job(engine.url, tiny_params(seed=7))
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"
    job = wait_for(engine.url, response.json()["id"])
    assert job["state"] == "succeeded", job
    assert job["progress"] == 1.0 and job["done"] == job["total"] > 2
    assert {r["name"] for r in job["results"]} == {"image", "preview"}
    assert requests.get(f"{engine.url}/v1/health", timeout=10).json()["loaded_models"] == ["demo-satunet"]
    remote, crs, transform, tags = read_raster(download(engine.url, job["id"], "image", tmp_path / "remote.tif"))
    preview = download(engine.url, job["id"], "preview", tmp_path / "preview.png")
    assert preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    grid = grid_from_extent(tuple(tiny_extent()), UTM, resolution_m=2.0)
    request = GenerateRequest(grid=grid, prompt=tiny_params()["prompt"], steps=2, guidance_scale=3.0, seed=7)
    local, local_crs, local_transform, _ = read_raster(generate(demo_model, request, tmp_path / "local.tif").path)
    assert remote.shape == (3, 64, 64)
    np.testing.assert_array_equal(remote, local)
    assert crs == local_crs and transform == local_transform and tags["GFM4D_SEED"] == "7"

    other, *_ = read_raster(generate(demo_model, GenerateRequest(**{**request.__dict__, "seed": 8}), tmp_path / "other.tif").path)
    assert np.abs(other.astype(int) - local).mean() > 1, "another seed gives another image, so the equality above means something"

    # An uploaded `like` raster: the output takes its grid exactly.
    response = post_job(engine.url, {k: v for k, v in tiny_params(seed=7).items() if k not in ("extent", "crs", "resolution_m")},
                        files={"like": files.small})
    assert response.status_code == 202, response.text
    job = wait_for(engine.url, response.json()["id"])
    assert job["state"] == "succeeded" and job["inputs"] == ["like"], job
    remote_like, crs, transform, _ = read_raster(download(engine.url, job["id"], "image", tmp_path / "like.tif"))
    with rasterio.open(files.small) as src:
        assert (crs, transform) == (src.crs, src.transform)
        like_grid = grid_like(src.crs, src.transform, src.width, src.height)
    local_like, *_ = read_raster(generate(demo_model, GenerateRequest(**{**request.__dict__, "grid": like_grid}), tmp_path / "ll.tif").path)
    np.testing.assert_array_equal(remote_like, local_like)


def test_cancel_stops_a_running_job_within_a_step_and_leaves_no_result(engine):
    running = post_job(engine.url, long_params(seed=11)).json()["id"]
    queued = post_job(engine.url, tiny_params(seed=12)).json()["id"]
    wait_for(engine.url, running, until=lambda job: job["state"] == "running")
    assert requests.get(f"{engine.url}/v1/jobs/{queued}", timeout=10).json()["queue_position"] == 0

    cancelled_in_queue = requests.delete(f"{engine.url}/v1/jobs/{queued}", timeout=10).json()
    assert cancelled_in_queue["state"] == "cancelled" and cancelled_in_queue["deleted"] is False

    wait_for(engine.url, running, until=lambda job: job["state"] == "running" and job["done"] >= 2)
    at_cancel = requests.delete(f"{engine.url}/v1/jobs/{running}", timeout=10).json()
    assert at_cancel["cancel_requested"] and at_cancel["state"] == "running"
    job = wait_for(engine.url, running)
    assert job["state"] == "cancelled", job
    assert job["done"] <= at_cancel["done"] + 1 < job["total"], "it stopped within one denoising step"
    assert job["results"] == [] and not any((engine.work / running / "results").iterdir())
    refused = requests.get(f"{engine.url}/v1/jobs/{running}/results/image", timeout=10)
    assert refused.status_code == 409 and "cancelled" in refused.json()["detail"]

    # A second DELETE removes the finished job and its folder.
    gone = requests.delete(f"{engine.url}/v1/jobs/{running}", timeout=10).json()
    assert gone["deleted"] is True and not (engine.work / running).exists()
    assert requests.get(f"{engine.url}/v1/jobs/{running}", timeout=10).status_code == 404


def test_eight_clients_three_jobs_each_nothing_lost(engine, tmp_path):
    outcomes: dict[int, tuple[str, np.ndarray]] = {}
    errors: list[BaseException] = []

    def client(index: int) -> None:
        try:
            ids = {}
            for k in range(3):
                seed = 100 + index * 3 + k
                response = post_job(engine.url, tiny_params(seed=seed))
                assert response.status_code == 202, response.text
                ids[seed] = response.json()["id"]
            for seed, job_id in ids.items():
                job = wait_for(engine.url, job_id, timeout=120, poll=0.3)
                assert job["state"] == "succeeded", job
                assert job["params"]["seed"] == seed
                pixels, *_ = read_raster(download(engine.url, job_id, "image", tmp_path / f"{seed}.tif"))
                outcomes[seed] = (job_id, pixels)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not errors, errors
    assert sorted(outcomes) == list(range(100, 124))
    assert len({job_id for job_id, _ in outcomes.values()}) == 24
    digests = {pixels.tobytes() for _, pixels in outcomes.values()}
    assert len(digests) == 24, "every job got its own seed's image, none another's"
    listed = {job["id"] for job in requests.get(f"{engine.url}/v1/jobs?state=succeeded", timeout=10).json()["jobs"]}
    assert {job_id for job_id, _ in outcomes.values()} <= listed


# --- refusing bad requests ----------------------------------------------------------------------------


BAD_JSON_PARAMS = [
    (["not", "an", "object"], 422, "JSON object"),
    ({"prompt": "x"}, 422, "no task"),
    ({"task": "paint"}, 422, "unknown task 'paint'"),
    (tiny_params(model="no-such-model"), 422, "unknown model 'no-such-model'"),
    (tiny_params(steps=0), 422, "steps"),
    (tiny_params(steps="many"), 422, "steps"),
    (tiny_params(seed=-1), 422, "seed"),
    (tiny_params(cloud_cover=2), 422, "cloud_cover"),
    (tiny_params(extent=[1, 2, 3]), 422, "extent"),
    (tiny_params(extent=[600200, 5100000, 600000, 5100100]), 422, "inverted"),
    (tiny_params(extent=[0, 0, 2e7, 2e7]), 422, "10000000 x 10000000 px"),
    (tiny_params(crs="EPSG:999999"), 422, "crs"),
    (tiny_params(crs=None), 422, "needs `crs`"),
    (tiny_params(pixel_size=2.0), 422, "not both"),
    (tiny_params(resolution_m=None), 422, "resolution_m"),
    (tiny_params(resolution_m=-2), 422, "resolution_m"),
    (tiny_params(date="2020-13-45"), 422, "date"),
    (tiny_params(scheduler="fastest"), 422, "unknown scheduler"),
    (tiny_params(promt="typo"), 422, "promt: unknown parameter"),
    ({k: v for k, v in tiny_params().items() if k != "prompt"}, 422, "prompt: required"),
    (tiny_params(paths={"like": 5}), 422, "paths"),
    (tiny_params(paths={"mask": "/tmp/x.tif"}), 422, "takes: like, aoi"),
    (tiny_params(paths={"like": "relative/x.tif"}), 422, "relative"),
]


@pytest.mark.parametrize("params, status, words", BAD_JSON_PARAMS, ids=[w for *_, w in BAD_JSON_PARAMS])
def test_malformed_params_are_refused_with_what_to_fix(engine, params, status, words):
    response = requests.post(f"{engine.url}/v1/jobs", json=params, timeout=10)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_malformed_uploads_and_routes_are_refused(engine, files):
    url = engine.url
    no_where = {k: v for k, v in tiny_params().items() if k not in ("extent", "crs", "resolution_m")}
    cases = [
        (post_job(url, "{not json", files={"like": files.small}), 422, "not valid JSON"),
        (post_job(url, no_where, files={"mask": files.small}), 422, "takes no file named 'mask'"),
        (post_job(url, no_where, files={"like": files.root / "not_a_raster.tif"}), 422, "the uploaded like file 'not_a_raster.tif' cannot be opened"),
        (post_job(url, {**no_where, "resolution_m": 2.0}, files={"aoi": files.root / "points.geojson"}), 422, "polygons are needed"),
        (post_job(url, tiny_params(), files={"like": files.small}), 422, "exactly one of"),
        (requests.post(f"{url}/v1/jobs", data=b"task=generate", headers={"Content-Type": "text/plain"}, timeout=10), 415, "multipart"),
        (requests.post(f"{url}/v1/jobs", data=b"x", headers={"Content-Type": "multipart/form-data"}, timeout=10), 400, "boundary"),
        (requests.post(f"{url}/v1/jobs", data=b'--b\r\nContent-Disposition: form-data; name="params"\r\n\r\n{}',
                       headers={"Content-Type": "multipart/form-data; boundary=b"}, timeout=10), 400, "ended before"),
        (requests.post(f"{url}/v1/jobs", files={"like": ("a.tif", b"123")}, timeout=10), 422, "no `params` field"),
        (requests.post(f"{url}/v1/jobs", data={"params": "{}"}, files={"../like": ("a.tif", b"1")}, timeout=10), 400, "not usable"),
        (requests.post(f"{url}/v1/jobs", data={"params": "{}", "steps": "3"}, files={"like": ("a.tif", b"1")}, timeout=10),
         422, "unexpected form fields steps"),
        (requests.post(f"{url}/v1/jobs", json=[1, 2], timeout=10), 422, "JSON object"),
        (requests.get(f"{url}/v1/jobs/doesnotexist", timeout=10), 404, "no job"),
        (requests.delete(f"{url}/v1/jobs/doesnotexist", timeout=10), 404, "no job"),
        (requests.get(f"{url}/v1/jobs?state=sleeping", timeout=10), 422, "state"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, (words, response.text)
        assert words in response.json()["detail"], (words, response.text)
    assert not any((engine.work / ".incoming").iterdir()), "refused uploads leave nothing behind"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)
FIELDS = st.sampled_from(["task", "extent", "crs", "resolution_m", "pixel_size", "prompt", "steps", "seed",
                          "date", "cloud_cover", "model", "window", "overlap", "paths", "scheduler", "batch_size"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=st.dictionaries(FIELDS, JSON_VALUES, max_size=5), raw=st.binary(max_size=40))
def test_no_payload_gives_a_server_error(engine, mutation, raw):
    for response in (
        requests.post(f"{engine.url}/v1/jobs", data=json.dumps({**tiny_params(), **mutation}),  # NaN/Infinity included
                      headers={"Content-Type": "application/json"}, timeout=10),
        requests.post(f"{engine.url}/v1/jobs", data={"params": raw}, files={"like": ("x.tif", raw)}, timeout=10),
    ):
        assert response.status_code < 500, response.text
        if response.status_code == 202:  # a valid job: do not let it occupy the worker
            requests.delete(f"{engine.url}/v1/jobs/{response.json()['id']}", timeout=10)
        else:
            assert response.json()["detail"]


# --- uploads, paths, tokens ---------------------------------------------------------------------------


def test_upload_over_the_limit_is_413_and_leaves_nothing(engine, files):
    no_where = {k: v for k, v in tiny_params().items() if k not in ("extent", "crs", "resolution_m")}
    response = post_job(engine.url, no_where, files={"like": files.naip})
    assert response.status_code == 413
    assert "262144 bytes" in response.json()["detail"] and "--max-upload-mb" in response.json()["detail"]

    def chunked_body():  # no Content-Length: the limit is enforced while reading
        yield b'--b\r\nContent-Disposition: form-data; name="like"; filename="big.tif"\r\n\r\n'
        for _ in range(8):
            yield b"\0" * 65536

    response = requests.post(f"{engine.url}/v1/jobs", data=chunked_body(),
                             headers={"Content-Type": "multipart/form-data; boundary=b"}, timeout=10)
    assert response.status_code == 413
    assert not any((engine.work / ".incoming").iterdir())
    assert requests.get(f"{engine.url}/v1/health", timeout=10).status_code == 200


def test_server_paths_must_stay_inside_the_allowed_folders(engine, files, tmp_path):
    no_where = {k: v for k, v in tiny_params(seed=21).items() if k not in ("extent", "crs", "resolution_m")}
    accepted = requests.post(f"{engine.url}/v1/jobs", json={**no_where, "paths": {"like": str(files.small)}}, timeout=10)
    assert accepted.status_code == 202, accepted.text
    job = wait_for(engine.url, accepted.json()["id"])
    assert job["state"] == "succeeded", job
    _, crs, transform, _ = read_raster(download(engine.url, job["id"], "image", tmp_path / "out.tif"))
    with rasterio.open(files.small) as src:
        assert (crs, transform) == (src.crs, src.transform)

    escapes = [
        str(files.allowed / ".." / "outside" / "secret.tif"),
        str(files.allowed / "escape.tif"),  # a symlink pointing out
        str(files.allowed / "linked_dir" / "secret.tif"),  # through a symlinked folder
        str(files.outside / "secret.tif"),
    ]
    for path in escapes:
        response = requests.post(f"{engine.url}/v1/jobs", json={**no_where, "paths": {"like": path}}, timeout=10)
        assert response.status_code == 403, (path, response.text)
        assert "outside the folders this engine may read" in response.json()["detail"]
    missing = requests.post(f"{engine.url}/v1/jobs", json={**no_where, "paths": {"like": str(files.allowed / "nope.tif")}}, timeout=10)
    assert missing.status_code == 422 and "not a file" in missing.json()["detail"]


def test_token_is_required_on_every_endpoint(models_dir, files, tmp_path):
    token = "s3cret-token-for-tests-only"
    with start_engine(models_dir, tmp_path / "work", token=token, env={"GFM4D_DEVICE": "cpu"}) as engine:
        for method, path in (("GET", "/v1/health"), ("GET", "/v1/models"), ("GET", "/v1/jobs"), ("POST", "/v1/jobs"),
                             ("GET", "/v1/jobs/x"), ("DELETE", "/v1/jobs/x"), ("GET", "/openapi.json")):
            bare = requests.request(method, engine.url + path, timeout=10)
            assert bare.status_code == 401 and bare.headers["www-authenticate"] == "Bearer", path
            wrong = requests.request(method, engine.url + path, headers={"Authorization": "Bearer nope"}, timeout=10)
            assert wrong.status_code == 401 and "not this engine's token" in wrong.json()["detail"]
        auth = {"Authorization": f"Bearer {token}"}
        assert requests.get(f"{engine.url}/v1/health", headers=auth, timeout=10).json()["server_paths"] is False
        response = requests.post(f"{engine.url}/v1/jobs", headers=auth, timeout=10,
                                 json={**tiny_params(), "extent": None, "crs": None, "resolution_m": None,
                                       "paths": {"like": str(files.small)}})
        assert response.status_code == 403 and "--allow-dir" in response.json()["detail"]
        response = post_job(engine.url, tiny_params(seed=5), headers=auth)
        assert response.status_code == 202
        assert wait_for(engine.url, response.json()["id"], headers=auth)["state"] == "succeeded"


def test_listening_beyond_loopback_needs_a_token():
    from engine.server import serve
    from engine.server.security import InsecureBind, check_bind

    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        check_bind(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.20", "engine.example.org"):
        with pytest.raises(InsecureBind, match="needs a token"):
            check_bind(host, None)
        with pytest.raises(InsecureBind):
            check_bind(host, "   ")
        check_bind(host, "a-long-enough-token-1234")
    with pytest.raises(InsecureBind):
        serve(host="0.0.0.0", port=1, token=None)  # refused before anything binds

    env = {k: v for k, v in os.environ.items() if k != "GFM4D_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "engine.server", "--host", "0.0.0.0", "--port", "1"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 2 and "needs a token" in done.stderr


# --- persistence ------------------------------------------------------------------------------------


def test_restart_keeps_finished_jobs_fails_the_interrupted_one_and_runs_the_queued(models_dir, tmp_path):
    work = tmp_path / "work"
    first = start_engine(models_dir, work, env={"GFM4D_DEVICE": "cpu"})
    try:
        finished = post_job(first.url, tiny_params(seed=31)).json()["id"]
        assert wait_for(first.url, finished)["state"] == "succeeded"
        before = download(first.url, finished, "image", tmp_path / "before.tif").read_bytes()
        interrupted = post_job(first.url, long_params(seed=32)).json()["id"]
        waiting = post_job(first.url, tiny_params(seed=33)).json()["id"]
        wait_for(first.url, interrupted, until=lambda job: job["state"] == "running" and job["done"] >= 1)
    finally:
        first.kill()  # as a crash: no shutdown code runs
    on_disk = json.loads((work / interrupted / "job.json").read_text())
    assert on_disk["state"] == "running"

    with start_engine(models_dir, work, env={"GFM4D_DEVICE": "cpu"}) as second:
        job = requests.get(f"{second.url}/v1/jobs/{finished}", timeout=10).json()
        assert job["state"] == "succeeded"
        assert download(second.url, finished, "image", tmp_path / "after.tif").read_bytes() == before
        job = requests.get(f"{second.url}/v1/jobs/{interrupted}", timeout=10).json()
        assert job["state"] == "failed" and "restarted" in job["error"] and job["results"] == []
        assert not any((work / interrupted / "results").iterdir())
        job = wait_for(second.url, waiting)
        assert job["state"] == "succeeded" and job["params"]["seed"] == 33
        assert json.loads((work / waiting / "job.json").read_text())["state"] == "succeeded"


def test_cleanup_deletes_finished_jobs_after_their_lifetime(models_dir, tmp_path):
    from datetime import timedelta

    from engine.server.jobs import JOB_FILE, JobManager, JobRecord, utc_now, write_json_atomic
    from engine.server.schemas import JobState
    from engine.server.security import PathPolicy
    from engine.server.settings import ServerSettings
    from engine.tasks import DeviceRegistry

    settings = ServerSettings(models_dir=models_dir, work_dir=tmp_path, result_ttl_s=3600)
    now = utc_now()
    ages = {"old": timedelta(hours=2), "recent": timedelta(minutes=10)}
    for name, age in ages.items():
        (tmp_path / name / "results").mkdir(parents=True)
        record = JobRecord(id=name, task="generate", state=JobState.succeeded, params={}, created_at=now - age,
                           finished_at=now - age)
        write_json_atomic(tmp_path / name / JOB_FILE, record.model_dump_json())
    assert not [p for p in (tmp_path / "old").iterdir() if p.name.endswith(".tmp")]
    manager = JobManager(settings, DeviceRegistry(models_dir, device="cpu"), PathPolicy())
    manager.recover()
    assert manager.cleanup(now) == ["old"]
    assert not (tmp_path / "old").exists() and (tmp_path / "recent").is_dir()
    assert [r.id for r in manager.list()[0]] == ["recent"]
    assert manager.cleanup(now + timedelta(minutes=51)) == ["recent"]
