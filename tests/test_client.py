"""engine.client.EngineClient (and the CLI's --engine helpers) against a real engine process."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.features import geometry_mask

from engine.client import EngineClient, EngineRefused, EngineUnreachable, JobFailed, JobLost, _MultipartBody
from engine.errors import Cancelled
from engine.server.launcher import free_port, start_engine

DATA = Path(__file__).parent / "data"
AOI_SHAPEFILE = DATA / "vectors" / "xview2_deploy_joplin" / "intersect_polys.shp"
PROMPT = "a fmow satellite image of a farm in italy"


def tiny(seed: int = 1, **kw) -> dict:
    params = {"extent": [600000, 5100000, 600128, 5100128], "crs": "EPSG:32632", "resolution_m": 2.0,
              "prompt": PROMPT, "steps": 2, "guidance_scale": 3.0, "seed": seed}
    params.update(kw)
    return params


@pytest.fixture(scope="module")
def engine(models_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    process = start_engine(models_dir, work, extra_args=["--max-upload-mb", "1"], env={"GFM4D_DEVICE": "cpu"})
    process.work = work
    yield process
    process.stop()


@pytest.fixture
def client(engine) -> EngineClient:
    return EngineClient(engine.url, timeout=30)


def test_run_submits_waits_and_downloads_every_result(client, tmp_path):
    reports = []
    paths = client.run("generate", tiny(seed=3), out_dir=tmp_path / "out", progress=reports.append, poll_interval=0.05)
    assert set(paths) == {"image", "preview"}
    assert paths["image"] == tmp_path / "out" / "image.tif"
    with rasterio.open(paths["image"]) as src:
        assert (src.width, src.height, src.count, src.crs.to_epsg()) == (64, 64, 3, 32632)
        assert src.tags()["GFM4D_SEED"] == "3"
    assert paths["preview"].read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")], "no partial downloads left"
    done = [r["done"] for r in reports]
    assert done == sorted(done) and reports[-1]["state"] == "succeeded" and reports[-1]["done"] == reports[-1]["total"]


def test_a_shapefile_aoi_is_zipped_uploaded_and_masks_outside_the_polygons(client, tmp_path):
    from engine.geo.vectors import read_polygons

    size = 0.0004  # degrees: the three polygons' extent (about 0.0245 deg) is about 61 px wide
    paths = client.run("generate", {"pixel_size": size, "prompt": PROMPT, "steps": 2, "seed": 5},
                       files={"aoi": AOI_SHAPEFILE}, out_dir=tmp_path)
    layer = read_polygons(AOI_SHAPEFILE)
    left, bottom, right, top = layer.bounds()
    with rasterio.open(paths["image"]) as src:
        assert src.crs.to_epsg() == 4326
        assert src.transform.c == pytest.approx(left) and src.transform.f == pytest.approx(top)
        assert (src.width, src.height) == (round((right - left) / size), round((top - bottom) / size))
        valid = src.dataset_mask() > 0
        expected = geometry_mask(layer.geometries, out_shape=valid.shape, transform=src.transform, invert=True)
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(valid, expected)


def test_a_refused_request_carries_the_engines_message(client):
    with pytest.raises(EngineRefused) as refused:
        client.submit("generate", tiny(steps=0, promt="typo"))
    assert refused.value.status == 422
    assert {e["field"] for e in refused.value.errors} == {"steps", "promt"}
    assert "steps" in str(refused.value) and "unknown parameter" in str(refused.value)
    with pytest.raises(EngineRefused, match="unknown task 'paint'"):
        client.submit("paint", {})


def test_a_failed_job_raises_job_failed_with_the_reason(client, engine):
    import shutil

    with pytest.raises(EngineRefused, match="multiple of the model's latent cell") as refused:
        client.submit("generate", tiny(window=100))  # not a multiple of the VAE's 8 px: refused before it queues
    assert refused.value.status == 422
    job_id = client.submit("generate", tiny(steps=500, seed=17))
    while client.status(job_id)["state"] == "queued":
        time.sleep(0.05)
    folder = engine.work / job_id
    for _ in range(50):  # its folder vanishes while it runs (the job's own status writes may race the removal)
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            break
        time.sleep(0.01)
    assert not folder.exists()
    with pytest.raises(JobFailed, match="folder was removed") as failed:
        client.wait(job_id, poll_interval=0.05)
    assert failed.value.job["state"] == "failed" and failed.value.job["results"] == []


def test_waiting_for_a_job_the_engine_does_not_know_ends_at_once(client):
    with pytest.raises(JobLost, match="no longer knows job 0123"):
        client.wait("0123" * 8, poll_interval=0.05, timeout=30)


def test_ctrl_c_after_the_job_finished_keeps_its_results(client, tmp_path):
    job_id = client.submit("generate", tiny(seed=19))
    client.wait(job_id, poll_interval=0.05)

    def interrupt(job: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # Ctrl-C arriving just as the job has finished
        client.wait(job_id, progress=interrupt, poll_interval=0.05)
    assert client.status(job_id)["state"] == "succeeded"
    assert client.download(job_id, "image", tmp_path / "image.tif").stat().st_size > 0


def test_the_client_and_the_cli_engine_path_run_without_torch(engine, tmp_path):
    import subprocess
    import sys

    code = f"""
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch was imported")
sys.meta_path.insert(0, NoTorch())
from engine.server.cli_support import run_on_engine
params = {tiny(seed=23)!r}
written = run_on_engine({engine.url!r}, None, "generate", params, {{}}, {{"image": {str(tmp_path / "remote.tif")!r}}})
print(sorted(written), "torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['image'] False"
    with rasterio.open(tmp_path / "remote.tif") as src:
        assert src.shape == (64, 64)


def test_ctrl_c_while_waiting_cancels_the_job_on_the_engine(client):
    job_id = client.submit("generate", tiny(steps=500, seed=9))

    def interrupt_once_running(job: dict) -> None:
        if job["state"] == "running" and job["done"] >= 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        client.wait(job_id, progress=interrupt_once_running, poll_interval=0.05)
    assert client.status(job_id)["cancel_requested"] is True
    with pytest.raises(Cancelled, match="was cancelled"):
        client.wait(job_id, poll_interval=0.05, timeout=60)
    assert client.status(job_id)["done"] < 500


def test_download_replaces_the_destination_only_when_complete(client, tmp_path):
    job_id = client.submit("generate", tiny(seed=13))
    client.wait(job_id, poll_interval=0.05)
    dest = tmp_path / "kept.tif"
    dest.write_bytes(b"previous content")
    with pytest.raises(EngineRefused) as missing:
        client.download(job_id, "no-such-result", dest)
    assert missing.value.status == 404 and "image, preview" in str(missing.value)
    assert dest.read_bytes() == b"previous content"
    into_folder = client.download(job_id, "preview", tmp_path)
    assert into_folder == tmp_path / "preview.png"
    assert client.download(job_id, "image", dest) == dest and dest.read_bytes()[:2] in (b"II", b"MM")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.tif", "preview.png"]


def test_uploads_over_the_engines_limit_are_refused_before_sending(client, engine):
    big = DATA / "rasters" / "RGB.byte.tif"  # 1.7 MB; the engine takes 1 MiB
    before = len(client.jobs())
    with pytest.raises(EngineRefused, match="more than the engine accepts") as refused:
        client.submit("generate", {"prompt": PROMPT}, files={"like": big})
    assert refused.value.status == 413 and len(client.jobs()) == before


def test_an_unreachable_engine_is_named_with_what_to_do():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EngineUnreachable, match="cannot reach the GFM4D engine") as unreachable:
        EngineClient(url, timeout=5).health()
    assert url in str(unreachable.value) and "gfm4d serve" in str(unreachable.value)


