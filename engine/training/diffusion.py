"""Train a SatUNet (from scratch, fully fine-tuned, or as a LoRA) on a chip bank's latents.

DiffusionSat's recipe: v-prediction on SD's scaled-linear schedule, min-SNR-5 loss weights, EMA
weights for sampling, every metadata field dropped (zeroed: "unknown") with probability 0.1 and
the caption with 0.1, AdamW. Classifier-free guidance's unconditional half is the empty caption
with all-zero metadata, so that pair is trained too (`unconditional_dropout`, 0.1): with only
independent drops the model would almost never see it, and guidance would push every scene
towards a flat, saturated average.

Latents are computed once per chip, before the UNet trains, so a step costs only the UNet. Flips
and quarter turns are applied to the latents: exact for the residual VAE's colour channels (mean
colours of 8 x 8 cells turn with the image), close for its learned channel; `encode_orientations: 8`
encodes every orientation instead, for VAEs that are far from equivariant.
Each step's randomness is `step_generator(seed, step)`: a resumed run repeats the same batches.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler
from diffusers.training_utils import EMAModel

from engine.errors import Cancelled, InputError

from .batches import dihedral, draw
from .captions import training_caption
from .chips import ChipBank
from .state import load_latest, save_checkpoint, step_generator, warmup_cosine

METADATA_FIELDS = 7


@dataclass
class UNetConfig:
    block_out_channels: tuple[int, ...] = (64, 128, 192)
    layers_per_block: int = 2
    attention_levels: tuple[bool, ...] = (False, True, True)
    attention_head_dim: tuple[int, ...] = (2, 4, 6)  # head counts per level, as SD-2.1 writes them
    norm_num_groups: int = 32
    batch: int = 16
    steps: int = 20000
    learning_rate: float = 3e-4
    warmup: int = 200
    ema_decay: float = 0.999
    snr_gamma: float = 5.0
    metadata_dropout: float = 0.1  # each field on its own
    caption_dropout: float = 0.1
    # The caption and every metadata field at once: the unconditional half of classifier-free guidance
    # (empty prompt, all-zero metadata, as in DiffusionSat's pipelines), which the model must have seen.
    unconditional_dropout: float = 0.1
    caption_part_dropout: float = 0.25
    seed: int = 0
    mode: str = "scratch"  # "scratch" | "full" (fine-tune the base model's UNet) | "lora"
    lora_rank: int = 8
    gradient_checkpointing: bool = False
    encode_orientations: int = 1  # 1: turn latents; 8: encode each flip/rotation of every chip
    # Draw latents from the VAE's posterior (SD's way); false: its mean, for a VAE whose unused channel's
    # posterior has grown wide (the draws would be mostly noise the decoder ignores and the UNet must learn)
    sample_latents: bool = True
    # The share of draws given to chips with a class caption (a flood, a burn scar): a few labelled
    # events among thousands of chips are otherwise drawn as rarely as they occur. None: place weights only.
    labelled_share: float | None = None
    # Metadata dropout (per field) for chips with a class caption. One labelled event is one place and date:
    # with the usual 0.1 the UNet ties the event to them and ignores its caption, so it paints the event
    # nowhere else. Dropped more often, the caption has to carry it. None: metadata_dropout.
    labelled_metadata_dropout: float | None = None
    # Train the text encoder with the UNet (and export it). GFM4D's own encoder starts random and small:
    # frozen, it encodes "flooded areas" and "a farm" so alike that the UNet learns to ignore captions.
    train_text_encoder: bool = False
    # Train an inpainting UNet (inputs: noisy latents, mask, masked image latents; see inpainting.py):
    # chips with an event caption are masked with their event polygons, the rest with random blobs.
    inpainting: bool = False
    whole_mask_share: float = 0.1  # of the random masks: the whole chip, so the model also paints from nothing
    checkpoint_every: int = 250
    extra: dict = field(default_factory=dict)


def build_unet(config: UNetConfig, cross_attention_dim: int):
    """A SatUNet in SD-2.1's shape (linear projections, upcast attention), scaled down."""
    from engine.models.satunet import SatUNet

    torch.manual_seed(config.seed)
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in config.attention_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.attention_levels))
    return SatUNet(
        use_metadata=True, num_metadata=METADATA_FIELDS, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=down, up_block_types=up, block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block, norm_num_groups=config.norm_num_groups,
        cross_attention_dim=cross_attention_dim, attention_head_dim=tuple(config.attention_head_dim),
        use_linear_projection=True, upcast_attention=True, flip_sin_to_cos=True, freq_shift=0,
    )


