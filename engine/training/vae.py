"""Train the VAE: SD's geometry (8x, 4 latent channels) at a size a CPU can train.

The loss is what makes a small VAE usable for satellite imagery: L1 + MSE on pixels, a colour
term on 8x-pooled images (the mean colour of every latent cell must survive, or fields and water
wash out), an edge term on image gradients (field borders and roads), and a tiny KL. Progress is
judged on held-out chips against the baseline any f=8 code must beat: shrink 8x and enlarge again.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from engine.errors import Cancelled
from engine.models.residual_vae import ResidualAutoencoderKL

from .batches import dihedral, draw, place_weights, random_crops, unit_images
from .chips import ChipBank, bicubic_baseline
from .state import load_latest, save_checkpoint, step_generator, warmup_cosine


@dataclass
class VAEConfig:
    block_out_channels: tuple[int, ...] = (24, 48, 96, 128)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    latent_channels: int = 4
    crop: int = 64
    batch: int = 8
    steps: int = 6000
    learning_rate: float = 5e-4
    residual: bool = True
    warmup: int = 100
    kl_weight: float = 1e-6
    sample_posterior: bool = True
    colour_weight: float = 1.0
    edge_weight: float = 0.5
    seed: int = 0
    checkpoint_every: int = 250
    eval_every: int = 400
    extra: dict = field(default_factory=dict)


def build_vae(config: VAEConfig) -> AutoencoderKL:
    """A ResidualAutoencoderKL starting at the shrink-and-enlarge baseline (or a plain one, `residual: false`)."""
    torch.manual_seed(config.seed)
    levels = len(config.block_out_channels)
    cls = ResidualAutoencoderKL if config.residual else AutoencoderKL
    vae = cls(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(config.block_out_channels), layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups, latent_channels=config.latent_channels,
    )
    if config.residual:
        vae.start_at_baseline()
    return vae


def sampled_latents(vae: AutoencoderKL, images: torch.Tensor, generator: torch.Generator):
    """A draw from the posterior (the latents a UNet learns on) and the posterior itself."""
    posterior = vae.encode(images).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=generator).to(images.device)
    return posterior.mean + posterior.std * noise, posterior


def pixel_loss(recon: torch.Tensor, images: torch.Tensor, colour_weight: float, edge_weight: float) -> tuple[torch.Tensor, dict]:
    """L1 + MSE + the colour term on 8x-pooled images + the edge term on image gradients."""
    l1 = (recon - images).abs().mean()
    mse = F.mse_loss(recon, images)
    colour = (F.avg_pool2d(recon, 8) - F.avg_pool2d(images, 8)).abs().mean()
    edges = sum(
        (torch.diff(recon, dim=d) - torch.diff(images, dim=d)).abs().mean() for d in (-1, -2)
    )
    loss = l1 + mse + colour_weight * colour + edge_weight * edges
    return loss, {"l1": float(l1.detach()), "mse": float(mse.detach()), "colour": float(colour.detach())}


def vae_loss(vae: AutoencoderKL, images: torch.Tensor, config: VAEConfig, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """Pixel losses + the KL term; with `sample_posterior` off, decode the mean and keep only the KL's pull on it.

    A channel the decoder does not use yet gets only the KL's gradient, which Adam turns into full-size
    steps whatever the KL weight: its posterior widens until draws from it are noise, and a decoder fed
    that noise learns to paint nothing. Decoding the mean (a deterministic autoencoder, as inference
    encodes with the mode) leaves the log-variance at its start and the decoder free to use every channel.
    """
    if config.sample_posterior:
        latents, posterior = sampled_latents(vae, images, generator)
        kl = posterior.kl().mean()
    else:
        posterior = vae.encode(images).latent_dist
        latents = posterior.mean
        kl = 0.5 * latents.pow(2).sum(dim=(1, 2, 3)).mean()
    recon = vae.decode(latents).sample
    loss, parts = pixel_loss(recon, images, config.colour_weight, config.edge_weight)
    kl = kl / images[0].numel()
    return loss + config.kl_weight * kl, {**parts, "kl": float(kl.detach())}


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images_uint8: np.ndarray, batch: int = 16) -> np.ndarray:
    """Encode (posterior mean) and decode uint8 chips; uint8 results."""
    out = []
    for start in range(0, len(images_uint8), batch):
        x = torch.from_numpy(np.asarray(images_uint8[start:start + batch], dtype=np.float32)) / 127.5 - 1
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample
        out.append(((recon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy())
    return np.concatenate(out)


def heldout_scores(vae: AutoencoderKL, images_uint8: np.ndarray) -> dict:
    """PSNR and SSIM (scikit-image) of reconstructions and of the shrink-8x-enlarge baseline."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    recon = reconstruct(vae, images_uint8)
    baseline = np.clip(np.round(bicubic_baseline(images_uint8)), 0, 255).astype(np.uint8)

    def scores(candidate):
        psnr = peak_signal_noise_ratio(np.asarray(images_uint8), candidate, data_range=255)
        ssim = float(np.mean([
            structural_similarity(a, b, channel_axis=0, data_range=255) for a, b in zip(np.asarray(images_uint8), candidate)
        ]))
        return float(psnr), ssim

    psnr, ssim = scores(recon)
    base_psnr, base_ssim = scores(baseline)
    return {"psnr": psnr, "ssim": ssim, "baseline_psnr": base_psnr, "baseline_ssim": base_ssim, "chips": len(images_uint8)}


