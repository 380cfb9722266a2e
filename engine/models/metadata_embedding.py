"""DiffusionSat's metadata embedding, shared by the SatUNet and the metadata ControlNets.

Each of the `num_metadata` normalised numbers (spec §1) goes through the same sinusoidal projection
as the timestep and then through its own `TimestepEmbedding` MLP; the MLP outputs are summed and
added to the time embedding (spec §2). The parameter names (`metadata_embedding.{i}.linear_{1,2}`)
are DiffusionSat's, so its checkpoints load key for key.
"""

import torch
from diffusers.models.embeddings import TimestepEmbedding
from torch import nn

# Normalised metadata reaches ~10000 (gsd 10 m); half precision rounds 925.88 to 926 (bf16: to 924),
# a phase error of up to 2 rad at the highest frequency of the sinusoid.
_TOO_COARSE = (torch.float16, torch.bfloat16)


def metadata_mlps(in_dim: int, out_dim: int, count: int) -> nn.ModuleList:
    """One `TimestepEmbedding(in_dim, out_dim)` (linear_1, SiLU, linear_2) per metadata field."""
    return nn.ModuleList(TimestepEmbedding(in_dim, out_dim, act_fn="silu") for _ in range(count))


def project_metadata(time_proj: nn.Module, metadata: torch.Tensor) -> torch.Tensor:
    """(B, N) normalised metadata -> (B, N, C) sinusoids, always computed in float32.

    `time_proj` is the model's own timestep projection (diffusers `Timesteps`), so flip_sin_to_cos
    and freq_shift follow the model's config exactly as DiffusionSat does.
    """
    if metadata.dtype in _TOO_COARSE:
        raise ValueError(
            f"metadata must be float32 (got {metadata.dtype}): half precision rounds normalised values "
            "like 925.8798 to 926, a visible phase error; keep metadata float32 whatever the model dtype"
        )
    if metadata.ndim != 2:
        raise ValueError(f"metadata must have shape (batch, num_metadata), got {tuple(metadata.shape)}")
    batch, count = metadata.shape
    projected = time_proj(metadata.reshape(-1).to(torch.float32))
    return projected.reshape(batch, count, -1)


def embed_metadata(
    time_proj: nn.Module, mlps: nn.ModuleList, metadata: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Σ_i MLP_i(proj(m_i)) as a (B, 4C) tensor in `dtype`.

    All-zero metadata (the unconditional half of classifier-free guidance) still goes through the
    MLPs, as in DiffusionSat: zeros embed to cos(0)=1 / sin(0)=0 and the MLP biases, not to nothing.
    """
    if metadata.ndim != 2 or metadata.shape[1] != len(mlps):
        raise ValueError(
            f"metadata must have shape (batch, {len(mlps)}), got {tuple(metadata.shape)}"
        )
    projected = project_metadata(time_proj, metadata).to(dtype)
    embedding = mlps[0](projected[:, 0])
    for index in range(1, len(mlps)):
        embedding = embedding + mlps[index](projected[:, index])
    return embedding


def embed_metadata_frames(
    time_proj: nn.Module, mlps: nn.ModuleList, metadata: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """(B, N, T) metadata of T frames (metadata axis first, as DiffusionSat) -> (B, T, 4C) embeddings.

    Each frame is embedded on its own, exactly as `embed_metadata` embeds one (B, N) vector.
    """
    if metadata.ndim != 3 or metadata.shape[1] != len(mlps):
        raise ValueError(
            f"frame metadata must have shape (batch, {len(mlps)}, frames), got {tuple(metadata.shape)}"
        )
    batch, count, frames = metadata.shape
    rows = metadata.permute(0, 2, 1).reshape(batch * frames, count)  # row = b * T + t
    return embed_metadata(time_proj, mlps, rows, dtype).reshape(batch, frames, -1)
