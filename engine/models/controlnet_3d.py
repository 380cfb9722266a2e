"""DiffusionSat's 3D (temporal) ControlNet, spec §6, key for key the released checkpoint.

T conditioning frames (B, C, T, H, W) in [0, 1], 8x the latent, go through a Conv3d conditioning
encoder; the 2D UNet encoder then runs once per frame (latent, timestep and text repeated T times,
row = b*T + t), each frame's conditioning metadata added to that frame's time embedding. Every
skip residual goes back to (B, C, T, h, w), through a zero 1x1x1 Conv3d and, where there is a
temporal block, `α·temporal(x) + (1 − α)·x` with α = clamp(mixing_attns[i], 0, 1); then it is
SUMMED over T (not averaged). The mid block output: zero 1x1x1 Conv3d, summed over T.

Temporal blocks (diffusers `TransformerTemporalModel`: 1 layer, GEGLU, double self-attention, no
positional embedding; attention over the T frames of each pixel) sit on the residual of `conv_in`
and on the residual of every downsampler (indices 0, 3, 6, 9 for SD-2.1); the other residuals get
an `nn.Identity` whose `mixing_attns` entry exists but is unused. Their positions are read from the
built down blocks, so any layout works. Sizes:

- after the downsampler of level k: head size `attention_head_dim[k]` (5, 10, 20 for SD-2.1; the
  opposite convention to the 2D blocks), heads = channels // head size, GroupNorm `norm_num_groups`;
- after `conv_in`: DiffusionSat hard-codes 8 heads of 64 and GroupNorm 32 whatever the channel
  count (on 320 channels for SD-2.1, i.e. a 512-wide attention), and so does this class: a
  checkpoint the original code saved loads at any width. The GFM4D-only config key
  `gfm4d_compact_first_temporal` (default false; set by the demo models) asks instead for 8 heads
  of min(64, channels // 4) and GroupNorm 32 when the channels divide by 32, else
  `norm_num_groups`: an attention twice as wide as its input instead of a 512-wide one on, say,
  32 channels.
"""

import torch
from diffusers.models.controlnets.controlnet import zero_module
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from torch import nn
from torch.nn import functional as F

from .config_signature import merged_signature
from .controlnet_base import SatControlNetBase, check_condition_size
from .metadata_embedding import embed_metadata, embed_metadata_frames

FIRST_TEMPORAL_HEADS = 8
FIRST_TEMPORAL_HEAD_SIZE = 64
FIRST_TEMPORAL_GROUPS = 32


