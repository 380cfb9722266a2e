"""A small Python client of the engine's HTTP API v1, for headless use (scripts, CLI `--engine`).

    client = EngineClient("http://127.0.0.1:8765", token=None)
    paths = client.run("generate", {"extent": [...], "crs": "EPSG:32618", "resolution_m": 2,
                                    "prompt": "a fmow satellite image of a farm"}, out_dir="out")

It needs only `requests`: no torch, no engine code beyond the error classes. Uploads are streamed
from disk (a Shapefile is zipped with its sidecar files first), downloads are streamed to a
temporary file renamed into place, and every failure is a GFM4DError subclass whose message says
what went wrong: the engine cannot be reached, it refused the request (its own message), or the
job failed (the job's error).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Mapping

import requests

from engine.errors import Cancelled, GFM4DError

DEFAULT_URL = "http://127.0.0.1:8765"
FINISHED = ("succeeded", "failed", "cancelled")
_CHUNK = 1024 * 1024
_SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx")

FileArg = str | os.PathLike
Files = Mapping[str, FileArg | Iterable[FileArg]]


class EngineError(GFM4DError):
    """Something went wrong talking to the engine."""


class EngineUnreachable(EngineError):
    """No answer from the engine (not running, wrong URL, or too slow)."""


class EngineRefused(EngineError):
    """The engine answered a request with an error status; `status` and `detail` say which and why."""

    def __init__(self, message: str, status: int, detail: str, errors: list | None = None):
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.errors = errors or []


class AuthenticationFailed(EngineRefused):
    """401: the engine needs a token, or not this one."""


class JobLost(EngineError):
    """The engine no longer knows a job (it was deleted, expired, or the engine lost its work folder)."""


class JobFailed(EngineError):
    """The job ended in state `failed`; the message is the engine's reason."""

    def __init__(self, message: str, job: dict):
        super().__init__(message)
        self.job = job


class _MultipartBody:
    """A multipart/form-data body read piece by piece from disk, with its length known up front.

    requests sends a file-like body by calling `read(blocksize)` and sets Content-Length from
    `len()`, so the engine can refuse an oversized upload before any of it is sent.
    """

    def __init__(self, fields: Mapping[str, str], files: list[tuple[str, Path]]):
        self.boundary = f"gfm4d-{uuid.uuid4().hex}"
        self._pieces: list[bytes | Path] = []
        for name, value in fields.items():
            self._pieces.append(self._head(name, None, "application/json") + value.encode("utf-8") + b"\r\n")
        for name, path in files:
            self._pieces += [self._head(name, path.name, "application/octet-stream"), path, b"\r\n"]
        self._pieces.append(f"--{self.boundary}--\r\n".encode())
        self._length = sum(p.stat().st_size if isinstance(p, Path) else len(p) for p in self._pieces)
        self._index = 0
        self._handle = None

    def _head(self, name: str, filename: str | None, content_type: str) -> bytes:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            safe = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
            disposition += f'; filename="{safe}"'
        return (f"--{self.boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {content_type}\r\n\r\n").encode()

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        size = _CHUNK if size is None or size < 0 else size
        out = bytearray()
        while len(out) < size and self._index < len(self._pieces):
            piece = self._pieces[self._index]
            if isinstance(piece, Path):
                if self._handle is None:
                    self._handle = open(piece, "rb")
                data = self._handle.read(size - len(out))
                if data:
                    out += data
                    continue
                self._handle.close()
                self._handle = None
            else:
                out += piece
            self._index += 1
        return bytes(out)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


