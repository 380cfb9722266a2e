"""LoRA adapters on any family, loaded by diffusers' own LoRA loaders and fused into the weights.

A LoRA file (diffusers/PEFT safetensors, or the common Kohya/A1111 format, which diffusers' loaders
convert) is handed to the family's diffusers pipeline class built around the already-loaded
networks, so the denoiser and text encoders get exactly the layers `load_lora_weights` gives them.
Several LoRAs are weighted with `set_adapters`, then fused and the adapter layers removed: inference
runs on plain weights at full speed. A model with a given list of LoRAs is therefore its own loaded
model (engine.models.registry caches it under that list).

LoRA files are named `PATH[:SCALE]`. Requests that come over the network may only name LoRAs in the
models folder (`<models>/<name>.safetensors` or `<models>/loras/<name>.safetensors`); file paths
are for local use (the registry says which it allows).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InputError, ModelError

LORA_DIR = "loras"
_LORA_KEY_MARKS = ("lora_A", "lora_B", "lora_down", "lora_up", "lora_unet_", "lora_te", ".lora.", "lora_transformer_")


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA file and the weight it is applied with."""

    path: Path
    scale: float = 1.0


def parse_lora(text: str) -> tuple[str, float]:
    """`PATH[:SCALE]` -> (path or name, scale); a Windows drive colon is not a scale."""
    head, sep, tail = text.rpartition(":")
    if sep and head and "/" not in tail and "\\" not in tail:
        try:
            return head, float(tail)
        except ValueError:
            raise InputError(f"LoRA {text!r}: the part after the last ':' must be a scale (e.g. my-lora:0.8)") from None
    return text, 1.0


def add_lora_argument(parser) -> None:
    """`--lora PATH[:SCALE]` (repeatable) on a CLI subcommand."""
    parser.add_argument(
        "--lora", action="append", metavar="PATH[:SCALE]",
        help="LoRA .safetensors (diffusers/PEFT or Kohya) fused into the model, with its weight (default 1); "
        "a file path, or a LoRA name from the models folder; repeatable",
    )


def lora_params(values: list[str] | None) -> list[dict] | None:
    """CLI `--lora` values -> the tasks' `lora` param ([{"name": ..., "scale": ...}])."""
    if not values:
        return None
    return [dict(zip(("name", "scale"), parse_lora(value))) for value in values]


def safetensors_keys(path: Path) -> list[str]:
    """Tensor names of a .safetensors file, read from its header only."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > 100 * 2**20:
            raise ModelError(f"{path} is not a safetensors file (header of {length} bytes)")
        header = json.loads(handle.read(length))
    return [key for key in header if key != "__metadata__"]


def is_lora_file(path: Path) -> bool:
    try:
        return path.suffix == ".safetensors" and any(mark in key for key in safetensors_keys(path) for mark in _LORA_KEY_MARKS)
    except (OSError, ValueError, ModelError):
        return False


def find_loras(models_dir: Path) -> dict[str, Path]:
    """LoRA files in the models folder (top level and `loras/`), by name (file name without .safetensors)."""
    found: dict[str, Path] = {}
    for folder in (Path(models_dir), Path(models_dir) / LORA_DIR):
        if folder.is_dir():
            for path in sorted(folder.glob("*.safetensors")):
                if is_lora_file(path):
                    found.setdefault(path.stem, path)
    return found


def resolve_lora(reference: str, scale: float, models_dir: Path, allow_paths: bool) -> LoraSpec:
    """A LoRA name in the models folder, or (where allowed) a file path -> LoraSpec."""
    if not -10.0 <= scale <= 10.0:
        raise InputError(f"LoRA scale {scale:g} of {reference!r} is outside -10..10")
    known = find_loras(models_dir)
    name = reference[: -len(".safetensors")] if reference.endswith(".safetensors") else reference
    if name in known and Path(reference).name == reference:
        return LoraSpec(known[name], scale)
    path = Path(reference).expanduser()
    if allow_paths and path.is_file():
        if not is_lora_file(path):
            raise InputError(f"{path} is not a LoRA: no lora_A/lora_B, lora_down/lora_up tensors in a .safetensors file")
        return LoraSpec(path.resolve(), scale)
    available = ", ".join(known) or f"none (put LoRA .safetensors files in {Path(models_dir) / LORA_DIR})"
    where = "" if allow_paths else " (this engine takes LoRAs by name from its models folder, not file paths)"
    raise InputError(f"unknown LoRA {reference!r}{where}; available LoRAs: {available}")


def apply_loras(pipeline_class: str, components: dict, specs: tuple[LoraSpec, ...]) -> None:
    """Load `specs` into the networks in `components` (as diffusers' pipeline would) and fuse them."""
    if not specs:
        return
    import diffusers

    pipeline = _bare_pipeline(getattr(diffusers, pipeline_class), components)
    encoders = [m for n, m in components.items() if n.startswith("text_encoder") and m is not None]
    patched = [m for m in encoders if _give_peft_loading(m)]
    try:
        _load_fuse_unload(pipeline, pipeline_class, specs)
    finally:
        for module in patched:
            del module.load_adapter
    import torch

    for module in components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)


