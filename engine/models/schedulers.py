"""Diffusers schedulers by short name, built from a model's scheduler_config.json."""

import diffusers
from diffusers import SchedulerMixin

from engine.errors import ModelError

SCHEDULER_ALIASES = {
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "unipc": "UniPCMultistepScheduler",
}


def scheduler_class(name: str) -> type[SchedulerMixin]:
    """A short name (ddim, dpm++, euler, pndm, unipc) or any diffusers scheduler class name."""
    class_name = SCHEDULER_ALIASES.get(name.lower(), name)
    cls = getattr(diffusers, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ModelError(
            f"unknown scheduler {name!r}: use one of {', '.join(SCHEDULER_ALIASES)} "
            "or the class name of a diffusers scheduler (e.g. EulerAncestralDiscreteScheduler)"
        )
    return cls


def make_scheduler(config: dict, name: str | None = None) -> SchedulerMixin:
    """A fresh scheduler from `config` (its own `_class_name` unless `name` picks another class).

    The noise schedule, step offset and prediction type in `config` carry over to any class.
    """
    class_name = name or config.get("_class_name")
    if not class_name:
        raise ModelError("the scheduler config names no _class_name; pick a scheduler by name (e.g. 'ddim')")
    return scheduler_class(class_name).from_config(config)
