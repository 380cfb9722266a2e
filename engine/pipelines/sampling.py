"""The one sampling loop every task shares.

A canvas of latents is denoised as overlapping windows: at each step every window's prediction
(classifier-free guided, with the window's own metadata) is accumulated into a canvas-sized
prediction with weights that fall off towards the window edges, and a single scheduler step is
taken on the whole canvas. Because every diffusers scheduler updates each latent element from
that element's prediction alone, blending predictions is the same as blending the windows'
stepped results (MultiDiffusion), and multistep schedulers keep one consistent history.

Known latents (the unmasked part of an inpainting job, or a neighbouring region already
generated) are re-noised to the current noise level after every step and pasted back where the
mask says so (masked latent blending), which lets any UNet continue existing content.

Windows are batched (both guidance halves in one model call) as many at a time as the request
asks and free GPU memory allows; when the GPU runs out of memory anyway, the step is redone at
half the batch, which the rest of the job keeps (engine.runtime.device.BatchSize). Everything the
loop reads is put on the device before the first step, and every call of a job has the same
shapes, the last batch padded (engine.pipelines.staging). The model's
networks may be ONNX Runtime stand-ins (engine.runtime.onnx_models): they are called the same way.

What differs between families (SD/DiffusionSat, SDXL, SD3, FLUX) is the model's `backbone`
(engine.models.backbones): how prompts are embedded, how the denoiser is called on a batch of
windows, how timesteps are set and how clean latents are noised. The loop itself is the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable, Sequence

import numpy as np
import torch

from engine.errors import Cancelled, InputError
from engine.geo.tiling import Span
from engine.models.backbones.base import UNetBackbone
from engine.pipelines.staging import StagedRegion, WindowBatch
from engine.progress import Progress
from engine.runtime.device import BatchSize, batch_size_for
from engine.runtime.denoiser_batching import predict_denoiser


ProgressCallback = Callable[[Progress], None]
CancelCheck = Callable[[], bool]


@dataclass(kw_only=True)
class SamplerSettings:
    """What every task's request shares: guidance, sampler and window settings (sizes in output pixels)."""

    negative_prompt: str = ""
    cloud_cover: float | None = None  # fraction 0..1
    steps: int = 30
    guidance_scale: float | None = None  # None: the model's own default (ModelInfo.default_guidance)
    seed: int = 0
    scheduler: str | None = None  # a scheduler name, or None for the model's own
    window: int | None = None  # default: the model's native resolution
    overlap: int | None = None  # default: a quarter of the window
    batch_size: int | None = None  # windows per UNet call; None: as many as free GPU memory holds

    def sampler_fields(self) -> dict:
        """These settings as keyword arguments, to hand them on to another request."""
        return {f.name: getattr(self, f.name) for f in fields(SamplerSettings)}

    def guidance(self, model) -> float:
        """The guidance scale to use: the request's, else the model's own default."""
        return self.guidance_scale if self.guidance_scale is not None else model.info.default_guidance

    def window_cells(self, model) -> tuple[int, int]:
        """Check the settings against the model; the window and overlap in latent cells."""
        factor = model.vae_scale_factor
        window = self.window or model.info.native_resolution
        overlap = self.overlap if self.overlap is not None else window // 4
        if window % factor or overlap % factor:
            raise InputError(f"window ({window}) and overlap ({overlap}) must be multiples of {factor} pixels")
        patch = getattr(model, "patch_size", 1)
        if (window // factor) % patch:
            raise InputError(f"this model's window ({window}) must be a multiple of {factor * patch} pixels")
        if not 0 <= overlap < window:
            raise InputError(f"the overlap ({overlap} px) must be at least 0 and smaller than the window ({window} px)")
        check_steps(model, self.steps)
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"batch size must be at least 1, not {self.batch_size}")
        if self.cloud_cover is not None and not 0 <= self.cloud_cover <= 1:
            raise InputError(f"cloud cover is a fraction from 0 to 1, not {self.cloud_cover}")
        return window // factor, overlap // factor


@dataclass
class TextConditioning:
    """Prompt embeddings (one row per prompt) for the conditional and unconditional halves of guidance."""

    cond: torch.Tensor  # (P, tokens, dim)
    uncond: torch.Tensor | None  # (1, tokens, dim): the negative prompt, shared by all prompts
    pooled: torch.Tensor | None = None  # (P, dim): pooled text embeddings (SDXL, SD3, FLUX)
    uncond_pooled: torch.Tensor | None = None  # (1, dim)


