"""Which models the engine has, remembered for the algorithms' MODEL parameter.

Processing builds an algorithm's parameters every time it creates an instance (toolbox, dialog,
every batch row and model run), so the engine is asked once and the answer kept until the
provider is refreshed. An engine that does not answer is asked again only after a pause, so a
stopped engine never slows the toolbox down more than once per pause.
"""

from __future__ import annotations

import threading
import time

from .engine_client import EngineClient, EngineError, does_task
from .settings import load_settings

RETRY_AFTER_FAILURE_S = 30.0


class ModelCatalog:
    def __init__(self):
        self._lock = threading.Lock()
        self._models: list[dict] | None = None
        self._failed_at: float | None = None
        self.last_error = ""

    def invalidate(self) -> None:
        """Forget the list (after the engine started, or its settings changed)."""
        with self._lock:
            self._models, self._failed_at, self.last_error = None, None, ""

    def models(self) -> list[dict] | None:
        """The engine's models, or None while it cannot be asked."""
        with self._lock:
            if self._models is not None:
                return self._models
            if self._failed_at is not None and time.monotonic() - self._failed_at < RETRY_AFTER_FAILURE_S:
                return None
            settings = load_settings()
            try:
                self._models = EngineClient(settings).models(timeout_s=settings.catalog_timeout_s)
                self._failed_at, self.last_error = None, ""
            except EngineError as exc:
                self._failed_at, self.last_error = time.monotonic(), str(exc)
            return self._models

    def names_for(self, task: str | tuple[str, ...]) -> list[str] | None:
        """Names of the models that do `task` (or one of several; sorted), or None when the engine is not reachable."""
        models = self.models()
        if models is None:
            return None
        return sorted(m["name"] for m in models if does_task(m, task))


CATALOG = ModelCatalog()
