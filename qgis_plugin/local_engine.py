"""A GFM4D engine started by the plugin on this machine, with the command set in the settings.

The engine runs in its own Python environment (torch, diffusers), so QGIS only starts the
command as a child process and watches /v1/health until the engine answers. The process is
stopped when the plugin unloads (QGIS closing included), so it never outlives its QGIS. Qt enums
are written with their scoped names, which PyQt5 and PyQt6 both know.
"""

from __future__ import annotations

import shlex

from qgis.PyQt.QtCore import QObject, QProcess, QTimer, pyqtSignal

from . import algorithms_module

HEALTH_POLL_MS = 1000
START_TIMEOUT_S = 180  # loading torch and the first model can take minutes on a slow disk
STOP_GRACE_MS = 10000


def split_command(command: str) -> list[str]:
    """The program and arguments of a command line (quotes as a POSIX shell reads them)."""
    try:
        return shlex.split(command, posix=True)
    except ValueError as exc:
        raise ValueError(f"the engine command {command!r} cannot be read ({exc}); check its quotes") from None


class LocalEngine(QObject):
    """Starts, watches and stops one engine process."""

    ready = pyqtSignal(dict)  # the engine's health, once it answers
    failed = pyqtSignal(str)  # why it did not start (or stopped)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.process: QProcess | None = None
        self._timer = QTimer(self)
        self._timer.setInterval(HEALTH_POLL_MS)
        self._timer.timeout.connect(self._check_health)
        self._waited_s = 0.0
        self._output = b""

    def is_running(self) -> bool:
        return self.process is not None and self.process.state() != QProcess.ProcessState.NotRunning

    def start(self, command: str) -> None:
        """Start `command` (e.g. "gfm4d serve --port 8765"); `ready` or `failed` follows."""
        if self.is_running():
            raise RuntimeError("the local engine is already running; stop it first")
        parts = split_command(command)
        if not parts:
            raise ValueError(
                "no command to start the engine is set: enter one in Raster > GFM4D > Settings, "
                "e.g. /path/to/gfm4d-venv/bin/gfm4d serve --port 8765"
            )
        self.process = QProcess(self)
        self.process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        self.process.readyReadStandardOutput.connect(self._collect_output)
        self.process.finished.connect(self._finished)
        self.process.errorOccurred.connect(self._error)
        self._output = b""
        self._waited_s = 0.0
        self.process.start(parts[0], parts[1:])
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()
        if self.process is None:
            return
        process, self.process = self.process, None
        process.finished.disconnect(self._finished)
        process.errorOccurred.disconnect(self._error)
        if process.state() != QProcess.ProcessState.NotRunning:
            process.terminate()  # SIGTERM: uvicorn shuts down gracefully and the worker stops its job
            if not process.waitForFinished(STOP_GRACE_MS):
                process.kill()
                process.waitForFinished(STOP_GRACE_MS)
        process.deleteLater()

    def output_tail(self, limit: int = 2000) -> str:
        return self._output.decode("utf-8", "replace")[-limit:]

    def _collect_output(self) -> None:
        if self.process is not None:
            self._output = (self._output + bytes(self.process.readAllStandardOutput()))[-20000:]

    def _check_health(self) -> None:
        self._waited_s += HEALTH_POLL_MS / 1000
        settings = algorithms_module("settings").load_settings()
        client_module = algorithms_module("engine_client")
        try:
            health = client_module.EngineClient(settings).health(timeout_s=2.0)
        except client_module.EngineError:
            if self._waited_s >= START_TIMEOUT_S:
                self._timer.stop()
                self.failed.emit(
                    f"the local engine did not answer at {settings.url} within {START_TIMEOUT_S} s; check that the "
                    f"command's --port matches the URL in the settings. Its output:\n{self.output_tail()}"
                )
            return
        self._timer.stop()
        self.ready.emit(health)

    def _finished(self, exit_code: int, exit_status=None) -> None:
        self._timer.stop()
        self._collect_output()
        self.failed.emit(f"the local engine stopped (exit code {exit_code}). Its output:\n{self.output_tail()}")

    def _error(self, error) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self._timer.stop()
            program = self.process.program() if self.process is not None else "?"
            self.failed.emit(
                f"the engine command could not be started ({program} not found or not executable): "
                "check the command in Raster > GFM4D > Settings"
            )
