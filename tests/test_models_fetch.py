"""`gfm4d models fetch` against a real HTTP server on loopback serving a release zip in the released
layout (built from the tiny demo SatUNet): resume after a dropped connection, checksum refusal,
full disk, 404, proxy, then generating with the fetched model."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
import rasterio
from release_server import ReleaseServer, release_zip

from engine.cli import main
from engine.errors import ModelError
from engine.models import fetch as fetch_module
from engine.models.catalogue import load_catalogue
from engine.models.fetch import FETCH_FOLDER, FetchError, Fetcher, select_component_files
from engine.models.layout import COMPONENTS, FETCHED_SD21_FOLDER
from engine.models.registry import ModelRegistry

RUN = "finetune_sd21_demo_md7norm"
ZIP_PATH = f"/records/1/files/{RUN}.zip"
RECORD_PATH = "/api/records/1"


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    from engine.models.demo import build_demo_models

    path = tmp_path_factory.mktemp("demo")
    build_demo_models(path)
    return path


@pytest.fixture(scope="module")
def release(demo_dir, tmp_path_factory):
    """The bytes of a release zip and an SD-2.1 folder holding the frozen components it lacks."""
    folder = tmp_path_factory.mktemp("release")
    data = release_zip(demo_dir / "demo-satunet", folder / f"{RUN}.zip", RUN).read_bytes()
    sd21 = folder / "sd21"
    for component in COMPONENTS:
        shutil.copytree(demo_dir / "demo-satunet" / component, sd21 / component)
    (sd21 / "vae" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"a variant that is not copied")
    return data, sd21


@pytest.fixture(autouse=True)
def no_proxy_for_loopback(monkeypatch):
    """A proxy configured on the test machine must not catch the loopback server's traffic."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def server():
    with ReleaseServer() as running:
        yield running


def archive_entry(url: str, record_url: str | None, **extra) -> dict:
    """A catalogue entry for a DiffusionSat run archive (settings as the released 256/512 entries have them)."""
    return {
        "kind": "archive", "title": "Demo run", "purpose": "tests", "licence": "MIT", "size_bytes": 1000,
        "url": url, "needs_sd21": True, "settings": {"native_resolution": 128, "display_name": "Fetched demo"},
        **({"record_url": record_url} if record_url else {}), **extra,
    }


def catalogue_file(tmp_path, url: str, record_url: str | None, **extra) -> dict:
    """An operator's catalogue file (GFM4D_CATALOGUE) with one archive entry, `fetched-demo`; the catalogue it makes."""
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps({"models": {"fetched-demo": archive_entry(url, record_url, **extra)}}))
    return load_catalogue(path)


def fetcher(models_dir, catalogue, sd21, **options) -> Fetcher:
    return Fetcher(models_dir, catalogue=catalogue, sd21_source=str(sd21), backoff_s=0.01, **options)


def leftovers(models_dir) -> list[str]:
    """What a fetch left in the models directory besides finished models (locks excepted)."""
    hidden = [p.name for p in models_dir.iterdir() if p.name.startswith(".") and p.name != FETCH_FOLDER]
    partial = [p.name for p in (models_dir / FETCH_FOLDER).iterdir() if not p.name.endswith(".lock")] \
        if (models_dir / FETCH_FOLDER).is_dir() else []
    return hidden + partial


