"""What a model needs in memory, read from its weight files' headers before anything is loaded.

A safetensors header lists every tensor's shape, so the parameter count of each component is known
without reading the weights; other formats (.bin) count by file size. The memory a model needs is
that count times the bytes of the dtype it will run in.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch

from engine.errors import ModelError

_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1}
NETWORKS = ("unet", "controlnet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae")


def folder_parameters(folder: Path) -> int:
    """Parameters (elements) in a component folder's weights; .bin files counted as float32 by size."""
    folder = Path(folder)
    safetensors = sorted(folder.glob("*.safetensors"))
    if safetensors:
        return sum(_safetensors_elements(path) for path in safetensors)
    return sum(path.stat().st_size // 4 for pattern in ("*.bin", "*.pt", "*.ckpt") for path in folder.glob(pattern))


def _safetensors_elements(path: Path) -> int:
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > 100 * 2**20:
            raise ModelError(f"{path} is not a safetensors file")
        header = json.loads(handle.read(length))
    return sum(math.prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__")


def model_parameters(info) -> dict[str, int]:
    """Parameters per network of a recognised model (ModelInfo), from headers only."""
    if Path(info.path).is_file():  # a single-file checkpoint not converted yet: the whole file
        return {"checkpoint": _safetensors_elements(Path(info.path))}
    counts = {"unet": folder_parameters(info.unet_path)} if info.unet_path is not None else {}
    for name, folder in info.components.items():
        if name in NETWORKS:
            counts[name] = folder_parameters(folder)
    return counts


def model_bytes(info, dtype: torch.dtype = torch.float32) -> int:
    """Bytes the model's weights take in `dtype`."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return sum(model_parameters(info).values()) * itemsize


def describe_bytes(count: int) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"
