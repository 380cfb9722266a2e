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
from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine import config
from engine.errors import InputError
from engine.models.registry import DiffusionModel, ModelRegistry
from engine.progress import Progress

INPUT_KINDS = ("raster", "vector", "file")


class TaskParams(BaseModel):
    """Base of every task's params: unknown fields are refused, so a typo is an error, not a default."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=())

    model: str = Field(default_factory=config.default_model,
                       description="name of a model folder in the engine's models directory (default: gfm4d-mini, the built-in model)")


def date_field(value):
    """ISO strings -> dates with GFM4D's own parser (Z, offsets, YYYYMMDD), as a ValueError for pydantic."""
    if isinstance(value, str):
        from engine.errors import GFM4DError
        from engine.geo.dates import parse_date

        try:
            return parse_date(value)
        except (GFM4DError, ValueError) as exc:
            raise ValueError(str(exc)) from None
    return value


class LoraParam(BaseModel):
    """A LoRA by name (a .safetensors file in the models folder or its loras/ folder) and its weight."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(..., min_length=1, max_length=500, description="LoRA name (file name without .safetensors)")
    scale: float = Field(1.0, ge=-10, le=10, description="LoRA weight (1: as trained)")


class SamplingParams(TaskParams):
    """What every diffusion task shares: prompt, metadata extras and sampler settings."""

    prompt: str = Field("a fmow satellite image", max_length=2000, description="text prompt")
    negative_prompt: str = Field("", max_length=2000)
    cloud_cover: float | None = Field(None, ge=0, le=1, description="cloud cover fraction 0..1")
    steps: int = Field(30, ge=1, le=500, description="denoising steps")
    guidance_scale: float | None = Field(None, ge=0, le=100, description="classifier-free guidance scale (<= 1: no guidance); default: the model's own")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="same seed, same request -> same image")
    scheduler: str | None = Field(None, description="ddim, dpm++, euler, pndm, unipc or a diffusers class name; default: the model's")
    window: int | None = Field(None, gt=0, le=4096, description="window size in pixels; default: the model's native resolution")
    overlap: int | None = Field(None, ge=0, le=4096, description="window overlap in pixels; default: a quarter window")
    batch_size: int | None = Field(None, ge=1, le=256, description="windows per UNet call (default: as many as free GPU memory holds; 4 on CPU)")
    lora: list[LoraParam] | None = Field(None, max_length=16, description="LoRAs fused into the model, in the models folder by name")

    def load_model(self, registry: ModelRegistry) -> DiffusionModel:
        """The params' model with their LoRAs, from the registry."""
        loras = registry.lora_specs([entry.model_dump() for entry in self.lora or ()])
        return registry.load(self.model, loras=loras) if loras else registry.load(self.model)

    def sampler_fields(self) -> dict:
        """The engine.pipelines.sampling.SamplerSettings part of these params, as keyword arguments."""
        from dataclasses import fields

        from engine.pipelines.sampling import SamplerSettings

        return {f.name: getattr(self, f.name) for f in fields(SamplerSettings)}

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str | None) -> str | None:
        if value is not None:
            from engine.errors import GFM4DError
            from engine.models.schedulers import scheduler_class

            try:
                scheduler_class(value)
            except GFM4DError as exc:
                raise ValueError(str(exc)) from None
        return value


@dataclass(frozen=True)
class Input:
    """A named file slot of a task. `many` slots take several files, named `slot.0`, `slot.1`, ..."""

    kind: str  # one of INPUT_KINDS; decides how the file is checked before the job is queued
    description: str
    many: bool = False
    required: bool = False  # a job without it is refused before it is queued

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
SizeFunction = Callable[[TaskParams, dict[str, Path]], tuple[int, int]]  # output (width, height) in pixels


@dataclass(frozen=True)
class TaskSpec:
    """One registered task."""

    name: str
    params: type[TaskParams]
    run: RunFunction
    inputs: Mapping[str, Input] = field(default_factory=dict)
    check: CheckFunction | None = None  # cross-checks params with inputs before queueing (InputError)
    summary: str = ""
    size: SizeFunction | None = None  # the output's size, so that a server can refuse jobs over its limit
    model_task: str | tuple[str, ...] | None = None  # the task(s) whose models it runs, when not its own

    @property
    def models_for(self) -> tuple[str, ...]:
        """The tasks a model must do one of to be used by this one."""
        tasks = self.model_task or self.name
        return (tasks,) if isinstance(tasks, str) else tuple(tasks)

    def can_use(self, info) -> bool:
        """Whether a model (its ModelInfo) does one of `models_for`."""
        return any(task in info.tasks for task in self.models_for)


