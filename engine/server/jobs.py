"""Jobs on disk, the queue, and the worker that runs them one at a time on the engine's device.

The work folder holds one folder per job:

    <work_dir>/<job id>/job.json    state, params, progress, timestamps, error (written atomically)
                        inputs/     uploaded files
                        results/    named result files, filled only while running or on success
    <work_dir>/.incoming/<id>/      uploads still arriving (removed when refused, moved when accepted)

Worker threads take jobs from the queue in order. Up to `concurrent_jobs` jobs run at once when
they run the same model (same name and LoRAs): their denoiser calls are batched together
(engine.runtime.denoiser_batching), so small jobs fill the GPU together. A job that runs another
model, or no diffusion model, waits until the running ones have finished and then runs alone;
as no later job overtakes the first in the queue, no job waits for ever. Loaded models stay
cached between jobs. A job survives its client going away; its folder stays until
it is deleted or its results expire (`result_ttl_s` after it finished; a cleanup pass runs at
start and every `cleanup_interval_s`).

When the engine starts on a work folder used before, it lists the finished jobs as they were. A
job that was running when the previous engine died is marked failed (its results may be partial,
and running it again could crash the engine again); jobs that were still queued are queued again
in their original order (their inputs are on disk and were validated), unless
`requeue_on_restart` is off, in which case they are marked failed too.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import mimetypes
import os
import re
import shutil
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from engine import __version__
from engine.errors import Cancelled, GFM4DError, InputError, ModelError
from engine.progress import Progress
from engine.runtime.denoiser_batching import job_scope
from engine.tasks import DeviceRegistry, TaskSpec, check_inputs, check_required, check_window, get_task
from engine.tasks.base import SamplingParams, checked_results
from engine.tasks.params import parse_job_params

from .errors import Conflict, InsufficientStorage, NotFound, RequestRefused, ServiceUnavailable
from .input_guard import check_self_contained
from .schemas import FINISHED_STATES, JobInfo, JobState, ResultFile
from .security import PathPolicy
from .settings import MIN_FREE_DISK_BYTES, ServerSettings
from .uploads import UploadedFile

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
INCOMING = ".incoming"
PROGRESS_SAVE_INTERVAL_S = 1.0
STALE_UPLOAD_S = 24 * 3600
USAGE_CACHE_S = 10.0
_EXTRA_MEDIA_TYPES = {".tif": "image/tiff", ".tiff": "image/tiff", ".gpkg": "application/geopackage+sqlite3",
                      ".geojson": "application/geo+json"}


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class JobRecord(BaseModel):
    """What job.json holds."""

    id: str
    task: str
    state: JobState
    params: dict[str, Any]
    inputs: dict[str, str] = Field(default_factory=dict)  # input name -> path relative to the job folder
    server_inputs: dict[str, str] = Field(default_factory=dict)  # input name -> absolute path on this machine
    input_filenames: dict[str, str] = Field(default_factory=dict)  # input name -> the client's file name
    results: dict[str, str] = Field(default_factory=dict)  # result name -> file name in results/
    done: int = 0
    total: int = 0
    message: str = ""
    error: str | None = None
    cancel_requested: bool = False
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    engine_version: str = __version__


def write_json_atomic(path: Path, text: str, durable: bool = True) -> None:
    """Replace `path` with `text` in one step: readers see the old or the new file, never half of one."""
    scratch = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(scratch, "w", encoding="utf-8") as handle:
            handle.write(text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)


def media_type_of(path: Path) -> str:
    suffix = path.suffix.lower()
    return _EXTRA_MEDIA_TYPES.get(suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


class JobManager:
    """Accepts, stores, runs, cancels and expires jobs; safe to call from any thread."""

    def __init__(self, settings: ServerSettings, registry: DeviceRegistry, paths: PathPolicy):
        self.settings = settings
        self.registry = registry
        self.paths = paths
        self.work_dir = Path(settings.work_dir)
        self._jobs: dict[str, JobRecord] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._order: dict[str, int] = {}  # queue order of queued jobs
        self._sequence = itertools.count()
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)  # a job was queued or finished, or the engine stops
        self._stopping = threading.Event()
        self._running: dict[str, tuple | None] = {}  # running job -> what it shares with others (see _sharing)
        self._usage: tuple[float, int] | None = None  # (when measured, bytes used by the work folder)
        self.concurrent_jobs = settings.concurrent_jobs or default_concurrent_jobs(registry.device)
        self._workers = [threading.Thread(target=self._work, name=f"gfm4d-worker-{n}", daemon=True)
                         for n in range(self.concurrent_jobs)]
        self._janitor = threading.Thread(target=self._clean_periodically, name="gfm4d-cleanup", daemon=True)

    # --- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.work_dir / INCOMING, ignore_errors=True)
        self.recover()
        self.cleanup()
        for worker in self._workers:
            worker.start()
        self._janitor.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; running jobs are interrupted (and marked failed), queued ones stay queued."""
        self._stopping.set()
        with self._wake:
            for job_id in self._running:
                self._cancel[job_id].set()
            self._wake.notify_all()
        for worker in self._workers:
            if worker.is_alive():
                worker.join(timeout)
        if self._janitor.is_alive():
            self._janitor.join(timeout)

    def recover(self) -> None:
        """Load the jobs of an earlier run (see the module docstring for what happens to unfinished ones)."""
        records = []
        for folder in sorted(self.work_dir.iterdir()):
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            try:
                record = JobRecord.model_validate_json((folder / JOB_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError, ValidationError) as exc:
                log.warning("ignoring %s: its %s cannot be read (%s)", folder, JOB_FILE, exc)
                continue
            if record.id == folder.name:
                records.append(record)
        now = utc_now()
        for record in sorted(records, key=lambda r: r.created_at):
            if record.state == JobState.running or (record.state == JobState.queued and not self.settings.requeue_on_restart):
                was = "running" if record.state == JobState.running else "waiting"
                self._clear_results(record)
                record.state, record.finished_at = JobState.failed, now
                record.error = f"the engine stopped while this job was {was} and was restarted; submit the job again"
                record.message = ""
                self._save(record)
            with self._lock:
                self._jobs[record.id] = record
                self._cancel[record.id] = threading.Event()
                if record.state == JobState.queued:
                    self._enqueue(record.id)

    # --- submitting ----------------------------------------------------------------------------

    def new_staging_dir(self) -> Path:
        folder = self.work_dir / INCOMING / uuid.uuid4().hex
        try:
            folder.mkdir(parents=True)
        except OSError as exc:
            raise storage_refusal(exc) from None
        return folder

    def check_capacity(self, incoming_bytes: int = 0) -> None:
        """Refuse a new job when the queue is full (503) or the disk or quota has no room for it (507)."""
        queued, _ = self.counts()
        if queued >= self.settings.max_queued_jobs:
            raise ServiceUnavailable(
                f"the engine has {queued} jobs waiting, as many as it queues; submit again when some have finished "
                "(the operator can raise the limit with --max-queued)"
            )
        try:
            free = shutil.disk_usage(self.work_dir).free
        except OSError as exc:
            raise storage_refusal(exc) from None
        if free < incoming_bytes + MIN_FREE_DISK_BYTES:
            raise InsufficientStorage(
                f"the engine's disk has {free / 2**20:.0f} MiB free, too little for this job; delete finished jobs "
                "you no longer need (DELETE /v1/jobs/ID) and try again, or ask the operator to free space"
            )
        quota = self.settings.work_dir_quota_bytes
        used = self.work_dir_bytes()
        if quota and used + incoming_bytes > quota:
            raise InsufficientStorage(
                f"the engine's job folders hold {used / 1e9:.3g} GB of its {quota / 1e9:.3g} GB quota, and this job would "
                "exceed it; delete finished jobs you no longer need (DELETE /v1/jobs/ID) and try again, or ask the "
                "operator to raise --work-quota-gb"
            )

    def work_dir_bytes(self) -> int:
        """Bytes held under the work folder (measured at most every USAGE_CACHE_S seconds)."""
        now = time.monotonic()
        with self._lock:
            if self._usage is not None and now - self._usage[0] < USAGE_CACHE_S:
                return self._usage[1]
        total = 0
        for root, _, names in os.walk(self.work_dir):
            for name in names:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except OSError:
                    pass
        with self._lock:
            self._usage = (now, total)
        return total

    def submit(self, params_text: str, uploaded: list[UploadedFile], staging: Path) -> JobRecord:
        """Validate a job completely (params, model, inputs) and queue it; GFM4DError otherwise.

        `uploaded` are files under `staging`, which becomes the job's folder.
        """
        request = parse_job_params(params_text)
        spec = request.spec
        inputs = self._uploaded_inputs(spec, uploaded)
        server_inputs, given_paths = self._server_inputs(spec, request.paths, uploaded)
        every_input = {**{name: upload.path for name, upload in inputs.items()}, **server_inputs}
        check_required(spec, every_input)
        info = self._check_model(spec, request.params)
        if info is not None:
            check_window(request.params, info)
        filenames = {name: upload.filename for name, upload in inputs.items()}
        try:
            for name, upload in inputs.items():
                check_self_contained(upload.path, spec.inputs[name.partition(".")[0]].kind, upload.path.parent)
            for name, path in server_inputs.items():
                check_self_contained(path, spec.inputs[name.partition(".")[0]].kind, path.parent)
            check_inputs(spec, every_input)
            if spec.check is not None:
                spec.check(request.params, every_input)
            self._check_size(spec, request.params, every_input)
        except GFM4DError as exc:
            message = describe_uploads(str(exc), {n: u.path for n, u in inputs.items()}, filenames)
            for real, given in given_paths.items():
                message = message.replace(real, given)
            raise _with_message(exc, message) from None
        except (ArithmeticError, ValueError) as exc:  # OverflowError, ZeroDivisionError, ...: absurd numbers
            raise InputError(
                f"the {spec.name} job's numbers cannot be computed with ({type(exc).__name__}); check extent, "
                "resolution_m / pixel_size and window: are they in the units of the CRS and of a sensible size?"
            ) from None

        job_id = uuid.uuid4().hex
        record = JobRecord(
            id=job_id,
            task=spec.name,
            state=JobState.queued,
            params=request.params.model_dump(mode="json"),
            inputs={name: upload.path.relative_to(staging).as_posix() for name, upload in inputs.items()},
            server_inputs={name: str(path) for name, path in server_inputs.items()},
            input_filenames=filenames,
            total=(getattr(request.params, "steps", None) or 0) + 1,  # an estimate (one region); the task sets the real total
            message="queued",
            created_at=utc_now(),
        )
        staged = sum(upload.path.stat().st_size for upload in uploaded)
        try:
            (staging / "results").mkdir(exist_ok=True)
            write_json_atomic(staging / JOB_FILE, record.model_dump_json(indent=2))
            os.replace(staging, self.work_dir / job_id)
        except OSError as exc:
            raise storage_refusal(exc) from None
        with self._lock:
            self._jobs[job_id] = record
            self._cancel[job_id] = threading.Event()
            self._enqueue(job_id)
            if self._usage is not None:  # counted until the next measurement
                self._usage = (self._usage[0], self._usage[1] + staged)
        return record.model_copy(deep=True)

    def _uploaded_inputs(self, spec: TaskSpec, uploaded: list[UploadedFile]) -> dict[str, UploadedFile]:
        counts = Counter(upload.field for upload in uploaded)
        seen: Counter[str] = Counter()
        inputs = {}
        for upload in uploaded:
            field = upload.field
            slot = spec.inputs.get(field)
            if slot is None:
                raise InputError(f"the {spec.name} task takes no file named {field!r}; it takes: {', '.join(spec.inputs) or 'no files'}")
            if slot.many:
                inputs[f"{field}.{seen[field]}"] = upload
            elif counts[field] > 1:
                raise InputError(f"{field!r} takes one file, but {counts[field]} were sent")
            else:
                inputs[field] = upload
            seen[field] += 1
        return inputs

    def _server_inputs(self, spec: TaskSpec, paths: dict, uploaded: list[UploadedFile]) -> tuple[dict[str, Path], dict[str, str]]:
        """Input name -> real path, and real path -> the path as given (messages name what the client sent)."""
        uploaded_fields = {upload.field for upload in uploaded}
        resolved, given = {}, {}
        for name, value in paths.items():
            slot = spec.inputs.get(name)
            if slot is None:
                raise InputError(f"paths names {name!r}, but the {spec.name} task takes: {', '.join(spec.inputs) or 'no files'}")
            if name in uploaded_fields:
                raise InputError(f"{name!r} is both uploaded and named in paths; give it one way")
            values = value if isinstance(value, list) else [value]
            if not slot.many and len(values) != 1:
                raise InputError(f"{name!r} takes one file, but paths names {len(values)}")
            for index, item in enumerate(values):
                real = self.paths.resolve(item)
                resolved[f"{name}.{index}" if slot.many else name] = real
                given[str(real)] = item
        return resolved, given

    def _check_size(self, spec: TaskSpec, params, inputs: dict[str, Path]) -> None:
        if spec.size is None:
            return
        width, height = spec.size(params, inputs)
        limit = self.settings.max_output_pixels
        if width * height > limit:
            raise InputError(
                f"the output would be {width} x {height} px ({width * height / 1e6:.4g} Mpx), more than this engine makes "
                f"in one job ({limit / 1e6:.4g} Mpx): use a coarser resolution or a smaller extent, or split the area "
                "(the operator can raise --max-output-mpx)"
            )

    def _check_model(self, spec: TaskSpec, params):
        """The model's info after checking that it does the task and can be loaded (None: the task takes no model)."""
        name = getattr(params, "model", None)
        if name is None:
            return None
        info = self.registry.get(name)
        if not spec.can_use(info):
            able = [m.name for m in self.registry.list() if spec.can_use(m)]
            raise ModelError(
                f"model {name!r} ({info.kind}) does not do {' or '.join(spec.models_for)}; "
                f"models that do: {', '.join(able) if able else 'none in this engine'}"
            )
        if not info.ready:
            from engine.models.loading import _check_loadable

            _check_loadable(info, self.registry.sd21_dir)
        return info

    # --- reading -------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            record = self._jobs.get(job_id)
            if record is None:
                hours = self.settings.result_ttl_s / 3600
                raise NotFound(f"no job {job_id!r} on this engine (finished jobs are deleted {hours:g} h after they end)")
            return record.model_copy(deep=True)

    def list(self, state: JobState | None = None, offset: int = 0, limit: int | None = None) -> tuple[list[JobRecord], int]:
        """One page of jobs, oldest first, and how many there are in all."""
        with self._lock:
            chosen = sorted((r for r in self._jobs.values() if state is None or r.state == state), key=lambda r: r.created_at)
            page = chosen[offset:None if limit is None else offset + limit]
            return [r.model_copy(deep=True) for r in page], len(chosen)

    def queue_position(self, job_id: str) -> int | None:
        with self._lock:
            if job_id not in self._order:
                return None
            mine = self._order[job_id]
            return sum(1 for other in self._order.values() if other < mine)

    def counts(self) -> tuple[int, str | None]:
        """(queued jobs, the running job that started first)."""
        with self._lock:
            return len(self._order), next(iter(self._running), None)

    def running(self) -> list[str]:
        """The running jobs, in the order they started."""
        with self._lock:
            return list(self._running)

    def result_path(self, job_id: str, name: str) -> Path:
        record = self.get(job_id)
        if record.state != JobState.succeeded:
            if record.state in FINISHED_STATES:
                raise Conflict(f"job {job_id} {record.state.value} and has no results" + (f": {record.error}" if record.error else ""))
            raise Conflict(f"job {job_id} is {record.state.value}; wait until it has succeeded")
        if name not in record.results:
            raise NotFound(f"job {job_id} has no result {name!r}; its results are: {', '.join(record.results)}")
        path = self.work_dir / job_id / "results" / record.results[name]
        if not path.is_file():
            raise NotFound(f"the file of result {name!r} of job {job_id} is gone from the engine's work folder; run the job again")
        return path

    def info(self, record: JobRecord, deleted: bool = False) -> JobInfo:
        """The wire view of a job."""
        results = []
        for name, filename in record.results.items():
            path = self.work_dir / record.id / "results" / filename
            size = path.stat().st_size if not deleted and path.exists() else 0
            results.append(ResultFile(name=name, filename=filename, size_bytes=size, media_type=media_type_of(path),
                                      url=f"/v1/jobs/{record.id}/results/{name}"))
        expires = record.finished_at + timedelta(seconds=self.settings.result_ttl_s) if record.finished_at else None
        return JobInfo(
            id=record.id,
            task=record.task,
            state=record.state,
            progress=min(1.0, record.done / record.total) if record.total else (1.0 if record.state == JobState.succeeded else 0.0),
            done=record.done,
            total=record.total,
            message=record.message,
            error=record.error,
            cancel_requested=record.cancel_requested,
            deleted=deleted,
            queue_position=None if deleted else self.queue_position(record.id),
            inputs=sorted([*record.inputs, *record.server_inputs]),
            results=results,
            params=record.params,
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            expires_at=expires,
        )

    # --- cancelling and deleting -----------------------------------------------------------------

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued or running job; a finished job is left as it is, results included."""
        with self._lock:
            record = self._jobs.get(job_id)
            if record is None:
                self.get(job_id)  # raises NotFound
            if record.state in FINISHED_STATES:
                return record.model_copy(deep=True)
            return self.cancel_or_delete(job_id)[0]

    def cancel_or_delete(self, job_id: str) -> tuple[JobRecord, bool]:
        """Cancel a queued or running job, or delete a finished one with its files; (record, deleted)."""
        with self._lock:
            record = self._jobs.get(job_id)
            if record is None:
                self.get(job_id)  # raises NotFound
            if record.state == JobState.queued:
                self._order.pop(job_id, None)
                record.state, record.finished_at = JobState.cancelled, utc_now()
                record.cancel_requested, record.message = True, "cancelled before it started"
                self._save(record)
                return record.model_copy(deep=True), False
            if record.state == JobState.running:
                record.cancel_requested = True
                self._cancel[job_id].set()
                self._save(record)
                return record.model_copy(deep=True), False
            del self._jobs[job_id]
            self._cancel.pop(job_id, None)
        shutil.rmtree(self.work_dir / job_id, ignore_errors=True)
        return record, True

    # --- the worker ------------------------------------------------------------------------------

    def _enqueue(self, job_id: str) -> None:
        self._order[job_id] = next(self._sequence)
        self._wake.notify_all()

    def _work(self) -> None:
        while True:
            with self._wake:
                job_id = self._admit()
                while job_id is None and not self._stopping.is_set():
                    self._wake.wait()
                    job_id = self._admit()
                if self._stopping.is_set():
                    return
            try:
                if self.concurrent_jobs > 1:
                    with job_scope(job_id):  # its denoiser calls may be batched with the other running jobs'
                        self._run(job_id)
                else:
                    self._run(job_id)
            except Exception as exc:  # a bug in the bookkeeping must not stop the worker, nor leave the job running
                log.exception("job %s: unexpected error outside its task", job_id)
                with self._lock:
                    unfinished = job_id in self._jobs and self._jobs[job_id].state not in FINISHED_STATES
                if unfinished:
                    self._finish(job_id, JobState.failed, error=self.public(_unexpected_error_message(exc)))
            finally:
                with self._wake:
                    self._running.pop(job_id, None)
                    self._wake.notify_all()

    def _admit(self) -> str | None:
        """The first queued job, marked running, if it may start now (under the lock); None otherwise.

        Only the first job in the queue is looked at, so a job that must run alone is never
        overtaken: it waits for the running jobs to finish, and later jobs wait behind it.
        """
        if not self._order or self._stopping.is_set():
            return None
        first = min(self._order, key=self._order.__getitem__)
        sharing = self._sharing(first)
        if self._running and (len(self._running) >= self.concurrent_jobs or sharing is None
                              or any(other != sharing for other in self._running.values())):
            return None
        self._order.pop(first)
        self._running[first] = sharing
        return first

    def _sharing(self, job_id: str) -> tuple | None:
        """What a job must have in common with running jobs to run beside them (its model); None: it runs alone."""
        record = self._jobs.get(job_id)
        try:
            spec = get_task(record.task) if record is not None else None
        except GFM4DError:
            return None
        if spec is None or not issubclass(spec.params, SamplingParams):
            return None  # training, datasets, evaluation, fetching: their own memory and threads
        return (record.params.get("model"), json.dumps(record.params.get("lora"), sort_keys=True))

    def _run(self, job_id: str) -> None:
        with self._lock:
            record = self._jobs.get(job_id)
            if record is None or record.state != JobState.queued:
                return
            self._order.pop(job_id, None)
            record.state, record.started_at, record.message = JobState.running, utc_now(), "starting"
            cancel_event = self._cancel[job_id]
            self._save(record)
        folder = self.work_dir / job_id
        results_dir = folder / "results"
        outcome: dict[str, Any]
        try:
            if not (folder / JOB_FILE).is_file():
                raise JobFolderGone()
            spec = get_task(record.task)
            params = spec.params.model_validate(record.params)
            inputs = {name: folder / rel for name, rel in record.inputs.items()}
            for name, path in record.server_inputs.items():  # the files may have changed since the job was queued
                inputs[name] = self.paths.resolve(path)
                check_self_contained(inputs[name], spec.inputs[name.partition(".")[0]].kind, inputs[name].parent)
            shutil.rmtree(results_dir, ignore_errors=True)
            results_dir.mkdir()
            produced = spec.run(self.registry, params, inputs, results_dir, self._progress_callback(job_id), cancel_event.is_set)
            outcome = {"state": JobState.succeeded, "results": self._collect(produced, results_dir), "message": "done"}
        except Cancelled:
            if not (folder / JOB_FILE).is_file():
                outcome = {"state": JobState.failed, "error": FOLDER_GONE}
            elif self._stopping.is_set() and not record.cancel_requested:
                outcome = {"state": JobState.failed, "error": "the engine was stopped while this job was running; submit it again"}
            else:
                outcome = {"state": JobState.cancelled, "message": "cancelled; nothing was written"}
        except GFM4DError as exc:
            uploads = {name: folder / rel for name, rel in record.inputs.items()}
            outcome = {"state": JobState.failed, "error": describe_uploads(str(exc), uploads, record.input_filenames)}
        except JobFolderGone:
            outcome = {"state": JobState.failed, "error": FOLDER_GONE}
        except OSError as exc:
            if not (folder / JOB_FILE).is_file():
                outcome = {"state": JobState.failed, "error": FOLDER_GONE}
            else:
                outcome = {"state": JobState.failed, "error": storage_failure(exc, self.work_dir)}
                log.warning("job %s (%s) failed writing its files: %s", job_id, record.task, exc)
        except Exception as exc:
            if _is_write_failure(exc):  # GDAL and others wrap a full disk in their own errors
                outcome = {"state": JobState.failed, "error": storage_failure(exc, self.work_dir)}
                log.warning("job %s (%s) failed writing its files: %s", job_id, record.task, exc)
            else:
                outcome = {"state": JobState.failed, "error": _unexpected_error_message(exc)}
            if not _is_out_of_memory(exc) and not _is_write_failure(exc):
                log.exception("job %s (%s) failed", job_id, record.task)
        finally:
            _release_device_memory(self.registry)
        if outcome.get("error"):
            outcome["error"] = self.public(outcome["error"])
        self._finish(job_id, **outcome)

    def _finish(self, job_id: str, state: JobState, results: dict[str, str] | None = None,
                message: str = "", error: str | None = None) -> None:
        with self._lock:
            record = self._jobs[job_id]
            if state != JobState.succeeded:
                self._clear_results(record)
            record.state, record.results, record.error = state, results or {}, error
            record.message, record.finished_at = message, utc_now()
            if state == JobState.succeeded:
                record.done = record.total
            self._usage = None
            try:
                self._save(record)
            except OSError as exc:  # the job's state is kept in memory; its file says what it was
                log.warning("job %s: could not record its end on disk (%s)", job_id, exc)

    def _collect(self, produced: dict[str, Path], results_dir: Path) -> dict[str, str]:
        """Result names -> file names, checking that a task kept its results in its folder."""
        return {name: path.name for name, path in checked_results(produced, results_dir).items()}

    def _progress_callback(self, job_id: str):
        """Records progress (on disk at most every PROGRESS_SAVE_INTERVAL_S); stops a job whose folder vanished."""
        last_save = [0.0]
        folder = self.work_dir / job_id

        def report(progress: Progress) -> None:
            with self._lock:
                record = self._jobs.get(job_id)
                if record is None:
                    return
                record.done, record.total, record.message = progress.done, progress.total, progress.message
                now = time.monotonic()
                if now - last_save[0] >= PROGRESS_SAVE_INTERVAL_S:
                    last_save[0] = now
                    if not (folder / JOB_FILE).is_file():
                        self._cancel[job_id].set()  # nothing it makes could be kept: stop at the next batch
                        return
                    try:
                        self._save(record, durable=False)
                    except OSError:  # progress on disk is a courtesy; the job decides whether its disk works
                        pass

        return report

    # --- storage and expiry ------------------------------------------------------------------------

    def _save(self, record: JobRecord, durable: bool = True) -> None:
        """Write job.json; the record in memory stays the truth when the disk fails (logged, not raised)."""
        folder = self.work_dir / record.id
        if folder.is_dir():
            try:
                write_json_atomic(folder / JOB_FILE, record.model_dump_json(indent=2), durable=durable)
            except OSError as exc:
                log.warning("job %s: its %s could not be written (%s)", record.id, JOB_FILE, exc)

    def _clear_results(self, record: JobRecord) -> None:
        folder = self.work_dir / record.id
        shutil.rmtree(folder / "results", ignore_errors=True)
        if folder.is_dir():
            try:
                (folder / "results").mkdir(exist_ok=True)
            except OSError:
                pass

    def public(self, message: str) -> str:
        """`message` without the engine's own folders (work, models, SD-2.1, code): they are nobody else's business."""
        return scrub_paths(message, self._private_folders())

    def _private_folders(self) -> dict[str, str]:
        folders = {
            self.work_dir: "the engine's work folder",
            self.settings.models_dir: "the engine's models folder",
            Path(__file__).resolve().parents[2]: "the engine's installation",
        }
        if self.settings.sd21_dir:
            folders[self.settings.sd21_dir] = "the engine's SD-2.1 folder"
        labels = {}
        for folder, label in folders.items():
            for form in {str(folder), os.path.realpath(folder), os.path.abspath(folder)}:
                labels[form] = label
        return labels

    def cleanup(self, now: datetime | None = None) -> list[str]:
        """Delete finished jobs older than the results' lifetime and stale uploads; the ids deleted."""
        now = now or utc_now()
        ttl = timedelta(seconds=self.settings.result_ttl_s)
        with self._lock:
            expired = [r.id for r in self._jobs.values() if r.state in FINISHED_STATES and r.finished_at and r.finished_at + ttl <= now]
            for job_id in expired:
                del self._jobs[job_id]
                self._cancel.pop(job_id, None)
        for job_id in expired:
            shutil.rmtree(self.work_dir / job_id, ignore_errors=True)
        incoming = self.work_dir / INCOMING
        if incoming.is_dir():
            for folder in incoming.iterdir():
                try:
                    if time.time() - folder.stat().st_mtime > STALE_UPLOAD_S:
                        shutil.rmtree(folder, ignore_errors=True)
                except FileNotFoundError:
                    pass
        if expired:
            log.info("deleted %d expired job(s)", len(expired))
        return expired

    def _clean_periodically(self) -> None:
        while not self._stopping.wait(self.settings.cleanup_interval_s):
            try:
                self.cleanup()
            except OSError:
                log.exception("cleanup of %s failed", self.work_dir)


def describe_uploads(message: str, paths: dict[str, Path], filenames: dict[str, str]) -> str:
    """A message with the engine's paths of uploaded files replaced by what the client called them."""
    for name, path in sorted(paths.items(), key=lambda item: -len(str(item[1]))):
        label = f"the uploaded {name} file" + (f" {filenames[name]!r}" if filenames.get(name) else "")
        message = message.replace(str(path), label)
    return message


FOLDER_GONE = "the job's folder was removed from the engine's work folder while the job waited or ran; submit the job again"


class JobFolderGone(Exception):
    """The job's folder is no longer in the work folder (deleted by hand, or the disk was swapped)."""


def scrub_paths(message: str, labels: dict[str, str]) -> str:
    """Replace each folder in `labels` (and anything under it) by its label, longest folder first."""
    for folder in sorted(labels, key=len, reverse=True):
        if len(folder) > 1 and folder in message:
            message = re.sub(re.escape(folder) + r"(?=$|[/\s'\",;:)])(/[^\s'\",;:)]*)?", labels[folder], message)
    return message


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


_STORAGE_WORDS = {"no space left": errno.ENOSPC, "file too large": errno.EFBIG, "disk quota exceeded": errno.EDQUOT,
                  "read-only file system": errno.EROFS}


def _storage_errno(exc: BaseException) -> int | None:
    """The errno of a full or read-only disk behind `exc` (its own, a wrapped one, or named in its message)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (*_FULL, *_NOT_WRITABLE):
            return exc.errno
        text = str(exc).lower()
        for words, number in _STORAGE_WORDS.items():
            if words in text:
                return number
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def storage_refusal(exc: OSError) -> RequestRefused:
    """The answer to a job the work folder cannot take: 507 when it is full, 503 when it cannot be written."""
    if exc.errno in _FULL:
        return InsufficientStorage("the engine's disk is full; delete finished jobs you no longer need "
                                   "(DELETE /v1/jobs/ID) and try again, or ask the operator to free space")
    if exc.errno in _NOT_WRITABLE:
        return ServiceUnavailable("the engine cannot write its work folder (it is read-only or not its own); "
                                  "the operator must make it writable or start the engine with another --work-dir")
    return ServiceUnavailable(f"the engine cannot store the job ({exc.strerror or type(exc).__name__}); "
                              "try again, and if it persists ask the operator to check the engine's work folder")


_WRITE_WORDS = ("write error", "write failed", "could not write", "failed to write")


def _is_write_failure(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) is a failed write: GDAL says only "Write error" for a full disk."""
    if _storage_errno(exc) is not None:
        return True
    seen = 0
    while exc is not None and seen < 10:
        if any(words in str(exc).lower() for words in _WRITE_WORDS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def storage_failure(exc: BaseException, work_dir: Path | None = None) -> str:
    """A job's error when reading or writing its files failed: what happened and what to do."""
    number = _storage_errno(exc)
    if number is None and work_dir is not None:
        try:
            if shutil.disk_usage(work_dir).free < MIN_FREE_DISK_BYTES:
                number = errno.ENOSPC
        except OSError:
            pass
    if number in _FULL:
        return ("the engine's disk filled up while the job wrote its results; free space on the engine (delete "
                "finished jobs you no longer need) and submit the job again")
    if number in _NOT_WRITABLE:
        return ("the engine could not write the job's results (its work folder became read-only or not its own); "
                "the operator must make the work folder writable, then submit the job again")
    return (f"the engine could not write the job's files ({getattr(exc, 'strerror', None) or type(exc).__name__}): its disk "
            "may be full or failing, or a file size limit was reached; free space on the engine's disk (delete finished "
            "jobs you no longer need) or ask the operator to check it, then submit the job again")


def _with_message(exc: GFM4DError, message: str) -> GFM4DError:
    """The same kind of error with another message (InputError when its class takes other arguments)."""
    try:
        return type(exc)(message)
    except TypeError:
        return InputError(message)


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError))


def _unexpected_error_message(exc: BaseException) -> str:
    if _is_out_of_memory(exc):
        return (
            "the engine ran out of memory; lower batch_size or window, or generate a smaller extent "
            "(the other jobs are not affected)"
        )
    return (
        f"internal error in the engine ({type(exc).__name__}: {exc}); this is a bug in GFM4D, "
        "not in the request: the engine's log has the details, please report it"
    )


def default_concurrent_jobs(device) -> int:
    """Jobs run at once on one model when the settings name no number: 2 on a GPU (their windows share
    network calls), 1 elsewhere (on a CPU, a second job only takes cores from the first)."""
    import torch

    return 2 if torch.device(device).type == "cuda" else 1


def _release_device_memory(registry: DeviceRegistry) -> None:
    import torch

    if registry.device.type == "cuda":
        torch.cuda.empty_cache()
