"""Plugin lifecycle: the Processing provider, and a Raster > GFM4D menu for the engine.

The provider is kept as an attribute: QGIS holds it only weakly from Python's side, and a
provider that Python garbage-collects disappears from the toolbox. The menu starts and stops a
local engine (the command in the settings), shows the engine's status, refreshes the model
lists of the algorithms and opens the settings; nothing in it is needed to run the algorithms.
"""

from __future__ import annotations

from qgis.core import Qgis, QgsApplication
from qgis.PyQt.QtWidgets import QAction

from . import algorithms_module
from .local_engine import LocalEngine

MENU = "&GFM4D"


class GFM4DPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.actions = []
        self.engine = None

    # --- Processing ------------------------------------------------------------------------------

    def initProcessing(self):  # noqa: N802 (QGIS's name)
        self.provider = algorithms_module("provider").GFM4DProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    # --- GUI -------------------------------------------------------------------------------------

    def initGui(self):  # noqa: N802
        self.initProcessing()
        self.engine = LocalEngine(self.iface.mainWindow())
        self.engine.ready.connect(self._engine_ready)
        self.engine.failed.connect(lambda message: self._tell(message, Qgis.MessageLevel.Critical))
        for text, slot in (
            ("Start local engine", self.start_engine),
            ("Stop local engine", self.stop_engine),
            ("Engine status", self.show_status),
            ("Refresh model lists", self.refresh_models),
            ("Settings…", self.show_settings),
        ):
            action = QAction(text, self.iface.mainWindow())
            action.triggered.connect(slot)
            self.iface.addPluginToRasterMenu(MENU, action)  # metadata.txt's category: Raster
            self.actions.append(action)

    def unload(self):
        for action in self.actions:
            self.iface.removePluginRasterMenu(MENU, action)
        self.actions = []
        if self.engine is not None:
            self.engine.stop()
            self.engine = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None

    # --- menu entries ----------------------------------------------------------------------------

    def _tell(self, message: str, level=None, duration: int = 10) -> None:
        bar = self.iface.messageBar()
        bar.pushMessage("GFM4D", message, Qgis.MessageLevel.Info if level is None else level, duration)

    def start_engine(self):
        settings = algorithms_module("settings").load_settings()
        try:
            self.engine.start(settings.engine_command)
        except (RuntimeError, ValueError) as exc:
            self._tell(str(exc), Qgis.MessageLevel.Warning)
            return
        self._tell(f"starting the local engine; it will answer at {settings.url}", Qgis.MessageLevel.Info)

    def stop_engine(self):
        if self.engine is not None and self.engine.is_running():
            self.engine.stop()
            self._tell("local engine stopped")
        else:
            self._tell("no local engine was started from QGIS", Qgis.MessageLevel.Warning)

    def _engine_ready(self, health: dict):
        self.refresh_models()
        self._tell(f"engine {health.get('version')} ready on {health.get('device')}: {', '.join(health.get('tasks', []))}",
                   Qgis.MessageLevel.Success)

    def status_text(self) -> tuple[str, bool]:
        """(one line on the engine's status, whether it answered)."""
        client_module = algorithms_module("engine_client")
        settings = algorithms_module("settings").load_settings()
        client = client_module.EngineClient(settings)
        try:
            health = client.health(timeout_s=5.0)
            models = client.models(timeout_s=5.0)
        except client_module.EngineError as exc:
            return str(exc), False
        names = ", ".join(m["name"] for m in models) or "none"
        return (f"engine {health.get('version')} at {client.url} on {health.get('device')}; tasks: "
                f"{', '.join(health.get('tasks', []))}; models: {names}; {health.get('queued', 0)} job(s) queued"), True

    def show_status(self):
        text, ok = self.status_text()
        self._tell(text, Qgis.MessageLevel.Success if ok else Qgis.MessageLevel.Warning, 15)

    def refresh_models(self):
        if self.provider is not None:
            self.provider.refresh_models()

    def show_settings(self):
        from .settings_dialog import SettingsDialog

        if SettingsDialog(self.iface.mainWindow()).exec():
            self.refresh_models()
