"""Tiny random SD 1.x/2.x, SDXL, SD3 and FLUX models in diffusers layout: every backbone without downloading one.

Each folder is what `save_pretrained` of the real pipeline writes (model_index.json and one folder
per component), so diffusers' own pipelines load it too: the tests run both on the same folder and
compare. Sizes are a few channels and one or two layers; text encoders are tiny CLIPs and a tiny T5
with tokenizers built here (CLIP's BPE from engine.models.demo; T5's Unigram vocabulary of caption
words, digits and punctuation, saved as tokenizer.json, so no sentencepiece is needed). The
networks are untrained.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from .loading import _no_transformers_progress_bar
from .demo import CAPTION_WORDS, MAX_TOKENS, _write_tokenizer, clip_bpe_vocabulary

TEXT_HIDDEN = 32
SDXL_TEXT_HIDDEN_2 = 48
SD3_CLIP_G_HIDDEN = 16
T5_HIDDEN = 64
FAMILIES = ("sdxl", "sd3", "flux", "flux-fill", "sdxl-inpaint", "sd", "sd2", "sd-inpaint")
_PUNCTUATION = list(".,-:;'()/")
# The words of the metadata caption (engine.pipelines.captions), so that it tokenizes into words.
_CAPTION_FORM = "resolution the longitude latitude is date The".split()


def build_tiny_backbone(folder: Path, family: str, seed: int = 0) -> Path:
    """Write a tiny random `family` model (one of FAMILIES) at `folder` (replaced atomically); the folder."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, not {family!r}")
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=folder.parent))
    try:
        with torch.random.fork_rng(devices=[]), _no_transformers_progress_bar():
            {"sdxl": _sdxl, "sdxl-inpaint": _sdxl_inpaint, "sd3": _sd3, "flux": _flux, "flux-fill": _flux_fill,
             "sd": _sd, "sd2": _sd2, "sd-inpaint": _sd_inpaint}[family](staging, seed)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _vae(folder: Path, seed: int, latent_channels: int, **config) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8,
        latent_channels=latent_channels, sample_size=64, **config,
    ).save_pretrained(folder / "vae")


def _clip(folder: Path, name: str, seed: int, with_projection: bool, hidden: int = TEXT_HIDDEN,
          identity_projection: bool = False) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    vocab, merges = clip_bpe_vocabulary(CAPTION_WORDS + _CAPTION_FORM[:-1] + _PUNCTUATION)
    _write_tokenizer(folder / name.replace("text_encoder", "tokenizer"), vocab, merges)
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, projection_dim=TEXT_HIDDEN,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=MAX_TOKENS, hidden_act="gelu",
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["!"],
    )
    model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)
    if identity_projection:  # SD3's CLIP-L has no projection of its own: its pooled output is the hidden state
        with torch.no_grad():
            model.text_projection.weight.copy_(torch.eye(TEXT_HIDDEN))
    model.save_pretrained(folder / name)


def _t5(folder: Path, name: str, tokenizer_name: str, seed: int) -> None:
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    # A Unigram vocabulary in T5's layout (<pad>, </s>, <unk>, then SentencePiece pieces, "▁" = space).
    pieces = dict.fromkeys(["▁", *("▁" + w for w in CAPTION_WORDS + _CAPTION_FORM), *_PUNCTUATION, *"0123456789",
                            *("▁" + c for c in _PUNCTUATION + list("0123456789"))])
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(piece, -1.0 - len(piece) / 100) for piece in pieces]
    fast = T5TokenizerFast(vocab=vocab, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0,
                           model_max_length=512)
    fast.save_pretrained(folder / tokenizer_name)
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(vocab), d_model=T5_HIDDEN, d_kv=16, d_ff=2 * T5_HIDDEN, num_layers=1,
                      num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
    T5EncoderModel(config).save_pretrained(folder / name)


def _scheduler(folder: Path, cls, **config) -> None:
    cls(**config).save_pretrained(folder / "scheduler")


