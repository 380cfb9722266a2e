"""VAE decoding fast and safe: half precision on a GPU, float32 again for any block that overflows.

The SD VAE decoder's activations can exceed float16's range; the block then comes out with inf or
NaN (a black tile). Most blocks do not, and half precision decodes them about twice as fast, so on
CUDA a half-precision copy of the decoder (post_quant_conv and decoder only, about 100 MB for
SD-class VAEs) decodes every batch first, and each image of the batch with a non-finite value is
decoded again by the float32 VAE the model loaded. The float32 weights are kept rather than
upcast on demand: upcasting half weights would not give back the float32 decode, and moving the
VAE between dtypes mid-job would race with nothing but cost time on every fallback.

A VAE that is itself half precision (configs with `force_upcast: false`) decodes in half; a float32
copy of it is made at its first overflow and kept.

Elsewhere (CPU, the ONNX backend, model CPU offload, float32 models, GFM4D_VAE_HALF=0) the VAE
decodes as loaded. Decoding blocks are larger on a GPU (see `default_decode_block`).
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from engine import config

from .device import HALF

log = logging.getLogger(__name__)

HALF_DECODE_DTYPE = torch.float16  # also for bfloat16 models: 3 more mantissa bits; overflow is caught anyway
CPU_DECODE_BLOCK = 64  # latent cells per decoding block side
CPU_DECODE_BATCH = 4  # blocks decoded per VAE call on the CPU
GPU_DECODE_BLOCKS = (128, 96, 64)  # tried largest first on CUDA
GPU_DECODE_BATCH = 4  # most blocks per VAE call on CUDA (larger blocks already fill the GPU)
GPU_DECODE_SHARE = 0.25  # share of the GPU's total memory one batch of decoding blocks may use


def half_decode_wanted(device: torch.device, dtype: torch.dtype, vae) -> bool:
    """Whether this model's VAE should decode in half precision (see the module docstring)."""
    setting = config.vae_half()
    if setting is False or not isinstance(vae, nn.Module) or hasattr(vae, "_hf_hook"):  # off, ONNX, offloaded
        return False
    return setting or (torch.device(device).type == "cuda" and dtype in HALF)


def _half_copy(vae: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of the VAE's decoding path in `dtype`; the encoder is not copied."""
    skipped = {id(getattr(vae, name)): None for name in ("encoder", "quant_conv") if getattr(vae, name, None) is not None}
    half = copy.deepcopy(vae, memo=skipped)
    # nn.Module.to: diffusers' own `to` warns about casting after loading; AutoencoderKL keeps no
    # module in float32, so a plain cast is what its loader would do.
    return nn.Module.to(half, dtype)


class VaeDecoder:
    """Decodes scaled latents (already in the VAE's latent space) to images in [-1, 1], float32.

    `fast`, when given, decodes every batch first; images with a non-finite value are decoded again
    by `exact` (float32). Counts what it decoded and how much fell back, for the log.
    """

    def __init__(self, exact: nn.Module, fast: nn.Module | None = None) -> None:
        self._exact = exact
        self.fast = fast
        self.decoded = 0
        self.fallbacks = 0

    @classmethod
    def for_model(cls, vae, device: torch.device, dtype: torch.dtype) -> "VaeDecoder":
        if not half_decode_wanted(device, dtype, vae):
            return cls(vae)
        if vae.dtype in HALF:
            return cls(None, fast=vae)  # its float32 copy is made at the first overflow
        return cls(vae, fast=_half_copy(vae, HALF_DECODE_DTYPE))

    @property
    def exact(self) -> nn.Module:
        if self._exact is None:
            log.info("making a float32 copy of the half-precision VAE for blocks that overflow")
            self._exact = copy.deepcopy(self.fast).float()
        return self._exact

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        self.decoded += latents.shape[0]
        if self.fast is None:
            return self.exact.decode(latents.to(self.exact.dtype)).sample.float()
        images = self.fast.decode(latents.to(self.fast.dtype)).sample.float()
        bad = ~torch.isfinite(images).flatten(1).all(dim=1)
        if bad.any():
            redo = bad.nonzero().flatten().tolist()
            self.fallbacks += len(redo)
            log.warning("%d of %d decoding blocks overflowed in %s; decoded again in float32",
                        len(redo), latents.shape[0], str(self.fast.dtype).removeprefix("torch."))
            for index in redo:  # one at a time: a float32 batch needs twice the memory of the half one
                images[index] = self.exact.decode(latents[index : index + 1].to(self.exact.dtype)).sample[0].float()
        return images


def decode_bytes(vae_config, cells: int, dtype: torch.dtype) -> int:
    """Activation memory of decoding one square block of `cells` latent cells a side, on the safe side.

    The decoder's last levels work at full output resolution with the widest of their channel counts;
    about three such tensors are alive at once (measured: 2.8 KB per output pixel for the SD VAE in
    float32). Doubled for allocator slack.
    """
    channels = list(vae_config.block_out_channels)
    factor = 2 ** (len(channels) - 1)
    pixels = (cells * factor) ** 2
    itemsize = torch.empty((), dtype=dtype).element_size()
    return int(2 * 3 * max(channels[:2]) * pixels * itemsize)


def decode_size(vae, device: torch.device, margin: int, block: int | None = None) -> tuple[int, int]:
    """(latent cells per decoding block side, blocks per VAE call) for a device.

    On the CPU: 64 cells (or `block`) and CPU_DECODE_BATCH blocks per call, as always. On CUDA the
    block, when not given, is the largest of GPU_DECODE_BLOCKS whose float32 decode (a fallback's
    need) fits in GPU_DECODE_SHARE of the GPU's *total* memory: the VAE's group norms see the whole
    block, so its size changes the pixels slightly and must not depend on how much memory happens
    to be free; the same GPU model always picks the same size. Then as many blocks per call as fit
    in that share in half precision, at most GPU_DECODE_BATCH.
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return block or CPU_DECODE_BLOCK, CPU_DECODE_BATCH
    config = getattr(vae, "config", None)
    try:
        decode_bytes(config, 1, torch.float32)
    except (AttributeError, TypeError):
        return block or CPU_DECODE_BLOCK, CPU_DECODE_BATCH  # an unusual VAE config: what always worked
    share = GPU_DECODE_SHARE * torch.cuda.get_device_properties(device).total_memory
    if block is None:
        fitting = [c for c in GPU_DECODE_BLOCKS if decode_bytes(config, c + 2 * margin, torch.float32) <= share]
        block = fitting[0] if fitting else GPU_DECODE_BLOCKS[-1]
    per_block = decode_bytes(config, block + 2 * margin, HALF_DECODE_DTYPE)
    return block, max(1, min(GPU_DECODE_BATCH, int(share // per_block)))
