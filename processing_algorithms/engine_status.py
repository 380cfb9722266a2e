"""Engine status: is the engine there, which version, device, tasks and models (and refresh MODEL lists)."""

from __future__ import annotations

import json

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterString,
)
from .base import Gfm4dAlgorithm, advanced, explained
from .engine_client import MENU, EngineClient, EngineError
from .model_catalog import CATALOG
from .settings import load_settings


class EngineStatusAlgorithm(Gfm4dAlgorithm):
    ENGINE_URL = "ENGINE_URL"
    URL = "URL"
    VERSION = "VERSION"
    DEVICE = "DEVICE"
    TASKS = "TASKS"
    MODELS = "MODELS"
    QUEUED = "QUEUED"
    STATUS_JSON = "STATUS_JSON"

    HELP_ANCHOR = "engine-status"
    TAGS = "engine, status, server, health, models, gpu, device, version, diffusion"
    INTRO = (
        "Asks the GFM4D engine whether it is running and what it offers: version, device (GPU or CPU), tasks, models "
        "and queued jobs. Fails with instructions when the engine cannot be reached. Running it also refreshes the "
        "model lists of the other algorithms."
    )

    def name(self) -> str:
        return "enginestatus"

    def displayName(self) -> str:
        return self.tr("Engine status")

    def group(self) -> str:
        return self.tr("Engine")

    def groupId(self) -> str:
        return "engine"

    def initAlgorithm(self, config=None):
        self.addParameter(advanced(explained(QgsProcessingParameterString(
            self.ENGINE_URL, self.tr("Engine URL"), optional=True),
            self.tr("The engine to ask, e.g. http://gpu-box:8765. Empty: the one in {0} > Settings.").format(MENU))))
        for name, description in ((self.URL, "Engine URL"), (self.VERSION, "Engine version"), (self.DEVICE, "Device"),
                                  (self.TASKS, "Tasks (comma-separated)"), (self.MODELS, "Models (comma-separated)"),
                                  (self.STATUS_JSON, "Health and models as JSON")):
            self.addOutput(QgsProcessingOutputString(name, self.tr(description)))
        self.addOutput(QgsProcessingOutputNumber(self.QUEUED, self.tr("Queued jobs")))

    def processAlgorithm(self, parameters, context, feedback):
        url = self.parameterAsString(parameters, self.ENGINE_URL, context)
        client = EngineClient(load_settings().with_url(url))
        try:
            health, models = client.health(), client.models()
        except EngineError as exc:
            raise QgsProcessingException(str(exc)) from None
        CATALOG.invalidate()
        feedback.pushInfo(self.tr("GFM4D engine {0} at {1}, device {2} ({3})").format(
            health.get("version"), client.url, health.get("device"), health.get("dtype")))
        if health.get("gpu_total_bytes"):
            feedback.pushInfo(self.tr("GPU memory free: {0:.1f} of {1:.1f} GiB").format(
                health["gpu_free_bytes"] / 2**30, health["gpu_total_bytes"] / 2**30))
        feedback.pushInfo(self.tr("Tasks: {0}").format(", ".join(health.get("tasks", []))))
        for model in models:
            state = "ready" if model.get("ready") else "not ready"
            feedback.pushInfo(f"  {model['name']} ({model.get('kind')}; {', '.join(model.get('tasks', []))}; "
                              f"{model.get('native_resolution')} px; {state})")
        return {
            self.URL: client.url,
            self.VERSION: str(health.get("version", "")),
            self.DEVICE: str(health.get("device", "")),
            self.TASKS: ",".join(health.get("tasks", [])),
            self.MODELS: ",".join(m["name"] for m in models),
            self.QUEUED: int(health.get("queued", 0)),
            self.STATUS_JSON: json.dumps({"health": health, "models": models}),
        }