def _index(folder: Path, pipeline: str, components: dict, **extra) -> None:
    value = {"_class_name": pipeline, "_diffusers_version": "0.42.1", **extra, **components}
    (folder / "model_index.json").write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def _sdxl(folder: Path, seed: int, in_channels: int = 4, pipeline: str = "StableDiffusionXLPipeline") -> None:
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

    _vae(folder, seed, 4, scaling_factor=0.13025)
    _clip(folder, "text_encoder", seed + 1, with_projection=False)
    # The second encoder is wider than the first, as in SDXL (768 and 1280): single-file loading tells them apart so.
    _clip(folder, "text_encoder_2", seed + 2, with_projection=True, hidden=SDXL_TEXT_HIDDEN_2)
    torch.manual_seed(seed + 3)
    UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + TEXT_HIDDEN, cross_attention_dim=TEXT_HIDDEN + SDXL_TEXT_HIDDEN_2,
        norm_num_groups=8,
    ).save_pretrained(folder / "unet")
    _scheduler(folder, EulerDiscreteScheduler, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
               steps_offset=1, timestep_spacing="leading", prediction_type="epsilon")
    _index(folder, pipeline, {
        "vae": ["diffusers", "AutoencoderKL"], "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "image_encoder": [None, None], "feature_extractor": [None, None],
    }, force_zeros_for_empty_prompt=True)


def _sdxl_inpaint(folder: Path, seed: int) -> None:
    _sdxl(folder, seed, in_channels=9, pipeline="StableDiffusionXLInpaintPipeline")


def _sd3(folder: Path, seed: int) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    _vae(folder, seed, 16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)
    # SD3's two CLIPs differ in width (768 and 1280): single-file loading tells them apart so. Here the second is
    # the narrower one, so that both hidden states side by side (32 + 16) fit into T5's width, as 768 + 1280 do in 4096.
    _clip(folder, "text_encoder", seed + 1, with_projection=True, identity_projection=True)
    _clip(folder, "text_encoder_2", seed + 2, with_projection=True, hidden=SD3_CLIP_G_HIDDEN)
    _t5(folder, "text_encoder_3", "tokenizer_3", seed + 4)
    torch.manual_seed(seed + 3)
    SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=T5_HIDDEN, caption_projection_dim=32,
        pooled_projection_dim=2 * TEXT_HIDDEN, pos_embed_max_size=32,
    ).save_pretrained(folder / "transformer")
    _scheduler(folder, FlowMatchEulerDiscreteScheduler, shift=3.0)
    _index(folder, "StableDiffusion3Pipeline", {
        "vae": ["diffusers", "AutoencoderKL"], "transformer": ["diffusers", "SD3Transformer2DModel"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_3": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "tokenizer_3": ["transformers", "T5TokenizerFast"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "image_encoder": [None, None], "feature_extractor": [None, None],
    })


def _flux(folder: Path, seed: int, in_channels: int = 64, pipeline: str = "FluxPipeline") -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    _vae(folder, seed, 16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
    _clip(folder, "text_encoder", seed + 1, with_projection=False)
    _t5(folder, "text_encoder_2", "tokenizer_2", seed + 4)
    torch.manual_seed(seed + 3)
    FluxTransformer2DModel(
        patch_size=1, in_channels=in_channels, out_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=T5_HIDDEN, pooled_projection_dim=TEXT_HIDDEN, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    ).save_pretrained(folder / "transformer")
    _scheduler(folder, FlowMatchEulerDiscreteScheduler, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
               max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    _index(folder, pipeline, {
        "vae": ["diffusers", "AutoencoderKL"], "transformer": ["diffusers", "FluxTransformer2DModel"],
        "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        **({"image_encoder": [None, None], "feature_extractor": [None, None]} if pipeline == "FluxPipeline" else {}),
    })


def _flux_fill(folder: Path, seed: int) -> None:
    _flux(folder, seed, in_channels=384, pipeline="FluxFillPipeline")


def _sd(folder: Path, seed: int, in_channels: int = 4, pipeline: str = "StableDiffusionPipeline",
        linear_projection: bool = False) -> None:
    """SD 1.x's layout (SD 2.x's with `linear_projection`): one CLIP text encoder, cross-attention to its states."""
    from diffusers import DDIMScheduler, UNet2DConditionModel

    _vae(folder, seed, 4, scaling_factor=0.18215)
    _clip(folder, "text_encoder", seed + 1, with_projection=False)
    torch.manual_seed(seed + 3)
    UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=4, cross_attention_dim=TEXT_HIDDEN, norm_num_groups=8, use_linear_projection=linear_projection,
    ).save_pretrained(folder / "unet")
    _scheduler(folder, DDIMScheduler, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
               clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
    _index(folder, pipeline, {
        "vae": ["diffusers", "AutoencoderKL"], "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None], "feature_extractor": [None, None], "image_encoder": [None, None],
    }, requires_safety_checker=False)


def _sd2(folder: Path, seed: int) -> None:
    _sd(folder, seed, linear_projection=True)


def _sd_inpaint(folder: Path, seed: int) -> None:
    _sd(folder, seed, in_channels=9, pipeline="StableDiffusionInpaintPipeline")
