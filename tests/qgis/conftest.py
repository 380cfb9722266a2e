"""Fixtures of the QGIS tests: a headless QGIS with Processing, and a real engine on loopback.

These tests run with the Python that QGIS's bindings are built for (on Debian: /usr/bin/python3
with python3-qgis and python3-pytest). Run by any other Python (the engine's virtualenv) every
module here is skipped, since `qgis` cannot be imported. The engine runs as its own process from
the engine's virtualenv (GFM4D_ENGINE_PYTHON, default .venv/bin/python) on the demo models.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import free_port

REPO = Path(__file__).resolve().parents[2]
QGIS_PLUGINS = Path("/usr/share/qgis/python/plugins")  # the Processing framework of Debian's QGIS
ENGINE_PYTHON = Path(os.environ.get("GFM4D_ENGINE_PYTHON", REPO / ".venv" / "bin" / "python"))
ENGINE_START_S = 600  # building the demo models and importing torch on a busy machine

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if QGIS_PLUGINS.is_dir() and str(QGIS_PLUGINS) not in sys.path:
    sys.path.append(str(QGIS_PLUGINS))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Qt's user settings go to a folder of the tests' own, for this process and every QGIS it starts:
# nothing a test writes (the engine URL...) may land in the user's QGIS settings.
_OWN_CONFIG = tempfile.mkdtemp(prefix="gfm4d-qgis-tests-config-")
os.environ["XDG_CONFIG_HOME"] = _OWN_CONFIG
atexit.register(shutil.rmtree, _OWN_CONFIG, True)
os.environ["GDAL_PAM_ENABLED"] = "NO"  # QGIS's layer statistics would otherwise land beside the sample data as .aux.xml


def http_json(url: str, method: str = "GET", timeout: float = 10.0):
    """A JSON answer read with the standard library (independent of the plugin's client)."""
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


@dataclass
class Engine:
    url: str
    work_dir: Path
    models_dir: Path
    process: subprocess.Popen
    log: Path
    catalogue: Path | None = None  # the engine's GFM4D_CATALOGUE: entries written there are fetchable

    def job(self, job_id: str) -> dict:
        return http_json(f"{self.url}/v1/jobs/{job_id}")

    def jobs(self) -> list[dict]:
        return http_json(f"{self.url}/v1/jobs")["jobs"]

    def tasks(self) -> list[str]:
        return http_json(f"{self.url}/v1/health")["tasks"]

    def uploads(self, job_id: str) -> list[Path]:
        """The files a job received, in input order (the engine keeps them in its job folder)."""
        return sorted(p for p in (self.work_dir / job_id / "inputs").rglob("*") if p.is_file())

    def models_for(self, task: str) -> list[str]:
        return sorted(m["name"] for m in http_json(f"{self.url}/v1/models")["models"] if task in m["tasks"])


@pytest.fixture(scope="session")
def qgis_app(tmp_path_factory):
    """QgsApplication (GUI classes allowed, offscreen) with Processing, in a temporary profile.

    The profile folder holds QGIS's settings and authentication database, so the tests never
    touch the user's own QGIS profile.
    """
    pytest.importorskip("qgis.core")
    from qgis.core import QgsApplication
    from qgis.PyQt.QtCore import QSettings

    profile = tmp_path_factory.mktemp("qgis_profile")
    os.environ["QGIS_AUTH_DB_DIR_PATH"] = str(profile)
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(profile))
    app = QgsApplication([], True, str(profile))
    app.initQgis()
    from processing.core.Processing import Processing

    Processing.initialize()
    yield app
    # exitQgis() would clean up, but tearing QGIS down inside pytest crashes at exit; remove
    # what the tests leave behind instead: Processing's temporary folder.
    from qgis.core import QgsProcessingUtils

    shutil.rmtree(QgsProcessingUtils.tempFolder(), ignore_errors=True)


@pytest.fixture(scope="session")
def engine(tmp_path_factory) -> Engine:
    """A real engine process with the demo models, on a free loopback port."""
    if not ENGINE_PYTHON.exists():
        pytest.skip(f"the engine's Python {ENGINE_PYTHON} is missing: run `make setup` (or set GFM4D_ENGINE_PYTHON)")
    root = tmp_path_factory.mktemp("engine")
    models, work, log = root / "models", root / "work", root / "engine.log"
    catalogue = root / "catalogue.json"
    catalogue.write_text('{"models": {}}')
    subprocess.run(
        [str(ENGINE_PYTHON), "-c", "import sys; from engine.models.demo import build_demo_models; build_demo_models(sys.argv[1])", str(models)],
        cwd=REPO, check=True, capture_output=True,
    )
    port = free_port()
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [str(ENGINE_PYTHON), "-m", "engine.server", "--host", "127.0.0.1", "--port", str(port),
             "--models-dir", str(models), "--work-dir", str(work), "--log-level", "warning"],
            cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
            env={**os.environ, "GFM4D_CATALOGUE": str(catalogue), "NO_PROXY": "127.0.0.1,localhost"},
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ENGINE_START_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"the engine exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            http_json(f"{url}/v1/health", timeout=2.0)
            break
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the engine did not answer within {ENGINE_START_S} s")
            time.sleep(0.3)
    yield Engine(url, work, models, process, log, catalogue)
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="session")
def provider(qgis_app, engine):
    """The GFM4D provider from the source tree, registered, talking to the test engine."""
    from qgis.core import QgsApplication, QgsSettings

    from processing_algorithms.model_catalog import CATALOG
    from processing_algorithms.provider import GFM4DProvider

    QgsSettings().setValue("gfm4d/url", engine.url)
    QgsSettings().setValue("gfm4d/poll_interval_s", 0.1)
    CATALOG.invalidate()
    gfm4d = GFM4DProvider()
    assert QgsApplication.processingRegistry().addProvider(gfm4d)
    yield gfm4d
    QgsApplication.processingRegistry().removeProvider(gfm4d)


@pytest.fixture
def project(qgis_app):
    """An empty current project, cleared again after the test."""
    from qgis.core import QgsProject

    QgsProject.instance().clear()
    yield QgsProject.instance()
    QgsProject.instance().clear()