def test_fetch_resumes_after_a_dropped_connection_then_generates_like_the_source_model(
        server, release, demo_dir, tmp_path):
    data, sd21 = release
    server.publish(ZIP_PATH, data, record=RECORD_PATH)
    cut = len(data) * 2 // 5
    server.drops[ZIP_PATH] = [cut]
    catalogue = catalogue_file(tmp_path, server.url + ZIP_PATH, server.url + RECORD_PATH)
    models_dir = tmp_path / "models"
    reports = []

    done = fetcher(models_dir, catalogue, sd21, progress=lambda d, t, w: reports.append((d, t, w))).fetch("fetched-demo")

    assert [(d.name, d.installed) for d in done] == [("fetched-demo", True), ("sd21-components", True)]
    first, second = server.requests_for(ZIP_PATH)
    assert first is None and 0 < int(second[len("bytes="):-1]) <= cut  # the second request resumed, not restarted
    downloaded = [d for d, t, w in reports if w == "downloading fetched-demo"]
    assert downloaded[-1] == len(data) and all(t == len(data) for _, t, w in reports if w.startswith("downloading"))
    assert leftovers(models_dir) == []
    installed = models_dir / "fetched-demo"
    assert not (installed / "checkpoint-100" / "optimizer.bin").exists()  # training state is not installed
    assert sorted(p.name for p in (models_dir / FETCHED_SD21_FOLDER).iterdir()) == sorted(COMPONENTS)
    assert not (models_dir / FETCHED_SD21_FOLDER / "vae" / "diffusion_pytorch_model.fp16.safetensors").exists()
    info = ModelRegistry(models_dir).get("fetched-demo")
    assert info.ready and info.kind == "satunet" and info.native_resolution == 128
    assert info.components["vae"] == models_dir / FETCHED_SD21_FOLDER / "vae"

    # The fetched run holds the demo SatUNet's weights: same request, same pixels.
    shutil.copytree(demo_dir / "demo-satunet", models_dir / "demo-satunet")
    for model in ("fetched-demo", "demo-satunet"):
        assert main(["--models-dir", str(models_dir), "--sd21-dir", "", "--device", "cpu", "generate", "--model", model,
                     "--extent", "500000", "4000000", "500128", "4000128", "--crs", "EPSG:32618", "--resolution", "1",
                     "--prompt", "a fmow satellite image of a farm", "--steps", "2", "-o", str(tmp_path / f"{model}.tif")]) == 0
    with rasterio.open(tmp_path / "fetched-demo.tif") as a, rasterio.open(tmp_path / "demo-satunet.tif") as b:
        assert a.crs == b.crs and a.transform == b.transform
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.read().std() > 0


