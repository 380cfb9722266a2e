"""FLUX.1 (dev, schnell, fill): CLIP pooled + T5 text, 2x2-packed latents, distilled guidance.

As diffusers' FluxPipeline: a window's (16, h, w) latents are packed into (h/2 * w/2) tokens of 64
values with their row/column ids, the transformer's output unpacked again; the pooled CLIP output and
T5's hidden states condition it; dev models take the guidance scale as an embedding (no
classifier-free guidance pass), schnell ignores it. Sigmas run linearly from 1 to 1/steps, shifted
by the window's token count. FLUX Fill takes the masked image's latents and the mask as 320 extra
channels, packed the same way.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from .base import FlowMatchingMixin, PromptEmbeddings, UNetBackbone, calculate_shift, tokens

T5_TOKENS = 512  # diffusers' default max_sequence_length for FLUX


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): each 2x2 cell block one token, channel-major."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens_: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack` for a window of height x width latent cells."""
    b, _, features = tokens_.shape
    x = tokens_.view(b, height // 2, width // 2, features // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, features // 4, height, width)


@lru_cache(maxsize=16)
def image_ids(height: int, width: int, device, dtype) -> torch.Tensor:
    """(h/2 * w/2, 3) position ids of a window's tokens: (0, row, column), made on the device once per shape."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] += torch.arange(height // 2)[:, None]
    ids[..., 2] += torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxBackbone(FlowMatchingMixin, UNetBackbone):
    family = "flux"
    classifier_free_guidance = False
    patch_size = 2
    pipeline_class = "FluxPipeline"

    def __init__(self, tokenizer_2, text_encoder_2, guidance_embeds: bool):
        self.tokenizer_2, self.text_encoder_2 = tokenizer_2, text_encoder_2
        self.guidance_embeds = guidance_embeds

    def modules(self) -> dict:
        return {"tokenizer_2": self.tokenizer_2, "text_encoder_2": self.text_encoder_2}

    def encode_prompt(self, model, prompts: Sequence[str], negative_prompt: str, guided: bool) -> PromptEmbeddings:
        pooled = model.text_encoder(tokens(model.tokenizer, prompts).to(model.device), output_hidden_states=False)
        t5 = self.text_encoder_2(tokens(self.tokenizer_2, prompts, T5_TOKENS).to(model.device), output_hidden_states=False)[0]
        return PromptEmbeddings(t5.to(model.dtype), None, pooled.pooler_output.to(model.dtype))

    def set_timesteps(self, scheduler, steps: int, device, window: tuple[int, int]) -> None:
        sigmas = None if scheduler.config.get("use_flow_sigmas") else np.linspace(1.0, 1 / steps, steps)
        mu = calculate_shift((window[0] // 2) * (window[1] // 2), scheduler.config, 1.15)
        scheduler.set_timesteps(steps, device=device, sigmas=sigmas, mu=mu)

    def predict(self, model, x, timestep, hidden, pooled, guidance_scale: float, window, kwargs: dict) -> torch.Tensor:
        height, width = window
        batch = x.shape[0]
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full([1], guidance_scale, device=x.device, dtype=torch.float32).expand(batch)
        text_ids = torch.zeros(hidden.shape[1], 3, device=x.device, dtype=model.text_encoder.dtype)
        out = model.unet(
            hidden_states=pack(x),
            timestep=timestep.expand(batch).to(x.dtype) / 1000,
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=hidden,
            txt_ids=text_ids,
            img_ids=image_ids(height, width, x.device, model.text_encoder.dtype),
            return_dict=False,
        )[0]
        return unpack(out, height, width)
