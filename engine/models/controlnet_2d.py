"""DiffusionSat's 2D metadata ControlNet (super-resolution, pre ⇄ post), spec §5.

Key for key the released `controlnet/` checkpoints: diffusers' ControlNet plus its own
`metadata_embedding`. Two DiffusionSat additions:

- `conditioning_scale` (constructor): the conditioning encoder keeps diffusers' layout (`conv_in`,
  `blocks.0..5` as three pairs of 3x3 convs, `conv_out`) and its weight shapes, but the second
  conv of a stage only has stride 2 while the running scale (starting at `conditioning_scale`,
  doubling per stage, at most 8) is below 8. The condition is thus 8 / scale times the latent:
  scale 2 takes a 64x64 condition for a 16x16 latent (256 px Sentinel-2 -> 512 px output).
- `cond_metadata`: the condition's own metadata, embedded by the same MLPs and added to the time
  embedding; (B, N, T) metadata of several condition images is summed over T.

The saved config keeps `"_class_name": "ControlNetModel"`, as the released ones have.
"""

import json
import math

import torch
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding

from .config_signature import merged_signature
from .controlnet_base import SatControlNetBase, check_condition_size
from .metadata_embedding import embed_metadata, embed_metadata_frames

CONDITIONING_SCALES = (1, 2, 4, 8)
SAVED_CLASS_NAME = "ControlNetModel"  # DiffusionSat's own class name, in every released config


def set_conditioning_strides(embedding: ControlNetConditioningEmbedding, conditioning_scale: int) -> None:
    """DiffusionSat's rule: stride 2 while the running scale is below 8, the scale doubling per stage."""
    scale = conditioning_scale
    for conv in embedding.blocks[1::2]:
        conv.stride = (2, 2) if scale < 8 else (1, 1)
        scale = min(scale * 2, 8)


class MetadataControlNet(SatControlNetBase):
    """A DiffusionSat 2D ControlNet: forward returns (down residuals, mid residual) for the SatUNet."""

    def __init__(self, *, conditioning_scale: int = 1, **config):
        if conditioning_scale not in CONDITIONING_SCALES:
            raise ValueError(
                f"conditioning_scale must be one of {CONDITIONING_SCALES} (the condition is 8/scale times "
                f"the latent), got {conditioning_scale!r}"
            )
        super().__init__(**config)
        self.register_to_config(conditioning_scale=int(conditioning_scale))
        set_conditioning_strides(self.controlnet_cond_embedding, int(conditioning_scale))

    @property
    def condition_factor(self) -> int:
        """How many condition pixels per latent pixel (8 / conditioning_scale)."""
        return math.prod(conv.stride[0] for conv in self.controlnet_cond_embedding.blocks[1::2])

    def forward(
        self,
        sample: torch.Tensor,
        timestep,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        metadata: torch.Tensor | None = None,
        cond_metadata: torch.Tensor | None = None,
        conditioning_scale: float = 1.0,
        cross_attention_kwargs: dict | None = None,
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Residuals for `down_block_additional_residuals` / `mid_block_additional_residual`.

        sample (B, C, h, w) latents; controlnet_cond (B, conditioning_in_channels, h*f, w*f) in [0, 1]
        with f = `condition_factor`; metadata (B, N) of the target; cond_metadata (B, N) or (B, N, T)
        of the condition (summed over T), or None. `conditioning_scale` multiplies the residuals.
        """
        batch = sample.shape[0]
        check_condition_size(
            tuple(controlnet_cond.shape[-2:]), tuple(sample.shape[-2:]), self.condition_factor, "controlnet_cond"
        )
        self.check_cond_metadata(cond_metadata, batch)
        emb = self.embed_time_and_metadata(timestep, metadata, batch, sample.dtype, sample.device)
        if cond_metadata is not None and cond_metadata.ndim == 2:
            emb = emb + embed_metadata(self.time_proj, self.metadata_embedding, cond_metadata, sample.dtype)
        elif cond_metadata is not None:
            frames = embed_metadata_frames(self.time_proj, self.metadata_embedding, cond_metadata, sample.dtype)
            emb = emb + frames.sum(dim=1)

        hidden = self.conv_in(sample) + self.controlnet_cond_embedding(self.ordered_condition(controlnet_cond))
        residuals, mid = self.encode(hidden, emb, encoder_hidden_states, cross_attention_kwargs)
        down = [block(residual) for residual, block in zip(residuals, self.controlnet_down_blocks)]
        return self.scaled(down, self.controlnet_mid_block(mid), conditioning_scale)

    def to_json_string(self) -> str:
        """The config as DiffusionSat saved it: `_class_name` ControlNetModel, so released tools read it."""
        config = json.loads(super().to_json_string())
        config["_class_name"] = SAVED_CLASS_NAME
        return json.dumps(config, indent=2, sort_keys=True) + "\n"


MetadataControlNet.__init__.__signature__ = merged_signature(MetadataControlNet.__init__, SatControlNetBase)
