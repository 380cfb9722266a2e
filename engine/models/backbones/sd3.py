"""Stable Diffusion 3 / 3.5 (MMDiT, rectified flow): CLIP-L + CLIP-G + T5 text, a patchified transformer.

As diffusers' StableDiffusion3Pipeline: each CLIP's penultimate hidden states side by side, padded to
T5's width and followed by T5's tokens; pooled = both CLIPs' projected outputs; without a T5 encoder
its part is zeros. Timesteps come from FlowMatchEulerDiscreteScheduler (shifted by its config, or by
the window's token count with dynamic shifting); the transformer takes the flow timestep as is.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .base import FlowMatchingMixin, PromptEmbeddings, UNetBackbone, calculate_shift, tokens

T5_TOKENS = 256  # diffusers' default max_sequence_length for SD3


class SD3Backbone(FlowMatchingMixin, UNetBackbone):
    family = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"

    def __init__(self, tokenizer_2, text_encoder_2, tokenizer_3=None, text_encoder_3=None, patch_size: int = 2,
                 joint_attention_dim: int = 4096):
        self.tokenizer_2, self.text_encoder_2 = tokenizer_2, text_encoder_2
        self.tokenizer_3, self.text_encoder_3 = tokenizer_3, text_encoder_3
        self.patch_size = patch_size
        self.joint_attention_dim = joint_attention_dim

    def modules(self) -> dict:
        return {"tokenizer_2": self.tokenizer_2, "text_encoder_2": self.text_encoder_2,
                "tokenizer_3": self.tokenizer_3, "text_encoder_3": self.text_encoder_3}

    def _embed(self, model, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, pooled = [], []
        for tokenizer, encoder in ((model.tokenizer, model.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            output = encoder(tokens(tokenizer, texts).to(model.device), output_hidden_states=True)
            pooled.append(output[0].to(model.dtype))
            hidden.append(output.hidden_states[-2].to(model.dtype))
        clip = torch.cat(hidden, dim=-1)
        if self.text_encoder_3 is None:
            t5 = torch.zeros((len(texts), T5_TOKENS, self.joint_attention_dim), device=model.device, dtype=model.dtype)
        else:
            ids = tokens(self.tokenizer_3, texts, T5_TOKENS).to(model.device)
            t5 = self.text_encoder_3(ids)[0].to(model.dtype)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5], dim=-2), torch.cat(pooled, dim=-1)

    def encode_prompt(self, model, prompts: Sequence[str], negative_prompt: str, guided: bool) -> PromptEmbeddings:
        cond, pooled = self._embed(model, prompts)
        uncond = uncond_pooled = None
        if guided:
            uncond, uncond_pooled = self._embed(model, [negative_prompt])
        return PromptEmbeddings(cond, uncond, pooled, uncond_pooled)

    def set_timesteps(self, scheduler, steps: int, device, window: tuple[int, int]) -> None:
        kwargs = {}
        if scheduler.config.get("use_dynamic_shifting", None):
            seq_len = (window[0] // self.patch_size) * (window[1] // self.patch_size)
            kwargs["mu"] = calculate_shift(seq_len, scheduler.config, 1.16)
        scheduler.set_timesteps(steps, device=device, **kwargs)

    def predict(self, model, x, timestep, hidden, pooled, guidance_scale: float, window, kwargs: dict) -> torch.Tensor:
        return model.unet(hidden_states=x, timestep=timestep.expand(x.shape[0]), encoder_hidden_states=hidden,
                          pooled_projections=pooled, return_dict=False)[0]
