"""The "Fetch a model" algorithm: the engine fetches a release zip from a loopback server as a job,
the model becomes available to the other algorithms; a missing file fails with the by-hand advice."""

import json
import zipfile

import pytest

pytest.importorskip("qgis.core")

from qgis.core import QgsProcessingFeedback  # noqa: E402

import processing  # noqa: E402
from tests.release_server import ReleaseServer  # noqa: E402

ZIP = "/records/7/files/qgis_run.zip"
RECORD = "/api/records/7"


@pytest.fixture
def release(engine, provider, tmp_path):
    """A release zip of the demo SatUNet (with its root components) served on loopback, in the engine's catalogue."""
    run = engine.models_dir / "demo-satunet"
    archive = tmp_path / "qgis_run.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(run.rglob("*")):
            if path.is_file() and path.name != "gfm4d.json":
                zf.write(path, f"qgis_run/{path.relative_to(run).as_posix()}")
    entry = {"kind": "archive", "title": "Demo run", "purpose": "tests", "licence": "MIT", "size_bytes": 1000,
             "settings": {"native_resolution": 128}}
    with ReleaseServer() as server:
        server.publish(ZIP, archive.read_bytes(), record=RECORD)
        engine.catalogue.write_text(json.dumps({"models": {
            "qgis-fetched": {**entry, "url": server.url + ZIP, "record_url": server.url + RECORD},
            "qgis-missing": {**entry, "url": server.url + "/records/8/files/gone.zip"},
        }}))
        from processing_algorithms.models_fetch import FETCHABLE

        FETCHABLE.invalidate()
        provider.refreshAlgorithms()  # the NAME choices now hold the new entries
        yield server
    engine.catalogue.write_text('{"models": {}}')
    FETCHABLE.invalidate()


def test_fetch_installs_the_model_on_the_engine_and_lists_it_for_generate(release, engine):
    from qgis.core import QgsApplication

    algorithm = QgsApplication.processingRegistry().algorithmById("gfm4d:fetchmodel")
    assert algorithm.group() == "Models"
    assert "qgis-fetched" in algorithm.parameterDefinition("NAME").options()

    result = processing.run("gfm4d:fetchmodel", {"NAME": "qgis-fetched"}, feedback=QgsProcessingFeedback())

    assert result["MODELS"] == "qgis-fetched"
    assert json.loads(result["REPORT_JSON"])[0]["ready"] is True
    assert "qgis-fetched" in engine.models_for("generate")
    assert (engine.models_dir / "qgis-fetched" / "checkpoint-100" / "unet" / "config.json").is_file()


def test_a_missing_file_fails_with_what_to_download_by_hand(release, engine):
    with pytest.raises(Exception) as raised:
        processing.run("gfm4d:fetchmodel", {"NAME": "qgis-missing"})
    message = str(raised.value)
    assert "HTTP 404" in message and "gfm4d models import FILE.zip --name qgis-missing" in message
    assert "Traceback" not in message
    assert not (engine.models_dir / "qgis-missing").exists()
