"""Device, dtype and per-model runtime choices, and how many windows fit in GPU memory.

Defaults are picked for the user and every one can be overridden (engine.config lists the
environment variables): on CUDA, half precision, channels-last convolutions, torch.compile with
CUDA graphs and DPM-Solver++ when a request names no scheduler; on CPU, float32, no compile and
the model's own scheduler, so CPU runs stay bit-comparable with plain diffusers. A model folder's gfm4d.json may ask for the ONNX
backend ({"backend": "onnx"}); GFM4D_BACKEND (or the registry's `backend`) overrides it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import config
from engine.errors import InputError, ModelError

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx")
HALF = (torch.float16, torch.bfloat16)
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
# Inductor with CUDA graphs: a network call is one graph replay, not hundreds of kernel launches
# from Python. It needs every call of a job to have the same shapes (engine.pipelines.staging).
COMPILE_MODE = "reduce-overhead"
CUDA_SCHEDULER = "dpm++"  # as good at ~25 steps as DDIM at 50 (Lu et al. 2022)
DEFAULT_BATCH = 4  # windows per UNet call when nothing else decides
AUTO_BATCH_CAP = 16  # windows per call an automatic choice never exceeds: larger gains nothing
MEMORY_RESERVE = 0.15  # share of free GPU memory left for the VAE, the scheduler and fragmentation


def choose_dtype(device: torch.device | str, name: str | None = None) -> torch.dtype:
    """The compute dtype: `name` when given (float32, float16, bfloat16), else float16 on CUDA, float32 elsewhere.

    float16 rather than bfloat16 by default: its 10-bit mantissa keeps outputs closer to float32,
    and the one range problem of SD-2.1-class UNets (attention scores) is handled by upcast
    attention (see precision.py).
    """
    device = torch.device(device)
    if not name or name.lower() == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    dtype = _DTYPES.get(name.lower())
    if dtype is None:
        raise InputError(f"unknown dtype {name!r} (GFM4D_DTYPE): use float32, float16 or bfloat16")
    if dtype is torch.float16 and device.type == "cpu":
        raise InputError("float16 is not supported on the CPU (slow, and some layers lack it): use float32 or bfloat16")
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError(f"{torch.cuda.get_device_name(device)} has no bfloat16 support: use float16 (GFM4D_DTYPE=float16)")
    return dtype


@dataclass(frozen=True)
class RuntimeOptions:
    """How one loaded model runs, beyond its device and dtype."""

    backend: str = "torch"  # "torch" or "onnx"
    channels_last: bool = False
    compile_backend: str | None = None  # a torch.compile backend for UNet and ControlNet, or None
    compile_mode: str | None = None  # the inductor mode ("reduce-overhead": CUDA graphs), or None
    scheduler: str | None = None  # used when a request names none; None: the model's own
    onnx_cache: Path | None = None  # where exported graphs are kept (default: config.onnx_cache_dir())


def runtime_options(device: torch.device | str, settings: dict | None = None, backend: str | None = None,
                    source: str = "gfm4d.json") -> RuntimeOptions:
    """Options for a model on `device`: `backend` argument, then environment, then the model's settings, then defaults."""
    device = torch.device(device)
    settings = settings or {}
    chosen = backend or config.backend() or settings.get("backend") or "torch"
    if chosen not in BACKENDS:
        where = "the backend argument" if backend else ("GFM4D_BACKEND" if config.backend() else f"'backend' in {source}")
        raise ModelError(f"unknown backend {chosen!r} ({where}): use one of {', '.join(BACKENDS)}")
    channels_last = config.channels_last()
    scheduler = config.default_scheduler()
    if scheduler is None:
        scheduler = CUDA_SCHEDULER if device.type == "cuda" else None
    elif scheduler.lower() == "model":
        scheduler = None
    compile_backend = config.compile_backend()
    if compile_backend is None:
        compile_backend = "inductor" if device.type == "cuda" else None
    elif compile_backend == config.OFF:
        compile_backend = None
    return RuntimeOptions(
        backend=chosen,
        channels_last=device.type == "cuda" if channels_last is None else channels_last,
        compile_backend=compile_backend,
        compile_mode=COMPILE_MODE if compile_backend == "inductor" and device.type == "cuda" else None,
        scheduler=scheduler,
        onnx_cache=config.onnx_cache_dir(),
    )


def free_memory(device: torch.device | str) -> int | None:
    """Bytes a new allocation can take on a CUDA device (free plus what torch holds unused); None elsewhere."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def window_bytes(unet_config, height: int, width: int, dtype: torch.dtype, passes: int = 1) -> int:
    """Activation memory of one window (height x width latent cells) through the UNet, on the safe side.

    What inference keeps alive: every skip residual (layers_per_block + 1 per level, each level a
    quarter of the cells of the one above), plus the widest working set at full resolution,
    16 x C0 values per cell (GEGLU's 8 x C0 projection, attention's q/k/v/out 4 x C0, the residual
    stream and its norms another 4 x C0; SDPA never builds the cells x cells score matrix).
    Doubled for allocator slack. `passes`: model passes per window (2 with guidance, and a
    ControlNet's trunk once per frame on top).
    """
    channels = list(unet_config.block_out_channels)
    layers = unet_config.layers_per_block
    layers = list(layers) if isinstance(layers, (list, tuple)) else [layers] * len(channels)
    cells = height * width
    skips = sum((count + 1) * level_channels * cells / 4**level
                for level, (count, level_channels) in enumerate(zip(layers, channels)))
    working = 16 * channels[0] * cells
    itemsize = torch.empty((), dtype=dtype).element_size()
    return int(2 * (skips + working) * itemsize * max(1, passes))


def fit_batch_size(requested: int | None, per_window: int, free: int | None) -> int:
    """Windows per call: `requested` (or DEFAULT_BATCH / the most that fit when None), never more than fit in `free` bytes."""
    if free is None:
        return requested or DEFAULT_BATCH
    fitting = max(1, int(free * (1 - MEMORY_RESERVE)) // max(1, per_window))
    return min(requested, fitting) if requested else min(AUTO_BATCH_CAP, fitting)


def batch_size_for(model, requested: int | None, height: int, width: int, passes: int) -> int:
    """The batch size for windows of height x width latent cells on the model's device (see fit_batch_size)."""
    try:
        per_window = window_bytes(model.unet.config, height, width, model.dtype, passes)
    except (AttributeError, TypeError):
        per_window = 0  # an unusual UNet config: trust the request, the OOM fallback still guards
    return fit_batch_size(requested, per_window, free_memory(model.device) if per_window else None)


class BatchSize:
    """Windows per model call for one job; halved for the rest of the job when the GPU runs out of memory."""

    def __init__(self, value: int):
        self.value = max(1, int(value))

    def shrink(self, error: BaseException) -> None:
        """Halve after an out-of-memory error; a batch of one that does not fit is the job's error."""
        if self.value == 1:
            raise error
        self.value = max(1, self.value // 2)
        log.warning("out of GPU memory; retrying with %d windows per call", self.value)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
