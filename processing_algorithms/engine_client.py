"""The engine's HTTP API v1 from inside QGIS, on QgsBlockingNetworkRequest.

QgsBlockingNetworkRequest goes through QgsNetworkAccessManager, so QGIS's proxy settings, SSL
exceptions and authentication configurations apply, and it is safe in the worker threads that
Processing runs algorithms in. Every failure is an EngineError, a QgsProcessingException whose
message says what went wrong and what to do; cancelling the QGIS feedback cancels the job on
the engine and nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, Sequence

from qgis.core import QgsApplication, QgsAuthMethodConfig, QgsBlockingNetworkRequest, QgsProcessingException
from qgis.PyQt.QtCore import QByteArray, QUrl
from qgis.PyQt.QtNetwork import QNetworkRequest

from .compat import ATTRIBUTE_HTTP_STATUS, HEADER_CONTENT_TYPE, REQUEST_OK, REQUEST_TIMEOUT
from .multipart import FilePart, job_body
from .settings import EngineSettings

API_PREFIX = "/v1"
FINISHED_STATES = ("succeeded", "failed", "cancelled")
MENU = "Raster > GFM4D"
_SETTINGS_MENU = f"{MENU} > Settings"
_SETTINGS_HINT = f"{_SETTINGS_MENU} (or the algorithm's Engine URL parameter)"


class EngineError(QgsProcessingException):
    """Talking to the engine failed; the message says what to do."""


class EngineUnreachable(EngineError):
    """No answer: the engine is not running, the URL is wrong, or it is too slow."""


class EngineRefused(EngineError):
    """The engine answered with an error status."""

    def __init__(self, message: str, status: int, detail: str):
        super().__init__(message)
        self.status = status
        self.detail = detail


class JobFailed(EngineError):
    """The job ended in state `failed`; the message holds the engine's reason."""


class JobCancelled(EngineError):
    """The job was cancelled (from QGIS or on the engine); nothing was written."""


def does_task(entry: dict, task: str | tuple[str, ...]) -> bool:
    """Whether a model in the engine's list does `task`, or one of a tuple of tasks."""
    tasks = (task,) if isinstance(task, str) else task
    return any(t in entry.get("tasks", []) for t in tasks)


