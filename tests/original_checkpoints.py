"""Write a diffusers-layout SD/SDXL folder as the original single-file checkpoint people download.

The inverse of diffusers' single-file converters (diffusers.loaders.single_file_utils): LDM key
names for the UNet (`model.diffusion_model.input_blocks...`) and VAE (`first_stage_model.encoder.down...`,
attention as 1x1 convolutions), the CLIP text encoder as `cond_stage_model.transformer.*` /
`conditioner.embedders.0.transformer.*`, and OpenCLIP's (SD 2.x, SDXL's second) with fused q/k/v
`in_proj` weights. Every writer checks itself: diffusers' forward converter must give back exactly
the keys it started from.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    state = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        state.update(load_file(path))
    return state


def _config(folder: Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())


def _rename(state: dict, prefixes: list[tuple[str, str, tuple]], fixed: dict) -> dict:
    """diffusers -> LDM names: whole keys from `fixed`, else the longest matching prefix and its sub-renames."""
    out = {}
    for key, value in state.items():
        if key in fixed:
            out[fixed[key]] = value
            continue
        match = max((p for p in prefixes if key.startswith(p[0])), key=lambda p: len(p[0]), default=None)
        assert match is not None, f"no original name for {key}"
        rest = key[len(match[0]):]
        for new, old in match[2]:
            if rest.startswith(new + "."):
                rest = old + rest[len(new):]
        out[match[1] + rest] = value
    return out


def unet_to_original(folder: Path) -> dict:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING, convert_ldm_unet_checkpoint

    config, state = _config(folder), _weights(folder)
    per_block = config["layers_per_block"]
    prefixes = [("mid_block.resnets.0.", "middle_block.0.", _RESNET), ("mid_block.attentions.0.", "middle_block.1.", ()),
                ("mid_block.resnets.1.", "middle_block.2.", _RESNET)]
    for block in range(len(config["down_block_types"])):
        for layer in range(per_block):
            index = block * (per_block + 1) + layer + 1
            prefixes += [(f"down_blocks.{block}.resnets.{layer}.", f"input_blocks.{index}.0.", _RESNET),
                         (f"down_blocks.{block}.attentions.{layer}.", f"input_blocks.{index}.1.", ())]
        prefixes.append((f"down_blocks.{block}.downsamplers.0.conv.", f"input_blocks.{(block + 1) * (per_block + 1)}.0.op.", ()))
    for block, kind in enumerate(config["up_block_types"]):
        for layer in range(per_block + 1):
            index = block * (per_block + 1) + layer
            prefixes += [(f"up_blocks.{block}.resnets.{layer}.", f"output_blocks.{index}.0.", _RESNET),
                         (f"up_blocks.{block}.attentions.{layer}.", f"output_blocks.{index}.1.", ())]
        slot = 2 if "CrossAttn" in kind else 1
        prefixes.append((f"up_blocks.{block}.upsamplers.0.conv.", f"output_blocks.{block * (per_block + 1) + per_block}.{slot}.conv.", ()))
    fixed = dict(DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"])
    if config.get("addition_embed_type") == "text_time":
        fixed.update(DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"])
    original = {"model.diffusion_model." + key: value for key, value in _rename(state, prefixes, fixed).items()}
    back = convert_ldm_unet_checkpoint(original, config)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    return original


def vae_to_original(folder: Path) -> dict:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING, convert_ldm_vae_checkpoint

    config, state = _config(folder), _weights(folder)
    blocks = len(config["down_block_types"])
    shortcut = (("conv_shortcut", "nin_shortcut"),)
    prefixes = []
    for i in range(blocks):
        for layer in range(config["layers_per_block"] + 1):
            prefixes += [(f"encoder.down_blocks.{i}.resnets.{layer}.", f"encoder.down.{i}.block.{layer}.", shortcut),
                         (f"decoder.up_blocks.{i}.resnets.{layer}.", f"decoder.up.{blocks - 1 - i}.block.{layer}.", shortcut)]
        prefixes += [(f"encoder.down_blocks.{i}.downsamplers.0.conv.", f"encoder.down.{i}.downsample.conv.", ()),
                     (f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"decoder.up.{blocks - 1 - i}.upsample.conv.", ())]
    for part in ("encoder", "decoder"):
        prefixes += [(f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", shortcut),
                     (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", shortcut),
                     (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", _VAE_ATTENTION)]
    fixed = {key: value for key, value in DIFFUSERS_TO_LDM_MAPPING["vae"].items() if key in state}
    original = {}
    for key, value in _rename(state, prefixes, fixed).items():
        if ".mid.attn_1." in key and key.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")):
            value = value[:, :, None, None]  # the original VAE's attention is 1x1 convolutions
        original["first_stage_model." + key] = value
    back = convert_ldm_vae_checkpoint(original, config)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    return original


def clip_to_original(folder: Path, prefix: str) -> dict:
    """A transformers CLIP text encoder under an LDM prefix (its own key names, `text_model.` included)."""
    return {prefix + (key if key.startswith(("text_model.", "text_projection")) else "text_model." + key): value
            for key, value in _weights(folder).items()}


def open_clip_to_original(folder: Path, prefix: str) -> dict:
    """A transformers CLIP text encoder as OpenCLIP's: fused q/k/v, `resblocks`, a transposed projection."""
    state = {(key if key.startswith(("text_model.", "text_projection")) else "text_model." + key): value
             for key, value in _weights(folder).items()}
    out = {}
    renames = (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"),
               ("self_attn.out_proj", "attn.out_proj"))
    for key, value in state.items():
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif key == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key.startswith("text_model.final_layer_norm."):
            out["ln_final." + key.rsplit(".", 1)[1]] = value
        elif ".self_attn.q_proj." in key:
            layer = key.split(".")[3]
            kind = key.rsplit(".", 1)[1]
            parts = [state[key.replace("q_proj", name)] for name in ("q_proj", "k_proj", "v_proj")]
            out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(parts)
        elif ".self_attn.k_proj." in key or ".self_attn.v_proj." in key:
            continue
        else:
            rest = key[len("text_model.encoder.layers."):]
            layer, rest = rest.split(".", 1)
            for new, old in renames:
                rest = rest.replace(new, old)
            out[f"transformer.resblocks.{layer}.{rest}"] = value
    return {prefix + key: value for key, value in out.items()}


