"""Load an SDXL, SD3 or FLUX folder into a DiffusionModel whose `backbone` drives it.

Every network comes from its library's `from_pretrained` on the local folder only (sharded weights
included); the denoiser sits in `DiffusionModel.unet` whatever its class, so the pipelines' memory,
batching and progress code stays the same for every family.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from engine.errors import ModelError
from engine.models.layout import SD3_TRANSFORMER, FLUX_TRANSFORMER, FLUX_FILL_TRANSFORMER, ModelInfo, read_json
from engine.runtime.precision import set_attention, vae_dtype

from .flux import FluxBackbone
from .sd3 import SD3Backbone
from .sdxl import SDXLBackbone

_DENOISERS = {SD3_TRANSFORMER: SD3Transformer2DModel, FLUX_TRANSFORMER: FluxTransformer2DModel,
              FLUX_FILL_TRANSFORMER: FluxTransformer2DModel}
_TEXT_ENCODERS = {
    "sdxl": {"text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection},
    "sd3": {"text_encoder": CLIPTextModelWithProjection, "text_encoder_2": CLIPTextModelWithProjection,
            "text_encoder_3": T5EncoderModel},
    "flux": {"text_encoder": CLIPTextModel, "text_encoder_2": T5EncoderModel},
}
_TOKENIZERS = {
    "sdxl": {"tokenizer": CLIPTokenizer, "tokenizer_2": CLIPTokenizer},
    "sd3": {"tokenizer": CLIPTokenizer, "tokenizer_2": CLIPTokenizer, "tokenizer_3": T5TokenizerFast},
    "flux": {"tokenizer": CLIPTokenizer, "tokenizer_2": T5TokenizerFast},
}


def load_backbone_parts(info: ModelInfo, device: torch.device, dtype: torch.dtype) -> dict:
    """Every network, tokenizer and the scheduler config of a backbone folder, and its backbone adapter."""
    from engine.models.loading import _from_pretrained  # the same error messages as SD components

    family = info.family
    if info.missing_components:
        raise ModelError(
            f"model {info.name!r} at {info.path} is a {family.upper()} folder without "
            f"{', '.join(name + '/' for name in info.missing_components)}: copy the complete diffusers folder "
            "(every component of model_index.json)"
        )
    cls = _DENOISERS.get(info.kind, UNet2DConditionModel)
    try:
        denoiser = cls.from_pretrained(info.unet_path, torch_dtype=dtype, local_files_only=True).to(device)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise ModelError(f"cannot load the denoiser of model {info.name!r} from {info.unet_path}: {exc}") from exc
    vae_config = read_json(info.components["vae"] / "config.json")
    vae = _from_pretrained(AutoencoderKL, info, "vae", torch_dtype=vae_dtype(dtype, vae_config)).to(device)
    parts = {"unet": denoiser, "vae": vae}
    for name, encoder_cls in _TEXT_ENCODERS[family].items():
        parts[name] = _from_pretrained(encoder_cls, info, name, dtype=dtype).to(device) if name in info.components else None
    for name, tokenizer_cls in _TOKENIZERS[family].items():
        parts[name] = _from_pretrained(tokenizer_cls, info, name) if name in info.components else None
    if (parts.get("text_encoder_3") is None) != (parts.get("tokenizer_3") is None):
        raise ModelError(f"model {info.name!r} has only one of text_encoder_3/ and tokenizer_3/; it needs both or neither")
    for module in (denoiser, vae, *(parts[n] for n in _TEXT_ENCODERS[family])):
        if module is not None:
            module.eval().requires_grad_(False)
    set_attention(vae, vae.dtype)
    if family == "sdxl":
        set_attention(denoiser, dtype)
        index = info.path / "model_index.json"
        force_zeros = read_json(index).get("force_zeros_for_empty_prompt", True) if index.is_file() else True
        parts["backbone"] = SDXLBackbone(parts["tokenizer_2"], parts["text_encoder_2"], force_zeros)
    elif family == "sd3":
        parts["backbone"] = SD3Backbone(parts["tokenizer_2"], parts["text_encoder_2"], parts.get("tokenizer_3"),
                                        parts.get("text_encoder_3"), denoiser.config.patch_size,
                                        denoiser.config.joint_attention_dim)
    else:
        parts["backbone"] = FluxBackbone(parts["tokenizer_2"], parts["text_encoder_2"], bool(denoiser.config.guidance_embeds))
    scheduler_config = dict(read_json(info.components["scheduler"] / "scheduler_config.json"))
    if family == "sdxl":
        scheduler_config["prediction_type"] = info.prediction_type
    parts["scheduler_config"] = scheduler_config
    return parts