@dataclass
class CanvasJob:
    """Everything one canvas (or region) needs to be denoised."""

    noise: torch.Tensor  # (1, C, H, W) float32, the initial noise of this canvas
    windows: Sequence[Span]  # latent windows, relative to the canvas
    window_metadata: Sequence[np.ndarray] | None  # per window, (7,) normalised, or None
    overlap: int  # latent cells over which window weights fall off
    known: torch.Tensor | None = None  # (1, C, H, W) clean latents to keep
    known_mask: torch.Tensor | None = None  # (1, 1, H, W), 1 = keep the known latents
    extra_channels: torch.Tensor | None = field(default=None)  # concatenated to the UNet input
    window_prompts: Sequence[int] | None = None  # per window, a row of TextConditioning.cond (default 0)
    init: torch.Tensor | None = None  # (1, C, H, W) clean latents to start from when strength < 1
    strength: float = 1.0  # 1: start from pure noise; below 1: from `init` noised part of the way
    # ControlNet conditioning of the whole canvas, in [0, 1]: (1, C, H*k, W*k), or a frame stack
    # (1, C, T, H*k, W*k) for the 3D ControlNet, with k condition pixels per latent cell.
    control_image: torch.Tensor | None = None
    control_factor: int = 8
    window_cond_metadata: Sequence[np.ndarray] | None = None  # per window, (7,) or (7, T)
    control_scale: float = 1.0


def check_steps(model, steps: int) -> None:
    """Steps must be at least one and at most the scheduler's training timesteps."""
    trained = int(model.scheduler_config.get("num_train_timesteps", 1000))
    if not 1 <= steps <= trained:
        raise InputError(f"steps must be from 1 to {trained} (the model's training timesteps), not {steps}")


