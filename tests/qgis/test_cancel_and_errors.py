"""Cancelling in QGIS cancels the engine's job, waits for the engine to confirm (and says so when it
does not) and leaves no output; a stopped engine, a refused request and a missing model each fail
with a message that says what to do."""

import subprocess
import sys
from pathlib import Path

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


def test_cancel_mid_job_waits_until_the_engine_stopped_it_and_writes_nothing(provider, engine, tmp_path):
    from qgis.core import QgsSettings

    out = tmp_path / "never.tif"
    feedback = CancelWhenRunning()
    QgsSettings().setValue("gfm4d/cancel_confirm_s", 120)  # a loaded machine may take a while to reach the next step
    try:
        with pytest.raises(Exception, match="Cancelled: the engine stopped its generate job .*; no output was written"):
            processing.run("gfm4d:generate", {**LONG_JOB, "OUTPUT": str(out)}, feedback=feedback)
    finally:
        QgsSettings().remove("gfm4d/cancel_confirm_s")
    assert feedback.job_id is not None
    job = engine.job(feedback.job_id)
    assert job["state"] == "cancelled"  # already when QGIS said so
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


def test_cancel_the_engine_does_not_confirm_is_reported_as_such(provider, tmp_path):
    from qgis.core import QgsSettings

    stubborn = subprocess.Popen([sys.executable, str(Path(__file__).with_name("fake_engine.py")), "stubborn"],
                                stdout=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{int(stubborn.stdout.readline())}"
    QgsSettings().setValue("gfm4d/cancel_confirm_s", 0.5)
    try:
        with pytest.raises(Exception) as raised:
            processing.run("gfm4d:generate", {**LONG_JOB, "MODEL": None, "ENGINE_URL": url, "OUTPUT": str(tmp_path / "x.tif")},
                           feedback=CancelWhenRunning())
    finally:
        QgsSettings().remove("gfm4d/cancel_confirm_s")
        stubborn.terminate()
        stubborn.wait(10)
    message = str(raised.value)
    assert message.startswith("Cancelled in QGIS, but the engine did not confirm within 0.5 s that its generate job")
    assert "running, cancel requested" in message and "No output was written" in message
    assert not list(tmp_path.iterdir())


def test_missing_model_is_named_with_the_alternatives(provider, engine, tmp_path):
    # a graphical model or batch saved elsewhere may name a model this engine lacks; Processing checks the
    # parameters before running, where the plugin's message replaces "Incorrect parameter value"
    parameters = {**LONG_JOB, "MODEL": "sd21-real", "OUTPUT": str(tmp_path / "x.tif")}
    with pytest.raises(Exception) as raised:
        processing.run("gfm4d:generate", parameters)
    message = str(raised.value)
    assert "has no model 'sd21-real'" in message and "Incorrect parameter value" not in message
    assert ", ".join(engine.models_for("generate")) in message
    assert not (tmp_path / "x.tif").exists()
    # the same check in a batch row (the batch dialog validates each row with checkParameterValues)
    from qgis.core import QgsApplication

    from processing.tools import dataobjects

    algorithm = QgsApplication.processingRegistry().createAlgorithmById("gfm4d:generate")
    ok, message = algorithm.checkParameterValues(algorithm.preprocessParameters(
        {**{key: str(value) for key, value in LONG_JOB.items()}, "MODEL": "sd21-real", "OUTPUT": str(tmp_path / "x.tif")}),
        dataobjects.createContext())
    assert not ok and "has no model 'sd21-real'" in message
    ok, message = algorithm.checkParameterValues({**LONG_JOB, "OUTPUT": str(tmp_path / "x.tif")}, dataobjects.createContext())
    assert ok, message


def test_model_that_does_not_do_the_task_is_named(provider, engine, tmp_path):
    others = [name for name in engine.models_for("generate") if name not in engine.models_for("predict")]
    if not others:
        pytest.skip("every demo model predicts")
    from qgis.core import QgsApplication

    from processing.tools import dataobjects

    algorithm = QgsApplication.processingRegistry().createAlgorithmById("gfm4d:predict")
    ok, message = algorithm.checkParameterValues({"MODEL": others[0], "TARGET_DATE": "2020-01-01"}, dataobjects.createContext())
    assert not ok and f"The model {others[0]!r}" in message and "does not do predict" in message
