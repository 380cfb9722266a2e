"""Preparing torch modules to run fast without losing accuracy: attention, VAE precision, layout, compile.

- Attention runs through PyTorch's scaled-dot-product attention (diffusers' AttnProcessor2_0).
  SD-2.1-class UNets set `upcast_attention`: in float16 their attention scores overflow unless
  computed in float32. SDPA's fused kernels accumulate in float32 and its math fallback upcasts
  half inputs unless `allow_fp16_bf16_reduction_math_sdp` is switched on; where that switch is on,
  those attention layers use diffusers' AttnProcessor, which computes the scores in float32.
  Modules bound for ONNX export get onnx_attention's processor in every attention layer instead:
  one fused MultiHeadAttention node, no (N, N) score matrix in the graph, float32 accumulation.
- The VAE of a half-precision model is loaded in float32 unless its config says half is safe
  (`force_upcast: false`, as the "fp16-fix" VAEs ship): the SD VAE decoder's activations can
  overflow float16 and come out as NaN, i.e. black tiles. Decoding still runs in half precision on
  a GPU, block by block with a float32 redo of any block that overflows (vae_decode.py).
- Convolution weights in channels-last layout (faster tensor-core convolutions on CUDA).
- torch.compile of the UNet and ControlNet (by default on CUDA, with CUDA graphs), in place so the
  module keeps its class and config.
"""

from __future__ import annotations

import os

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from torch import nn

from engine import config
from engine.errors import ModelError

from .device import HALF, RuntimeOptions
from .onnx_attention import set_export_attention


def vae_dtype(dtype: torch.dtype, vae_config: dict) -> torch.dtype:
    """float32 for a half-precision model's VAE unless its config has `force_upcast: false`."""
    if dtype in HALF and vae_config.get("force_upcast", True):
        return torch.float32
    return dtype


def needs_upcast_processor(dtype: torch.dtype) -> bool:
    """Whether SDPA would not give upcast attention its float32 scores (see the module docstring)."""
    return dtype in HALF and torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()


def set_attention(module: nn.Module, dtype: torch.dtype, for_export: bool = False) -> int:
    """SDPA in every attention layer, the float32-score processor where upcast attention needs it; how
    many layers got another processor than SDPA. For export, every layer gets the processor that
    exports as one MultiHeadAttention node, whatever the dtype."""
    if not hasattr(module, "set_attn_processor"):
        return 0
    if for_export:
        return set_export_attention(module)
    module.set_attn_processor(AttnProcessor2_0())
    upcast = 0
    if needs_upcast_processor(dtype):
        for layer in module.modules():
            if isinstance(layer, Attention) and layer.upcast_attention:
                layer.set_processor(AttnProcessor())
                upcast += 1
    return upcast


def to_channels_last(module: nn.Module) -> None:
    """2D convolution weights in channels-last layout (Conv3d and other weights are left as they are)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            layer.weight.data = layer.weight.data.contiguous(memory_format=torch.channels_last)


def compile_module(module: nn.Module, backend, mode: str | None = None) -> None:
    """torch.compile in place: calls go through the compiled graph, the object stays the same.

    Compilation happens at the first call of each new input shape (the first job's first step
    warms the graphs up, CUDA graphs included) and is kept with the module, so later jobs on the
    same loaded model replay it. Shapes are static: every call of a job has the same shapes
    (engine.pipelines.staging), and a new window or batch size compiles once more. Inductor's
    compiled graphs are also kept on disk (config.compile_cache_dir()), so a new process skips
    most of the work. An unknown backend is refused now, not mid-job.
    """
    known = torch.compiler.list_backends(exclude_tags=())
    if isinstance(backend, str) and backend not in known:
        raise ModelError(f"unknown torch.compile backend {backend!r} (GFM4D_COMPILE): use 1 (inductor), eager or aot_eager")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(config.compile_cache_dir()))
    module.compile(backend=backend, dynamic=False, **({"mode": mode} if mode else {}))


def prepare_modules(unet: nn.Module, controlnet: nn.Module | None, vae: nn.Module, dtype: torch.dtype,
                    options: RuntimeOptions) -> None:
    """Apply the options to the torch modules of one loaded model (ONNX-bound ones are prepared for export)."""
    export = options.backend == "onnx"
    for module in (unet, controlnet, vae):
        if module is None:
            continue
        set_attention(module, vae.dtype if module is vae else dtype, for_export=export)
        if options.channels_last and not export:
            to_channels_last(module)
    if options.compile_backend and not export:
        for module in (unet, controlnet):
            if module is not None:
                compile_module(module, options.compile_backend, options.compile_mode)