class EngineClient:
    """One engine, as configured in `settings`."""

    def __init__(self, settings: EngineSettings):
        self.settings = settings
        self.url = settings.url.rstrip("/")
        self._token, self._authcfg = _credentials(settings)

    # --- requests ------------------------------------------------------------------------------

    def _network_request(self, path: str, timeout_s: float | None) -> QNetworkRequest:
        request = QNetworkRequest(QUrl(f"{self.url}{path}"))
        if self._token:
            request.setRawHeader(b"Authorization", f"Bearer {self._token}".encode("utf-8"))
        request.setRawHeader(b"Accept", b"application/json")
        timeout = self.settings.request_timeout_s if timeout_s is None else timeout_s
        if timeout and hasattr(request, "setTransferTimeout"):
            request.setTransferTimeout(int(timeout * 1000))
        return request

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        feedback=None,
        timeout_s: float | None = None,
    ) -> bytes:
        """One request; the response body, or an EngineError for no answer or an error status."""
        blocking = QgsBlockingNetworkRequest()
        if self._authcfg:
            blocking.setAuthCfg(self._authcfg)
        request = self._network_request(path, timeout_s)
        started = time.monotonic()
        if method == "GET":
            error = blocking.get(request, True, feedback)
        elif method == "POST":
            request.setHeader(HEADER_CONTENT_TYPE, content_type or "application/json")
            error = blocking.post(request, QByteArray(body or b""), True, feedback)
        elif method == "DELETE":
            error = blocking.deleteResource(request)
        else:
            raise ValueError(f"unsupported method {method}")
        reply = blocking.reply()
        status = reply.attribute(ATTRIBUTE_HTTP_STATUS)
        content = bytes(reply.content())
        if error == REQUEST_OK and status is not None and int(status) < 400:
            return content
        if feedback is not None and feedback.isCanceled():
            raise JobCancelled(f"cancelled while talking to the GFM4D engine at {self.url}")
        if status is None:
            timeout = self.settings.request_timeout_s if timeout_s is None else timeout_s
            if error == REQUEST_TIMEOUT or (timeout and time.monotonic() - started >= 0.95 * timeout):
                raise EngineUnreachable(
                    f"The GFM4D engine at {self.url} did not answer within {timeout:g} s. It may be busy loading a "
                    f"model or receiving a large upload: try again, or raise the request timeout in {_SETTINGS_HINT}."
                )
            raise self._unreachable(blocking.errorMessage())
        raise self._refusal(int(status), content, path)

    def _unreachable(self, reason: str) -> EngineUnreachable:
        return EngineUnreachable(
            f"Cannot reach the GFM4D engine at {self.url} ({reason or 'no answer'}). Start it ({MENU} > Start "
            f"local engine, or `gfm4d serve` in the engine's environment) or set its address in {_SETTINGS_HINT}."
        )

    def _refusal(self, status: int, content: bytes, path: str) -> EngineRefused:
        detail = _detail_of(content)
        if status == 401:
            message = (
                f"The GFM4D engine at {self.url} needs a token, or another one ({detail}): set the engine's token "
                f"in {_SETTINGS_MENU} (as a token or an authentication configuration)."
            )
        elif status == 404 and path.endswith("/health"):
            message = (
                f"The server at {self.url} does not answer GFM4D's API {API_PREFIX.strip('/')} ({path}: {detail}). "
                "Check that the URL points at a GFM4D engine, and update the engine or the plugin so that both speak API v1."
            )
        elif status >= 500:
            message = f"The GFM4D engine at {self.url} failed ({status}): {detail}"
        else:
            message = f"The GFM4D engine refused the request ({status}): {detail}"
        return EngineRefused(message, status, detail)

    def get_json(self, path: str, timeout_s: float | None = None, feedback=None):
        return self._parse(self.request("GET", path, timeout_s=timeout_s, feedback=feedback), path)

    def _parse(self, content: bytes, path: str):
        try:
            return json.loads(content.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise EngineError(
                f"The server at {self.url} answered {path} with something that is not JSON: is the URL that of a "
                f"GFM4D engine? Check it in {_SETTINGS_HINT}."
            ) from None

    # --- API -----------------------------------------------------------------------------------

    def health(self, timeout_s: float | None = None) -> dict:
        """The engine's health; EngineError when the server is not a GFM4D engine speaking API v1."""
        health = self.get_json(f"{API_PREFIX}/health", timeout_s=timeout_s)
        if not isinstance(health, dict) or health.get("status") != "ok" or "tasks" not in health:
            raise EngineError(
                f"The server at {self.url} answered {API_PREFIX}/health, but not as a GFM4D engine of API v1 does. "
                f"Check the URL in {_SETTINGS_HINT}, and update the engine if it is an old one."
            )
        return health

    def models(self, timeout_s: float | None = None) -> list[dict]:
        return list(self.get_json(f"{API_PREFIX}/models", timeout_s=timeout_s).get("models", []))

    def require_task(self, task: str) -> dict:
        """The engine's health, checking that it runs `task`."""
        health = self.health()
        if task not in health.get("tasks", []):
            raise EngineError(
                f"The GFM4D engine at {self.url} (version {health.get('version', '?')}) does not run the {task} task; "
                f"it runs: {', '.join(health.get('tasks', [])) or 'nothing'}. Update the engine to a version that does."
            )
        return health

    def require_model(self, task: str | tuple[str, ...], model: str, timeout_s: float | None = None) -> dict:
        """The engine's entry for `model`, checking that it exists and does `task` (or one of several)."""
        models = self.models(timeout_s=timeout_s)
        able = [m["name"] for m in models if does_task(m, task)]
        named = task if isinstance(task, str) else " or ".join(task)
        for entry in models:
            if entry.get("name") == model:
                if not does_task(entry, task):
                    raise EngineError(
                        f"The model {model!r} ({entry.get('kind', '?')}) does not do {named}; models on this engine "
                        f"that do: {', '.join(able) or 'none'}."
                    )
                return entry
        raise EngineError(
            f"The GFM4D engine at {self.url} has no model {model!r}. Models that do {named}: {', '.join(able) or 'none'}. "
            f"Pick one of them, or add the model folder to the engine's models directory, restart it and use "
            f"{MENU} > Refresh model lists."
        )

    def submit(self, task: str, params: dict, files: Sequence[FilePart] = (), feedback=None) -> dict:
        """Queue a job (params JSON plus input files); the job as the engine describes it."""
        content_type, body = job_body({"task": task, **params}, files)
        content = self.request("POST", f"{API_PREFIX}/jobs", body, content_type, feedback=feedback)
        return self._parse(content, f"{API_PREFIX}/jobs")

    def job(self, job_id: str) -> dict:
        return self.get_json(f"{API_PREFIX}/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict:
        """Ask the engine to stop a queued or running job (a finished job keeps its results).

        Engines with a cancel operation get `POST /v1/jobs/{id}/cancel`; older ones, which
        cancel with DELETE, get that (on a finished job they also delete it).
        """
        path = f"{API_PREFIX}/jobs/{job_id}"
        try:
            return self._parse(self.request("POST", f"{path}/cancel"), f"{path}/cancel")
        except EngineRefused as exc:
            if exc.status not in (404, 405):
                raise
        return self.delete(job_id)

    def delete(self, job_id: str) -> dict:
        """Delete a job and its files on the engine (a job still running is cancelled first)."""
        path = f"{API_PREFIX}/jobs/{job_id}"
        return self._parse(self.request("DELETE", path), path)

    def cancel_and_confirm(self, job_id: str) -> dict:
        """Cancel a job and wait (up to the cancel_confirm_s setting) until the engine says it stopped; its last state."""
        job = self.cancel(job_id)
        deadline = time.monotonic() + self.settings.cancel_confirm_s
        while job.get("state") not in FINISHED_STATES and not job.get("deleted") and time.monotonic() < deadline:
            time.sleep(0.1)
            job = self.job(job_id)
        return job

    def stop_job(self, job_id: str, task: str) -> JobCancelled:
        """Cancel a job for a user who pressed Cancel; the error that says honestly what the engine did."""
        what = f"{task} job {job_id}".strip()
        try:
            job = self.cancel_and_confirm(job_id)
        except EngineError as exc:
            return JobCancelled(
                f"Cancelled in QGIS, but the engine could not be told to stop its {what} ({exc}). It may still be "
                "running there: see Engine status. No output was written."
            )
        state = job.get("state")
        if state == "cancelled" or (job.get("deleted") and state != "succeeded"):
            return JobCancelled(f"Cancelled: the engine stopped its {what}; no output was written.")
        if state == "succeeded":
            return JobCancelled(f"Cancelled: the engine had already finished its {what}; its results were not downloaded.")
        if state == "failed":
            return JobCancelled(f"Cancelled: the engine's {what} had failed meanwhile ({job.get('error') or 'no reason given'}).")
        return JobCancelled(
            f"Cancelled in QGIS, but the engine did not confirm within {self.settings.cancel_confirm_s:g} s that its {what} "
            f"stopped (it is {state or 'in an unknown state'}, cancel requested; it stops at its next step). No output was "
            "written; see Engine status before starting a large job."
        )

    def wait(self, job_id: str, feedback=None, report: Callable[[dict], None] | None = None) -> dict:
        """Poll a job until it ends. Cancelling `feedback` cancels the job (JobCancelled, saying whether the
        engine confirmed); a failed job raises JobFailed with the engine's reason."""
        started = time.monotonic()
        while True:
            job = self.job(job_id)
            if report is not None:
                report(job)
            if _cancelled(feedback):
                raise self.stop_job(job_id, job.get("task", ""))
            if job["state"] in FINISHED_STATES:
                break
            limit = self.settings.job_timeout_s
            if limit and time.monotonic() - started > limit:
                self.cancel_and_confirm(job_id)
                raise EngineError(
                    f"The {job.get('task', '')} job {job_id} did not finish within {limit:g} s and was cancelled. Use a smaller "
                    f"extent or fewer steps, or raise the job timeout in {_SETTINGS_MENU}."
                )
            _sleep(self.settings.poll_interval_s, feedback)
        if job["state"] == "failed":
            raise JobFailed(f"The GFM4D {job.get('task', '')} job failed: {job.get('error') or 'no reason given'}")
        if job["state"] == "cancelled":
            raise JobCancelled(f"The {job.get('task', '')} job {job_id} was cancelled on the engine; no output was written.")
        return job

    def download(self, job_id: str, name: str, path: str, feedback=None) -> str:
        """Write result `name` to `path` (whole or not at all)."""
        content = self.request("GET", f"{API_PREFIX}/jobs/{job_id}/results/{name}", feedback=feedback)
        partial = f"{path}.part"
        try:
            with open(partial, "wb") as handle:
                handle.write(content)
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        return path


def _credentials(settings: EngineSettings) -> tuple[str, str]:
    """(bearer token, auth config id to apply to requests).

    A Basic auth configuration holds the token as its password (what QGIS offers for a secret);
    any other method (API header, OAuth2, PKI...) is applied by QGIS to each request.
    """
    token, authcfg = settings.token.strip(), settings.authcfg.strip()
    if not authcfg:
        return token, ""
    config = QgsAuthMethodConfig()
    manager = QgsApplication.authManager()
    if manager is None or not manager.loadAuthenticationConfig(authcfg, config, True) or not config.isValid(True):
        raise EngineError(
            f"The authentication configuration {authcfg!r} set for the GFM4D engine cannot be loaded: check it in "
            f"Settings > Options > Authentication, or clear it in {_SETTINGS_MENU}."
        )
    if config.method() == "Basic":
        return config.config("password", "") or token, ""
    return token, authcfg


def _detail_of(content: bytes) -> str:
    try:
        body = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return content.decode("utf-8", "replace").strip()[:500] or "no details"
    if isinstance(body, dict) and body.get("detail"):
        return str(body["detail"])
    return json.dumps(body)[:500]


def _cancelled(feedback) -> bool:
    return feedback is not None and feedback.isCanceled()


def _sleep(seconds: float, feedback) -> None:
    """Sleep, waking early when the feedback is cancelled."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not _cancelled(feedback):
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
