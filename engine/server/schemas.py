"""The wire contract of API v1: every request and response body, and the job params of each task.

Job params are `{"task": NAME, "paths": {...}, ...that task's params}`: the task's own pydantic
model (engine.tasks) validates the rest, and `paths` names files on the engine's machine for
input slots (only where the operator allows folders). `engine.tasks.params.parse_job_params` is
the single place that reads them: the server and the command line use it, and a client-side
contract test can use it as well.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model

from engine.tasks import TaskSpec, all_tasks
from engine.tasks.params import FieldError, ServerPaths


class JobState(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINISHED_STATES = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})


class ResultFile(BaseModel):
    name: str = Field(description="result name, e.g. 'image'")
    filename: str
    size_bytes: int
    media_type: str
    url: str = Field(description="where to download it, relative to the engine's base URL")


class JobInfo(BaseModel):
    id: str
    task: str
    state: JobState
    progress: float = Field(ge=0, le=1, description="fraction of the job's work units done")
    done: int = Field(description="work units done (denoising steps and decoded blocks)")
    total: int = Field(description="work units in the job; an estimate until the job starts")
    message: str = ""
    error: str | None = Field(None, description="why the job failed, and what to do")
    cancel_requested: bool = False
    deleted: bool = Field(False, description="true in the answer to a DELETE that removed the job and its files")
    queue_position: int | None = Field(None, description="queued jobs ahead of this one (0: next)")
    inputs: list[str] = Field(default_factory=list)
    results: list[ResultFile] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = Field(None, description="when the job and its results are deleted")


class JobList(BaseModel):
    jobs: list[JobInfo] = Field(description="one page of jobs, oldest first")
    total: int = Field(0, description="jobs in all (in the state asked for)")
    offset: int = Field(0, description="index of the page's first job")
    next_offset: int | None = Field(None, description="offset of the next page; null on the last page")


class ModelEntry(BaseModel):
    name: str
    kind: str
    tasks: list[str]
    native_resolution: int
    display_name: str = ""
    description: str = ""
    uses_metadata: bool
    ready: bool = Field(description="whether the engine can load it as it stands")
    loaded: bool = Field(description="whether it is in memory now")


class ModelList(BaseModel):
    models: list[ModelEntry]


class TaskInput(BaseModel):
    kind: str = Field(description="raster, vector or file")
    description: str
    many: bool = Field(description="takes several files (named slot.0, slot.1, ...)")


class TaskEntry(BaseModel):
    name: str
    summary: str
    inputs: dict[str, TaskInput]
    params_schema: dict[str, Any]


class TaskList(BaseModel):
    tasks: list[TaskEntry]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    device: str
    dtype: str
    gpu_free_bytes: int | None = Field(description="free memory of the engine's GPU; null on CPU")
    gpu_total_bytes: int | None = None
    loaded_models: list[str]
    tasks: list[str]
    queued: int
    running: str | None = Field(description="id of the running job")
    max_upload_bytes: int
    result_ttl_s: float
    server_paths: bool = Field(description="whether params may name files on the engine's machine")
    max_output_pixels: int = Field(0, description="largest output of one job, in pixels")
    max_queued_jobs: int = Field(0, description="jobs the queue holds; more are refused with 503")
    work_dir_quota_bytes: int = Field(0, description="disk space all jobs together may use (0: no quota)")
    work_dir_used_bytes: int = Field(0, description="disk space the jobs use now")


class ErrorBody(BaseModel):
    detail: str = Field(description="what was wrong and what to do")
    errors: list[FieldError] | None = None


def job_params_model(spec: TaskSpec) -> type[BaseModel]:
    """The full params object of one task as sent on the wire (task name and server paths included)."""
    camel = "".join(part.capitalize() for part in spec.name.replace("-", "_").split("_"))
    return create_model(
        f"{camel}Job",
        __base__=spec.params,
        task=(Literal[spec.name], Field(description="the task to run")),
        paths=(ServerPaths, Field(default_factory=dict, description="input slot -> path(s) on the engine's machine")),
    )


def job_params_schemas(ref_template: str = "#/components/schemas/{model}") -> dict[str, dict]:
    """JSON schemas of every task's job params plus `JobParams`, their union keyed by `task`."""
    schemas: dict[str, dict] = {}
    mapping = {}
    for name, spec in all_tasks().items():
        model = job_params_model(spec)
        schema = model.model_json_schema(ref_template=ref_template)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        mapping[name] = ref_template.format(model=model.__name__)
    schemas["JobParams"] = {
        "oneOf": [{"$ref": ref} for ref in mapping.values()],
        "discriminator": {"propertyName": "task", "mapping": mapping},
    }
    return schemas


def task_entry(spec: TaskSpec) -> TaskEntry:
    inputs = {name: TaskInput(kind=slot.kind, description=slot.description, many=slot.many) for name, slot in spec.inputs.items()}
    return TaskEntry(name=spec.name, summary=spec.summary, inputs=inputs, params_schema=spec.params.model_json_schema())