def _swap_halves(weight: torch.Tensor) -> torch.Tensor:
    """diffusers' AdaLayerNormContinuous holds (scale, shift), the original (shift, scale): the swap is its own inverse."""
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def sd3_transformer_to_original(folder: Path) -> dict:
    """An SD3 MMDiT as the original `joint_blocks`: fused q/k/v, the last block's context side pre-only."""
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    config, state = _config(folder), _weights(folder)
    layers = config["num_layers"]
    fixed = {"pos_embed.pos_embed": "pos_embed", "pos_embed.proj.weight": "x_embedder.proj.weight",
             "pos_embed.proj.bias": "x_embedder.proj.bias", "context_embedder.weight": "context_embedder.weight",
             "context_embedder.bias": "context_embedder.bias", "proj_out.weight": "final_layer.linear.weight",
             "proj_out.bias": "final_layer.linear.bias"}
    for new, old in (("timestep_embedder", "t_embedder"), ("text_embedder", "y_embedder")):
        for layer, index in (("linear_1", 0), ("linear_2", 2)):
            for kind in ("weight", "bias"):
                fixed[f"time_text_embed.{new}.{layer}.{kind}"] = f"{old}.mlp.{index}.{kind}"
    original = {old: state[new] for new, old in fixed.items()}
    for kind in ("weight", "bias"):
        original[f"final_layer.adaLN_modulation.1.{kind}"] = _swap_halves(state[f"norm_out.linear.{kind}"])
    for i in range(layers):
        last = i == layers - 1
        block, joint = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        sides = [("x_block", ("to_q", "to_k", "to_v"), "to_out.0", "norm1", "ff")]
        sides.append(("context_block", ("add_q_proj", "add_k_proj", "add_v_proj"), None if last else "to_add_out",
                      "norm1_context", None if last else "ff_context"))
        for side, qkv, out, norm, ff in sides:
            for kind in ("weight", "bias"):
                original[f"{joint}{side}.attn.qkv.{kind}"] = torch.cat([state[f"{block}attn.{p}.{kind}"] for p in qkv])
                modulation = state[f"{block}{norm}.linear.{kind}"]
                original[f"{joint}{side}.adaLN_modulation.1.{kind}"] = _swap_halves(modulation) if side == "context_block" and last else modulation
                if out:
                    original[f"{joint}{side}.attn.proj.{kind}"] = state[f"{block}attn.{out}.{kind}"]
                if ff:
                    original[f"{joint}{side}.mlp.fc1.{kind}"] = state[f"{block}{ff}.net.0.proj.{kind}"]
                    original[f"{joint}{side}.mlp.fc2.{kind}"] = state[f"{block}{ff}.net.2.{kind}"]
    original = {"model.diffusion_model." + key: value for key, value in original.items()}
    back = convert_sd3_transformer_checkpoint_to_diffusers(dict(original))
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    return original


