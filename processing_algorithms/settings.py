"""Where the engine is and how to talk to it: QGIS settings, with environment variables as fallback.

Stored in QgsSettings under `gfm4d/` (so they follow the QGIS profile); the environment
variables are the ones the engine's own CLI reads (GFM4D_ENGINE_URL, GFM4D_TOKEN), which makes
`qgis_process` and headless scripts work without a settings dialog. A token may also live in the
QGIS authentication manager (an auth config id), which keeps it out of the plain settings file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

from qgis.core import QgsSettings

DEFAULT_URL = "http://127.0.0.1:8765"
SETTINGS_GROUP = "gfm4d"


@dataclass(frozen=True)
class EngineSettings:
    url: str = DEFAULT_URL
    token: str = ""  # bearer token in plain settings (prefer authcfg)
    authcfg: str = ""  # QGIS auth config id holding the token (Basic: its password) or any header auth
    request_timeout_s: float = 30.0  # one HTTP request (uploads and downloads included)
    job_timeout_s: float = 0.0  # how long to wait for a job; 0: no limit (cancel it from QGIS)
    poll_interval_s: float = 0.5  # between job status requests
    catalog_timeout_s: float = 2.0  # asking the engine for its models while the toolbox loads
    cancel_confirm_s: float = 15.0  # how long a cancel waits for the engine to say the job stopped
    engine_command: str = ""  # command that starts a local engine, e.g. "gfm4d serve --port 8765"

    def with_url(self, url: str | None) -> "EngineSettings":
        """These settings talking to another engine (an algorithm's ENGINE_URL parameter)."""
        return replace(self, url=url.strip()) if url and url.strip() else self


_ENVIRONMENT = {"url": "GFM4D_ENGINE_URL", "token": "GFM4D_TOKEN", "engine_command": "GFM4D_ENGINE_COMMAND"}


def load_settings() -> EngineSettings:
    """The settings in effect: QgsSettings where set, else the environment, else the defaults."""
    stored = QgsSettings()
    values = {}
    for field in fields(EngineSettings):
        key = f"{SETTINGS_GROUP}/{field.name}"
        value = stored.value(key, None)
        if value in (None, "") and field.name in _ENVIRONMENT:
            value = os.environ.get(_ENVIRONMENT[field.name]) or None
        if value in (None, ""):
            continue
        try:
            values[field.name] = float(value) if field.type in (float, "float") else str(value)
        except (TypeError, ValueError):
            continue  # a hand-edited value that is not a number: keep the default
    return EngineSettings(**values)


def save_settings(settings: EngineSettings) -> None:
    stored = QgsSettings()
    for field in fields(EngineSettings):
        stored.setValue(f"{SETTINGS_GROUP}/{field.name}", getattr(settings, field.name))
