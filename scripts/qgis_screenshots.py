"""Screenshots of the QGIS plugin for docs/qgis.md, taken in a real QGIS desktop under Xvfb.

    python3 scripts/qgis_screenshots.py [--engine-python .venv/bin/python] [--models-dir DIR] [--output docs/img]

Builds the plugin zip (and the demo models unless --models-dir has them), starts an engine on
loopback, installs the zip into a throwaway QGIS profile with the engine's URL set, and runs
QGIS under xvfb-run with scripts/qgis_screenshot_scene.py, which loads the demo flood sample and its polygons,
searches the toolbox, opens the Inpaint dialog, runs it, and saves qgis_toolbox.png,
qgis_inpaint_dialog.png and qgis_inpaint_result.png. Needs the `qgis` and `xvfb` packages.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCENE = Path(__file__).with_name("qgis_screenshot_scene.py")
SCREEN = "1400x850x24"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def build_plugin(output_dir: Path) -> Path:
    spec = importlib.util.spec_from_file_location("build_plugin", REPO / "scripts" / "build_plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(output_dir)


def start_engine(python: Path, models: Path, work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([str(python), "-m", "engine.server", "--host", "127.0.0.1", "--port", str(port),
                                "--models-dir", str(models), "--work-dir", str(work), "--log-level", "warning"], cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the engine exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/v1/health", timeout=2) as answer:
                json.load(answer)
            return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("the engine did not answer within 300 s")


def make_profile(root: Path, plugin_zip: Path, engine_url: str) -> None:
    """A QGIS profile `default` under `root` with the plugin installed and enabled, talking to the engine."""
    profile = root / "profiles" / "default"
    plugins = profile / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(plugins)
    (profile / "QGIS").mkdir()
    (profile / "QGIS" / "QGIS3.ini").write_text(
        "[PythonPlugins]\ngfm4d=true\nprocessing=true\n\n"
        f"[gfm4d]\nurl={engine_url}\npoll_interval_s=0.2\n\n"
        "[qgis]\nshowTips322=false\ncheckVersion=false\nallowVersionCheck=false\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine-python", type=Path, default=REPO / ".venv" / "bin" / "python")
    parser.add_argument("--models-dir", type=Path, help="demo models already built (default: build them)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "img")
    args = parser.parse_args(argv)
    for program in ("qgis", "xvfb-run"):
        if shutil.which(program) is None:
            print(f"qgis_screenshots: {program} is missing: apt-get install qgis xvfb", file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory(prefix="gfm4d-shots-") as scratch:
        scratch = Path(scratch)
        models = args.models_dir
        if models is None:
            models = scratch / "models"
            subprocess.run([str(args.engine_python), "-c", "import sys; from engine.models.demo import build_demo_models; "
                            "build_demo_models(sys.argv[1])", str(models)], cwd=REPO, check=True)
        engine, url = start_engine(args.engine_python, models, scratch / "work")
        try:
            make_profile(scratch / "qgis", build_plugin(scratch / "dist"), url)
            shots = scratch / "shots"
            shots.mkdir()
            # QGIS's embedded Python finds its home from the first python3 on PATH: the system's, not a venv's
            environment = {**os.environ, "PATH": f"/usr/bin:/bin:{os.environ.get('PATH', '')}",
                           "GFM4D_SHOTS_DIR": str(shots), "GFM4D_REPO": str(REPO),
                           "XDG_CONFIG_HOME": str(scratch / "config"), "XDG_RUNTIME_DIR": str(scratch)}
            completed = subprocess.run(
                ["xvfb-run", "-a", "-s", f"-screen 0 {SCREEN}", "qgis", "--profiles-path", str(scratch / "qgis"),
                 "--profile", "default", "--nologo", "--noversioncheck", "--code", str(SCENE)],
                env=environment, timeout=1200)
            names = ["qgis_toolbox.png", "qgis_inpaint_dialog.png", "qgis_inpaint_result.png"]
            missing = [name for name in names if not (shots / name).is_file()]
            if missing:
                print(f"qgis_screenshots: QGIS exited with {completed.returncode} without {', '.join(missing)}",
                      file=sys.stderr)
                return 1
            args.output.mkdir(parents=True, exist_ok=True)
            for name in names:
                shutil.copyfile(shots / name, args.output / name)
                print(args.output / name)
        finally:
            engine.terminate()
            engine.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