def sd3_text_encoders_to_original(folder: Path) -> dict:
    """SD3's encoders as its files hold them: transformers' own names under `text_encoders.clip_l|clip_g|t5xxl.transformer.`."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_sd3_t5_checkpoint_to_diffusers

    folder = Path(folder)
    original = {}
    for name, prefix in (("text_encoder", "text_encoders.clip_l.transformer."),
                         ("text_encoder_2", "text_encoders.clip_g.transformer."),
                         ("text_encoder_3", "text_encoders.t5xxl.transformer.")):
        state = _weights(folder / name)
        if name == "text_encoder":  # no projection in the file: diffusers puts back an identity
            assert torch.equal(state.pop("text_projection.weight"), torch.eye(state["text_model.final_layer_norm.weight"].shape[0]))
        written = {prefix + key: value for key, value in state.items()}
        back = (convert_sd3_t5_checkpoint_to_diffusers(written) if name == "text_encoder_3"
                else convert_ldm_clip_checkpoint(written, prefix))
        assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
        original.update(written)
    return original


def write_original_checkpoint(folder: Path, path: Path, family: str) -> Path:
    """`folder` (a tiny sd, sd2, sd-inpaint, sdxl, sdxl-inpaint or sd3 model) as one original-format .safetensors at
    `path`; a flux or flux-fill model as its transformer alone, as FLUX.1's files come."""
    folder = Path(folder)
    if family in ("flux", "flux-fill"):
        save_file({key: value.contiguous() for key, value in flux_transformer_to_original(folder / "transformer").items()},
                  str(path))
        return Path(path)
    state = vae_to_original(folder / "vae")
    if family == "sd3":
        state.update(sd3_transformer_to_original(folder / "transformer"))
        state.update(sd3_text_encoders_to_original(folder))
    else:
        state.update(unet_to_original(folder / "unet"))
    if family in ("sd", "sd-inpaint"):
        state.update(clip_to_original(folder / "text_encoder", "cond_stage_model.transformer."))
    elif family == "sd2":
        state.update(open_clip_to_original(folder / "text_encoder", "cond_stage_model.model."))
    elif family in ("sdxl", "sdxl-inpaint"):
        state.update(clip_to_original(folder / "text_encoder", "conditioner.embedders.0.transformer."))
        state.update(open_clip_to_original(folder / "text_encoder_2", "conditioner.embedders.1.model."))
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    return Path(path)


