"""The tasks the engine runs, by name: the one list the server, its OpenAPI document and clients read.

Adding a task is one new module in this package that decorates its run function:

    @task("superres", SuperresParams, inputs={"raster": Input("raster", "Sentinel-2 bands")})
    def run(registry, params, inputs, out_dir, progress, cancel) -> dict[str, Path]: ...

`all_tasks()` imports every public module here once, so nothing else has to be edited.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading

from engine.errors import InputError

from .base import (
    DeviceRegistry,
    Input,
    TaskParams,
    TaskSpec,
    check_inputs,
    check_required,
    check_window,
    inputs_named,
    run_task_locally,
    slot_of,
)

__all__ = [
    "DeviceRegistry",
    "Input",
    "TaskParams",
    "TaskSpec",
    "all_tasks",
    "check_inputs",
    "check_required",
    "check_window",
    "get_task",
    "inputs_named",
    "run_task_locally",
    "slot_of",
    "task",
]

_TASKS: dict[str, TaskSpec] = {}
_discovery_lock = threading.Lock()
_discovered = False


def task(name: str, params: type[TaskParams], inputs=None, check=None, summary: str = "", size=None,
         model_task: str | tuple[str, ...] | None = None):
    """Register the decorated function as the run function of task `name` (`size`: see TaskSpec).

    `model_task` names the task (or tasks) whose models this one runs, when it is not its own (a dataset
    is inpainted; a fine-tune starts from a generation or an inpainting model).
    """

    def register(run):
        if name in _TASKS and _TASKS[name].run is not run:
            raise RuntimeError(f"two tasks are registered as {name!r}")
        _TASKS[name] = TaskSpec(name, params, run, dict(inputs or {}), check, summary or (run.__doc__ or "").strip(),
                                size, model_task)
        return run

    return register


def all_tasks() -> dict[str, TaskSpec]:
    """Every registered task by name (importing this package's task modules the first time)."""
    global _discovered
    with _discovery_lock:
        if not _discovered:
            for module in pkgutil.iter_modules(__path__):
                if not module.name.startswith("_") and module.name != "base":
                    importlib.import_module(f"{__name__}.{module.name}")
            _discovered = True
    return dict(sorted(_TASKS.items()))


def get_task(name: str) -> TaskSpec:
    """The task called `name`; InputError lists the tasks there are otherwise."""
    tasks = all_tasks()
    if not isinstance(name, str) or name not in tasks:
        raise InputError(f"unknown task {name!r}; the engine runs: {', '.join(tasks)}")
    return tasks[name]
