"""Attention exported as one onnxruntime MultiHeadAttention node instead of MatMul / Softmax / MatMul.

Traced plainly, attention becomes a (batch x heads, N, N) score matrix in the graph: 10 GB per
layer call for a float16 SD-2.1 UNet at 512 px, batch 16 with guidance, and in float32 where the
layer needs upcast scores (float16 scores of SD-2.1-class UNets overflow past 65504). The
`com.microsoft` MultiHeadAttention operator takes the projected queries, keys and values and
computes the scores inside its kernel: on CUDA flash or memory-efficient attention (float32
accumulation, no N x N matrix in memory), on CPU in float32 whatever the graph's dtype. So every
graph, half or not, upcast layers or not, gets the same node, and no N x N tensor appears in it.

In torch (the VAE encoder under the ONNX backend, or a module traced but then run) the same
processor computes scaled-dot-product attention, which is what the node computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

DOMAIN = "com.microsoft"
OPSET_IMPORTS = {DOMAIN: 1}  # the contrib operators' domain, declared in every exported graph


class MultiHeadAttention(torch.autograd.Function):
    """Attention over (batch, tokens, heads x head_dim) tensors; exports as one MultiHeadAttention node."""

    @staticmethod
    def forward(ctx, query, key, value, heads: int, scale: float):
        batch, tokens, width = query.shape
        split = [t.reshape(batch, t.shape[1], heads, width // heads).transpose(1, 2) for t in (query, key, value)]
        out = F.scaled_dot_product_attention(*split, scale=scale)
        return out.transpose(1, 2).reshape(batch, tokens, width).to(query.dtype)

    @staticmethod
    def symbolic(g, query, key, value, heads: int, scale: float):
        out = g.op(f"{DOMAIN}::MultiHeadAttention", query, key, value, num_heads_i=heads, scale_f=scale)
        out.setType(query.type())  # same dtype and shape as the queries (the exporter cannot infer a contrib op)
        return out


class OnnxAttnProcessor(AttnProcessor2_0):
    """diffusers' SDPA processor with the attention itself as MultiHeadAttention (see the module docstring).

    Layers the node cannot express (an attention mask, query/key norms) keep SDPA.
    """

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if attention_mask is not None or attn.norm_q is not None or attn.norm_k is not None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image = hidden_states.ndim == 4
        if image:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        hidden_states = MultiHeadAttention.apply(query, key, value, attn.heads, float(attn.scale))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if image:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def set_export_attention(module: torch.nn.Module) -> int:
    """OnnxAttnProcessor in every diffusers attention layer of `module`; how many layers it set."""
    layers = [layer for layer in module.modules() if isinstance(layer, Attention)]
    for layer in layers:
        layer.set_processor(OnnxAttnProcessor())
    return len(layers)


def uses_fused_attention(module: torch.nn.Module) -> bool:
    """Whether an export of `module` will hold MultiHeadAttention nodes (and so needs their domain declared)."""
    return any(isinstance(layer, Attention) and isinstance(layer.processor, OnnxAttnProcessor) for layer in module.modules())
