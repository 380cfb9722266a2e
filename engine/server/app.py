"""The FastAPI application of API v1.

Routes stay thin: they translate HTTP to `JobManager` calls and `schemas` models back. Every
GFM4DError becomes a 4xx answer `{"detail": ..., "errors": [...]}` whose detail says what to fix;
a 500 means a bug in GFM4D.
"""

from __future__ import annotations

import logging
import shutil
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from engine import __version__
from engine.errors import GFM4DError, InputError
from engine.runtime.threads import apply_threads
from engine.tasks import DeviceRegistry, all_tasks
from engine.tasks.params import describe_validation_errors

from .errors import UnsupportedMediaType, status_for
from .jobs import JobManager, media_type_of, storage_refusal
from .schemas import (
    ErrorBody,
    Health,
    JobInfo,
    JobList,
    JobState,
    ModelEntry,
    ModelList,
    TaskList,
    job_params_schemas,
    task_entry,
)
from .docs_page import docs_html
from .security import BearerTokenMiddleware, BrowserGuardMiddleware, PathPolicy, is_loopback
from .settings import ServerSettings
from .uploads import check_declared_length, receive_json_text, receive_multipart

log = logging.getLogger(__name__)

_ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 415, 422, 503, 507)}
MAX_PAGE = 1000

_SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["params"],
                    "properties": {"params": {"$ref": "#/components/schemas/JobParams"}},
                    "additionalProperties": {"type": "string", "format": "binary"},
                    "description": "`params` (JSON) plus one file part per input slot of the task (e.g. like, aoi)",
                },
                "encoding": {"params": {"contentType": "application/json"}},
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/JobParams"}},
        },
    }
}


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    """The engine's HTTP application; the worker starts and stops with the app's lifespan."""
    settings = settings or ServerSettings()
    apply_threads(settings.threads)
    tasks = all_tasks()
    registry = DeviceRegistry(settings.models_dir, settings.sd21_dir, settings.device, ray_address=settings.ray_address)
    manager = JobManager(settings, registry, PathPolicy(settings.allowed_dirs))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        manager.start()
        try:
            yield
        finally:
            await run_in_threadpool(manager.stop)

    # The interactive docs of FastAPI load scripts from a CDN; the engine serves its own page instead.
    app = FastAPI(title="GFM4D engine", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  summary="Diffusion models for satellite imagery, georeferenced in and out")
    app.state.manager = manager
    app.state.settings = settings
    if settings.token:
        app.add_middleware(BearerTokenMiddleware, token=settings.token)
    app.add_middleware(BrowserGuardMiddleware, loopback_only=is_loopback(settings.host))  # outermost: runs first
    _add_error_handlers(app, manager)

    @app.get("/v1/health", response_model=Health, responses=_ERRORS)
    def health() -> Health:
        free = total = None
        if registry.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(registry.device)
        queued, running = manager.counts()
        return Health(
            version=__version__,
            device=str(registry.device),
            dtype=str(registry.dtype).removeprefix("torch."),
            gpu_free_bytes=free,
            gpu_total_bytes=total,
            loaded_models=registry.loaded_names(),
            tasks=list(tasks),
            queued=queued,
            running=running,
            max_upload_bytes=settings.max_upload_bytes,
            result_ttl_s=settings.result_ttl_s,
            server_paths=manager.paths.enabled,
            max_output_pixels=settings.max_output_pixels,
            max_queued_jobs=settings.max_queued_jobs,
            work_dir_quota_bytes=settings.work_dir_quota_bytes,
            work_dir_used_bytes=manager.work_dir_bytes(),
        )

    @app.get("/v1/models", response_model=ModelList, responses=_ERRORS)
    def models() -> ModelList:
        loaded = set(registry.loaded_names())
        return ModelList(models=[
            ModelEntry(name=i.name, kind=i.kind, tasks=list(i.tasks), native_resolution=i.native_resolution,
                       display_name=i.display_name, description=i.description, uses_metadata=i.uses_metadata,
                       ready=i.ready, loaded=i.name in loaded)
            for i in registry.list()
        ])

    @app.get("/v1/tasks", response_model=TaskList, responses=_ERRORS)
    def task_list() -> TaskList:
        return TaskList(tasks=[task_entry(spec) for spec in tasks.values()])

    @app.post("/v1/jobs", status_code=202, response_model=JobInfo, responses=_ERRORS, openapi_extra=_SUBMIT_BODY)
    async def submit_job(request: Request, response: Response) -> JobInfo:
        """Queue a job: multipart (`params` JSON + files) or a plain JSON body (no files)."""
        check_declared_length(request, settings.max_upload_bytes)
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in ("multipart/form-data", "application/json"):
            raise UnsupportedMediaType(
                f"send the job as multipart/form-data (a `params` JSON field plus files) or as application/json, not {media or 'no content type'}"
            )
        declared = request.headers.get("content-length", "")
        await run_in_threadpool(manager.check_capacity, int(declared) if declared.isdigit() else 0)
        staging = await run_in_threadpool(manager.new_staging_dir)
        try:
            if media == "multipart/form-data":
                form = await receive_multipart(request, staging / "inputs", settings.max_upload_bytes)
                params_text = form.fields.pop("params", None)
                if params_text is None:
                    raise InputError('the form has no `params` field; add one holding the job as JSON, e.g. {"task": "generate", ...}')
                if form.fields:
                    raise InputError(f"unexpected form fields {', '.join(sorted(form.fields))}: put parameters inside the `params` JSON, and send files as file parts")
                uploaded = form.files
            else:
                params_text, uploaded = await receive_json_text(request), []
            record = await run_in_threadpool(manager.submit, params_text, uploaded, staging)
        except OSError as exc:  # the work folder filled up or became read-only while the upload arrived
            await run_in_threadpool(shutil.rmtree, staging, True)
            raise storage_refusal(exc) from None
        except BaseException:
            await run_in_threadpool(shutil.rmtree, staging, True)
            raise
        response.headers["Location"] = f"/v1/jobs/{record.id}"
        return manager.info(record)

    @app.get("/v1/jobs", response_model=JobList, responses=_ERRORS)
    def list_jobs(
        state: JobState | None = Query(None, description="only jobs in this state"),
        offset: int = Query(0, ge=0, le=2**31, description="skip this many jobs (oldest first)"),
        limit: int = Query(100, ge=1, le=MAX_PAGE, description="at most this many jobs"),
    ) -> JobList:
        records, total = manager.list(state, offset, limit)
        following = offset + len(records)
        return JobList(jobs=[manager.info(record) for record in records], total=total, offset=offset,
                       next_offset=following if following < total else None)

    @app.get("/v1/jobs/{job_id}", response_model=JobInfo, responses=_ERRORS)
    def job_status(job_id: str) -> JobInfo:
        return manager.info(manager.get(job_id))

    @app.get("/v1/jobs/{job_id}/results/{name}", response_class=FileResponse, responses=_ERRORS)
    def job_result(job_id: str, name: str) -> FileResponse:
        path = manager.result_path(job_id, name)
        return FileResponse(path, media_type=media_type_of(path), filename=path.name)

    @app.post("/v1/jobs/{job_id}/cancel", response_model=JobInfo, responses=_ERRORS)
    def cancel_job(job_id: str) -> JobInfo:
        """Cancel a queued or running job. A job that has already finished keeps its state and results."""
        return manager.info(manager.cancel(job_id))

    @app.delete("/v1/jobs/{job_id}", response_model=JobInfo, responses=_ERRORS)
    def cancel_or_delete_job(job_id: str) -> JobInfo:
        """Delete a finished job and its files. A queued or running job is cancelled instead (prefer
        POST .../cancel for that: a DELETE that arrives after the job finished deletes its results)."""
        record, deleted = manager.cancel_or_delete(job_id)
        return manager.info(record, deleted=deleted)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(docs_html(app.openapi()), headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"})

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(job_params_schemas())
            if settings.token:
                schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
                schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


def _add_error_handlers(app: FastAPI, manager: JobManager) -> None:
    @app.exception_handler(GFM4DError)
    async def user_error(request: Request, exc: GFM4DError) -> JSONResponse:
        errors = getattr(exc, "errors", None)
        body = ErrorBody(detail=manager.public(str(exc)), errors=errors)
        status = status_for(exc)
        headers = {"Retry-After": "60"} if status == 503 else None
        return JSONResponse(body.model_dump(mode="json", exclude_none=True), status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = describe_validation_errors(list(exc.errors()))
        detail = "invalid request: " + "; ".join(f"{e.field}: {e.message}" for e in errors)
        return JSONResponse(ErrorBody(detail=detail, errors=errors).model_dump(mode="json"), status_code=422)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        detail = f"internal error in the engine ({type(exc).__name__}); this is a bug in GFM4D: the engine's log has the details"
        return JSONResponse({"detail": detail}, status_code=500)
