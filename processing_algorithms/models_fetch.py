"""Fetch a model: the engine downloads, verifies and installs a model of its catalogue, as a job.

The download happens on the engine's machine (where the models live), with its progress shown
here; cancelling cancels the job, and the engine keeps the partial download to resume next time.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterString,
    QgsProcessingUtils,
)
from qgis.PyQt.QtCore import QCoreApplication

from .base import advanced, progress_reporter
from .engine_client import EngineClient, EngineError
from .model_catalog import CATALOG
from .settings import load_settings

TASK = "models_fetch"
RETRY_AFTER_FAILURE_S = 30.0


class _Fetchable:
    """The catalogue names the engine publishes (the enum of its models_fetch `name`), asked once."""

    def __init__(self):
        self._lock = threading.Lock()
        self._names: list[str] | None = None
        self._failed_at: float | None = None

    def invalidate(self) -> None:
        with self._lock:
            self._names, self._failed_at = None, None

    def names(self) -> list[str] | None:
        with self._lock:
            if self._names is None and (self._failed_at is None or time.monotonic() - self._failed_at > RETRY_AFTER_FAILURE_S):
                settings = load_settings()
                try:
                    tasks = EngineClient(settings).get_json("/v1/tasks", timeout_s=settings.catalog_timeout_s)["tasks"]
                    schema = next(t for t in tasks if t["name"] == TASK)["params_schema"]
                    self._names = list(schema["properties"]["name"]["enum"])
                except (EngineError, KeyError, StopIteration, TypeError):
                    self._failed_at = time.monotonic()
            return self._names


FETCHABLE = _Fetchable()


class ModelsFetchAlgorithm(QgsProcessingAlgorithm):
    NAME = "NAME"
    COMPONENTS = "COMPONENTS"
    ENGINE_URL = "ENGINE_URL"
    MODELS = "MODELS"
    REPORT_JSON = "REPORT_JSON"

    def tr(self, text: str) -> str:
        return QCoreApplication.translate("GFM4D", text)

    def createInstance(self):
        return type(self)()

    def name(self) -> str:
        return "fetchmodel"

    def displayName(self) -> str:
        return self.tr("Fetch a model")

    def group(self) -> str:
        return self.tr("Models")

    def groupId(self) -> str:
        return "models"

    def tags(self):
        return self.tr("download,install,weights,checkpoint,diffusionsat,stable diffusion,sdxl,sd3,flux,catalogue").split(",")

    def shortHelpString(self) -> str:
        return self.tr(
            "Has the GFM4D engine download, verify and install a model of its catalogue: the released DiffusionSat "
            "runs (512 and 256 px, the Texas 3-D ControlNet, the fMoW Sentinel-2 super-resolution ControlNet), the "
            "Stable Diffusion 2.1 components they need, and SDXL, SD3 and FLUX.1 backbones. `gfm4d models available` "
            "on the engine's machine lists sizes and licences.\n\n"
            "The download runs on the engine's machine, resumes after a dropped connection, is checked against the "
            "published checksum and free disk space, and installs the model whole or not at all. A DiffusionSat run "
            "also gets the SD-2.1 components unless that box is unticked. Cancelling keeps the partial download; "
            "running the algorithm again resumes it.\n\n"
            "When the engine cannot reach the source, the error names the file to download by hand and the "
            "`gfm4d models` command that installs it."
        )

    def initAlgorithm(self, config=None):
        names = FETCHABLE.names()
        description = self.tr("Model to fetch")
        if names:
            parameter = QgsProcessingParameterEnum(self.NAME, description, names, False, None, False, True)
        else:
            parameter = QgsProcessingParameterString(self.NAME, description)
        parameter.setHelp(self.tr("A name of the engine's catalogue, e.g. diffusionsat-512."))
        self.addParameter(parameter)
        self.addParameter(advanced(QgsProcessingParameterBoolean(
            self.COMPONENTS, self.tr("Also fetch the Stable Diffusion 2.1 components a DiffusionSat run lacks"), True)))
        self.addParameter(advanced(QgsProcessingParameterString(
            self.ENGINE_URL, self.tr("Engine URL (empty: the plugin's setting)"), optional=True)))
        self.addOutput(QgsProcessingOutputString(self.MODELS, self.tr("Installed models (comma-separated)")))
        self.addOutput(QgsProcessingOutputString(self.REPORT_JSON, self.tr("What was fetched, as JSON")))

    def processAlgorithm(self, parameters, context, feedback):
        try:
            return self._fetch(parameters, context, feedback)
        except EngineError as exc:
            raise QgsProcessingException(str(exc)) from None

    def _fetch(self, parameters, context, feedback):
        name = (self.parameterAsString(parameters, self.NAME, context) or "").strip()
        if not name:
            raise QgsProcessingException(self.tr("Name the model to fetch, e.g. diffusionsat-512."))
        url = self.parameterAsString(parameters, self.ENGINE_URL, context)
        client = EngineClient(load_settings().with_url(url.strip() if url else None))
        health = client.require_task(TASK)
        feedback.pushInfo(self.tr("GFM4D engine {0} at {1}").format(health.get("version"), client.url))
        params = {"name": name, "components": self.parameterAsBool(parameters, self.COMPONENTS, context)}
        job = client.submit(TASK, params, (), feedback)
        feedback.pushInfo(self.tr("Engine job {0} queued").format(job["id"]))
        finished = client.wait(job["id"], feedback, report=progress_reporter(feedback))
        folder = tempfile.mkdtemp(prefix="gfm4d_", dir=QgsProcessingUtils.tempFolder())
        path = client.download(finished["id"], "model", os.path.join(folder, "model.json"), feedback)
        with open(path, encoding="utf-8") as handle:
            report = json.load(handle)["fetched"]
        CATALOG.invalidate()  # the engine has a new model: the MODEL lists ask again
        for item in report:
            state = "installed" if item.get("installed") else "already installed"
            ready = {True: "; ready", False: "; not ready"}.get(item.get("ready"), "")
            feedback.pushInfo(f"{item['name']}: {state} in {item['path']}{ready}" + (f" ({item['note']})" if item.get("note") else ""))
        feedback.setProgress(100)
        return {self.MODELS: ",".join(item["name"] for item in report), self.REPORT_JSON: json.dumps(report)}