def flux_converter(inner_dim: int):
    """diffusers' FLUX converter with its one fixed number, FLUX.1's width 3072, replaced by `inner_dim`.

    The converter splits each single block's fused `linear1` at 3072 (q, k, v) and 4 x 3072 (MLP) instead
    of reading the width from the weights, so only full-size FLUX.1 passes through it unchanged; a tiny
    one passes through this copy of the same code, which differs in that number only.
    """
    import inspect
    import textwrap

    from diffusers.loaders import single_file_utils

    source = textwrap.dedent(inspect.getsource(single_file_utils.convert_flux_transformer_checkpoint_to_diffusers))
    assert source.count("inner_dim = 3072") == 1, "diffusers' FLUX converter changed: check whether it still fixes the width"
    namespace = dict(vars(single_file_utils))
    exec(compile(source.replace("inner_dim = 3072", f"inner_dim = {int(inner_dim)}"), single_file_utils.__file__, "exec"),
         namespace)
    return namespace["convert_flux_transformer_checkpoint_to_diffusers"]


def flux_transformer_to_original(folder: Path) -> dict:
    """A FLUX.1 transformer as Black Forest Labs' file holds it: `double_blocks`/`single_blocks`, fused q/k/v(/MLP)."""
    config, state = _config(folder), _weights(folder)
    embedders = {"timestep_embedder": "time_in", "text_embedder": "vector_in", "guidance_embedder": "guidance_in"}
    original = {}
    for new, old in embedders.items():
        for layer, name in (("linear_1", "in_layer"), ("linear_2", "out_layer")):
            for kind in ("weight", "bias"):
                if f"time_text_embed.{new}.{layer}.{kind}" in state:
                    original[f"{old}.{name}.{kind}"] = state[f"time_text_embed.{new}.{layer}.{kind}"]
    for kind in ("weight", "bias"):
        original[f"txt_in.{kind}"] = state[f"context_embedder.{kind}"]
        original[f"img_in.{kind}"] = state[f"x_embedder.{kind}"]
        original[f"final_layer.linear.{kind}"] = state[f"proj_out.{kind}"]
        original[f"final_layer.adaLN_modulation.1.{kind}"] = _swap_halves(state[f"norm_out.linear.{kind}"])
    for i in range(config["num_layers"]):
        block, double = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for kind in ("weight", "bias"):
            pairs = {"img_mod.lin": "norm1.linear", "txt_mod.lin": "norm1_context.linear", "img_mlp.0": "ff.net.0.proj",
                     "img_mlp.2": "ff.net.2", "txt_mlp.0": "ff_context.net.0.proj", "txt_mlp.2": "ff_context.net.2",
                     "img_attn.proj": "attn.to_out.0", "txt_attn.proj": "attn.to_add_out"}
            for old, new in pairs.items():
                original[f"{double}{old}.{kind}"] = state[f"{block}{new}.{kind}"]
            original[f"{double}img_attn.qkv.{kind}"] = torch.cat([state[f"{block}attn.to_{p}.{kind}"] for p in "qkv"])
            original[f"{double}txt_attn.qkv.{kind}"] = torch.cat([state[f"{block}attn.add_{p}_proj.{kind}"] for p in "qkv"])
        for side, added in (("img_attn", ""), ("txt_attn", "added_")):
            original[f"{double}{side}.norm.query_norm.scale"] = state[f"{block}attn.norm_{added}q.weight"]
            original[f"{double}{side}.norm.key_norm.scale"] = state[f"{block}attn.norm_{added}k.weight"]
    for i in range(config["num_single_layers"]):
        block, single = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for kind in ("weight", "bias"):
            original[f"{single}modulation.lin.{kind}"] = state[f"{block}norm.linear.{kind}"]
            original[f"{single}linear2.{kind}"] = state[f"{block}proj_out.{kind}"]
            fused = [state[f"{block}attn.to_{p}.{kind}"] for p in "qkv"] + [state[f"{block}proj_mlp.{kind}"]]
            original[f"{single}linear1.{kind}"] = torch.cat(fused)
        original[f"{single}norm.query_norm.scale"] = state[f"{block}attn.norm_q.weight"]
        original[f"{single}norm.key_norm.scale"] = state[f"{block}attn.norm_k.weight"]
    width = config["num_attention_heads"] * config["attention_head_dim"]
    back = flux_converter(width)(dict(original))
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    return original