class EngineClient:
    """Talks to one engine. `timeout` (seconds) bounds each request, not a job's run time."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self._upload_limit: int | None = None

    # --- plain requests ----------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        try:
            response = self.session.request(method, f"{self.url}{path}", **kwargs)
        except requests.Timeout as exc:
            raise EngineUnreachable(f"the GFM4D engine at {self.url} did not answer within {self.timeout:g} s ({exc})") from None
        except requests.ConnectionError as exc:
            raise EngineUnreachable(
                f"cannot reach the GFM4D engine at {self.url} ({_root_cause(exc)}); start it with `gfm4d serve` "
                "or check the URL and port"
            ) from None
        if response.status_code >= 400:
            raise _refusal(response)
        return response

    def health(self) -> dict:
        return self._request("GET", "/v1/health").json()

    def models(self) -> list[dict]:
        return self._request("GET", "/v1/models").json()["models"]

    def tasks(self) -> list[dict]:
        return self._request("GET", "/v1/tasks").json()["tasks"]

    def jobs(self, state: str | None = None, page_size: int = 500) -> list[dict]:
        """Every job on the engine (oldest first), fetched a page at a time."""
        jobs: list[dict] = []
        offset: int | None = 0
        while offset is not None:
            params = {"offset": offset, "limit": page_size, **({"state": state} if state else {})}
            page = self._request("GET", "/v1/jobs", params=params).json()
            jobs += page["jobs"]
            offset = page.get("next_offset")
        return jobs

    def status(self, job_id: str) -> dict:
        return self._request("GET", f"/v1/jobs/{job_id}").json()

    def cancel(self, job_id: str) -> dict:
        """Cancel a queued or running job; a finished job keeps its results. The job as the engine then reports it."""
        return self._request("POST", f"/v1/jobs/{job_id}/cancel").json()

    def delete(self, job_id: str) -> dict:
        """Delete a finished job and its files on the engine (a queued or running one is cancelled instead)."""
        return self._request("DELETE", f"/v1/jobs/{job_id}").json()

    # --- jobs --------------------------------------------------------------------------------

    def submit(self, task: str, params: Mapping | None = None, files: Files | None = None,
               paths: Mapping | None = None) -> str:
        """Queue a job; its id. `files` maps input names to local files (uploaded), `paths` to
        files on the engine's machine (only where the engine allows them)."""
        body = {"task": task, **dict(params or {})}
        if paths:
            body["paths"] = {k: [str(p) for p in v] if isinstance(v, (list, tuple)) else str(v) for k, v in paths.items()}
        with tempfile.TemporaryDirectory(prefix="gfm4d-upload-") as scratch:
            uploads = _upload_list(files or {}, Path(scratch))
            if not uploads:
                response = self._request("POST", "/v1/jobs", json=body)
                return response.json()["id"]
            self._check_upload_size(uploads)
            multipart = _MultipartBody({"params": json.dumps(body)}, uploads)
            try:
                response = self._request("POST", "/v1/jobs", data=multipart,
                                         headers={"Content-Type": multipart.content_type})
            finally:
                multipart.close()
        return response.json()["id"]

    def _check_upload_size(self, uploads: list[tuple[str, Path]]) -> None:
        """Refuse locally what the engine would refuse after the upload (its limit is in /v1/health)."""
        if self._upload_limit is None:
            self._upload_limit = int(self.health().get("max_upload_bytes") or 0)
        size = sum(path.stat().st_size for _, path in uploads)
        if self._upload_limit and size > self._upload_limit:
            raise EngineRefused(
                f"the files to upload total {size} bytes, more than the engine accepts ({self._upload_limit} bytes); "
                "clip the raster to the area you need, or start the engine with a larger --max-upload-mb",
                413, "upload too large",
            )

    def wait(self, job_id: str, progress: Callable[[dict], None] | None = None, poll_interval: float = 0.5,
             timeout: float | None = None, cancel_on_interrupt: bool = True) -> dict:
        """Poll until the job has finished; the finished job. JobFailed / Cancelled / JobLost otherwise.

        `progress` gets the job dict whenever its progress or state changed. Ctrl-C cancels the job
        on the engine (unless `cancel_on_interrupt` is off) before it is raised again. A job the
        engine no longer knows ends the wait at once (JobLost), so nothing waits forever.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last = None
        try:
            while True:
                try:
                    job = self.status(job_id)
                except EngineRefused as exc:
                    if exc.status != 404:
                        raise
                    raise JobLost(
                        f"the engine at {self.url} no longer knows job {job_id} ({exc.detail}); it was deleted, or the "
                        "engine was restarted with another work folder: submit the job again"
                    ) from None
                seen = (job["state"], job["done"], job["total"], job["message"])
                if progress is not None and seen != last:
                    progress(job)
                last = seen
                if job["state"] in FINISHED:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise EngineError(f"job {job_id} has not finished after {timeout:g} s; it is {job['state']} (still on the engine)")
                time.sleep(poll_interval)
        except KeyboardInterrupt:
            if cancel_on_interrupt:
                try:
                    self.cancel(job_id)
                except EngineError:
                    pass
            raise
        if job["state"] == "failed":
            raise JobFailed(f"job {job_id} ({job['task']}) failed: {job.get('error') or 'no reason given'}", job)
        if job["state"] == "cancelled":
            raise Cancelled(f"job {job_id} ({job['task']}) was cancelled; nothing was written")
        return job

    def download(self, job_id: str, name: str, dest: str | os.PathLike) -> Path:
        """Stream result `name` to `dest` (a file, or a folder to keep the engine's file name); its path.

        The file appears complete or not at all: it is written under a temporary name and renamed.
        """
        dest = Path(dest)
        response = self._request("GET", f"/v1/jobs/{job_id}/results/{name}", stream=True)
        with response:
            if dest.is_dir():
                dest = dest / _filename_from(response, name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            scratch = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
            try:
                with open(scratch, "wb") as handle:
                    for chunk in response.iter_content(_CHUNK):
                        handle.write(chunk)
                expected = response.headers.get("content-length")
                if expected is not None and scratch.stat().st_size != int(expected):
                    raise EngineError(f"the download of {name} from job {job_id} was cut short; download it again")
                os.replace(scratch, dest)
            except requests.RequestException as exc:
                raise EngineUnreachable(f"the download of {name} from job {job_id} broke off ({exc}); download it again") from None
            finally:
                scratch.unlink(missing_ok=True)
        return dest

    def run(self, task: str, params: Mapping | None = None, files: Files | None = None,
            out_dir: str | os.PathLike = ".", progress: Callable[[dict], None] | None = None,
            poll_interval: float = 0.5, paths: Mapping | None = None) -> dict[str, Path]:
        """Submit, wait, and download every result into `out_dir`; result name -> local file."""
        job_id = self.submit(task, params, files, paths)
        job = self.wait(job_id, progress=progress, poll_interval=poll_interval)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        return {r["name"]: self.download(job_id, r["name"], out_dir / r["filename"]) for r in job["results"]}


def _upload_list(files: Files, scratch: Path) -> list[tuple[str, Path]]:
    """(form field, file) pairs. Inputs of a `many` slot may be named `slot.0`, `slot.1`, ... as the
    engine names them; on the wire they are the slot's field repeated, in index order."""
    uploads = []
    for name, value in sorted(files.items(), key=lambda item: _slot_order(item[0])):
        name = _slot_order(name)[0]
        values = [value] if isinstance(value, (str, os.PathLike)) else list(value)
        for item in values:
            path = Path(item)
            if not path.is_file():
                raise EngineError(f"the file {path} for input {name!r} does not exist")
            uploads.append((name, _zip_shapefile(path, scratch) if path.suffix.lower() == ".shp" else path))
    return uploads


def _slot_order(name: str) -> tuple[str, int]:
    slot, dot, index = name.partition(".")
    return (slot, int(index)) if dot and index.isdigit() else (name, 0)


def _zip_shapefile(shp: Path, scratch: Path) -> Path:
    """A Shapefile is several files; the engine takes them as one zip."""
    archive = scratch / f"{shp.stem}.{uuid.uuid4().hex[:6]}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for part in sorted(shp.parent.iterdir()):
            if part.stem == shp.stem and part.suffix.lower() in _SHAPEFILE_PARTS:
                bundle.write(part, part.name)
    return archive


def _filename_from(response: requests.Response, fallback: str) -> str:
    disposition = response.headers.get("content-disposition", "")
    for item in disposition.split(";"):
        key, _, value = item.strip().partition("=")
        if key.lower() == "filename" and value:
            name = Path(value.strip('"')).name
            if name and not name.startswith("."):
                return name
    return fallback


def _refusal(response: requests.Response) -> EngineRefused:
    try:
        body = response.json()
        detail = str(body.get("detail")) if isinstance(body, dict) else response.text
        errors = body.get("errors") if isinstance(body, dict) else None
    except ValueError:
        detail, errors = response.text.strip()[:500] or response.reason, None
    if response.status_code == 401:
        return AuthenticationFailed(f"the engine refused the token: {detail}", 401, detail, errors)
    if response.status_code >= 500:
        return EngineRefused(f"the engine failed ({response.status_code}): {detail}", response.status_code, detail, errors)
    return EngineRefused(f"the engine refused the request ({response.status_code}): {detail}", response.status_code, detail, errors)


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a requests error (e.g. 'Connection refused'), not urllib3's wrapping."""
    for _ in range(10):
        if exc.__context__ is None:
            break
        exc = exc.__context__
    return str(exc) or type(exc).__name__
