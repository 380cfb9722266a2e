"""The command line as a newcomer meets it: README examples, checks before a job, one-line errors.

Most cases stop before any model is loaded (that is the point: they are refused at once), so they
run in-process through `engine.cli.main` or as a short subprocess; the cases about a running job
(SIGTERM, sequence) use the tiny demo models.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from engine.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
UTM_EXTENT = ["500000", "4000000", "500256", "4000256"]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("gfm4d") and "error" in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _cli(*argv, cwd=None, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "engine.cli", *argv], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=timeout)


def _one_line_failure(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    return errors[0]


# --- the README's examples -------------------------------------------------------------------


def _readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(".venv/bin/gfm4d ") and "..." not in shlex.split(line):  # "..." = more options
                commands.append(shlex.split(line)[1:])
    return commands


def test_readme_commands_parse_and_name_models_the_demo_builds():
    from engine.models import demo

    demo_names = {demo.SATUNET_DEMO, demo.SD_DEMO, demo.SUPERRES_DEMO, demo.PREPOST_DEMO, demo.CONTROLNET_3D_DEMO}
    commands = _readme_commands()
    assert len(commands) >= 8
    parser = build_parser()
    named = set()
    for argv in commands:
        args = parser.parse_args(argv)  # exits with status 2 on any argument the CLI does not take
        if getattr(args, "model", None) and "--model" in argv:
            named.add(args.model)
    # Every model a README task example names exists once `make demo` ran, except the imported one.
    assert named - {"diffusionsat-512"} <= demo_names, named


def test_readme_xbd_example_pairs_labels_with_their_own_image(xbd_dir):
    argv = next(a for a in _readme_commands() if a[0] == "xbd-import")
    args = build_parser().parse_args(argv)
    labels = json.loads((xbd_dir / Path(args.labels).name).read_text())
    assert labels["metadata"]["img_name"] == Path(args.image).name


def test_xbd_import_refuses_a_png_the_labels_are_not_for(xbd_dir, tmp_path, capsys):
    code = main(["xbd-import", str(xbd_dir / "santa-rosa-wildfire_00000273_post_disaster.json"), "-o",
                 str(tmp_path / "b.gpkg"), "--image", str(xbd_dir / "santa-rosa-wildfire_00000273_pre_disaster.png"),
                 "--image-output", str(tmp_path / "pre.tif")])
    assert code == 2
    line = _error_line(capsys)
    assert "santa-rosa-wildfire_00000273_post_disaster.png" in line and "pre_disaster.png" in line
    assert list(tmp_path.iterdir()) == []


def test_xbd_import_of_the_matching_png_stamps_its_own_date_and_sensor(xbd_dir, tmp_path):
    import rasterio

    code = main(["xbd-import", str(xbd_dir / "santa-rosa-wildfire_00000273_pre_disaster.json"), "-o",
                 str(tmp_path / "b.gpkg"), "--image", str(xbd_dir / "santa-rosa-wildfire_00000273_pre_disaster.png"),
                 "--image-output", str(tmp_path / "pre.tif")])
    assert code == 0
    metadata = json.loads((xbd_dir / "santa-rosa-wildfire_00000273_pre_disaster.json").read_text())["metadata"]
    with rasterio.open(tmp_path / "pre.tif") as src:
        assert src.tags()["XBD_CAPTURE_DATE"] == metadata["capture_date"]
        assert src.tags()["XBD_SENSOR"] == metadata["sensor"]


def test_xbd_import_of_a_truncated_png_is_one_line_and_writes_nothing(xbd_dir, tmp_path, capsys):
    name = "santa-rosa-wildfire_00000273_post_disaster.png"
    (tmp_path / name).write_bytes((xbd_dir / name).read_bytes()[:20000])
    code = main(["xbd-import", str(xbd_dir / "santa-rosa-wildfire_00000273_post_disaster.json"), "-o",
                 str(tmp_path / "b.gpkg"), "--image", str(tmp_path / name), "--image-output", str(tmp_path / "post.tif")])
    assert code == 2
    assert "damaged or truncated" in _error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_xbd_import_into_a_folder_that_cannot_exist_is_one_line(xbd_dir, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    code = main(["xbd-import", str(xbd_dir / "santa-rosa-wildfire_00000273_post_disaster.json"),
                 "-o", str(tmp_path / "a-file" / "b.gpkg")])
    assert code == 2
    assert "does not exist" in _error_line(capsys)


# --- arguments are checked before torch is imported -----------------------------------------


_NO_TORCH = """
import sys
from engine.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print("torch imported:", "torch" in sys.modules)
sys.exit(code)
"""


@pytest.mark.parametrize(
    "argv, status, words",
    [
        (["generate", "--help"], 0, "(default: 30)"),
        (["generate", "--prompt", "x", "-o", "x.tif", "--extent", *UTM_EXTENT, "--crs", "EPSG:32618",
          "--resolution", "1", "--date", "2020-13-45"], 2, "2020-13-45"),
        (["sequence", "--extent", *UTM_EXTENT, "--crs", "EPSG:32618", "--resolution", "1", "--prompt", "x",
          "--dates", "2020-01-01", "2020-02-30", "--output-dir", "seq"], 2, "2020-02-30"),
    ],
)
def test_help_and_argument_errors_do_not_import_torch(tmp_path, argv, status, words):
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, *argv], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == status, proc.stderr
    assert "torch imported: False" in proc.stdout
    assert words in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_help_shows_the_defaults():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in ("generate", "inpaint", "predict", "superres", "sequence"):
        text = " ".join(sub.choices[name].format_help().split())
        assert "(default: 0)" in text  # --seed
        assert "denoising steps (default:" in text, name
        assert "(default: demo-" in text, name
    predict = " ".join(sub.choices["predict"].format_help().split())
    assert "(default: demo-controlnet-3d)" in predict and "(default: 50)" in predict and "(default: 1.0)" in predict
    assert "(default: 8765)" in " ".join(sub.choices["serve"].format_help().split())


# --- silent wrong results are refused --------------------------------------------------------


def test_lonlat_extent_with_a_projected_crs_is_refused(tmp_path, capsys):
    code = main(["--device", "cpu", "generate", "--extent", "-77.1", "38.8", "-77.0", "38.9", "--crs", "EPSG:32618",
                 "--resolution", "1", "--prompt", "x", "-o", str(tmp_path / "x.tif")])
    assert code == 2
    line = _error_line(capsys)
    assert "longitude/latitude" in line and "EPSG:4326" in line
    assert not (tmp_path / "x.tif").exists()


def test_an_inverted_extent_is_named_as_such(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["superres", "scene.tif", "--extent", "10", "0", "0", "10", "-o", str(tmp_path / "x.tif")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "XMAX (0) must be greater than XMIN (10)" in err and "overlap" not in err
    assert len(err.strip().splitlines()) == 1


def test_inpaint_refuses_to_write_over_its_input(models_dir, rasters_dir, vectors_dir, tmp_path, capsys):
    image = tmp_path / "pre.tif"
    shutil.copy(rasters_dir / "xv2deploy_pre_tile_1361-10160.tif", image)
    before = _digest(image)
    code = main(["--models-dir", str(models_dir), "--device", "cpu", "inpaint", str(image), "--polygons",
                 str(vectors_dir / "xview2_deploy_joplin" / "damage.shp"), "-o", str(image), "--overwrite"])
    assert code == 2
    assert "is an input of this command" in _error_line(capsys)
    assert _digest(image) == before


def test_an_existing_output_needs_overwrite(models_dir, tmp_path, capsys):
    out = tmp_path / "x.tif"
    out.write_bytes(b"keep me")
    code = main(["--models-dir", str(models_dir), "--device", "cpu", "generate", "--extent", *UTM_EXTENT,
                 "--crs", "EPSG:32618", "--resolution", "2", "--prompt", "x", "-o", str(out)])
    assert code == 2
    assert "already exists; add --overwrite" in _error_line(capsys)
    assert out.read_bytes() == b"keep me"


def test_inpaint_refuses_a_model_made_for_predict(models_dir, rasters_dir, vectors_dir, tmp_path, capsys):
    code = main(["--models-dir", str(models_dir), "--device", "cpu", "inpaint",
                 str(rasters_dir / "xv2deploy_pre_tile_1361-10160.tif"), "--polygons",
                 str(vectors_dir / "xview2_deploy_joplin" / "damage.shp"), "--model", "demo-controlnet-3d",
                 "-o", str(tmp_path / "post.tif")])
    assert code == 2
    line = _error_line(capsys)
    assert "made for predict, not inpaint" in line and "demo-satunet" in line


def test_an_unknown_diffusionsat_model_says_how_to_get_it(models_dir, rasters_dir, tmp_path, capsys):
    code = main(["--models-dir", str(models_dir), "--device", "cpu", "predict",
                 str(rasters_dir / "xv2deploy_pre_tile_1361-10160.tif"), "--target-date", "2012-01-01",
                 "--model", "diffusionsat-3d", "-o", str(tmp_path / "p.tif")])
    assert code == 2
    line = _error_line(capsys)
    assert "unknown model 'diffusionsat-3d'" in line and "gfm4d models import PATH --name diffusionsat-3d" in line


def test_sigterm_cancels_and_leaves_nothing_beside_the_output(models_dir, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "--models-dir", str(models_dir), "--device", "cpu", "generate",
         "--extent", "500000", "4000000", "501024", "4001024", "--crs", "EPSG:32618", "--resolution", "1",
         "--prompt", "x", "--steps", "200", "--yes", "-o", str(out_dir / "x.tif")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 240
        while not any(out_dir.iterdir()) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert [p.name for p in out_dir.iterdir() if p.name.startswith(".gfm4d-")], "the job never started"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "terminated; no output was written" in err and "Traceback" not in err
    assert list(out_dir.iterdir()) == []


# --- one line instead of a traceback ---------------------------------------------------------


def test_a_geotiff_cut_off_midway_is_one_line(models_dir, rasters_dir, vectors_dir, tmp_path):
    import rasterio

    with rasterio.open(rasters_dir / "xv2deploy_pre_tile_1361-10160.tif") as src:
        profile, data = src.profile, src.read()
    profile.update(driver="GTiff", tiled=False, compress=None, blockysize=16)
    whole = tmp_path / "whole.tif"
    with rasterio.open(whole, "w", **profile) as dst:
        dst.write(data)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    proc = _cli("--models-dir", str(models_dir), "--device", "cpu", "inpaint", str(cut), "--polygons",
                str(vectors_dir / "xview2_deploy_joplin" / "damage.shp"), "--steps", "1", "-o", "post.tif",
                cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    line = _one_line_failure(proc)
    assert "cut.tif" in line or "truncated" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.tif", "whole.tif"]


def test_a_truncated_geotiff_header_is_refused_before_the_engine_starts(rasters_dir, tmp_path, capsys):
    source = rasters_dir / "xv2deploy_pre_tile_1361-10160.tif"
    cut = tmp_path / "cut.tif"
    cut.write_bytes(source.read_bytes()[:400000])
    code = main(["--device", "cpu", "predict", str(cut), "--target-date", "2012-01-01", "-o", str(tmp_path / "p.tif")])
    assert code == 2
    assert "cut.tif" in _error_line(capsys)


def test_a_models_folder_that_cannot_be_written_is_one_line(models_dir, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    code = main(["--models-dir", str(tmp_path / "a-file" / "models"), "models", "import", str(models_dir / "demo-sd")])
    assert code == 2
    line = _error_line(capsys)
    assert "cannot write to the models folder" in line and "--models-dir" in line


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--resolution", "-1"], "must be a positive number"),
        (["--resolution", "1", "--crs", "EPSG:999999"], "not a CRS GDAL knows"),
    ],
)
def test_sequence_with_a_bad_resolution_or_crs_is_one_line(tmp_path, argv, words):
    proc = _cli("--device", "cpu", "sequence", "--extent", *UTM_EXTENT, "--prompt", "x", "--dates", "2020-01-01",
                "2020-06-01", "--output-dir", "seq", *argv, cwd=tmp_path)
    assert words in _one_line_failure(proc)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["serve", "--port", "99999"], "not a port number"),
        (["serve", "--port", "http"], "not a port number"),
        (["generate", "--prompt", "x", "-o", "x.tif", "--engine", "127.0.0.1:8765"], "http://127.0.0.1:8765"),
    ],
)
def test_bad_port_and_engine_url_are_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1


def test_serve_with_a_work_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "jobs").write_text("x")
    code = main(["serve", "--port", "1", "--work-dir", str(tmp_path / "jobs")])
    assert code == 2
    assert "work dir" in _error_line(capsys)


# --- messages that used to mislead -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["folder", "empty"])
def test_polygons_that_are_a_folder_or_an_empty_file_are_named_as_such(kind, rasters_dir, tmp_path, capsys):
    polygons = tmp_path / "polys"
    if kind == "folder":
        polygons.mkdir()
    else:
        polygons = tmp_path / "polys.geojson"
        polygons.write_bytes(b"")
    code = main(["--device", "cpu", "inpaint", str(rasters_dir / "xv2deploy_pre_tile_1361-10160.tif"),
                 "--polygons", str(polygons), "-o", str(tmp_path / "post.tif")])
    assert code == 2
    line = _error_line(capsys)
    assert ("is a folder" if kind == "folder" else "is empty") in line
    assert "DRIVER" not in line


class _HtmlPage(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        body = b"<!DOCTYPE html><html><body><h1>Router login</h1>" + b"x" * 2000 + b"</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args):
        pass


def test_a_url_that_is_not_an_engine_is_named_without_its_html(tmp_path, capsys):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HtmlPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        code = main(["generate", "--extent", *UTM_EXTENT, "--crs", "EPSG:32618", "--resolution", "2", "--prompt", "x",
                     "-o", str(tmp_path / "x.tif"), "--engine", url])
    finally:
        server.shutdown()
    assert code == 2
    line = _error_line(capsys)
    assert "is not a GFM4D engine" in line and "<html" not in line.lower()


def test_a_corrupt_model_zip_is_named_as_damaged(tmp_path, capsys):
    broken = tmp_path / "diffusionsat_512.zip"
    broken.write_bytes(b"PK\x03\x04 this is not really a zip")
    code = main(["--models-dir", str(tmp_path / "models"), "models", "import", str(broken)])
    assert code == 2
    line = _error_line(capsys)
    assert "diffusionsat_512.zip" in line and "damaged" in line


def test_an_unusable_zip_is_named_not_the_hidden_import_folder(tmp_path, capsys):
    archive = tmp_path / "notamodel.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "hello")
    code = main(["--models-dir", str(tmp_path / "models"), "models", "import", str(archive)])
    assert code == 2
    line = _error_line(capsys)
    assert ".import-" not in line and "notamodel.zip" in line
    assert [p.name for p in (tmp_path / "models").iterdir()] == []


# --- which model, how big, and the confirmation ---------------------------------------------


def test_a_long_job_is_refused_without_yes_after_saying_its_size(models_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GFM4D_CONFIRM_MINUTES", "1")
    code = main(["--models-dir", str(models_dir), "--device", "cpu", "generate", "--extent", "500000", "4000000",
                 "503000", "4002000", "--crs", "EPSG:32618", "--resolution", "1", "--prompt", "x",
                 "-o", str(tmp_path / "farm.tif")])
    assert code == 2
    err = capsys.readouterr().err
    assert "generate with model demo-satunet on cpu: 3000 x 2000 px (6.00 Mpx), 651 windows x 30 steps" in err
    assert "roughly" in err and "add --yes to run it" in err
    assert not (tmp_path / "farm.tif").exists()


def test_the_size_estimate_follows_the_window_and_the_guidance(models_dir):
    from engine import cli_preflight
    from engine.models.registry import ModelRegistry

    info = ModelRegistry(models_dir).get("demo-satunet")
    native = cli_preflight.estimate(info, 1024, 1024, 10, 7.5, None, None, "cpu")
    wider = cli_preflight.estimate(info, 1024, 1024, 10, 7.5, 256, None, "cpu")
    unguided = cli_preflight.estimate(info, 1024, 1024, 10, 1.0, None, None, "cpu")
    # 128 px windows overlapping by 32 px over 1024 px: 11 per side (axis starts 0, 96, ..., 896).
    assert native.windows == 11 * 11 and native.evaluations == 121 * 10 * 2
    assert wider.windows < native.windows
    assert unguided.evaluations == native.evaluations // 2 and unguided.seconds < native.seconds


def test_the_progress_bar_shows_from_the_start_with_a_step_unit(capsys):
    from engine.cli_progress import ProgressBar
    from engine.pipelines.sampling import Progress

    bar = ProgressBar("generate")
    bar.status("loading demo-satunet")
    bar(Progress(1, 40, "region 1/1: step 1/30"))
    assert bar.bar.total == 40 and bar.bar.n == 1
    bar.close()
    err = capsys.readouterr().err
    assert "loading demo-satunet" in err and "step" in err
    assert err.index("loading demo-satunet") < err.index("region 1/1")


# --- sequence --------------------------------------------------------------------------------


def test_sequence_creates_its_folder_and_takes_the_task_options(models_dir, tmp_path):
    import rasterio

    out = tmp_path / "seq" / "nested"
    code = main(["--models-dir", str(models_dir), "--device", "cpu", "sequence", "--extent", "600000", "5100000",
                 "600128", "5100128", "--crs", "EPSG:32632", "--resolution", "1", "--prompt", "a fmow satellite image",
                 "--dates", "2020-01-01", "2020-07-01", "--steps", "1", "--window", "64", "--overlap", "16",
                 "--scheduler", "ddim", "--preview", "--output-dir", str(out)])
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["frame_2020-01-01.png", "frame_2020-01-01.tif", "frame_2020-07-01.png", "frame_2020-07-01.tif"]
    with rasterio.open(out / "frame_2020-07-01.tif") as src:
        assert (src.width, src.height) == (128, 128) and src.crs.to_epsg() == 32632


def test_sequence_passes_its_window_to_the_tasks(models_dir, tmp_path, capsys):
    # A window that is no multiple of the latent cell is the task's own refusal: it reached the task.
    code = main(["--models-dir", str(models_dir), "--device", "cpu", "sequence", "--extent", "600000", "5100000",
                 "600128", "5100128", "--crs", "EPSG:32632", "--resolution", "1", "--prompt", "x",
                 "--dates", "2020-01-01", "2020-07-01", "--steps", "1", "--window", "36",
                 "--output-dir", str(tmp_path / "seq")])
    assert code == 2
    assert "window (36)" in _error_line(capsys)
    assert not (tmp_path / "seq").exists()


def test_sequence_has_the_size_check(models_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GFM4D_CONFIRM_MINUTES", "0.01")
    code = main(["--models-dir", str(models_dir), "--device", "cpu", "sequence", "--extent", *UTM_EXTENT,
                 "--crs", "EPSG:32618", "--resolution", "1", "--prompt", "x", "--dates", "2020-01-01", "2020-07-01",
                 "2021-01-01", "--output-dir", str(tmp_path / "seq")])
    assert code == 2
    err = capsys.readouterr().err
    assert "3 frames of 256 x 256 px" in err and "add --yes" in err
    assert not (tmp_path / "seq").exists()


# --- released DiffusionSat runs --------------------------------------------------------------


def test_importing_a_released_run_says_which_checkpoint_and_what_is_missing(models_dir, tmp_path, capsys):
    run = tmp_path / "diffusionsat_run"
    shutil.copytree(models_dir / "demo-satunet" / "checkpoint-100", run / "checkpoint-100")
    shutil.copytree(models_dir / "demo-satunet" / "checkpoint-100", run / "checkpoint-20")
    shutil.copy(models_dir / "demo-satunet" / "gfm4d.json", run / "gfm4d.json")
    target = tmp_path / "models"
    assert main(["--models-dir", str(target), "--sd21-dir", "", "models", "import", str(run), "--name", "ds"]) == 0
    out = capsys.readouterr().out
    assert "UNet: checkpoint-100/unet (the highest checkpoint of checkpoint-20, checkpoint-100" in out
    assert "not ready: vae, text_encoder, tokenizer, scheduler missing" in out and "--sd21-dir" in out

    assert main(["--models-dir", str(target), "--sd21-dir", "", "models", "list"]) == 0
    assert "not ready: no vae, text_encoder, tokenizer, scheduler" in capsys.readouterr().out

    # With the SD-2.1 parts supplied (the demo's root components stand in for them) it is ready.
    assert main(["--models-dir", str(target), "--sd21-dir", str(models_dir / "demo-satunet"), "models", "list",
                 "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert listed["ds"]["ready"] is True and listed["ds"]["readiness"] == "ready"

    code = main(["--models-dir", str(target), "--sd21-dir", "", "--device", "cpu", "generate", "--extent",
                 *UTM_EXTENT, "--crs", "EPSG:32618", "--resolution", "2", "--prompt", "x", "--model", "ds",
                 "-o", str(tmp_path / "x.tif")])
    assert code == 2
    assert "--sd21-dir" in _error_line(capsys)


def test_sequence_runs_on_an_engine_without_importing_torch(models_dir, tmp_path):
    from engine.server.launcher import start_engine

    engine = start_engine(models_dir, tmp_path / "work", env={"GFM4D_DEVICE": "cpu", "OMP_NUM_THREADS": "1"})
    try:
        out = tmp_path / "seq"
        proc = subprocess.run(
            [sys.executable, "-c", _NO_TORCH, "sequence", "--extent", "600000", "5100000", "600128", "5100128",
             "--crs", "EPSG:32632", "--resolution", "1", "--prompt", "a fmow satellite image", "--dates", "2020-01-01",
             "2020-07-01", "--steps", "1", "--window", "64", "--output-dir", str(out), "--engine", engine.url],
            cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600,
        )
    finally:
        engine.stop()
    assert proc.returncode == 0, proc.stderr
    assert "torch imported: False" in proc.stdout
    assert "on the engine at http://127.0.0.1" in proc.stderr and "(cpu)" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["frame_2020-01-01.tif", "frame_2020-07-01.tif"]
