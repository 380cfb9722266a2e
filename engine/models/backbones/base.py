"""How one family of diffusion networks is driven by the shared sampling loop.

The loop (engine.pipelines.sampling) cuts a latent canvas into windows, asks for each window's
guided prediction, blends the predictions and takes one scheduler step on the canvas. What differs
between families is small and lives here: how prompts become embeddings, how the denoiser is called
on a batch of windows (packing, extra conditioning), how the scheduler's timesteps are set and how
clean latents are noised to a step's level. The canvas always holds plain (B, C, h, w) latents:
every scheduler step is element-wise, so blending in that layout is the same as in any packed one.

`UNetBackbone` is Stable Diffusion 1.x/2.x and DiffusionSat (with its metadata and ControlNets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class PromptEmbeddings:
    """Embeddings of P prompts and of the negative prompt (None without classifier-free guidance)."""

    cond: torch.Tensor  # (P, tokens, dim)
    uncond: torch.Tensor | None  # (1, tokens, dim)
    pooled: torch.Tensor | None = None  # (P, dim): pooled text embeddings (SDXL, SD3, FLUX)
    uncond_pooled: torch.Tensor | None = None  # (1, dim)


def tokens(tokenizer, texts: Sequence[str], max_length: int | None = None) -> torch.Tensor:
    """Token ids padded to the tokenizer's (or the given) maximum length, as diffusers' pipelines do."""
    return tokenizer(
        list(texts),
        padding="max_length",
        max_length=max_length or tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


class UNetBackbone:
    """Stable Diffusion 1.x/2.x UNets, DiffusionSat's SatUNet and its ControlNets."""

    family = "sd"
    flow_matching = False
    classifier_free_guidance = True  # False: the guidance scale goes into the denoiser (FLUX dev)
    patch_size = 1  # window sides in latent cells must be multiples of this
    pipeline_class = "StableDiffusionPipeline"

    def encode_prompt(self, model, prompts: Sequence[str], negative_prompt: str, guided: bool) -> PromptEmbeddings:
        def embed(text: str) -> torch.Tensor:
            output = model.text_encoder(tokens(model.tokenizer, [text]).to(model.device))
            return output[0].to(model.dtype)

        cond = torch.cat([embed(p) for p in prompts])
        return PromptEmbeddings(cond, embed(negative_prompt) if guided else None)

    def set_timesteps(self, scheduler, steps: int, device, window: tuple[int, int]) -> None:
        scheduler.set_timesteps(steps, device=device)

    def initial_latents(self, scheduler, noise: torch.Tensor) -> torch.Tensor:
        return noise * scheduler.init_noise_sigma

    def scale_input(self, scheduler, latents: torch.Tensor, t) -> torch.Tensor:
        return scheduler.scale_model_input(latents, t)

    def noised(self, scheduler, clean: torch.Tensor, noise: torch.Tensor, index: int) -> torch.Tensor:
        """`clean` latents noised to the level of the scheduler's timestep number `index`."""
        return scheduler.add_noise(clean, noise, scheduler.timesteps[index : index + 1])

    def predict(self, model, x, timestep, hidden, pooled, guidance_scale: float, window, kwargs: dict) -> torch.Tensor:
        """The denoiser's output for a batch of windows `x` (B, C, h, w) of `window` latent cells."""
        return model.unet(x, timestep, encoder_hidden_states=hidden, **kwargs).sample


class FlowMatchingMixin:
    """Rectified-flow families (SD3, FLUX): FlowMatchEulerDiscreteScheduler, x_t = (1 - s) x_0 + s n."""

    flow_matching = True

    def initial_latents(self, scheduler, noise: torch.Tensor) -> torch.Tensor:
        return noise

    def scale_input(self, scheduler, latents: torch.Tensor, t) -> torch.Tensor:
        return latents

    def noised(self, scheduler, clean: torch.Tensor, noise: torch.Tensor, index: int) -> torch.Tensor:
        # The scheduler keeps its sigmas on the host: read the number, do not copy a tensor per step.
        sigma = float(scheduler.sigmas[index])
        return sigma * noise + (1.0 - sigma) * clean


def calculate_shift(image_seq_len: int, config, default_max_shift: float) -> float:
    """Resolution-dependent timestep shift `mu` (as diffusers' SD3 and FLUX pipelines compute it)."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", default_max_shift)
    m = (max_shift - base_shift) / (max_len - base_len)
    b = base_shift - m * base_len
    return image_seq_len * m + b