def _load_fuse_unload(pipeline, pipeline_class: str, specs: tuple[LoraSpec, ...]) -> None:
    import safetensors.torch

    names = []
    for index, spec in enumerate(specs):
        name = f"lora_{index}"
        try:
            state_dict = safetensors.torch.load_file(str(spec.path))
            pipeline.load_lora_weights(state_dict, adapter_name=name)
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            raise ModelError(f"cannot apply the LoRA {spec.path} to this {pipeline_class[:-8]} model: {exc}") from exc
        names.append(name)
    pipeline.set_adapters(names, adapter_weights=[spec.scale for spec in specs])
    pipeline.fuse_lora(adapter_names=names, lora_scale=1.0)
    pipeline.unload_lora_weights()


def _give_peft_loading(text_encoder) -> bool:
    """Let diffusers load text-encoder LoRA layers with PEFT itself where transformers refuses this peft.

    diffusers hands text-encoder layers to transformers' `load_adapter`, which transformers 5 allows
    only with peft >= 0.22; all it does is PEFT's `inject_adapter_in_model` + `set_peft_model_state_dict`
    and bookkeeping, done here the same way (for this load only). True when the encoder was given it.
    """
    try:
        from transformers.integrations.peft import MIN_PEFT_VERSION
        from transformers.utils.peft_utils import check_peft_version

        check_peft_version(min_version=MIN_PEFT_VERSION)
        return False
    except ValueError:
        pass
    except ImportError:
        return False

    def load_adapter(adapter_name=None, adapter_state_dict=None, peft_config=None, **_):
        from peft import inject_adapter_in_model, set_peft_model_state_dict

        inject_adapter_in_model(peft_config, text_encoder, adapter_name)
        result = set_peft_model_state_dict(text_encoder, adapter_state_dict, adapter_name)
        unexpected = [key for key in getattr(result, "unexpected_keys", ()) if "lora_" in key]
        if unexpected:
            raise ValueError(f"LoRA layers that match no text-encoder layer: {', '.join(unexpected[:5])}")
        if not getattr(text_encoder, "_hf_peft_config_loaded", False):
            text_encoder.peft_config = {}
        text_encoder.peft_config[adapter_name] = peft_config
        text_encoder._hf_peft_config_loaded = True

    text_encoder.load_adapter = load_adapter
    return True


def _bare_pipeline(cls, components: dict):
    """A diffusers pipeline object around existing modules (nothing is copied or moved)."""
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {name: components.get(name) for name in accepted if name != "self" and name in components}
    for name in ("safety_checker", "feature_extractor", "image_encoder"):
        if name in accepted:
            kwargs.setdefault(name, None)
    if "requires_safety_checker" in accepted:
        kwargs["requires_safety_checker"] = False
    return cls(**kwargs)
