"""Stable Diffusion XL (base and inpainting): two CLIP text encoders, pooled text and size conditioning.

As diffusers' StableDiffusionXLPipeline: the penultimate hidden states of both encoders side by side,
the second encoder's projected pooled output, and `add_time_ids` = (original size, crop top-left,
target size) in pixels, here the window's own size (each window is a whole image to the UNet).
An empty negative prompt is all-zero embeddings when the model says so
(`force_zeros_for_empty_prompt`, true for SDXL base), as diffusers does when no negative is given.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch

from .base import PromptEmbeddings, UNetBackbone, tokens


class SDXLBackbone(UNetBackbone):
    family = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"

    def __init__(self, tokenizer_2, text_encoder_2, force_zeros_for_empty_prompt: bool = True):
        self.tokenizer_2 = tokenizer_2
        self.text_encoder_2 = text_encoder_2
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt

    def modules(self) -> dict:
        return {"tokenizer_2": self.tokenizer_2, "text_encoder_2": self.text_encoder_2}

    def _embed(self, model, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, pooled = [], None
        for tokenizer, encoder in ((model.tokenizer, model.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            output = encoder(tokens(tokenizer, texts).to(model.device), output_hidden_states=True)
            if output[0].ndim == 2:
                pooled = output[0]
            hidden.append(output.hidden_states[-2])
        return torch.cat(hidden, dim=-1).to(model.dtype), pooled.to(model.dtype)

    def encode_prompt(self, model, prompts: Sequence[str], negative_prompt: str, guided: bool) -> PromptEmbeddings:
        cond, pooled = self._embed(model, prompts)
        uncond = uncond_pooled = None
        if guided:
            if not negative_prompt and self.force_zeros_for_empty_prompt:
                uncond, uncond_pooled = torch.zeros_like(cond[:1]), torch.zeros_like(pooled[:1])
            else:
                uncond, uncond_pooled = self._embed(model, [negative_prompt])
        return PromptEmbeddings(cond, uncond, pooled, uncond_pooled)

    def predict(self, model, x, timestep, hidden, pooled, guidance_scale: float, window, kwargs: dict) -> torch.Tensor:
        height, width = (side * model.vae_scale_factor for side in window)
        added = {"text_embeds": pooled, "time_ids": time_ids(height, width, hidden.dtype, x.device).expand(x.shape[0], -1)}
        return model.unet(x, timestep, encoder_hidden_states=hidden, added_cond_kwargs=added, **kwargs).sample


@lru_cache(maxsize=16)
def time_ids(height: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """SDXL's (1, 6) size conditioning of a window, made on the device once per shape, not at every call."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=device)
