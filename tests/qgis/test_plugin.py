"""The plugin as users get it: the zip's contents, installing and starting it in a fresh QGIS, and
the local engine its menu starts and stops."""

import configparser
import importlib.util
import json
import subprocess
import sys
import time
import urllib.error
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("qgis.core")

from conftest import ENGINE_PYTHON, REPO, http_json  # noqa: E402
from helpers import free_port  # noqa: E402

INSTALL = Path(__file__).with_name("install_plugin.py")
ALGORITHMS = ["gfm4d:dataset", "gfm4d:enginestatus", "gfm4d:evaluate", "gfm4d:fetchmodel", "gfm4d:generate", "gfm4d:importxbdlabels", "gfm4d:inpaint", "gfm4d:predict", "gfm4d:superres", "gfm4d:train"]


def build_plugin(output_dir: Path) -> Path:
    spec = importlib.util.spec_from_file_location("build_plugin", REPO / "scripts" / "build_plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(output_dir)


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory) -> Path:
    return build_plugin(tmp_path_factory.mktemp("dist"))


def test_zip_holds_one_plugin_folder_with_sources_only(plugin_zip):
    with zipfile.ZipFile(plugin_zip) as archive:
        names = archive.namelist()
        metadata_text = archive.read("gfm4d/metadata.txt").decode("utf-8")
    version = dict(line.split("=", 1) for line in (REPO / "metadata.txt").read_text().splitlines() if "=" in line)["version"]
    assert plugin_zip.name == f"gfm4d-{version}.zip"
    assert all(name.startswith("gfm4d/") for name in names)
    for required in ("gfm4d/__init__.py", "gfm4d/plugin.py", "gfm4d/metadata.txt", "gfm4d/icon.svg",
                     "gfm4d/processing_algorithms/__init__.py", "gfm4d/processing_algorithms/provider.py"):
        assert required in names
    assert not [n for n in names if "tests" in n.split("/") or "engine" in n.split("/") or "__pycache__" in n]
    assert not [n for n in names if n.endswith((".tif", ".png", ".json", ".pyc", ".gpkg", ".shp"))]
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    parser.read_string(metadata_text)
    general = parser["general"]
    for field in ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "repository",
                  "tracker", "homepage", "tags", "category", "icon", "experimental", "deprecated"):
        assert general.get(field, "").strip(), field
    assert general["hasProcessingProvider"] == "yes"
    assert general["icon"] in [n.removeprefix("gfm4d/") for n in names]


def test_zip_installs_starts_runs_and_unloads_in_a_fresh_qgis(plugin_zip, engine, tmp_path):
    completed = subprocess.run([sys.executable, str(INSTALL), str(plugin_zip), engine.url, str(tmp_path)],
                               capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["available"] and report["metadata_name"] == "GFM4D"
    assert report["loaded"] and report["started"]
    assert report["algorithms"] == ALGORITHMS
    assert report["module"].startswith(str(tmp_path / "plugins" / "gfm4d"))  # the zip's code, not the source tree
    assert report["menu"] == ["Start local engine", "Stop local engine", "Engine status", "Refresh model lists", "Settings…"]
    assert "generate" in report["status_tasks"].split(",")
    assert report["generated"] and report["engine_libraries_imported"] == []
    assert report["settings_file"].startswith(str(tmp_path / "profile"))  # never the user's QGIS settings
    assert any(message.startswith("engine ") and engine.url in message for message in report["messages"])
    assert report["unloaded"] and not report["provider_after_unload"] and report["menu_after_unload"] == []
    assert report["modules_after_unload"] == []  # QGIS can load it again afresh (plugin reloading)


def wait_for(signal_or_condition, seconds: float):
    from qgis.PyQt.QtCore import QCoreApplication

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not signal_or_condition():
        QCoreApplication.processEvents()
        time.sleep(0.05)
    return signal_or_condition()


def test_local_engine_starts_answers_and_stops(qgis_app, engine, tmp_path):
    from qgis.core import QgsSettings

    from qgis_plugin.local_engine import LocalEngine

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    previous = QgsSettings().value("gfm4d/url")
    QgsSettings().setValue("gfm4d/url", url)
    local = LocalEngine()
    ready, failed = [], []
    local.ready.connect(ready.append)
    local.failed.connect(failed.append)
    try:
        local.start(f"{ENGINE_PYTHON} -m engine.server --port {port} --models-dir '{engine.models_dir}' "
                    f"--work-dir '{tmp_path / 'work'}'")
        assert wait_for(lambda: ready or failed, 180), "the local engine neither answered nor failed"
        assert not failed, failed
        assert ready[0]["status"] == "ok" and "generate" in ready[0]["tasks"]
        assert local.is_running()
    finally:
        local.stop()
        QgsSettings().setValue("gfm4d/url", previous)
    assert not local.is_running()
    with pytest.raises(urllib.error.URLError):
        http_json(f"{url}/v1/health", timeout=2)
    assert not failed  # a stop asked for is not reported as a failure


def test_local_engine_command_that_cannot_start_is_reported(qgis_app, tmp_path):
    from qgis_plugin.local_engine import LocalEngine

    local = LocalEngine()
    failed = []
    local.failed.connect(failed.append)
    local.start(str(tmp_path / "no-such-gfm4d") + " serve")
    assert wait_for(lambda: failed, 30)
    assert "could not be started" in failed[0] and "Settings" in failed[0]
    local.stop()
    with pytest.raises(ValueError, match="no command to start the engine is set"):
        local.start("   ")


def test_settings_dialog_saves_what_the_algorithms_read(qgis_app):
    from qgis.core import QgsSettings

    from processing_algorithms.settings import load_settings
    from qgis_plugin.settings_dialog import SettingsDialog

    before = {key: QgsSettings().value(f"gfm4d/{key}") for key in ("url", "token", "job_timeout_s", "engine_command")}
    try:
        dialog = SettingsDialog()
        dialog.url.setText(" http://gpu-box:9000 ")
        dialog.token.setText("t0ken")
        dialog.job_timeout.setValue(3600)
        dialog.command.setText("/opt/gfm4d/bin/gfm4d serve --port 9000")
        dialog.accept()
        settings = load_settings()
        assert (settings.url, settings.token, settings.job_timeout_s, settings.engine_command) == (
            "http://gpu-box:9000", "t0ken", 3600.0, "/opt/gfm4d/bin/gfm4d serve --port 9000")
        assert settings.request_timeout_s == 30.0  # untouched fields keep their values
    finally:
        for key, value in before.items():
            QgsSettings().setValue(f"gfm4d/{key}", value if value is not None else "")


def test_status_line_of_the_menu(qgis_app, engine):
    from qgis.core import QgsSettings

    from qgis_plugin.plugin import GFM4DPlugin

    plugin = GFM4DPlugin(iface=None)
    previous = QgsSettings().value("gfm4d/url")
    try:
        QgsSettings().setValue("gfm4d/url", engine.url)
        text, ok = plugin.status_text()
        version = http_json(f"{engine.url}/v1/health")["version"]
        assert ok and text.startswith(f"engine {version} at {engine.url}") and "demo-satunet" in text
        QgsSettings().setValue("gfm4d/url", f"http://127.0.0.1:{free_port()}")
        text, ok = plugin.status_text()
        assert not ok and text.startswith("Cannot reach the GFM4D engine")
    finally:
        QgsSettings().setValue("gfm4d/url", previous)
