"""A small VAE that starts where the 8x shrink-and-enlarge baseline ends, and only learns detail.

`ResidualAutoencoderKL` is diffusers' `AutoencoderKL` (same config keys, same state dict) plus
two fixed paths: the encoder adds each latent cell's mean colour (the image area-averaged over
f x f pixels) to the first three latent channels, and the decoder adds those three channels,
enlarged bicubically, to its output. With the learned output convolutions at zero, it *is* the
baseline; training adds texture, edges and a fourth channel of structure on top. A VAE small
enough to train on a CPU cannot reach that baseline in any reasonable time on its own; with the
fixed paths its colours are right from the first step, and so are the latents a UNet learns on.
Its config's `_class_name` names it, so loaders pick this class and never a plain AutoencoderKL.

Its latents are normalised per channel (`latent_shift`, `latent_scale` in the config, measured on
the training chips): the mean colours and the learned channel have very different spreads, and a
UNet learns best on unit-variance channels. `scaling_factor` is then 1, and every pipeline that
scales latents by it works unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DecoderOutput

from .config_signature import merged_signature

COLOUR_CHANNELS = 3


class ResidualAutoencoderKL(AutoencoderKL):
    """AutoencoderKL + fixed mean-colour paths through latent channels 0..2 (see the module docstring)."""

    def __init__(self, *, latent_shift: list[float] | None = None, latent_scale: list[float] | None = None, **vae_config):
        super().__init__(**vae_config)
        self.register_to_config(latent_shift=latent_shift, latent_scale=latent_scale)

    def _normalisation(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        channels = self.config.latent_channels
        shift = self.config.get("latent_shift") or [0.0] * channels
        scale = self.config.get("latent_scale") or [1.0] * channels
        as_tensor = lambda values: torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
        return as_tensor(shift), as_tensor(scale)

    def set_latent_normalisation(self, shift: list[float], scale: list[float]) -> None:
        """Make encode return (latent - shift) * scale per channel, and decode undo it."""
        self.register_to_config(latent_shift=[float(v) for v in shift], latent_scale=[float(v) for v in scale],
                                scaling_factor=1.0)

    @property
    def factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        moments = super()._encode(x)
        pooled = F.avg_pool2d(x[:, :COLOUR_CHANNELS], self.factor)
        mean, logvar = moments.chunk(2, dim=1)
        mean = torch.cat([mean[:, :COLOUR_CHANNELS] + pooled.to(mean.dtype), mean[:, COLOUR_CHANNELS:]], dim=1)
        shift, scale = self._normalisation(mean)
        return torch.cat([(mean - shift) * scale, logvar + 2 * torch.log(scale)], dim=1)

    def _decode(self, z: torch.Tensor, return_dict: bool = True):
        shift, scale = self._normalisation(z)
        z = z / scale + shift
        decoded = super()._decode(z, return_dict=True).sample
        colour = F.interpolate(z[:, :COLOUR_CHANNELS].float(), scale_factor=self.factor, mode="bicubic", align_corners=False)
        decoded = decoded + colour.to(decoded.dtype)
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)

    @torch.no_grad()
    def start_at_baseline(self, logvar: float = -8.0) -> None:
        """Zero the learned outputs (and make the 1x1 quant convs identities): the model is then the baseline."""
        for conv in (self.quant_conv, self.post_quant_conv):
            if conv is not None:
                conv.weight.zero_()
                conv.weight[:, :, 0, 0].copy_(torch.eye(conv.weight.shape[0]))
                conv.bias.zero_()
        self.encoder.conv_out.weight.zero_()
        self.encoder.conv_out.bias.zero_()
        self.encoder.conv_out.bias[self.config.latent_channels:].fill_(logvar)
        self.decoder.conv_out.weight.zero_()
        self.decoder.conv_out.bias.zero_()


# from_config takes the accepted keys from this signature: the normalisation plus every AutoencoderKL keyword.
ResidualAutoencoderKL.__init__.__signature__ = merged_signature(ResidualAutoencoderKL.__init__, AutoencoderKL)

VAE_CLASSES = {"AutoencoderKL": AutoencoderKL, "ResidualAutoencoderKL": ResidualAutoencoderKL}


def vae_class(config: dict):
    """The class a VAE config names (plain AutoencoderKL for anything else diffusers wrote)."""
    return VAE_CLASSES.get(config.get("_class_name"), AutoencoderKL)
