"""Large backbones on small GPUs: model CPU offload, VAE tiling, and a memory check before loading.

- Model CPU offload (accelerate's `cpu_offload_with_hook`, as diffusers' `enable_model_cpu_offload`):
  the networks stay in CPU memory and each moves to the GPU when it runs, the previous one going back;
  the GPU then holds one network at a time (the denoiser, usually the largest).
- VAE tiling (diffusers' `enable_tiling`): the VAE works on tiles inside each decoding block, for
  blocks too large to decode at once.
Switched on with GFM4D_OFFLOAD=1 / GFM4D_VAE_TILING=1, or `"offload": true` / `"vae_tiling": true`
in the model's gfm4d.json (the environment wins).
"""

from __future__ import annotations

import logging
import os

import torch

from engine.errors import ModelError

log = logging.getLogger(__name__)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def switch(env: str, settings: dict, key: str) -> bool:
    value = os.environ.get(env, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return bool(settings.get(key, False))


def check_fits(name: str, needed: int, largest: int, device: torch.device, offload: bool) -> None:
    """ModelError before loading when the weights cannot fit in the GPU's free memory."""
    from engine.models.footprint import describe_bytes

    log.info("model %s needs %s for its weights (largest network %s)", name, describe_bytes(needed), describe_bytes(largest))
    if device.type != "cuda" or not torch.cuda.is_available():
        return
    free, _ = torch.cuda.mem_get_info(device)
    wanted = largest if offload else needed
    if wanted > free:
        hint = ("even with CPU offload the largest network does not fit: use a smaller or quantised model"
                if offload else "switch on model CPU offload (GFM4D_OFFLOAD=1 or \"offload\": true in its gfm4d.json)")
        raise ModelError(
            f"model {name!r} needs {describe_bytes(wanted)} of GPU memory for its weights, but the GPU has "
            f"{describe_bytes(free)} free: {hint}"
        )


def enable_offload(modules: list, device: torch.device) -> None:
    """Chain CPU-offload hooks over `modules` in the order they run (text encoders, denoiser, VAE)."""
    from accelerate import cpu_offload_with_hook

    hook = None
    for module in modules:
        if module is None:
            continue
        module.to("cpu")
        _, hook = cpu_offload_with_hook(module, device, prev_module_hook=hook)
    if device.type == "cuda":
        torch.cuda.empty_cache()