def train_vae(
    bank: ChipBank,
    run_dir: Path,
    config: VAEConfig,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int, dict], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    time_limit_s: float | None = None,
    device: torch.device | str | None = None,
) -> tuple[AutoencoderKL, dict]:
    """Train (or resume) the VAE in `run_dir/checkpoints` on `device` (default CPU); the model (on the CPU) and its history."""
    run_dir = Path(run_dir)
    device = torch.device(device or "cpu")
    vae = build_vae(config)
    optimiser = torch.optim.AdamW(vae.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    history: list[dict] = []
    start = 0
    state = load_latest(run_dir / "checkpoints")
    if state is not None:
        vae.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        history, start = state["history"], state["step"]
        log(f"resuming the VAE at step {start}")
    vae.to(device)
    train, weights = training_weights(bank)
    heldout = bank.images[bank.indices("heldout")]
    started = time.monotonic()
    step = start
    vae.train()
    for step in range(start, config.steps):
        if cancel is not None and cancel():
            raise Cancelled("training cancelled; its last checkpoint is kept, run again to resume")
        generator = step_generator(config.seed, step)
        images = image_batch(bank, train, weights, config.batch, config.crop, generator)
        for group in optimiser.param_groups:
            group["lr"] = warmup_cosine(config.learning_rate, config.warmup, config.steps, step)
        loss, parts = vae_loss(vae, images.to(device), config, generator)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimiser.step()
        history.append({"step": step + 1, "loss": float(loss.detach()), **parts})
        done = step + 1
        if done % config.eval_every == 0 or done == config.steps:
            vae.eval()
            scores = heldout_scores(vae.cpu(), heldout)
            vae.to(device)
            vae.train()
            history[-1]["heldout"] = scores
            log(f"VAE step {done}: held-out PSNR {scores['psnr']:.2f} dB (baseline {scores['baseline_psnr']:.2f}), "
                f"SSIM {scores['ssim']:.3f} (baseline {scores['baseline_ssim']:.3f})")
        out_of_time = time_limit_s is not None and time.monotonic() - started > time_limit_s
        if done % config.checkpoint_every == 0 or done == config.steps or out_of_time:
            save_checkpoint(run_dir / "checkpoints", done, {
                "model": vae.state_dict(), "optimiser": optimiser.state_dict(), "history": history,
                "config": asdict(config),
            })
        if progress is not None:
            progress(done, config.steps, history[-1])
        if out_of_time:
            log(f"time limit reached at step {done}; run again to continue")
            break
    vae.eval().cpu()
    return vae, {"history": history, "steps_done": step + 1 if config.steps > start else start}


def image_batch(bank: ChipBank, train: np.ndarray, weights: torch.Tensor, batch: int, crop: int,
                generator: torch.Generator) -> torch.Tensor:
    """Random crops of training chips (places balanced), each flipped or turned at random."""
    chosen = torch.as_tensor(train)[draw(weights, batch, generator)]
    images = random_crops(unit_images(bank.images, chosen), crop, generator)
    return dihedral(images, torch.randint(0, 8, (batch,), generator=generator))


def training_weights(bank: ChipBank) -> tuple[np.ndarray, torch.Tensor]:
    """The training chips' indices and their draw weights (each place's share grows with sqrt(chips))."""
    train = bank.indices("train")
    return train, place_weights([_group(bank.records[i]) for i in train])


def _group(record) -> str:
    return record.place