def check_required(spec: TaskSpec, inputs: Mapping[str, Path]) -> None:
    """Refuse a job that lacks a file its task cannot run without (InputError naming the slot)."""
    given = {slot_of(name) for name in inputs}
    missing = [name for name, slot in spec.inputs.items() if slot.required and name not in given]
    if missing:
        described = "; ".join(f"`{name}`: {spec.inputs[name].description}" for name in missing)
        raise InputError(f"the {spec.name} task needs {' and '.join(f'`{m}`' for m in missing)} ({described}); "
                         "upload it as a file part of that name (or name it in `paths`)")


def latent_cell(info) -> int:
    """Pixels per latent cell of a model (its VAE's downsampling), read from the VAE's config without loading it."""
    import json

    vae = (getattr(info, "components", None) or {}).get("vae")
    try:
        config_json = json.loads((Path(vae) / "config.json").read_text(encoding="utf-8"))
        return 2 ** (len(config_json["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return 8  # every Stable Diffusion VAE


def check_window(params: TaskParams, info) -> None:
    """Window and overlap that the sampling loop can tile with (checked again when the model is loaded)."""
    if not isinstance(params, SamplingParams):
        return
    cell = latent_cell(info)
    window = params.window or info.native_resolution
    overlap = params.overlap if params.overlap is not None else window // 4
    if window < cell or window % cell:
        raise InputError(f"window ({window} px) must be a multiple of the model's latent cell ({cell} px), at least {cell}")
    if overlap % cell:
        raise InputError(f"overlap ({overlap} px) must be a multiple of the model's latent cell ({cell} px)")
    if overlap >= window:
        raise InputError(f"overlap ({overlap} px) must be smaller than the window ({window} px)")


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
    under the server it is the device the engine was started on. With `ray_address` set (`--ray`),
    the tasks that can split their work (generate, inpaint, dataset) run it on that Ray cluster's
    actors instead, `ray_workers` of them at most (default: one per GPU, or per CPU without GPUs).
    """

    def __init__(
        self,
        models_dir: Path,
        sd21_dir: Path | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        ray_address: str | None = None,
        ray_workers: int | None = None,
    ):
        super().__init__(models_dir, sd21_dir)
        self.device = torch.device(device) if device is not None else config.device()
        self.dtype = dtype if dtype is not None else config.dtype_for(self.device)
        self.ray_address = ray_address
        self.ray_workers = ray_workers

    def load(self, name: str, device=None, dtype=None, backend=None, loras=()) -> DiffusionModel:
        return super().load(name, device if device is not None else self.device, dtype if dtype is not None else self.dtype,
                            backend=backend, loras=loras)

    def loaded_names(self) -> list[str]:
        """Names of the models held in memory now.

        Read without the registry's lock, which `load` holds while a model loads (seconds to
        minutes): a status request must not wait for that. Copying a dict's keys is atomic in CPython.
        """
        return sorted({key[0] for key in tuple(self._loaded)})


RESULT_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def checked_results(produced: Mapping[str, Path], results_dir: Path) -> dict[str, Path]:
    """A task's results as the engine keeps them: plain names, each a file directly in the job's results folder."""
    results = {}
    for name, path in produced.items():
        path = Path(path)
        if not name or not set(name) <= RESULT_NAME_CHARS:
            raise RuntimeError(f"task result name {name!r} must be letters, digits, _ or -")
        if path.resolve().parent != Path(results_dir).resolve() or not path.is_file():
            raise RuntimeError(f"task result {name!r} ({path}) is not a file in the job's results folder")
        results[name] = path
    return results


def run_task_locally(
    registry: ModelRegistry,
    payload: dict,
    inputs: Mapping[str, Path],
    outputs: Mapping[str, Path],
    progress: Callable[[Progress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> dict[str, Path]:
    """Run a task in this process exactly as the engine's worker would, with the same validation.

    `payload` is the job params as sent on the wire ({"task": ..., ...}). Results are made in a
    scratch folder beside the first output and renamed onto `outputs` (result name -> path), so a
    failed or cancelled run leaves nothing at the destinations.
    """
    import os
    import shutil
    import tempfile

    from .params import parse_job_params

    request = parse_job_params(payload)
    check_required(request.spec, inputs)
    if request.spec.check is not None:
        request.spec.check(request.params, dict(inputs))
    first = Path(next(iter(outputs.values())))
    scratch = Path(tempfile.mkdtemp(prefix=".gfm4d-", dir=first.parent if str(first.parent) else "."))
    try:
        results = checked_results(request.spec.run(registry, request.params, dict(inputs), scratch,
                                                   progress or (lambda p: None), cancel or (lambda: False)), scratch)
        missing = sorted(set(outputs) - set(results))
        if missing:
            raise InputError(f"the {request.spec.name} task made no {', '.join(missing)}; it makes: {', '.join(results)}")
        written = {}
        for name, destination in outputs.items():
            os.replace(results[name], destination)
            written[name] = Path(destination)
        return written
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
