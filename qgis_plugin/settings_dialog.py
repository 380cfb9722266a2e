"""The settings dialog: engine URL, token (or QGIS authentication configuration), timeouts, start command."""

from __future__ import annotations

from dataclasses import replace

from qgis.gui import QgsAuthConfigSelect
from qgis.PyQt.QtWidgets import QDialog, QDialogButtonBox, QDoubleSpinBox, QFormLayout, QLineEdit

from . import algorithms_module


def _seconds(value: float, maximum: float, special: str = "") -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(0.0, maximum)
    box.setDecimals(1)
    box.setSuffix(" s")
    if special:
        box.setSpecialValueText(special)
    box.setValue(value)
    return box


class SettingsDialog(QDialog):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("GFM4D settings")
        self.settings = algorithms_module("settings").load_settings()
        layout = QFormLayout(self)
        self.url = QLineEdit(self.settings.url)
        self.token = QLineEdit(self.settings.token)
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("the engine's GFM4D_TOKEN, if it has one")
        self.authcfg = QgsAuthConfigSelect(self)
        self.authcfg.setConfigId(self.settings.authcfg)
        self.request_timeout = _seconds(self.settings.request_timeout_s, 3600.0)
        self.job_timeout = _seconds(self.settings.job_timeout_s, 7 * 24 * 3600.0, "no limit")
        self.command = QLineEdit(self.settings.engine_command)
        self.command.setPlaceholderText("/path/to/gfm4d-venv/bin/gfm4d serve --port 8765")
        layout.addRow("Engine URL", self.url)
        layout.addRow("Token", self.token)
        layout.addRow("or authentication (Basic: token as password)", self.authcfg)
        layout.addRow("Request timeout", self.request_timeout)
        layout.addRow("Job timeout", self.job_timeout)
        layout.addRow("Command starting a local engine", self.command)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addRow(buttons)

    def edited_settings(self):
        return replace(
            self.settings,
            url=self.url.text().strip() or algorithms_module("settings").DEFAULT_URL,
            token=self.token.text().strip(),
            authcfg=self.authcfg.configId(),
            request_timeout_s=self.request_timeout.value(),
            job_timeout_s=self.job_timeout.value(),
            engine_command=self.command.text().strip(),
        )

    def accept(self):
        algorithms_module("settings").save_settings(self.edited_settings())
        super().accept()
