"""What DiffusionSat's 2D and 3D ControlNets share: diffusers' ControlNet with a metadata embedding.

Both released ControlNets are diffusers' (0.17) `ControlNetModel` plus `metadata_embedding`, so
they subclass today's `ControlNetModel`: its constructor builds `conv_in`, `time_embedding`,
`down_blocks`, `mid_block`, `controlnet_cond_embedding` and the zero convs under the very key
names of the checkpoints. diffusers' `forward` has no hook for an extra embedding, so the parts of
it both ControlNets run (time + metadata embedding, the encoder trunk, the residual scaling) are
written out here once; each subclass only says what is different (conditioning encoder, frames).

Only what DiffusionSat uses is supported: no class/addition embeddings, no attention masks, no
guess mode. Conditioning images are in [0, 1] (spec §5).
"""

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from .config_signature import merged_signature
from .metadata_embedding import embed_metadata, metadata_mlps


class SatControlNetBase(ControlNetModel):
    """diffusers' `ControlNetModel` plus DiffusionSat's `metadata_embedding` (not used on its own)."""

    def __init__(
        self,
        *,
        use_metadata: bool = True,
        num_metadata: int = 7,
        conditioning_in_channels: int = 3,
        **controlnet_config,
    ):
        # DiffusionSat calls diffusers' `conditioning_channels` `conditioning_in_channels`; a config
        # written by this class has both (equal), a released one only the latter.
        alias = controlnet_config.pop("conditioning_channels", None)
        if alias is not None and alias != conditioning_in_channels:
            raise ValueError(
                f"conditioning_channels={alias} contradicts conditioning_in_channels={conditioning_in_channels}"
            )
        super().__init__(conditioning_channels=conditioning_in_channels, **controlnet_config)
        self.register_to_config(
            use_metadata=use_metadata, num_metadata=num_metadata, conditioning_in_channels=conditioning_in_channels
        )
        if self.class_embedding is not None or hasattr(self, "add_embedding") or self.encoder_hid_proj is not None:
            raise ValueError(
                "DiffusionSat ControlNets take metadata, not class/addition embeddings or encoder_hid_dim; "
                "leave class_embed_type, num_class_embeds, addition_embed_type and encoder_hid_dim unset"
            )
        channels = self.time_embedding.linear_1.in_features
        self.metadata_embedding = (
            metadata_mlps(channels, self.time_embedding.linear_2.out_features, num_metadata) if use_metadata else None
        )

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, **options):
        """A ControlNet whose trunk is a copy of `unet`'s encoder, as DiffusionSat starts training one.

        The architecture keys come from the UNet's config (metadata ones included); `options` sets
        the ControlNet's own (e.g. conditioning_in_channels). The zero convs stay zero.
        """
        accepted = set(cls._get_init_keys(cls))
        config = {key: value for key, value in unet.config.items() if key in accepted and not key.startswith("_")}
        controlnet = cls(**{**config, **options})
        for name in ("conv_in", "time_embedding", "metadata_embedding", "down_blocks", "mid_block"):
            module = getattr(controlnet, name)
            if module is not None:
                module.load_state_dict(getattr(unet, name).state_dict())
        return controlnet

    def embed_time_and_metadata(
        self, timestep, metadata: torch.Tensor | None, batch: int, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """(B, 4C): time embedding + Σ MLP_i(proj(m_i)) of the target metadata, as in the SatUNet."""
        timesteps = torch.as_tensor(timestep, device=device)
        if timesteps.ndim == 0:
            timesteps = timesteps[None]
        # The sinusoid is float32; only its output takes the compute dtype (as diffusers does).
        emb = self.time_embedding(self.time_proj(timesteps.expand(batch)).to(dtype))
        if self.metadata_embedding is None:
            if metadata is not None:
                raise ValueError("this ControlNet was built with use_metadata=False; do not pass metadata")
            return emb
        if metadata is None:
            raise ValueError(
                f"this ControlNet needs metadata of shape (batch, {self.config.num_metadata}); "
                "pass zeros for the unconditional (guidance) half"
            )
        if metadata.shape[0] != batch:
            raise ValueError(f"metadata batch {metadata.shape[0]} does not match the sample batch {batch}")
        return emb + embed_metadata(self.time_proj, self.metadata_embedding, metadata, dtype)

    def check_cond_metadata(self, cond_metadata: torch.Tensor | None, batch: int) -> None:
        """(B, N) or (B, N, T) conditioning metadata, or None; refused on a model without metadata."""
        if cond_metadata is None:
            return
        if self.metadata_embedding is None:
            raise ValueError("this ControlNet was built with use_metadata=False; do not pass cond_metadata")
        count = self.config.num_metadata
        if cond_metadata.ndim not in (2, 3) or cond_metadata.shape[:2] != (batch, count):
            raise ValueError(
                f"cond_metadata must have shape (batch, {count}) or (batch, {count}, frames) with batch {batch}, "
                f"got {tuple(cond_metadata.shape)}"
            )

    def ordered_condition(self, controlnet_cond: torch.Tensor) -> torch.Tensor:
        """The condition in RGB channel order (diffusers' `controlnet_conditioning_channel_order`)."""
        order = self.config.controlnet_conditioning_channel_order
        if order == "bgr":
            return torch.flip(controlnet_cond, dims=[1])
        if order != "rgb":
            raise ValueError(f"unknown controlnet_conditioning_channel_order {order!r} (rgb or bgr)")
        return controlnet_cond

    def encode(
        self, hidden: torch.Tensor, emb: torch.Tensor, text: torch.Tensor, cross_attention_kwargs: dict | None
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The UNet encoder (down blocks, mid block): every skip residual, and the mid block's output."""
        residuals = (hidden,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                hidden, block_residuals = block(
                    hidden_states=hidden,
                    temb=emb,
                    encoder_hidden_states=text,
                    cross_attention_kwargs=cross_attention_kwargs,
                )
            else:
                hidden, block_residuals = block(hidden_states=hidden, temb=emb)
            residuals += block_residuals
        if getattr(self.mid_block, "has_cross_attention", False):
            hidden = self.mid_block(
                hidden, emb, encoder_hidden_states=text, cross_attention_kwargs=cross_attention_kwargs
            )
        else:
            hidden = self.mid_block(hidden, emb)
        return residuals, hidden

    def scaled(
        self, down: list[torch.Tensor], mid: torch.Tensor, conditioning_scale: float
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The residuals times the forward's `conditioning_scale` (and pooled when the config says so)."""
        down = [residual * conditioning_scale for residual in down]
        mid = mid * conditioning_scale
        if self.config.global_pool_conditions:
            down = [residual.mean(dim=(2, 3), keepdim=True) for residual in down]
            mid = mid.mean(dim=(2, 3), keepdim=True)
        return tuple(down), mid


SatControlNetBase.__init__.__signature__ = merged_signature(SatControlNetBase.__init__, ControlNetModel)


def check_condition_size(condition_hw: tuple[int, int], latent_hw: tuple[int, int], factor: int, what: str) -> None:
    """The condition must be exactly `factor` times the latent, or the residuals would not line up."""
    expected = (latent_hw[0] * factor, latent_hw[1] * factor)
    if tuple(condition_hw) != expected:
        raise ValueError(
            f"{what} must be {expected[0]}x{expected[1]} px for a {latent_hw[0]}x{latent_hw[1]} latent "
            f"({factor}x the latent), got {condition_hw[0]}x{condition_hw[1]}"
        )