def test_multipart_body_streams_exactly_the_files(tmp_path):
    from python_multipart.multipart import MultipartParser

    first, second = tmp_path / "a.tif", tmp_path / "b.geojson"
    first.write_bytes(bytes(range(256)) * 300 + b"\r\n--not-a-boundary")
    second.write_bytes(b'{"type": "FeatureCollection"}')
    body = _MultipartBody({"params": '{"task": "generate"}'}, [("like", first), ("aoi", second)])
    chunks = []
    while chunk := body.read(7777):
        chunks.append(chunk)
    raw = b"".join(chunks)
    assert len(raw) == len(body) and max(len(c) for c in chunks) <= 7777

    parts, current = [], {}

    def on_header_value(data, start, end):
        current["header"] = current.get("header", b"") + data[start:end]

    def on_part_data(data, start, end):
        current["data"] = current.get("data", b"") + data[start:end]

    def on_part_end():
        parts.append(dict(current))
        current.clear()

    parser = MultipartParser(body.boundary, {"on_header_value": on_header_value, "on_part_data": on_part_data,
                                             "on_part_end": on_part_end})
    for start in range(0, len(raw), 1000):
        parser.write(raw[start:start + 1000])
    assert [p["data"] for p in parts] == [b'{"task": "generate"}', first.read_bytes(), second.read_bytes()]
    assert b'filename="a.tif"' in parts[1]["header"]


def test_cli_generate_on_an_engine_matches_the_cli_in_process(engine, models_dir, tmp_path):
    from engine.cli import main

    argv = ["--models-dir", str(models_dir), "--device", "cpu", "generate", "--extent", "600000", "5100000", "600128",
            "5100128", "--crs", "EPSG:32632", "--resolution", "2", "--prompt", PROMPT, "--steps", "2", "--seed", "21",
            "--date", "2020-06-01", "--cloud-cover", "0.1"]
    assert main([*argv, "-o", str(tmp_path / "remote.tif"), "--preview", str(tmp_path / "remote.png"), "--engine", engine.url]) == 0
    assert (tmp_path / "remote.png").is_file()
    assert main([*argv, "-o", str(tmp_path / "local.tif")]) == 0
    with rasterio.open(tmp_path / "remote.tif") as remote, rasterio.open(tmp_path / "local.tif") as local:
        np.testing.assert_array_equal(remote.read(), local.read())
        assert remote.transform == local.transform and remote.crs == local.crs
        assert remote.tags()["GFM4D_DATE"] == "2020-06-01" and remote.tags()["GFM4D_CLOUD_COVER"] == "0.1"


def test_clients_in_threads_share_nothing(client, engine):
    ids, errors = [], []

    def submit(seed: int) -> None:
        try:
            ids.append(EngineClient(engine.url).submit("generate", tiny(seed=seed)))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(s,)) for s in range(40, 44)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(set(ids)) == 4
    seeds = sorted(client.wait(job_id, poll_interval=0.1)["params"]["seed"] for job_id in ids)
    assert seeds == [40, 41, 42, 43]
