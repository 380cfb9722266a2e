"""Train a VAE's decoder alone, against pixel losses and a patch discriminator, its encoder frozen.

A decoder trained on pixel losses alone paints the average of every image a latent could stand
for, which is a blur: field edges, crowns and roofs come out soft. The VAEs of latent diffusion
add an adversarial term (a small PatchGAN, hinge loss, its weight balanced against the pixel loss
by the gradients at the decoder's last layer) so the decoder paints one plausible texture instead.
A small residual decoder can also settle on painting nothing over its shrink-and-enlarge path (its
last activations die); `restart` begins again from new weights, its output layer small but not
zero. Only the decoder changes: the encoder and the latent normalisation stay as they were, so the
latents, and every UNet, LoRA and ControlNet trained on them, stay valid.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import Cancelled

from .chips import ChipBank
from .state import load_latest, save_checkpoint, step_generator, warmup_cosine
from .vae import heldout_scores, image_batch, pixel_loss, sampled_latents, training_weights


@dataclass
class DecoderConfig:
    steps: int = 0  # 0: keep the decoder as the VAE stage left it
    crop: int = 64
    batch: int = 8
    learning_rate: float = 1e-4
    discriminator_learning_rate: float = 2e-4
    adversarial_weight: float = 0.1
    restart: bool = False  # start from a new decoder (small random output layer) instead of the VAE stage's
    adversarial_ramp: int = 500  # steps over which the adversarial term grows from 0 to its weight
    discriminator_channels: tuple[int, ...] = (32, 64, 128)
    colour_weight: float = 1.0
    edge_weight: float = 0.5
    # Decode posterior draws or the means: the decoder must learn on the latents it will be given, those the
    # UNet learned to paint. None: as the recipe's unet.sample_latents.
    sample_posterior: bool | None = None
    seed: int = 0
    checkpoint_every: int = 250
    eval_every: int = 1000


def build_discriminator(channels: tuple[int, ...], seed: int) -> nn.Sequential:
    """A PatchGAN: strided 4x4 convolutions, one real/fake score per patch of about 30 px."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(3, channels[0], 4, 2, 1), nn.LeakyReLU(0.2)]
    for index, (cin, cout) in enumerate(zip(channels, channels[1:])):
        stride = 2 if index < len(channels) - 2 else 1
        layers += [nn.Conv2d(cin, cout, 4, stride, 1), nn.GroupNorm(min(8, cout), cout), nn.LeakyReLU(0.2)]
    layers.append(nn.Conv2d(channels[-1], 1, 4, 1, 1))
    return nn.Sequential(*layers)


def decoder_parameters(vae) -> list[nn.Parameter]:
    """What this stage trains: the decoder and the 1x1 convolution in front of it."""
    modules = [vae.decoder] + ([vae.post_quant_conv] if vae.post_quant_conv is not None else [])
    return [p for module in modules for p in module.parameters()]


def restart_decoder(vae, seed: int) -> None:
    """Fresh decoder weights; its output layer small but not zero, so the decoder cannot settle on painting nothing."""
    torch.manual_seed(seed)
    fresh = type(vae).from_config(vae.config)
    modules = ("decoder", "post_quant_conv")
    state = {k: v for k, v in fresh.state_dict().items() if k.startswith(modules)}
    with torch.no_grad():
        state["decoder.conv_out.weight"] = state["decoder.conv_out.weight"] * 0.1
    vae.load_state_dict(state, strict=False)


def decoder_input(vae, images: torch.Tensor, sample_posterior: bool | None, generator: torch.Generator) -> torch.Tensor:
    """The latents the decoder learns from: a posterior draw, or the posterior mean."""
    if sample_posterior:
        return sampled_latents(vae, images, generator)[0]
    return vae.encode(images).latent_dist.mean


