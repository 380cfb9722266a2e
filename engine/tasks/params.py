"""Reading a job's params: the one place that validates `{"task": NAME, "paths": {...}, ...}`.

The engine's HTTP server and `run_task_locally` (the command line) both read params through
`parse_job_params`, so a job is checked the same way wherever it is run; the server publishes the
same models in its OpenAPI document.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Union

from pydantic import BaseModel, TypeAdapter, ValidationError

from engine.errors import InputError

from .base import TaskParams, TaskSpec
from . import all_tasks, get_task


class FieldError(BaseModel):
    field: str
    message: str



ServerPaths = dict[str, Union[str, list[str]]]
_paths_adapter = TypeAdapter(ServerPaths)


class ParamsInvalid(InputError):
    """Params that fail validation; `errors` names each field and what is wrong with it."""

    def __init__(self, message: str, errors: list[FieldError]):
        super().__init__(message)
        self.errors = errors


@dataclass
class JobRequest:
    spec: TaskSpec
    params: TaskParams
    paths: dict[str, str | list[str]]


def describe_validation_errors(errors: list[dict], allowed_fields: list[str] | None = None) -> list[FieldError]:
    """pydantic error dicts as one plain sentence per field."""
    described = []
    for error in errors:
        location = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body",)) or "(value)"
        kind = error.get("type", "")
        message = str(error.get("msg", "invalid"))
        if kind == "extra_forbidden":
            message = "unknown parameter" + (f"; known parameters: {', '.join(allowed_fields)}" if allowed_fields else "")
        elif kind == "missing":
            message = "required, but not given"
        else:
            message = message.removeprefix("Value error, ")
            given = error.get("input")
            if kind not in ("value_error", "model_type", "dict_type") and isinstance(given, (str, int, float, bool, type(None))):
                message += f" (got {given!r:.80})"
        described.append(FieldError(field=location, message=message))
    return described


def _validation_message(prefix: str, errors: list[FieldError]) -> str:
    return prefix + "; ".join(f"{e.field}: {e.message}" for e in errors)


def parse_job_params(payload: str | bytes | dict) -> JobRequest:
    """Validate job params (JSON text or a dict); InputError says which fields to fix."""
    if isinstance(payload, (str, bytes)):
        try:
            payload = json.loads(payload)
        except ValueError as exc:
            raise InputError(f"the params are not valid JSON ({exc}); send an object like {{\"task\": \"generate\", ...}}") from None
        except RecursionError:
            raise InputError("the params are nested too deeply to be job params; send a flat object like "
                             "{\"task\": \"generate\", ...}") from None
    if not isinstance(payload, dict):
        raise InputError(f"the params must be a JSON object like {{\"task\": \"generate\", ...}}, not {type(payload).__name__}")
    payload = dict(payload)
    if "task" not in payload:
        raise InputError(f"the params name no task; add \"task\": one of {', '.join(all_tasks())}")
    spec = get_task(payload.pop("task"))
    try:
        paths = _paths_adapter.validate_python(payload.pop("paths", None) or {})
    except ValidationError as exc:
        errors = [FieldError(field="paths", message="must map input names to a server path or a list of paths")]
        raise ParamsInvalid(_validation_message(f"invalid params for the {spec.name} task: ", errors), errors) from exc
    try:
        params = spec.params.model_validate(payload)
    except RecursionError:
        raise InputError("the params are nested too deeply to be job params") from None
    except ValidationError as exc:
        fields = sorted(spec.params.model_fields)
        errors = describe_validation_errors(exc.errors(include_url=False), fields)
        raise ParamsInvalid(_validation_message(f"invalid params for the {spec.name} task: ", errors), errors) from None
    return JobRequest(spec, params, paths)