class ConditioningEmbedding3D(nn.Module):
    """diffusers' ControlNet conditioning encoder in 3D: frames are mixed by the k=3 convs, never downsampled."""

    def __init__(self, embedding_channels: int, conditioning_channels: int, block_out_channels: tuple[int, ...]):
        super().__init__()
        self.conv_in = nn.Conv3d(conditioning_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for channels_in, channels_out in zip(block_out_channels, block_out_channels[1:]):
            self.blocks.append(nn.Conv3d(channels_in, channels_in, kernel_size=3, padding=1))
            self.blocks.append(
                nn.Conv3d(channels_in, channels_out, kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
            )
        self.conv_out = zero_module(nn.Conv3d(block_out_channels[-1], embedding_channels, kernel_size=3, padding=1))

    @property
    def factor(self) -> int:
        """Frame pixels per latent pixel (8 with the default four channel widths)."""
        return 2 ** (len(self.blocks) // 2)

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        embedding = F.silu(self.conv_in(conditioning))
        for block in self.blocks:
            embedding = F.silu(block(embedding))
        return self.conv_out(embedding)


def first_temporal_block(channels: int, norm_num_groups: int, compact: bool = False) -> TransformerTemporalModel:
    """The temporal block on conv_in's residual (sizes in the module docstring)."""
    if compact:
        head_size = min(FIRST_TEMPORAL_HEAD_SIZE, max(1, channels // 4))
        groups = FIRST_TEMPORAL_GROUPS if channels % FIRST_TEMPORAL_GROUPS == 0 else norm_num_groups
    elif channels % FIRST_TEMPORAL_GROUPS:
        raise ValueError(
            f"DiffusionSat's first temporal block normalises in {FIRST_TEMPORAL_GROUPS} groups, which {channels} "
            "channels cannot be split into; a model this narrow needs `gfm4d_compact_first_temporal: true` in its "
            "ControlNet config (and weights trained that way)"
        )
    else:
        head_size, groups = FIRST_TEMPORAL_HEAD_SIZE, FIRST_TEMPORAL_GROUPS
    return TransformerTemporalModel(
        num_attention_heads=FIRST_TEMPORAL_HEADS,
        attention_head_dim=head_size,
        in_channels=channels,
        num_layers=1,
        norm_num_groups=groups,
    )


def level_temporal_block(
    channels: int, head_size: int, norm_num_groups: int, cross_attention_dim: int
) -> TransformerTemporalModel:
    """The temporal block after a downsampler: `attention_head_dim[k]` is its head SIZE here."""
    if channels // head_size < 1:
        raise ValueError(f"attention_head_dim {head_size} is wider than the {channels} channels it attends over")
    return TransformerTemporalModel(
        num_attention_heads=channels // head_size,
        attention_head_dim=head_size,
        in_channels=channels,
        num_layers=1,
        # As DiffusionSat passes it; with double self-attention it changes no weight and no result.
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=norm_num_groups,
    )


def rows_to_frames(rows: torch.Tensor, frames: int) -> torch.Tensor:
    """(B*T, C, h, w) with row b*T + t -> (B, C, T, h, w)."""
    return rows.reshape(-1, frames, *rows.shape[1:]).transpose(1, 2)


def frames_to_rows(stack: torch.Tensor) -> torch.Tensor:
    """(B, C, T, h, w) -> (B*T, C, h, w) with row b*T + t."""
    return stack.transpose(1, 2).reshape(-1, stack.shape[1], *stack.shape[3:])


class ControlNetModel3D(SatControlNetBase):
    """DiffusionSat's temporal ControlNet; forward returns (down residuals, mid residual) for the SatUNet."""

    def __init__(self, *, use_temporal_transformer: bool = False, gfm4d_compact_first_temporal: bool = False, **config):
        super().__init__(**config)
        self.register_to_config(use_temporal_transformer=use_temporal_transformer,
                                gfm4d_compact_first_temporal=gfm4d_compact_first_temporal)
        self.controlnet_cond_embedding = ConditioningEmbedding3D(
            self.conv_in.out_channels,
            self.config.conditioning_in_channels,
            tuple(self.config.conditioning_embedding_out_channels),
        )
        # Same places and widths as diffusers' 1x1 Conv2d zero convs, as Conv3d.
        self.controlnet_down_blocks = nn.ModuleList(
            zero_module(nn.Conv3d(conv.in_channels, conv.out_channels, kernel_size=1))
            for conv in self.controlnet_down_blocks
        )
        mid = self.controlnet_mid_block
        self.controlnet_mid_block = zero_module(nn.Conv3d(mid.in_channels, mid.out_channels, kernel_size=1))
        self.temporal_blocks = None
        self.mixing_attns = None
        if use_temporal_transformer:
            self.temporal_blocks = self._build_temporal_blocks()
            self.mixing_attns = nn.ParameterList(
                nn.Parameter(torch.tensor(0.0), requires_grad=not isinstance(block, nn.Identity))
                for block in self.temporal_blocks
            )

    def _build_temporal_blocks(self) -> nn.ModuleList:
        """One entry per skip residual: a temporal block after conv_in and after each downsampler."""
        config = self.config
        head_sizes = config.attention_head_dim
        if isinstance(head_sizes, int):
            head_sizes = (head_sizes,) * len(self.down_blocks)
        blocks = [first_temporal_block(self.conv_in.out_channels, config.norm_num_groups,
                                       compact=bool(config.gfm4d_compact_first_temporal))]
        for level, down in enumerate(self.down_blocks):
            blocks += [nn.Identity() for _ in down.resnets]
            for downsampler in down.downsamplers or ():
                blocks.append(
                    level_temporal_block(
                        downsampler.out_channels, head_sizes[level], config.norm_num_groups, config.cross_attention_dim
                    )
                )
        if len(blocks) != len(self.controlnet_down_blocks):
            raise ValueError(f"{len(blocks)} temporal blocks for {len(self.controlnet_down_blocks)} residuals")
        return nn.ModuleList(blocks)

    @property
    def temporal_indices(self) -> tuple[int, ...]:
        """The residuals that have a temporal block (0, 3, 6, 9 for SD-2.1)."""
        if self.temporal_blocks is None:
            return ()
        return tuple(i for i, block in enumerate(self.temporal_blocks) if not isinstance(block, nn.Identity))

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

        sample (B, C, h, w) latents; controlnet_cond (B, conditioning_in_channels, T, 8h, 8w) frames
        in [0, 1]; metadata (B, N) of the target; cond_metadata (B, N, T) per frame, (B, N) for every
        frame, or None. `conditioning_scale` multiplies the residuals.
        """
        if controlnet_cond.ndim != 5:
            raise ValueError(
                f"controlnet_cond must be a frame stack (batch, channels, frames, height, width), "
                f"got shape {tuple(controlnet_cond.shape)}"
            )
        batch, frames = sample.shape[0], controlnet_cond.shape[2]
        if controlnet_cond.shape[0] != batch:
            raise ValueError(
                f"controlnet_cond batch {controlnet_cond.shape[0]} does not match the sample batch {batch}"
            )
        check_condition_size(
            tuple(controlnet_cond.shape[-2:]),
            tuple(sample.shape[-2:]),
            self.controlnet_cond_embedding.factor,
            "each conditioning frame",
        )
        self.check_cond_metadata(cond_metadata, batch)
        if cond_metadata is not None and cond_metadata.ndim == 3 and cond_metadata.shape[2] != frames:
            raise ValueError(f"cond_metadata has {cond_metadata.shape[2]} frames, controlnet_cond {frames}")

        dtype = sample.dtype
        emb = self.embed_time_and_metadata(timestep, metadata, batch, dtype, sample.device)
        emb = emb.repeat_interleave(frames, dim=0)
        if cond_metadata is not None and cond_metadata.ndim == 2:
            emb = emb + embed_metadata(self.time_proj, self.metadata_embedding, cond_metadata, dtype).repeat_interleave(
                frames, dim=0
            )
        elif cond_metadata is not None:
            per_frame = embed_metadata_frames(self.time_proj, self.metadata_embedding, cond_metadata, dtype)
            emb = emb + per_frame.reshape(batch * frames, -1)
        text = encoder_hidden_states.repeat_interleave(frames, dim=0)

        condition = self.controlnet_cond_embedding(self.ordered_condition(controlnet_cond))
        hidden = self.conv_in(sample).repeat_interleave(frames, dim=0) + frames_to_rows(condition)
        residuals, mid = self.encode(hidden, emb, text, cross_attention_kwargs)
        down = [
            self._frame_residual(index, residual, frames, cross_attention_kwargs)
            for index, residual in enumerate(residuals)
        ]
        mid = self.controlnet_mid_block(rows_to_frames(mid, frames)).sum(dim=2)
        return self.scaled(down, mid, conditioning_scale)

    def _frame_residual(
        self, index: int, residual: torch.Tensor, frames: int, cross_attention_kwargs: dict | None
    ) -> torch.Tensor:
        """Zero conv, temporal mixing where there is a block, then the SUM over the T frames."""
        stack = self.controlnet_down_blocks[index](rows_to_frames(residual, frames))
        if index in self.temporal_indices:
            alpha = self.mixing_attns[index].clamp(0.0, 1.0).to(stack.dtype)
            mixed = self.temporal_blocks[index](
                frames_to_rows(stack), num_frames=frames, cross_attention_kwargs=cross_attention_kwargs
            ).sample
            stack = alpha * rows_to_frames(mixed, frames) + (1 - alpha) * stack
        return stack.sum(dim=2)


ControlNetModel3D.__init__.__signature__ = merged_signature(ControlNetModel3D.__init__, SatControlNetBase)
