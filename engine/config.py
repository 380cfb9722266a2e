"""Where the engine keeps its models and how it runs them, overridable by environment.

GFM4D_HOME           base folder (default: $XDG_DATA_HOME/gfm4d or ~/.local/share/gfm4d)
GFM4D_MODELS         model folders (default: $GFM4D_HOME/models)
GFM4D_SD21_DIR       a Stable Diffusion 2.1 folder that supplies VAE, text encoder, tokenizer and
                     scheduler to released DiffusionSat runs that ship only their UNet
GFM4D_DEVICE         'cpu', 'cuda' or 'cuda:N' (default: cuda when available)
GFM4D_DTYPE          'float16', 'bfloat16' or 'float32' (default: float16 on CUDA, float32 on CPU)
GFM4D_BACKEND        'torch' or 'onnx' for every model (default: a model's gfm4d.json "backend", else torch)
GFM4D_ONNX_CACHE     exported ONNX graphs (default: $GFM4D_HOME/onnx)
GFM4D_COMPILE        torch.compile of the UNet and ControlNet: '0' off; '1' or 'inductor', 'eager',
                     'aot_eager' a backend (default: inductor with CUDA graphs on CUDA, off on CPU)
GFM4D_COMPILE_CACHE  compiled graphs kept between runs (default: $GFM4D_HOME/compile; an explicit
                     TORCHINDUCTOR_CACHE_DIR wins)
GFM4D_CHANNELS_LAST  '1' or '0' (default: 1 on CUDA, 0 on CPU)
GFM4D_VAE_HALF       '1' or '0': VAE decoding in float16 with a float32 redo of overflowing blocks
                     (default: 1 on CUDA for half-precision models, 0 otherwise)
GFM4D_DEFAULT_MODEL  the model generate and inpaint both use when a request names none (default:
                     gfm4d-mini, the built-in model, for generate, and its inpainting variant
                     gfm4d-mini-inpaint for inpaint)
GFM4D_SCHEDULER      the scheduler used when a request names none: a name (ddim, dpm++, ...) or 'model'
                     for the model's own (default: dpm++ on CUDA, the model's own on CPU)
GFM4D_THREADS        CPU threads torch uses (default: half the cores, at most 4; see engine.runtime.threads)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a device is chosen: `gfm4d --help` and argument errors need none
    import torch

DEMO_MODEL = "demo-satunet"  # tiny, untrained: for tests and the predict/superres examples
BUILTIN_MODEL = "gfm4d-mini"  # trained, shipped in the package: the default for generate
BUILTIN_INPAINT_MODEL = "gfm4d-mini-inpaint"  # its inpainting variant (9-channel UNet): the default for inpaint


def default_model() -> str:
    """The model a request that names none runs on."""
    return os.environ.get("GFM4D_DEFAULT_MODEL") or BUILTIN_MODEL


def default_inpaint_model() -> str:
    """The model an inpainting request that names none runs on: trained on the question inpainting asks."""
    return os.environ.get("GFM4D_DEFAULT_MODEL") or BUILTIN_INPAINT_MODEL


def home() -> Path:
    if os.environ.get("GFM4D_HOME"):
        return Path(os.environ["GFM4D_HOME"]).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "gfm4d"


def models_dir() -> Path:
    return Path(os.environ["GFM4D_MODELS"]).expanduser() if os.environ.get("GFM4D_MODELS") else home() / "models"


def sd21_dir() -> Path | None:
    value = os.environ.get("GFM4D_SD21_DIR")
    return Path(value).expanduser() if value else None


def onnx_cache_dir() -> Path:
    value = os.environ.get("GFM4D_ONNX_CACHE")
    return Path(value).expanduser() if value else home() / "onnx"


def device() -> torch.device:
    import torch

    name = os.environ.get("GFM4D_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def dtype_for(dev: torch.device) -> torch.dtype:
    """GFM4D_DTYPE when set, else half precision on GPUs (see engine.runtime.device) and float32 on CPU."""
    from engine.runtime.device import choose_dtype

    return choose_dtype(dev, os.environ.get("GFM4D_DTYPE"))


def backend() -> str | None:
    return os.environ.get("GFM4D_BACKEND") or None


OFF = "off"


def compile_backend() -> str | None:
    """GFM4D_COMPILE as a torch.compile backend; OFF when switched off, None when unset (the runtime decides)."""
    value = os.environ.get("GFM4D_COMPILE", "").strip().lower()
    if not value:
        return None
    if value in ("0", "no", "false", "off"):
        return OFF
    return "inductor" if value in ("1", "yes", "true", "on") else value


def compile_cache_dir() -> Path:
    value = os.environ.get("GFM4D_COMPILE_CACHE")
    return Path(value).expanduser() if value else home() / "compile"


def channels_last() -> bool | None:
    value = os.environ.get("GFM4D_CHANNELS_LAST", "").strip().lower()
    return None if not value else value in ("1", "yes", "true", "on")


def vae_half() -> bool | None:
    value = os.environ.get("GFM4D_VAE_HALF", "").strip().lower()
    return None if not value else value in ("1", "yes", "true", "on")


def default_scheduler() -> str | None:
    return os.environ.get("GFM4D_SCHEDULER") or None


def threads() -> str | None:
    return os.environ.get("GFM4D_THREADS") or None
