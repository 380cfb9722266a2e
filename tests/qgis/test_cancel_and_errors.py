"""Cancelling in QGIS cancels the engine's job and leaves no output; a stopped engine, a refused
request and a missing model each fail with a message that says what to do."""

import time

import pytest

pytest.importorskip("qgis.core")

from helpers import free_port  # noqa: E402
from qgis.core import QgsProcessingFeedback  # noqa: E402

import processing  # noqa: E402

# One 128 px window, 50 steps: long enough on the demo models to be caught running, and each
# step short, so the engine stops soon after the cancel (it checks between steps).
LONG_JOB = {"EXTENT": "500000,500256,4100000,4100256 [EPSG:32618]", "RESOLUTION": 2, "STEPS": 50,
            "PROMPT": "a fmow satellite image", "MODEL": "demo-satunet", "BATCH_SIZE": 1}


class CancelWhenRunning(QgsProcessingFeedback):
    """Presses Cancel as soon as the engine reports progress, and remembers the job id."""

    def __init__(self):
        super().__init__()
        self.job_id = None
        self.progressChanged.connect(self._maybe_cancel)

    def pushInfo(self, text):  # noqa: N802
        if text.startswith("Engine job "):
            self.job_id = text.split()[2]

    def _maybe_cancel(self, progress):
        if progress > 0 and not self.isCanceled():
            self.cancel()


def test_cancel_mid_job_cancels_it_on_the_engine_and_writes_nothing(provider, engine, tmp_path):
    out = tmp_path / "never.tif"
    feedback = CancelWhenRunning()
    with pytest.raises(Exception, match="Cancelled: the engine's generate job .* was cancelled; no output was written"):
        processing.run("gfm4d:generate", {**LONG_JOB, "OUTPUT": str(out)}, feedback=feedback)
    assert feedback.job_id is not None
    job = engine.job(feedback.job_id)
    assert job["cancel_requested"] or job["state"] == "cancelled"
    deadline = time.monotonic() + 120  # a loaded machine may take a while to reach the next step
    while job["state"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = engine.job(feedback.job_id)
    assert job["state"] == "cancelled"
    assert 0 < job["done"] < job["total"]
    assert job["results"] == []
    assert not out.exists()
    assert not list(tmp_path.iterdir())


def test_engine_down_gives_the_way_to_start_it(provider, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(Exception) as raised:
        processing.run("gfm4d:generate", {**LONG_JOB, "ENGINE_URL": url, "OUTPUT": str(tmp_path / "x.tif")})
    message = str(raised.value)
    assert message.startswith(f"Cannot reach the GFM4D engine at {url} (Connection refused)")
    assert "Start local engine" in message and "Traceback" not in message
    assert not (tmp_path / "x.tif").exists()


def test_engine_refusal_is_passed_on(provider, tmp_path):
    # a whole degree at 1 cm: the engine refuses it before queueing, saying why
    with pytest.raises(Exception) as raised:
        processing.run("gfm4d:generate", {
            **LONG_JOB, "EXTENT": "10,11,45,46 [EPSG:4326]", "RESOLUTION": 0.01, "OUTPUT": str(tmp_path / "x.tif")})
    message = str(raised.value)
    assert message.startswith("The GFM4D engine refused the request (4")
    assert "coarser resolution or a smaller extent" in message
    assert not (tmp_path / "x.tif").exists()


def test_missing_model_is_named_with_the_alternatives(provider, engine, tmp_path):
    # a graphical model or batch saved elsewhere may name a model this engine lacks
    from qgis.core import QgsApplication

    algorithm = QgsApplication.processingRegistry().createAlgorithmById("gfm4d:generate")
    from processing.tools import dataobjects

    context = dataobjects.createContext()
    feedback = QgsProcessingFeedback()
    parameters = {**LONG_JOB, "MODEL": "sd21-real", "OUTPUT": str(tmp_path / "x.tif")}
    with pytest.raises(Exception) as raised:
        algorithm.processAlgorithm(parameters, context, feedback)
    assert "has no model 'sd21-real'" in str(raised.value)
    assert ", ".join(engine.models_for("generate")) in str(raised.value)
