"""What a task is: a params model, the input files it takes, and a run function.

The params model is the task's part of the wire contract (the server validates requests with it
and publishes its JSON schema); inputs are files named by slot (uploaded, or server-side paths
where the operator allows them); `run` turns validated params and input paths into named
result files in `out_dir`, reporting progress and honouring cancellation between steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field

from engine import config
from engine.errors import InputError
from engine.models.registry import DiffusionModel, ModelRegistry
from engine.pipelines.sampling import Progress

INPUT_KINDS = ("raster", "vector", "file")


class TaskParams(BaseModel):
    """Base of every task's params: unknown fields are refused, so a typo is an error, not a default."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=())

    model: str = Field(config.DEMO_MODEL, description="name of a model folder in the engine's models directory")


@dataclass(frozen=True)
class Input:
    """A named file slot of a task. `many` slots take several files, named `slot.0`, `slot.1`, ..."""

    kind: str  # one of INPUT_KINDS; decides how the file is checked before the job is queued
    description: str
    many: bool = False

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS:
            raise ValueError(f"input kind must be one of {INPUT_KINDS}, not {self.kind!r}")


class RunFunction(Protocol):
    def __call__(
        self,
        registry: ModelRegistry,
        params: TaskParams,
        inputs: dict[str, Path],
        out_dir: Path,
        progress: Callable[[Progress], None],
        cancel: Callable[[], bool],
    ) -> dict[str, Path]: ...


CheckFunction = Callable[[TaskParams, dict[str, Path]], None]


@dataclass(frozen=True)
class TaskSpec:
    """One registered task."""

    name: str
    params: type[TaskParams]
    run: RunFunction
    inputs: Mapping[str, Input] = field(default_factory=dict)
    check: CheckFunction | None = None  # cross-checks params with inputs before queueing (InputError)
    summary: str = ""


def inputs_named(inputs: Mapping[str, Path], slot: str) -> list[Path]:
    """The files of a `many` slot in the order they were given (`slot.0`, `slot.1`, ...)."""
    indexed = []
    for key, path in inputs.items():
        name, _, index = key.partition(".")
        if name == slot and index.isdigit():
            indexed.append((int(index), path))
    return [path for _, path in sorted(indexed)]


def slot_of(input_name: str) -> str:
    """The slot an input name belongs to (`frames.3` -> `frames`)."""
    return input_name.partition(".")[0]


def check_inputs(spec: TaskSpec, inputs: Mapping[str, Path]) -> None:
    """Open every input the way its task will, so an unusable file is refused before queueing."""
    for name, path in inputs.items():
        slot = spec.inputs.get(slot_of(name))
        if slot is None:
            raise InputError(f"the {spec.name} task takes no file named {name!r}; it takes: {', '.join(spec.inputs) or 'none'}")
        if slot.kind == "raster":
            from engine.geo.raster import open_raster

            with open_raster(path):
                pass
        elif slot.kind == "vector":
            from engine.geo.vectors import read_polygons

            read_polygons(path)


class DeviceRegistry(ModelRegistry):
    """A model registry whose `load` defaults to one device and dtype: the worker's.

    Tasks call `registry.load(params.model)`; with a plain ModelRegistry that is the CPU in float32,
    under the server it is the device the engine was started on.
    """

    def __init__(
        self,
        models_dir: Path,
        sd21_dir: Path | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(models_dir, sd21_dir)
        self.device = torch.device(device) if device is not None else config.device()
        self.dtype = dtype if dtype is not None else config.dtype_for(self.device)

    def load(self, name: str, device=None, dtype=None) -> DiffusionModel:
        return super().load(name, device if device is not None else self.device, dtype if dtype is not None else self.dtype)

    def loaded_names(self) -> list[str]:
        """Names of the models held in memory now.

        Read without the registry's lock, which `load` holds while a model loads (seconds to
        minutes): a status request must not wait for that. Copying a dict's keys is atomic in CPython.
        """
        return sorted({key[0] for key in tuple(self._loaded)})