@torch.no_grad()
def encode_bank(vae: AutoencoderKL, bank: ChipBank, indices: np.ndarray, orientations: int = 1, batch: int = 32,
                log: Callable[[str], None] = print) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every chip in `orientations` (1 or 8) orientations: (N, O, C, h, w) float16 each."""
    means, stds = [], []
    for start in range(0, len(indices), batch):
        chunk = indices[start:start + batch]
        images = torch.from_numpy(np.asarray(bank.images[chunk], dtype=np.float32)) / 127.5 - 1
        per_code_mean, per_code_std = [], []
        for code in range(orientations):
            turned = dihedral(images, torch.full((len(chunk),), code)).to(vae.device)
            posterior = vae.encode(turned).latent_dist
            per_code_mean.append(posterior.mean.cpu())
            per_code_std.append(posterior.std.cpu())
        means.append(torch.stack(per_code_mean, 1).half())
        stds.append(torch.stack(per_code_std, 1).half())
        if start // batch % 10 == 0:
            log(f"encoded {min(start + batch, len(indices))}/{len(indices)} chips")
    return torch.cat(means), torch.cat(stds)


def caption_token_ids(tokenizer, captions: list[str]) -> dict[str, torch.Tensor]:
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return {text: ids[i] for i, text in enumerate(captions)}


@torch.no_grad()
def caption_embeddings(text_encoder, tokenizer, captions: list[str]) -> dict[str, torch.Tensor]:
    """Each caption's hidden states, computed once for a frozen text encoder."""
    ids = caption_token_ids(tokenizer, captions)
    hidden = text_encoder(torch.stack([ids[t] for t in captions]))[0]
    return {text: hidden[i] for i, text in enumerate(captions)}


def all_captions(bank: ChipBank) -> list[str]:
    from .captions import caption

    texts = {""}
    for r in bank.records:
        if r.caption:
            texts.add(r.caption)
        for cover in (r.land_cover, None):
            for country in (r.country, None):
                texts.add(caption(cover, country))
    return sorted(texts)