def balanced_weight(pixel: torch.Tensor, adversarial: torch.Tensor, last_layer: nn.Parameter) -> torch.Tensor:
    """|grad pixel| / |grad adversarial| at the decoder's last layer, so neither term swamps the other."""
    pixel_grad = torch.autograd.grad(pixel, last_layer, retain_graph=True)[0]
    adversarial_grad = torch.autograd.grad(adversarial, last_layer, retain_graph=True)[0]
    return (pixel_grad.norm() / (adversarial_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def train_decoder(
    vae,
    bank: ChipBank,
    run_dir: Path,
    config: DecoderConfig,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int, dict], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    time_limit_s: float | None = None,
    device: torch.device | str | None = None,
) -> tuple[object, dict]:
    """Train (or resume) the decoder of `vae` in `run_dir/checkpoints`; the VAE (on the CPU) and its history."""
    run_dir = Path(run_dir)
    device = torch.device(device or "cpu")
    vae.requires_grad_(False)
    if config.restart:
        restart_decoder(vae, config.seed)
    params = decoder_parameters(vae)
    for p in params:
        p.requires_grad_(True)
    discriminator = build_discriminator(tuple(config.discriminator_channels), config.seed)
    optimiser = torch.optim.AdamW(params, lr=config.learning_rate, betas=(0.5, 0.9), weight_decay=0.0)
    d_optimiser = torch.optim.AdamW(discriminator.parameters(), lr=config.discriminator_learning_rate,
                                    betas=(0.5, 0.9), weight_decay=0.0)
    history: list[dict] = []
    start = 0
    state = load_latest(run_dir / "checkpoints")
    if state is not None:
        vae.load_state_dict(state["model"])
        discriminator.load_state_dict(state["discriminator"])
        optimiser.load_state_dict(state["optimiser"])
        d_optimiser.load_state_dict(state["d_optimiser"])
        history, start = state["history"], state["step"]
        log(f"resuming the decoder at step {start}")
    vae.to(device)
    discriminator.to(device)
    train, weights = training_weights(bank)
    heldout = bank.images[bank.indices("heldout")]
    last_layer = vae.decoder.conv_out.weight
    started = time.monotonic()
    done = start
    vae.eval()  # the frozen encoder has no dropout or batch statistics; train mode changes nothing
    for step in range(start, config.steps):
        if cancel is not None and cancel():
            raise Cancelled("training cancelled; its last checkpoint is kept, run again to resume")
        generator = step_generator(config.seed + 7919, step)
        images = image_batch(bank, train, weights, config.batch, config.crop, generator).to(device)
        with torch.no_grad():
            latents = decoder_input(vae, images, config.sample_posterior, generator)
        recon = vae.decode(latents).sample
        pixel, parts = pixel_loss(recon, images, config.colour_weight, config.edge_weight)
        adversarial = -discriminator(recon).mean()
        ramp = min(1.0, (step + 1) / max(1, config.adversarial_ramp))
        weight = config.adversarial_weight * ramp * balanced_weight(pixel, adversarial, last_layer)
        for group in optimiser.param_groups:
            group["lr"] = warmup_cosine(config.learning_rate, 0, config.steps, step)
        optimiser.zero_grad(set_to_none=True)
        (pixel + weight * adversarial).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()

        real, fake = discriminator(images), discriminator(recon.detach())
        d_loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        d_optimiser.zero_grad(set_to_none=True)
        d_loss.backward()
        d_optimiser.step()

        done = step + 1
        history.append({"step": done, "loss": float(pixel.detach()), **parts, "adversarial": float(adversarial.detach()),
                        "weight": float(weight), "discriminator": float(d_loss.detach())})
        if done % config.eval_every == 0 or done == config.steps:
            scores = heldout_scores(vae.cpu(), heldout)
            vae.to(device)
            history[-1]["heldout"] = scores
            log(f"decoder step {done}: held-out PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.3f}")
        out_of_time = time_limit_s is not None and time.monotonic() - started > time_limit_s
        if done % config.checkpoint_every == 0 or done == config.steps or out_of_time:
            save_checkpoint(run_dir / "checkpoints", done, {
                "model": vae.state_dict(), "discriminator": discriminator.state_dict(),
                "optimiser": optimiser.state_dict(), "d_optimiser": d_optimiser.state_dict(),
                "history": history, "config": asdict(config),
            })
        if progress is not None:
            progress(done, config.steps, history[-1])
        if out_of_time:
            log(f"time limit reached at step {done}; run again to continue")
            break
    vae.requires_grad_(False)
    vae.eval().cpu()
    return vae, {"history": history, "steps_done": done}
