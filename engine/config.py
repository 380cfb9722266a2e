"""Where the engine keeps its models and which device it runs on, overridable by environment.

GFM4D_HOME      base folder (default: $XDG_DATA_HOME/gfm4d or ~/.local/share/gfm4d)
GFM4D_MODELS    model folders (default: $GFM4D_HOME/models)
GFM4D_SD21_DIR  a Stable Diffusion 2.1 folder that supplies VAE, text encoder, tokenizer and
                scheduler to released DiffusionSat runs that ship only their UNet
GFM4D_DEVICE    'cpu', 'cuda' or 'cuda:N' (default: cuda when available)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

DEMO_MODEL = "demo-satunet"


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


def device() -> torch.device:
    name = os.environ.get("GFM4D_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def dtype_for(dev: torch.device) -> torch.dtype:
    """Half precision on GPUs (fp16 UNets with upcast attention), float32 on CPU."""
    return torch.float16 if dev.type == "cuda" else torch.float32