def test_models_list_shows_readiness(server, release, tmp_path, capsys):
    data, sd21 = release
    server.publish(ZIP_PATH, data, record=RECORD_PATH)
    catalogue = catalogue_file(tmp_path, server.url + ZIP_PATH, server.url + RECORD_PATH)
    models_dir = tmp_path / "models"
    fetcher(models_dir, catalogue, sd21).fetch("fetched-demo", with_components=False)

    assert main(["--models-dir", str(models_dir), "--sd21-dir", "", "models", "list", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert listed["fetched-demo"]["ready"] is False
    assert listed["fetched-demo"]["missing_components"] == list(COMPONENTS)
    assert main(["--models-dir", str(models_dir), "--sd21-dir", "", "models", "list"]) == 0
    assert "not ready: no vae, text_encoder, tokenizer, scheduler (run `gfm4d models fetch sd21-components`)" in capsys.readouterr().out

    fetcher(models_dir, catalogue, sd21).fetch("fetched-demo")  # installed already: only the components come
    assert main(["--models-dir", str(models_dir), "--sd21-dir", "", "models", "list"]) == 0
    assert "    ready" in capsys.readouterr().out


@pytest.mark.parametrize("pinned", [False, True])
def test_a_wrong_checksum_is_refused_and_nothing_is_installed(server, release, tmp_path, pinned):
    data, sd21 = release
    if pinned:  # the catalogue's pinned sha256 wins over the record's (correct) md5
        server.publish(ZIP_PATH, data, record=RECORD_PATH)
        catalogue = catalogue_file(tmp_path, server.url + ZIP_PATH, server.url + RECORD_PATH, sha256="0" * 64)
    else:
        server.publish(ZIP_PATH, data, record=RECORD_PATH, checksum=f"md5:{hashlib.md5(b'other').hexdigest()}")
        catalogue = catalogue_file(tmp_path, server.url + ZIP_PATH, server.url + RECORD_PATH)
    models_dir = tmp_path / "models"

    with pytest.raises(FetchError, match="refused and nothing was installed"):
        fetcher(models_dir, catalogue, sd21).fetch("fetched-demo")
    assert sorted(p.name for p in models_dir.iterdir()) == [FETCH_FOLDER]
    assert leftovers(models_dir) == []  # the corrupt download is not kept for resuming


def test_no_download_starts_without_room_for_the_archive_and_its_unpacked_copy(server, release, tmp_path, monkeypatch):
    data, sd21 = release
    server.publish(ZIP_PATH, data, record=RECORD_PATH)
    catalogue = catalogue_file(tmp_path, server.url + ZIP_PATH, server.url + RECORD_PATH)
    free = 2 * len(data) + fetch_module.SPACE_MARGIN_BYTES - 1  # one byte short
    monkeypatch.setattr(fetch_module, "free_bytes", lambda path: free)
    models_dir = tmp_path / "models"

    with pytest.raises(FetchError, match=r"not enough free disk space for fetched-demo .* point GFM4D_MODELS at a larger disk"):
        fetcher(models_dir, catalogue, sd21).fetch("fetched-demo")
    assert server.requests_for(ZIP_PATH) == []
    assert not (models_dir / "fetched-demo").exists() and leftovers(models_dir) == []

    monkeypatch.setattr(fetch_module, "free_bytes", lambda path: free + 1)
    assert fetcher(models_dir, catalogue, sd21).fetch("fetched-demo", with_components=False)[0].installed


def test_a_404_says_what_to_download_by_hand_and_how_to_install_it(server, release, tmp_path, monkeypatch, capsys):
    _, sd21 = release
    catalogue_path = tmp_path / "catalogue.json"
    catalogue_file(tmp_path, server.url + "/records/9/files/missing.zip", None)  # no record: size from HEAD
    monkeypatch.setenv("GFM4D_CATALOGUE", str(catalogue_path))
    models_dir = tmp_path / "models"

    assert main(["--models-dir", str(models_dir), "models", "fetch", "fetched-demo", "--sd21-source", str(sd21)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "HTTP 404" in error and f"{server.url}/records/9/files/missing.zip by hand" in error
    assert "gfm4d models import FILE.zip --name fetched-demo" in error
    assert not (models_dir / "fetched-demo").exists()


def test_unreachable_source_gives_up_after_retries_with_the_by_hand_line(release, tmp_path):
    from engine.server.launcher import free_port

    _, sd21 = release
    url = f"http://127.0.0.1:{free_port()}/records/1/files/{RUN}.zip"  # nothing listens there
    catalogue = catalogue_file(tmp_path, url, None)

    with pytest.raises(FetchError, match=r"refused the connection.*by hand, then run: gfm4d models fetch fetched-demo --archive"):
        fetcher(tmp_path / "models", catalogue, sd21, retries=3).fetch("fetched-demo")


def test_a_zip_downloaded_by_hand_installs_offline_with_the_catalogue_settings(release, tmp_path):
    from engine.server.launcher import free_port

    data, sd21 = release
    offline = f"http://127.0.0.1:{free_port()}"
    zip_file = tmp_path / "downloaded.zip"
    zip_file.write_bytes(data)
    catalogue = catalogue_file(tmp_path, offline + ZIP_PATH, offline + RECORD_PATH, md5=hashlib.md5(data).hexdigest())
    models_dir = tmp_path / "models"

    done = fetcher(models_dir, catalogue, sd21, retries=1).fetch("fetched-demo", archive=zip_file)
    assert [d.name for d in done] == ["fetched-demo", "sd21-components"]
    assert zip_file.read_bytes() == data  # the user's file is left alone
    assert ModelRegistry(models_dir).get("fetched-demo").ready

    catalogue = catalogue_file(tmp_path, offline + ZIP_PATH, offline + RECORD_PATH, md5="0" * 32)
    with pytest.raises(FetchError, match="refused"):
        fetcher(tmp_path / "other", catalogue, sd21, retries=1).fetch("fetched-demo", archive=zip_file)


def test_proxy_settings_from_the_environment_are_honoured(server, release, tmp_path, monkeypatch):
    data, sd21 = release
    server.publish(ZIP_PATH, data, record=RECORD_PATH)
    # A host that does not resolve: the fetch can only succeed through the proxy.
    catalogue = catalogue_file(tmp_path, "http://models.example.invalid" + ZIP_PATH,
                               "http://models.example.invalid" + RECORD_PATH)
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", server.url)

    assert fetcher(tmp_path / "models", catalogue, sd21).fetch("fetched-demo", with_components=False)[0].installed
    assert {host for _, path, _, host in server.log if path == ZIP_PATH} == {"models.example.invalid"}


def test_the_catalogue_lists_the_released_runs_components_and_backbones(tmp_path, capsys):
    catalogue = load_catalogue()
    archives = {e.url for e in catalogue.values() if e.kind == "archive"}
    assert archives == {
        "https://zenodo.org/records/13751498/files/finetune_sd21_sn-satlas-fmow_snr5_md7norm_bs64.zip",
        "https://zenodo.org/records/13756199/files/finetune_sd21_256_sn-satlas-fmow_snr5_md7norm_bs64.zip",
        "https://zenodo.org/records/13756211/files/controlnet3d-mixattn_sd21_md7norm_texas.zip",
        "https://zenodo.org/records/13756246/files/controlnet_sd21_md7norm_fmow_condres256.zip",
    }
    for entry in catalogue.values():
        if entry.kind == "archive":
            assert entry.record_url == entry.url.split("/files/")[0].replace("/records/", "/api/records/")
    assert catalogue["diffusionsat-texas-3d"].requires == ("diffusionsat-256",)
    assert catalogue["sd21-components"].components == COMPONENTS
    repos = {e.repo_id for e in catalogue.values() if e.kind == "snapshot"}
    assert {"stabilityai/stable-diffusion-xl-base-1.0", "stabilityai/stable-diffusion-3-medium-diffusers",
            "black-forest-labs/FLUX.1-dev", "black-forest-labs/FLUX.1-schnell"} <= repos

    assert main(["--models-dir", str(tmp_path), "models", "available", "--json"]) == 0
    listed = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert set(listed) == set(catalogue)
    assert all(e["size_bytes"] > 0 and e["licence"] and e["purpose"] and not e["installed"] for e in listed.values())


def test_unknown_names_and_broken_catalogues_are_one_line_errors(tmp_path, monkeypatch, capsys):
    assert main(["--models-dir", str(tmp_path), "models", "fetch", "diffusionsat-1024"]) == 2
    assert "the catalogue has no model 'diffusionsat-1024'; fetchable models: diffusionsat-256" in capsys.readouterr().err
    broken = tmp_path / "catalogue.json"
    broken.write_text(json.dumps({"models": {"x": {"kind": "archive", "title": "x", "purpose": "x", "licence": "x",
                                                   "size_bytes": 1, "url": "ftp://x"}}}))
    with pytest.raises(ModelError, match="an archive needs an http"):
        load_catalogue(broken)


def test_only_the_pipeline_files_worth_downloading_are_selected():
    files = [
        "vae/config.json", "vae/diffusion_pytorch_model.bin", "vae/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_flax_model.msgpack",
        "text_encoder/config.json", "text_encoder/pytorch_model.bin",  # only .bin here: taken
        "tokenizer/merges.txt", "tokenizer/vocab.json", "scheduler/scheduler_config.json",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "v2-1_768-ema-pruned.safetensors",
        "text_encoder_2/model-00001-of-00002.safetensors", "text_encoder_2/model-00002-of-00002.safetensors",
        "text_encoder_2/model.safetensors.index.json", "text_encoder_2/model.safetensors.index.fp16.json",
        "text_encoder_2/pytorch_model.bin.index.json", "text_encoder_2/config.json",
    ]
    assert select_component_files(files, COMPONENTS) == [
        "scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder/pytorch_model.bin",
        "tokenizer/merges.txt", "tokenizer/vocab.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    ]
    assert select_component_files(files, ["text_encoder_2"]) == [
        "text_encoder_2/config.json", "text_encoder_2/model-00001-of-00002.safetensors",
        "text_encoder_2/model-00002-of-00002.safetensors", "text_encoder_2/model.safetensors.index.json",
    ]


@contextmanager
def engine_on_loopback(models_dir, work_dir):
    """The engine's app served by uvicorn on 127.0.0.1 from a thread of this process (its torch and
    models already imported: a new engine process takes long to start on a busy machine)."""
    import uvicorn

    from engine.server.app import create_app
    from engine.server.launcher import free_port
    from engine.server.settings import ServerSettings

    settings = ServerSettings(models_dir=models_dir, work_dir=work_dir, sd21_dir=None, device="cpu")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "the engine did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_models_fetch_runs_as_an_engine_job_with_progress_then_the_engine_generates_with_it(
        server, release, tmp_path, monkeypatch):
    from engine.client import EngineClient, EngineRefused

    data, sd21 = release
    server.publish(ZIP_PATH, data, record=RECORD_PATH)
    server.drops[ZIP_PATH] = [len(data) // 3]
    catalogue_file(tmp_path, server.url + ZIP_PATH, server.url + RECORD_PATH)
    models_dir = tmp_path / "models"
    monkeypatch.setenv("GFM4D_CATALOGUE", str(tmp_path / "catalogue.json"))
    monkeypatch.setenv("GFM4D_SD21_SOURCE", str(sd21))
    monkeypatch.delenv("GFM4D_SD21_DIR", raising=False)
    with engine_on_loopback(models_dir, tmp_path / "work") as url:
        client = EngineClient(url)
        schema = next(t for t in client.tasks() if t["name"] == "models_fetch")["params_schema"]
        assert "fetched-demo" in schema["properties"]["name"]["enum"]
        with pytest.raises(EngineRefused, match="the catalogue has no model 'nope'"):
            client.submit("models_fetch", {"name": "nope"})

        seen = []
        results = client.run("models_fetch", {"name": "fetched-demo"}, out_dir=tmp_path / "out",
                             progress=seen.append, poll_interval=0.05)
        report = json.loads(results["model"].read_text())["fetched"]
        assert [(r["name"], r["installed"], r["ready"]) for r in report] == [
            ("fetched-demo", True, True), ("sd21-components", True, None)]
        final = seen[-1]
        assert final["state"] == "succeeded" and final["done"] == final["total"] > 0  # progress in bytes
        assert len(server.requests_for(ZIP_PATH)) == 2  # dropped once, resumed once
        models = {m["name"]: m for m in client.models()}
        assert models["fetched-demo"]["ready"]

        image = client.run("generate", {"model": "fetched-demo", "prompt": "a fmow satellite image", "steps": 2,
                                        "extent": [500000, 4000000, 500064, 4000064], "crs": "EPSG:32618",
                                        "resolution_m": 1}, out_dir=tmp_path / "gen", poll_interval=0.05)["image"]
        with rasterio.open(image) as src:
            assert src.shape == (64, 64) and src.crs.to_epsg() == 32618


def hub_files(folder, extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """The files of a model folder as a Hub repository holds them, plus `extra`."""
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    return {**files, **(extra or {})}


def test_sd21_components_come_from_a_hugging_face_repository_through_the_hub_api(server, release, demo_dir, tmp_path,
                                                                                   monkeypatch):
    data, _ = release
    repo = load_catalogue()["sd21-components"].repo_id
    server.publish_hub_repo(repo, hub_files(demo_dir / "demo-satunet", {
        "vae/diffusion_pytorch_model.fp16.safetensors": b"variant", "v2-1_768-ema-pruned.ckpt": b"single file",
    }))
    server.publish(ZIP_PATH, data, record=RECORD_PATH)
    catalogue = {**load_catalogue(), **catalogue_file(tmp_path, server.url + ZIP_PATH, server.url + RECORD_PATH)}
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("GFM4D_SD21_SOURCE", raising=False)
    models_dir = tmp_path / "models"

    done = Fetcher(models_dir, catalogue=catalogue, backoff_s=0.01).fetch("fetched-demo")

    assert [d.name for d in done] == ["fetched-demo", "sd21-components"]
    fetched = {p for m, p, _, _ in server.log if m == "GET" and "/resolve/" in p}
    assert {p.split("/resolve/")[1].split("/", 1)[1] for p in fetched} == {
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
        "text_encoder/model.safetensors", "scheduler/scheduler_config.json", "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
    }  # not the UNet, the variant or the single-file checkpoint
    sd21 = models_dir / FETCHED_SD21_FOLDER
    for name in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", "tokenizer/vocab.json"):
        assert (sd21 / name).read_bytes() == (demo_dir / "demo-satunet" / name).read_bytes()
    assert ModelRegistry(models_dir).get("fetched-demo").ready
    assert leftovers(models_dir) == []


def test_a_hub_file_that_does_not_match_its_sha256_is_refused(server, demo_dir, tmp_path, monkeypatch):
    repo = load_catalogue()["sd21-components"].repo_id
    server.publish_hub_repo(repo, hub_files(demo_dir / "demo-satunet"))
    served = f"/{repo}/resolve/main/vae/diffusion_pytorch_model.safetensors"
    server.files[served] = server.files[served][:-1] + b"X"  # corrupted in transit, same size
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("GFM4D_SD21_SOURCE", raising=False)
    models_dir = tmp_path / "models"

    with pytest.raises(FetchError, match="vae/diffusion_pytorch_model.safetensors does not match its published sha256"):
        Fetcher(models_dir, backoff_s=0.01).fetch("sd21-components")
    assert not (models_dir / FETCHED_SD21_FOLDER).exists()
    kept = models_dir / FETCH_FOLDER / "sd21-components.hub"  # files that did verify are kept for the next try
    assert not (kept / "vae" / "diffusion_pytorch_model.safetensors").exists()
    assert (kept / "vae" / "config.json").is_file()
    assert leftovers(models_dir) == ["sd21-components.hub"]

    del server.files[served]  # fixed at the source: the next fetch downloads only the refused file
    server.publish_hub_repo(repo, hub_files(demo_dir / "demo-satunet"))
    server.log.clear()
    Fetcher(models_dir, backoff_s=0.01).fetch("sd21-components")
    assert [p.split("/resolve/main/")[1] for m, p, _, _ in server.log if m == "GET" and "/resolve/" in p] == [
        "vae/diffusion_pytorch_model.safetensors"]
    assert ModelRegistry(models_dir).sd21_dir == models_dir / FETCHED_SD21_FOLDER and leftovers(models_dir) == []


def test_a_diffusers_backbone_snapshot_takes_only_the_pipeline_folders(server, demo_dir, tmp_path, monkeypatch):
    entry = {"kind": "snapshot", "title": "Tiny SD", "purpose": "tests", "licence": "MIT", "size_bytes": 1000,
             "repo_id": "tests/tiny-sd"}
    (tmp_path / "catalogue.json").write_text(json.dumps({"models": {"tiny-sd": entry, "gated-sd": {**entry, "repo_id": "tests/gated"}}}))
    server.publish_hub_repo("tests/tiny-sd", hub_files(demo_dir / "demo-sd", {
        "tiny-sd.safetensors": b"single-file checkpoint", "text_encoders/clip_g.safetensors": b"not a pipeline folder",
        "unet/diffusion_pytorch_model.fp16.safetensors": b"variant",
    }))
    server.gated.add("tests/gated")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    catalogue = load_catalogue(tmp_path / "catalogue.json")
    models_dir = tmp_path / "models"

    [done] = Fetcher(models_dir, catalogue=catalogue, backoff_s=0.01).fetch("tiny-sd")

    assert done.installed and not done.note
    installed = sorted(p.relative_to(done.path).as_posix() for p in done.path.rglob("*") if p.is_file())
    expected = sorted(p.relative_to(demo_dir / "demo-sd").as_posix() for p in (demo_dir / "demo-sd").rglob("*")
                      if p.is_file() and p.name != "gfm4d.json")
    assert installed == expected
    info = ModelRegistry(models_dir).get("tiny-sd")
    assert info.ready and info.kind == "sd-unet"

    with pytest.raises(FetchError, match=r"tests/gated is gated: accept its licence at https://huggingface.co/tests/gated"):
        Fetcher(models_dir, catalogue=catalogue, backoff_s=0.01).fetch("gated-sd")
    assert not (models_dir / "gated-sd").exists()


def test_the_cli_fetches_with_a_progress_bar_and_says_what_is_ready(server, release, tmp_path, monkeypatch, capsys):
    data, sd21 = release
    server.publish(ZIP_PATH, data, record=RECORD_PATH)
    catalogue_file(tmp_path, server.url + ZIP_PATH, server.url + RECORD_PATH)
    monkeypatch.setenv("GFM4D_CATALOGUE", str(tmp_path / "catalogue.json"))
    models_dir = tmp_path / "models"

    assert main(["--models-dir", str(models_dir), "--sd21-dir", "", "models", "fetch", "fetched-demo",
                 "--sd21-source", str(sd21)]) == 0
    captured = capsys.readouterr()
    assert f"installed: fetched-demo in {models_dir / 'fetched-demo'}" in captured.out
    assert "fetched-demo: ready" in captured.out
    assert "downloading fetched-demo" in captured.err and "verifying fetched-demo" in captured.err  # tqdm's bars

    assert main(["--models-dir", str(models_dir), "models", "available", "--json"]) == 0
    assert {e["name"]: e["installed"] for e in json.loads(capsys.readouterr().out)}["fetched-demo"] is True


def test_a_cancelled_fetch_keeps_its_partial_download_and_the_next_resumes_it(server, release, tmp_path):
    from engine.errors import Cancelled

    data, sd21 = release
    server.publish(ZIP_PATH, data, record=RECORD_PATH)
    catalogue = catalogue_file(tmp_path, server.url + ZIP_PATH, server.url + RECORD_PATH)
    models_dir = tmp_path / "models"
    reports = []

    with pytest.raises(Cancelled, match="the next fetch resumes it"):
        fetcher(models_dir, catalogue, sd21, progress=lambda d, t, w: reports.append(d),
                cancel=lambda: len(reports) >= 1).fetch("fetched-demo")
    part = models_dir / FETCH_FOLDER / "fetched-demo.zip.part"
    assert 0 < part.stat().st_size < len(data) and not (models_dir / "fetched-demo").exists()

    fetcher(models_dir, catalogue, sd21).fetch("fetched-demo")
    assert server.requests_for(ZIP_PATH) == [None, f"bytes={reports[0]}-"]
    assert ModelRegistry(models_dir).get("fetched-demo").ready and leftovers(models_dir) == []


def test_a_server_that_ignores_range_restarts_the_download_cleanly(server, release, tmp_path):
    data, sd21 = release
    server.publish(ZIP_PATH, data, record=RECORD_PATH)
    server.ranges = False
    server.drops[ZIP_PATH] = [len(data) // 2]
    catalogue = catalogue_file(tmp_path, server.url + ZIP_PATH, server.url + RECORD_PATH)
    models_dir = tmp_path / "models"

    fetcher(models_dir, catalogue, sd21).fetch("fetched-demo", with_components=False)
    assert len(server.requests_for(ZIP_PATH)) == 2  # asked to resume, got the whole file: checksum still matches
    assert (models_dir / "fetched-demo" / "checkpoint-100" / "unet" / "diffusion_pytorch_model.bin").is_file()


def test_one_fetch_of_a_model_at_a_time(server, release, tmp_path):
    from filelock import FileLock

    data, sd21 = release
    server.publish(ZIP_PATH, data, record=RECORD_PATH)
    catalogue = catalogue_file(tmp_path, server.url + ZIP_PATH, server.url + RECORD_PATH)
    models_dir = tmp_path / "models"
    (models_dir / FETCH_FOLDER).mkdir(parents=True)
    with FileLock(str(models_dir / FETCH_FOLDER / "fetched-demo.lock")):
        with pytest.raises(FetchError, match="another fetch of fetched-demo .* is running"):
            fetcher(models_dir, catalogue, sd21).fetch("fetched-demo")
    assert server.requests_for(ZIP_PATH) == []


def test_sd21_components_from_a_url_of_a_zip(server, demo_dir, tmp_path):
    import zipfile

    archive = tmp_path / "sd21.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for component in COMPONENTS:
            for path in (demo_dir / "demo-satunet" / component).iterdir():
                zf.write(path, f"stable-diffusion-2-1/{component}/{path.name}")
        zf.writestr("stable-diffusion-2-1/unet/config.json", "{}")
    server.publish("/sd21.zip", archive.read_bytes())
    models_dir = tmp_path / "models"

    [done] = Fetcher(models_dir, sd21_source=server.url + "/sd21.zip", backoff_s=0.01).fetch("sd21-components")
    assert sorted(p.name for p in done.path.iterdir()) == sorted(COMPONENTS)
    assert (done.path / "tokenizer" / "vocab.json").read_bytes() == (demo_dir / "demo-satunet" / "tokenizer" / "vocab.json").read_bytes()
    assert leftovers(models_dir) == []

    with pytest.raises(FetchError, match="neither a folder, an http"):
        Fetcher(tmp_path / "other", sd21_source="ftp://example.org/sd21").fetch("sd21-components")


def test_an_unreachable_hub_says_how_to_bring_the_components_by_hand(tmp_path, monkeypatch):
    from engine.server.launcher import free_port

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.delenv("GFM4D_SD21_SOURCE", raising=False)
    with pytest.raises(FetchError) as raised:
        Fetcher(tmp_path / "models", backoff_s=0.01).fetch("sd21-components")
    message = str(raised.value)
    assert "cannot reach the Hugging Face Hub for stabilityai/stable-diffusion-2-1 (127.0.0.1 refused the connection)" in message
    assert message.endswith("gfm4d models fetch sd21-components --sd21-source FOLDER")
    assert not (tmp_path / "models" / FETCHED_SD21_FOLDER).exists()


def test_a_controlnet_run_fetches_its_base_first_and_runs_on_its_unet(server, release, demo_dir, tmp_path):
    import zipfile

    data, sd21 = release
    run = demo_dir / "demo-controlnet-3d"
    archive = tmp_path / "controlnet3d.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # as released: the ControlNet only, no UNet, no root components
        for path in (run / "controlnet").iterdir():
            zf.write(path, f"controlnet3d_run/controlnet/{path.name}")
    server.publish(ZIP_PATH, data, record=RECORD_PATH)
    server.publish("/records/2/files/controlnet3d.zip", archive.read_bytes(), record="/api/records/2")
    entries = {
        "fetched-demo": archive_entry(server.url + ZIP_PATH, server.url + RECORD_PATH),
        "fetched-3d": archive_entry(server.url + "/records/2/files/controlnet3d.zip", server.url + "/api/records/2",
                                    requires=["fetched-demo"],
                                    settings={"base_model": "fetched-demo", "num_frames": 3, "native_resolution": 128}),
    }
    (tmp_path / "catalogue.json").write_text(json.dumps({"models": entries}))
    models_dir = tmp_path / "models"

    done = fetcher(models_dir, load_catalogue(tmp_path / "catalogue.json"), sd21).fetch("fetched-3d")

    assert [d.name for d in done] == ["fetched-demo", "fetched-3d", "sd21-components"]
    info = ModelRegistry(models_dir).get("fetched-3d")
    assert info.ready and info.kind == "controlnet-3d" and info.base_model == "fetched-demo" and info.tasks == ("predict",)
    assert info.unet_path == models_dir / "fetched-demo" / "checkpoint-100" / "unet"
    assert sorted(p.name for p in (models_dir / "fetched-3d").iterdir()) == ["controlnet", "gfm4d.json"]