def check_cancel(cancel: CancelCheck | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("the job was cancelled; nothing was written")


@torch.no_grad()
def encode_prompt(model, prompt: str | Sequence[str], negative_prompt: str, guidance_scale: float) -> TextConditioning:
    """Embed the prompt(s) (and the negative prompt when guidance is on) with the model's text encoder(s)."""
    backbone = backbone_of(model)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    guided = guidance_scale > 1.0 and backbone.classifier_free_guidance
    e = backbone.encode_prompt(model, prompts, negative_prompt, guided)
    return TextConditioning(e.cond, e.uncond, e.pooled, e.uncond_pooled)


def backbone_of(model) -> UNetBackbone:
    """The model's family adapter (a plain SD UNet's for models that name none)."""
    return getattr(model, "backbone", None) or _UNET


_UNET = UNetBackbone()


@torch.no_grad()
def predict_canvas(
    model,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    region: StagedRegion,
    guidance_scale: float,
    batch_size: int | BatchSize,
    cancel: CancelCheck | None = None,
) -> torch.Tensor:
    """The blended, guided model prediction for the whole canvas at one timestep (cancellable between batches)."""
    size = batch_size if isinstance(batch_size, BatchSize) else BatchSize(batch_size)
    windows = region.job.windows
    unet_input = latents if region.extra_channels is None else torch.cat([latents, region.extra_channels], dim=1)
    while True:
        prediction = torch.zeros_like(latents)
        try:
            for batch in region.batches(size.value):
                check_cancel(cancel)
                out = _guided_prediction(model, unet_input, timestep, region, guidance_scale, batch)
                for k, i in enumerate(batch.windows[: batch.real]):
                    prediction[(slice(None), slice(None)) + windows[i].slices] += out[k : k + 1] * region.weights[i]
            break
        except torch.cuda.OutOfMemoryError as error:
            # Re-raised once a single window does not fit; else this step starts over at the smaller
            # batch, which the rest of the job keeps.
            size.shrink(error)
    return prediction / region.weight_total


def _guided_prediction(model, unet_input, timestep, region: StagedRegion, guidance_scale: float,
                       batch: WindowBatch) -> torch.Tensor:
    """The guided prediction (float32) of a batch of windows, both guidance halves in one model call."""
    # Compiled networks may replay CUDA graphs, which reuse their output memory at the next replay.
    # A batch's outputs (ControlNet residuals, then the prediction) are used up before the next
    # batch, so each batch starts a new graph step.
    torch.compiler.cudagraph_mark_step_begin()
    spans = [region.job.windows[i] for i in batch.windows]
    x = torch.cat([unet_input[(slice(None), slice(None)) + s.slices] for s in spans]).to(model.dtype)
    if region.guided:
        x = torch.cat([x, x])
    kwargs = {}
    if batch.metadata is not None:
        kwargs["metadata"] = batch.metadata
    if region.control_image is not None:
        kwargs.update(_control_residuals(model, region, spans, batch, x, timestep))
    window = (spans[0].height, spans[0].width)
    # Through the model's cross-job batcher when the engine runs several jobs on it (engine.runtime.denoiser_batching).
    out = predict_denoiser(backbone_of(model), model, x, timestep, batch.hidden, batch.pooled, guidance_scale, window,
                           kwargs).float()
    if region.guided:
        uncond, cond = out.chunk(2)
        out = uncond + guidance_scale * (cond - uncond)
    return out


def _control_residuals(model, region: StagedRegion, spans, batch: WindowBatch, x, timestep) -> dict:
    """The ControlNet's residuals for a batch of windows.

    Both guidance halves see the conditioning image (as in diffusers' ControlNet pipelines); the
    unconditional half gets all-zero conditioning metadata, like its target metadata.
    """
    k = region.job.control_factor
    image = region.control_image
    cond = torch.cat([image[..., s.row * k : (s.row + s.height) * k, s.col * k : (s.col + s.width) * k] for s in spans])
    if region.guided:
        cond = torch.cat([cond, cond])
    down, mid = model.controlnet(
        x,
        timestep,
        encoder_hidden_states=batch.hidden,
        controlnet_cond=cond,
        metadata=batch.metadata,
        cond_metadata=batch.cond_metadata,
        conditioning_scale=region.job.control_scale,
    )
    return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


@torch.no_grad()
def denoise_canvas(
    model,
    scheduler,
    job: CanvasJob,
    text: TextConditioning,
    *,
    num_inference_steps: int,
    guidance_scale: float,
    batch_size: int | None,
    generator: torch.Generator | None = None,
    on_step: Callable[[int], None] | None = None,
    cancel: CancelCheck | None = None,
) -> torch.Tensor:
    """Run the full denoising loop on one canvas and return its clean latents (float32).

    `batch_size`: windows per model call, lowered to what free GPU memory holds; None lets the
    memory decide (engine.runtime.device.fit_batch_size).
    """
    backbone = backbone_of(model)
    backbone.set_timesteps(scheduler, num_inference_steps, model.device, _largest_window(job.windows))
    timesteps = scheduler.timesteps
    noise = job.noise.to(model.device)
    skip = 0
    if job.init is not None and job.strength < 1.0:
        # img2img: skip the noisiest steps and start from the input noised to that level.
        skip = effective_start(num_inference_steps, job.strength) * scheduler.order
        timesteps = timesteps[skip:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(skip)
        latents = backbone.noised(scheduler, job.init.to(model.device), noise, skip)
    else:
        latents = backbone.initial_latents(scheduler, noise)
    known, mask = job.known, job.known_mask
    if known is not None:
        known, mask = known.to(model.device), mask.to(model.device)
        latents = mask * backbone.noised(scheduler, known, noise, skip) + (1 - mask) * latents
    region = StagedRegion(model, job, text)  # nothing below copies from the host until the loop ends
    size = BatchSize(batch_size_for(model, batch_size, *_largest_window(job.windows), _passes(job, text)))
    for i, t in enumerate(timesteps):
        check_cancel(cancel)
        model_input = backbone.scale_input(scheduler, latents, t)
        prediction = predict_canvas(model, model_input, t, region, guidance_scale, size, cancel)
        latents = scheduler.step(prediction, t, latents, generator=generator).prev_sample
        if known is not None:
            if i + 1 < len(timesteps):
                known_now = backbone.noised(scheduler, known, noise, skip + i + 1)
            else:
                known_now = known
            latents = mask * known_now + (1 - mask) * latents
        if on_step is not None:
            on_step(i + 1)
    return latents


def _largest_window(windows: Sequence[Span]) -> tuple[int, int]:
    return max(s.height for s in windows), max(s.width for s in windows)


def _passes(job: CanvasJob, text: TextConditioning) -> int:
    """Network passes per window and step: the UNet, plus a ControlNet trunk per conditioning frame; x2 with guidance."""
    frames = 0
    if job.control_image is not None:
        frames = job.control_image.shape[2] if job.control_image.ndim == 5 else 1
    return (1 + frames) * (2 if text.uncond is not None else 1)


def effective_start(num_inference_steps: int, strength: float) -> int:
    """How many of the noisiest steps img2img skips at a strength (at least one step is run)."""
    return min(int(round(num_inference_steps * (1.0 - strength))), num_inference_steps - 1)


def position_noise(seed: int, span: Span, channels: int, tile: int = 64) -> torch.Tensor:
    """Initial noise of a latent span that depends only on the seed and the cells' positions.

    The canvas is cut into fixed tiles, each drawn from its own generator, so the same cell gets
    the same noise however the canvas is split into regions or windows.
    """
    out = torch.empty((1, channels, span.height, span.width), dtype=torch.float32)
    for ty in range(span.row // tile, (span.row + span.height - 1) // tile + 1):
        for tx in range(span.col // tile, (span.col + span.width - 1) // tile + 1):
            state = np.random.SeedSequence([seed, ty, tx]).generate_state(2, dtype=np.uint64)
            generator = torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
            block = torch.randn((channels, tile, tile), generator=generator)
            tile_span = Span(ty * tile, tx * tile, tile, tile)
            common = tile_span.intersection(span)
            src = common.relative_to(tile_span)
            dst = common.relative_to(span)
            out[(0, slice(None)) + dst.slices] = block[(slice(None),) + src.slices]
    return out
