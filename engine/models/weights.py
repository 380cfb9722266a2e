"""Read diffusers weight files and put them into a model, strictly.

DiffusionSat released `diffusion_pytorch_model.bin` (a pickle); other models come as safetensors,
sometimes only as the `.fp16` variant. Pickles are read with `weights_only=True`, so a file that
holds arbitrary Python objects is refused instead of executed. Loading is strict: a checkpoint
that does not fit its config is an error, never a half-random model.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import ModelError

# Full precision first: an fp16 file is only used when it is all there is.
WEIGHT_FILE_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)
_SHOWN = 5  # key names shown in a mismatch message

if TYPE_CHECKING:  # imported where weights are read: recognising a model folder needs no torch
    import torch
    from torch import nn


def describe_folder(folder: Path, limit: int = 12) -> str:
    """A one-line listing of a folder (names and sizes) for error messages."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} does not exist"
    entries = sorted(folder.iterdir())
    shown = []
    for entry in entries[:limit]:
        if entry.is_dir():
            shown.append(entry.name + "/")
        else:
            shown.append(f"{entry.name} ({_size(entry.stat().st_size)})")
    more = f", ... {len(entries) - limit} more" if len(entries) > limit else ""
    return f"{folder} contains: {', '.join(shown) or 'nothing'}{more}"


def _size(n_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1024 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes} B"


def find_weights_file(folder: Path) -> Path:
    """The weight file of a diffusers model folder, or ModelError saying what is there instead."""
    folder = Path(folder)
    for name in WEIGHT_FILE_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise ModelError(
        f"no weights in {folder}: expected one of {', '.join(WEIGHT_FILE_NAMES)}; "
        f"{describe_folder(folder)}. Copy the complete model folder (a download may be incomplete)."
    )


def has_weights_file(folder: Path) -> bool:
    return any((Path(folder) / name).is_file() for name in WEIGHT_FILE_NAMES)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a `.safetensors` or `.bin` file (or of the weight file in a folder), on CPU."""
    import torch

    path = Path(path)
    if path.is_dir():
        path = find_weights_file(path)
    if path.suffix == ".safetensors":
        state_dict = _load_safetensors(path)
    else:
        state_dict = _load_pickle(path)
    if not isinstance(state_dict, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state_dict.items()
    ):
        raise ModelError(
            f"{path} is not a state dict (a mapping of parameter names to tensors); "
            "GFM4D expects the diffusers `diffusion_pytorch_model` files of a model folder"
        )
    return state_dict


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    import safetensors
    import safetensors.torch

    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except (safetensors.SafetensorError, OSError) as exc:
        raise ModelError(f"cannot read {path} ({exc}); the file is damaged or incomplete, copy it again") from exc


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    # mmap avoids holding a second copy of a multi-GB checkpoint; it needs the zip format (torch >= 1.6).
    import torch

    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise ModelError(
            f"refused to load {path}: it contains Python objects other than tensors, and GFM4D reads "
            "`.bin` weights with torch.load(weights_only=True) so that a model file cannot run code. "
            "Use the model's original weight files, or convert them to safetensors with a tool you trust."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path} ({exc}); the file is damaged or incomplete, copy it again") from exc


def load_into(
    model: nn.Module, folder: Path, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> nn.Module:
    """Load the folder's weights into `model` with strict key and shape checks.

    `device`/`dtype` convert the tensors as they are read (floating-point ones only for dtype). A
    model built on the meta device (no memory, no random init) takes those tensors as its own
    (`assign=True`), so it ends up on that device and dtype without a second copy.
    """
    folder = Path(folder)
    path = find_weights_file(folder)
    state_dict = {key: _convert(value, device, dtype) for key, value in load_state_dict(path).items()}
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    if missing or unexpected:
        raise ModelError(
            f"the weights in {path} do not fit the model built from {folder / 'config.json'}: "
            f"{_listing('missing', missing)}; {_listing('unexpected', unexpected)}. "
            f"{describe_folder(folder)}. The config and weights must come from the same checkpoint."
        )
    wrong_shape = [
        f"{key} {tuple(state_dict[key].shape)} != {tuple(value.shape)}"
        for key, value in expected.items()
        if state_dict[key].shape != value.shape
    ]
    if wrong_shape:
        raise ModelError(
            f"the weights in {path} do not fit the model built from {folder / 'config.json'}: "
            f"{len(wrong_shape)} tensors have another shape (file != config), e.g. "
            f"{'; '.join(wrong_shape[:_SHOWN])}. The config and weights must come from the same checkpoint."
        )
    on_meta = any(tensor.is_meta for tensor in expected.values())
    model.load_state_dict(state_dict, strict=True, assign=on_meta)
    return model


def _convert(tensor: torch.Tensor, device, dtype: torch.dtype | None) -> torch.Tensor:
    if dtype is not None and tensor.is_floating_point():
        return tensor.to(device=device, dtype=dtype)
    return tensor if device is None else tensor.to(device=device)


def _listing(label: str, keys: list[str]) -> str:
    if not keys:
        return f"0 {label}"
    more = ", ..." if len(keys) > _SHOWN else ""
    return f"{len(keys)} {label} ({', '.join(keys[:_SHOWN])}{more})"
