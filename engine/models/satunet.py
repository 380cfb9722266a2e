"""DiffusionSat's metadata-conditioned UNet on current diffusers.

DiffusionSat's own `SatUNet` is a copy of diffusers 0.17's UNet plus `metadata_embedding`; its code
no longer imports, but its checkpoints are plain state dicts. This class is diffusers'
`UNet2DConditionModel` plus the same `metadata_embedding` ModuleList, so those state dicts load key
for key, and `save_config` writes `"_class_name": "SatUNet"`, `use_metadata` and `num_metadata`
like the released `unet/config.json` files.

The metadata enters through diffusers' `get_class_embed` hook: `UNet2DConditionModel.forward` adds
what that hook returns to the time embedding (`emb = emb + class_emb`, as `class_embed_type` stays
None and `class_embeddings_concat` False), which is exactly DiffusionSat's
`emb = time_embedding(proj(t)) + Σ_i MLP_i(proj(m_i))`. The UNet's forward is reused, not copied.
"""

import torch
from diffusers import UNet2DConditionModel

from .config_signature import merged_signature
from .metadata_embedding import embed_metadata, metadata_mlps


class SatUNet(UNet2DConditionModel):
    """`UNet2DConditionModel` whose time embedding also carries `num_metadata` numbers.

    Call it with `metadata` of shape (B, num_metadata), float32, normalised as in the spec; for the
    unconditional half of classifier-free guidance pass zeros, never None (zeros still go through
    the MLPs, which is what DiffusionSat was trained with).
    """

    def __init__(self, *, use_metadata: bool = True, num_metadata: int = 7, **unet_config):
        super().__init__(**unet_config)
        self.register_to_config(use_metadata=use_metadata, num_metadata=num_metadata)
        if not use_metadata:
            self.metadata_embedding = None
            return
        if self.class_embedding is not None or self.config.class_embeddings_concat:
            raise ValueError(
                "a SatUNet with use_metadata=True carries metadata through the class-embedding hook; "
                "it cannot also have class_embed_type/num_class_embeds or class_embeddings_concat"
            )
        # Same sizes as the time MLP (C -> 4C -> 4C for SD), as DiffusionSat builds them.
        self.metadata_embedding = metadata_mlps(
            self.time_embedding.linear_1.in_features,
            self.time_embedding.linear_2.out_features,
            num_metadata,
        )

    def forward(self, sample, timestep, encoder_hidden_states, metadata=None, **kwargs):
        """UNet2DConditionModel.forward with `metadata` (B, num_metadata) added to the time embedding."""
        if self.metadata_embedding is None:
            if metadata is not None:
                raise ValueError("this SatUNet was built with use_metadata=False; do not pass metadata")
            return super().forward(sample, timestep, encoder_hidden_states, **kwargs)
        if metadata is None:
            raise ValueError(
                "this SatUNet needs metadata of shape (batch, "
                f"{self.config.num_metadata}); pass zeros for the unconditional (guidance) half"
            )
        if "class_labels" in kwargs:
            raise ValueError("a SatUNet with metadata takes no class_labels")
        return super().forward(sample, timestep, encoder_hidden_states, class_labels=metadata, **kwargs)

    def get_class_embed(self, sample: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor | None:
        """diffusers' hook for embeddings added to the time embedding: here, the metadata's."""
        if self.metadata_embedding is None:
            return super().get_class_embed(sample=sample, class_labels=class_labels)
        if class_labels is None:
            raise ValueError("this SatUNet needs metadata (passed to get_class_embed as class_labels)")
        if class_labels.shape[0] != sample.shape[0]:
            raise ValueError(
                f"metadata batch {class_labels.shape[0]} does not match the sample batch {sample.shape[0]}"
            )
        # The sinusoid is float32 whatever the model runs in; only its output takes the compute
        # dtype, which is the sample's (as diffusers does for the time embedding).
        return embed_metadata(self.time_proj, self.metadata_embedding, class_labels, dtype=sample.dtype)


# from_config takes the accepted keys from this signature: SatUNet's own plus every UNet keyword.
SatUNet.__init__.__signature__ = merged_signature(SatUNet.__init__, UNet2DConditionModel)