def min_snr_weights(scheduler: DDIMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """min(SNR, gamma) / (SNR + 1): min-SNR-gamma for a v-prediction target (Hang et al. 2023)."""
    alphas = scheduler.alphas_cumprod[timesteps].float()
    snr = alphas / (1 - alphas)
    return torch.clamp(snr, max=gamma) / (snr + 1)


def drop_metadata(metadata: torch.Tensor, probability: float | torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Zero each field ("unknown") with the given probability (one, or one per row), field by field."""
    if isinstance(probability, torch.Tensor):
        probability = probability[:, None]
    keep = torch.rand(metadata.shape, generator=generator) >= probability
    return metadata * keep


@dataclass
class DiffusionData:
    """What a step draws from: latents per chip and orientation, metadata, captions, weights."""

    means: torch.Tensor
    stds: torch.Tensor
    metadata: torch.Tensor  # (N, 7)
    land_covers: list
    countries: list
    weights: torch.Tensor
    embeddings: dict[str, torch.Tensor]  # hidden states per caption, or token ids when the text encoder trains
    scaling_factor: float
    captions: list | None = None  # a chip's whole caption from its polygons' class, else None
    # Inpainting: each chip's pixels (N, 3, S, S) uint8 and event masks (N, S, S) uint8 (indexable, e.g. rows of a
    # memory-mapped bank) or None, and the VAE that encodes the masked chips
    images: Any = None
    event_masks: Any = None
    vae: Any = None


def make_batch(data: DiffusionData, config: UNetConfig, generator: torch.Generator):
    """(latents, metadata, caption states or token ids, extra input channels or None) of one step."""
    chosen = draw(data.weights, config.batch, generator)
    codes = torch.randint(0, 8, (config.batch,), generator=generator)
    if data.means.shape[1] == 8:
        mean, std = data.means[chosen, codes].float(), data.stds[chosen, codes].float()
    else:
        mean, std = dihedral(data.means[chosen, 0].float(), codes), dihedral(data.stds[chosen, 0].float(), codes)
    if config.sample_latents:
        mean = mean + std * torch.randn(mean.shape, generator=generator)
    latents = mean * data.scaling_factor
    probability = config.metadata_dropout
    if config.labelled_metadata_dropout is not None and data.captions:
        labelled = torch.tensor([data.captions[i] is not None for i in chosen.tolist()])
        probability = torch.where(labelled, config.labelled_metadata_dropout, config.metadata_dropout)
    metadata = drop_metadata(data.metadata[chosen], probability, generator)
    texts = []
    for index in chosen.tolist():
        fixed = data.captions[index] if data.captions else None
        text = fixed or training_caption(data.land_covers[index], data.countries[index], config.caption_part_dropout, generator)
        texts.append("" if float(torch.rand(1, generator=generator)) < config.caption_dropout else text)
    if config.unconditional_dropout:
        unconditional = torch.rand(config.batch, generator=generator) < config.unconditional_dropout
        metadata = metadata * ~unconditional[:, None]
        texts = ["" if drop else text for drop, text in zip(unconditional.tolist(), texts)]
    hidden = torch.stack([data.embeddings[t] for t in texts])
    extra = _inpainting_channels(data, config, chosen, codes, generator) if config.inpainting else None
    return latents, metadata, hidden, extra


def _inpainting_channels(data: DiffusionData, config: UNetConfig, chosen: torch.Tensor, codes: torch.Tensor,
                         generator: torch.Generator) -> torch.Tensor:
    """An inpainting UNet's mask and masked-image latents for the drawn chips: their event polygons
    where their caption names an event, random blobs for the rest (inpainting.batch_inputs)."""
    from .batches import unit_images
    from .inpainting import batch_inputs

    labelled = data.event_masks is not None and data.captions
    events = [np.asarray(data.event_masks[i]) if labelled and data.captions[i] is not None else None for i in chosen.tolist()]
    events = [event if event is not None and event.any() else None for event in events]
    return batch_inputs(data.vae, unit_images(data.images, chosen), events, codes, data.scaling_factor, generator,
                        config.whole_mask_share, turned_encodings=data.means.shape[1] == 8)


def diffusion_loss(unet, scheduler: DDIMScheduler, latents, metadata, hidden, config: UNetConfig, generator, extra=None):
    """The min-SNR-weighted v-prediction loss of one batch (random numbers drawn on the CPU, so every device agrees);
    `extra`: an inpainting UNet's mask and masked-image latents, after the noisy latents."""
    device = latents.device
    noise = torch.randn(latents.shape, generator=generator).to(device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    on_device = timesteps.to(device)
    noisy = scheduler.add_noise(latents, noise, on_device)
    if extra is not None:
        noisy = torch.cat([noisy, extra], dim=1)
    target = scheduler.get_velocity(latents, noise, on_device)
    with autocast(device):
        prediction = unet(noisy, on_device, hidden, metadata=metadata).sample
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * min_snr_weights(scheduler, timesteps, config.snr_gamma).to(device)).mean()


def autocast(device: torch.device):
    """bfloat16 autocast on a GPU (weights and optimiser stay float32); nothing on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()


def trained_parameters(unet, text_encoder=None) -> list[torch.nn.Parameter]:
    """What the optimiser and the EMA hold, in their order: the UNet's trainable weights, then the text encoder's."""
    modules = [unet] + ([text_encoder] if text_encoder is not None else [])
    return [p for module in modules for p in module.parameters() if p.requires_grad]


def trainable_parameters(unet, config: UNetConfig) -> list[torch.nn.Parameter]:
    if config.mode == "lora":
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=config.lora_rank, lora_alpha=config.lora_rank, init_lora_weights="gaussian",
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    elif config.mode == "full":
        unet.requires_grad_(True)  # a loaded model comes frozen for inference
    elif config.mode != "scratch":
        raise InputError(f"training mode must be scratch, full or lora, not {config.mode!r}")
    params = [p for p in unet.parameters() if p.requires_grad]
    if config.mode == "lora":
        for p in params:
            p.data = p.data.float()
    return params


def _check_same_unet(unet, saved: dict, folder: Path) -> None:
    """A run folder resumes only the UNet it was started with: a checkpoint of another shape (say a
    4-channel run continued with unet.inpainting) is refused in a sentence, not a size-mismatch dump."""
    own = unet.state_dict()
    for name, tensor in saved.items():
        if name in own and own[name].shape != tensor.shape:
            raise InputError(
                f"{folder} holds checkpoints of a different UNet ({name} is {tuple(tensor.shape)} there, "
                f"{tuple(own[name].shape)} in this recipe): give this run its own --run-dir, or delete that "
                "folder to start the UNet again")


def train_unet(
    unet,
    scheduler: DDIMScheduler,
    data: DiffusionData,
    run_dir: Path,
    config: UNetConfig,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int, dict], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    time_limit_s: float | None = None,
    on_checkpoint: Callable[[int, object, list], None] | None = None,
    device: torch.device | str | None = None,
    text_encoder=None,
):
    """Train (or resume) in `run_dir/checkpoints` on `device` (default CPU); returns (unet with EMA weights, history).

    With `config.train_text_encoder`, `text_encoder` trains too (`data.embeddings` then holds token ids)
    and ends with its EMA weights, in place."""
    run_dir = Path(run_dir)
    device = torch.device(device or "cpu")
    unet.to(device)
    trainable_parameters(unet, config)
    if config.train_text_encoder:
        if text_encoder is None:
            raise ValueError("train_text_encoder needs the text encoder")
        text_encoder.to(device).float().requires_grad_(True).train()
    else:
        text_encoder = None
    params = trained_parameters(unet, text_encoder)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimiser = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=1e-2)
    ema = EMAModel(params, decay=config.ema_decay, use_ema_warmup=True, power=2 / 3)
    history: list[dict] = []
    start = 0
    state = load_latest(run_dir / "checkpoints")
    if state is not None:
        _check_same_unet(unet, state["model"], run_dir / "checkpoints")
        unet.load_state_dict(state["model"], strict=False)
        if text_encoder is not None:
            text_encoder.load_state_dict(state["text_encoder"])
        optimiser.load_state_dict(state["optimiser"])
        ema.load_state_dict(state["ema"])
        ema.to(device)
        history, start = state["history"], state["step"]
        log(f"resuming the UNet at step {start}")
    unet.train()
    started = time.monotonic()
    done = start
    for step in range(start, config.steps):
        if cancel is not None and cancel():
            raise Cancelled("training cancelled; its last checkpoint is kept, run again to resume")
        generator = step_generator(config.seed, step)
        latents, metadata, hidden, extra = (None if t is None else t.to(device) for t in make_batch(data, config, generator))
        if text_encoder is not None:
            hidden = text_encoder(hidden)[0]  # token ids in, hidden states out, with gradients
        for group in optimiser.param_groups:
            group["lr"] = warmup_cosine(config.learning_rate, config.warmup, config.steps, step)
        loss = diffusion_loss(unet, scheduler, latents, metadata, hidden, config, generator, extra)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        ema.step(params)
        done = step + 1
        history.append({"step": done, "loss": float(loss.detach())})
        out_of_time = time_limit_s is not None and time.monotonic() - started > time_limit_s
        if done % config.checkpoint_every == 0 or done == config.steps or out_of_time:
            trainable = {name for name, p in unet.named_parameters() if p.requires_grad}
            model_state = {k: v for k, v in unet.state_dict().items() if config.mode != "lora" or k in trainable}
            save_checkpoint(run_dir / "checkpoints", done, {
                "model": model_state, "optimiser": optimiser.state_dict(), "ema": ema.state_dict(),
                "history": history, "config": asdict(config),
                **({"text_encoder": text_encoder.state_dict()} if text_encoder is not None else {}),
            })
            if on_checkpoint is not None:
                on_checkpoint(done, ema, history)
        if progress is not None:
            progress(done, config.steps, history[-1])
        if out_of_time:
            log(f"time limit reached at step {done}; run again to continue")
            break
    ema.copy_to(params)
    unet.eval()
    if text_encoder is not None:
        text_encoder.eval().requires_grad_(False)
    return unet, history
