"""DiffusionSat's 2D metadata ControlNet and 3D ControlNet (spec: specs/diffusionsat.md §2, §3, §5, §6)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import ControlNetModel

from engine.errors import ModelError
from engine.models.controlnet_2d import MetadataControlNet
from engine.models.controlnet_3d import ControlNetModel3D
from engine.models.demo import build_demo_models, make_conditioning_visible
from engine.models.layout import CONTROLNET_2D, CONTROLNET_3D, inspect_model_folder
from engine.models.loading import build_controlnet
from engine.models.registry import ModelRegistry
from engine.models.satunet import SatUNet

# The authors' worked example (spec §1) and a second, different vector.
EXAMPLE_METADATA = [925.8798, 345.2111, 411.4541, 0.0, 308.3333, 166.6667, 354.8387]
OTHER_METADATA = [100.0, 700.0, 10000.0, 200.0, 900.0, 1000.0, 32.2581]

# The SD-2.1 trunk keys of DiffusionSat's controlnet/config.json files (their ControlNetModel and
# ControlNetModel3D constructor keywords of diffusers 0.17 time).
SD21_TRUNK = {
    "_diffusers_version": "0.17.0.dev0",
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "class_embed_type": None,
    "conditioning_embedding_out_channels": [16, 32, 96, 256],
    "controlnet_conditioning_channel_order": "rgb",
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "global_pool_conditions": False,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "num_metadata": 7,
    "only_cross_attention": False,
    "projection_class_embeddings_input_dim": None,
    "resnet_time_scale_shift": "default",
    "upcast_attention": True,
    "use_linear_projection": True,
    "use_metadata": True,
}
REAL_2D_CONFIG = {  # the Sentinel-2 super-resolution ControlNet
    **SD21_TRUNK,
    "_class_name": "ControlNetModel",
    "conditioning_in_channels": 10,
    "conditioning_scale": 2,
}
REAL_3D_CONFIG = {  # the "Texas housing" temporal ControlNet
    **SD21_TRUNK,
    "_class_name": "ControlNetModel3D",
    "conditioning_in_channels": 3,
    "use_temporal_transformer": True,
}
SATUNET_CONFIG = {
    **{k: v for k, v in SD21_TRUNK.items() if k not in ("conditioning_embedding_out_channels", "global_pool_conditions",
                                                       "controlnet_conditioning_channel_order")},
    "_class_name": "SatUNet",
    "out_channels": 4,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "sample_size": 96,
}
TINY = {  # SD-2.1's layout scaled down (the demo SatUNet's numbers)
    "attention_head_dim": [2, 4],
    "block_out_channels": [32, 64],
    "cross_attention_dim": 32,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 8,
}
TINY_2D = {**REAL_2D_CONFIG, **TINY}
TINY_3D = {**REAL_3D_CONFIG, **TINY}
TINY_UNET = {**SATUNET_CONFIG, **TINY, "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}
# Skip residual channels of SD-2.1: conv_in, then per level two resnets and a downsampler (none last).
SD21_RESIDUAL_CHANNELS = [320, 320, 320, 320, 640, 640, 640, 1280, 1280, 1280, 1280, 1280]
B = 2
# Behaviour tests run on 8x8 latents (64 px frames, 32 px Sentinel-2 conditions) to stay fast; the
# shape tests use the 16x16 latents of the demo models.
LATENT = 8


def tiny_controlnet(config: dict, seed: int, **overrides):
    """A tiny ControlNet whose condition matters (zero convs filled, encoder init variance-keeping)."""
    torch.manual_seed(seed)
    cls = ControlNetModel3D if config["_class_name"] == "ControlNetModel3D" else MetadataControlNet
    controlnet = cls.from_config({**config, **overrides}).eval()
    make_conditioning_visible(controlnet, seed)
    return controlnet


def tiny_unet(seed: int = 0) -> SatUNet:
    torch.manual_seed(seed)
    return SatUNet.from_config(TINY_UNET).eval()


def inputs(seed: int = 1, batch: int = B, size: int = LATENT):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, size, size, generator=generator)
    text = torch.randn(batch, 77, 32, generator=generator)
    return sample, torch.tensor([500] * batch), text, torch.tensor([EXAMPLE_METADATA] * batch)


def frames(count: int, seed: int = 2, batch: int = B, size: int = 8 * LATENT, channels: int = 3) -> torch.Tensor:
    return torch.rand(batch, channels, count, size, size, generator=torch.Generator().manual_seed(seed))


def sentinel(batch: int = B, size: int = 4 * LATENT) -> torch.Tensor:
    """A 10-band condition for the conditioning_scale 2 ControlNet (4x the latent)."""
    return torch.rand(batch, 10, size, size, generator=torch.Generator().manual_seed(3))


def run(controlnet, *args, **kwargs):
    with torch.no_grad():
        return controlnet(*args, **kwargs)


def max_difference(left, right) -> float:
    (down_l, mid_l), (down_r, mid_r) = left, right
    return max((a - b).abs().max().item() for a, b in zip((*down_l, mid_l), (*down_r, mid_r)))


def shapes(residuals) -> list[tuple[int, ...]]:
    down, mid = residuals
    return [tuple(r.shape) for r in (*down, mid)]


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")


def save_released(model, folder: Path) -> Path:
    """A network as DiffusionSat's runs save it: config.json + diffusion_pytorch_model.bin."""
    model.save_config(folder)
    torch.save(model.state_dict(), folder / "diffusion_pytorch_model.bin")
    return folder


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: two intra-op threads only spin against each other on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("models")
    build_demo_models(models)
    return models


@pytest.fixture
def no_sd21_env(monkeypatch):
    monkeypatch.delenv("GFM4D_SD21_DIR", raising=False)


# --- key layout at SD-2.1 size (meta device: shapes only) -------------------------------------


def state_shapes(model) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def test_sd21_2d_controlnet_is_diffusers_controlnet_plus_metadata(tmp_path):
    with torch.device("meta"):
        controlnet = MetadataControlNet.from_config(REAL_2D_CONFIG)
        plain = ControlNetModel.from_config(
            {k: v for k, v in REAL_2D_CONFIG.items() if k not in ("conditioning_in_channels", "conditioning_scale")}
            | {"conditioning_channels": 10}
        )
    ours, theirs = state_shapes(controlnet), state_shapes(plain)
    metadata = {k: v for k, v in ours.items() if k.startswith("metadata_embedding.")}
    assert {k: v for k, v in ours.items() if k not in metadata} == theirs
    assert len(metadata) == 7 * 4
    assert metadata["metadata_embedding.6.linear_1.weight"] == (1280, 320)
    assert metadata["metadata_embedding.6.linear_2.weight"] == (1280, 1280)
    # diffusers' conditioning encoder layout, unchanged by conditioning_scale: conv_in, blocks.0-5, conv_out.
    prefix = "controlnet_cond_embedding."
    encoder = sorted({".".join(k.split(".")[1:3]) for k in ours if k.startswith(prefix)})
    assert encoder == ["blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5", "conv_in.bias",
                       "conv_in.weight", "conv_out.bias", "conv_out.weight"]
    assert ours["controlnet_cond_embedding.conv_in.weight"] == (16, 10, 3, 3)
    assert ours["controlnet_cond_embedding.blocks.5.weight"] == (256, 96, 3, 3)
    assert ours["controlnet_cond_embedding.conv_out.weight"] == (320, 256, 3, 3)
    assert [ours[f"controlnet_down_blocks.{i}.weight"][0] for i in range(12)] == SD21_RESIDUAL_CHANNELS
    assert "controlnet_down_blocks.12.weight" not in ours

    controlnet.save_config(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["_class_name"] == "ControlNetModel"  # as the released configs
    assert (saved["use_metadata"], saved["num_metadata"]) == (True, 7)
    assert (saved["conditioning_in_channels"], saved["conditioning_scale"]) == (10, 2)
    with torch.device("meta"):
        again = MetadataControlNet.from_config(saved)
    assert state_shapes(again) == ours and again.condition_factor == 4


@pytest.mark.parametrize(("scale", "strides"), [(1, [2, 2, 2]), (2, [2, 2, 1]), (4, [2, 1, 1]), (8, [1, 1, 1])])
def test_conditioning_scale_sets_the_encoder_strides(scale, strides):
    # Spec §5: stride 2 while the running scale (doubling per stage) is below 8; weights unchanged.
    with torch.device("meta"):
        controlnet = MetadataControlNet.from_config({**REAL_2D_CONFIG, "conditioning_scale": scale})
    blocks = controlnet.controlnet_cond_embedding.blocks
    assert [blocks[i].stride for i in (1, 3, 5)] == [(s, s) for s in strides]
    assert all(blocks[i].stride == (1, 1) for i in (0, 2, 4))
    assert controlnet.condition_factor == 8 // scale
    assert controlnet.controlnet_cond_embedding.blocks[5].weight.shape == (256, 96, 3, 3)


def test_unsupported_conditioning_scale_is_refused():
    with pytest.raises(ValueError, match="conditioning_scale must be one of"):
        MetadataControlNet.from_config({**TINY_2D, "conditioning_scale": 3})


def test_sd21_3d_controlnet_keys_and_shapes(tmp_path):
    with torch.device("meta"):
        controlnet = ControlNetModel3D.from_config(REAL_3D_CONFIG)
        unet = SatUNet.from_config(SATUNET_CONFIG)
    ours = state_shapes(controlnet)
    # The trunk is the SatUNet's encoder, key for key.
    trunk = ("conv_in.", "time_embedding.", "metadata_embedding.", "down_blocks.", "mid_block.")
    assert {k: v for k, v in ours.items() if k.startswith(trunk)} == {
        k: v for k, v in state_shapes(unet).items() if k.startswith(trunk)
    }
    # Zero 1x1x1 Conv3d per residual and for the mid block.
    zero_convs = [ours[f"controlnet_down_blocks.{i}.weight"] for i in range(12)]
    assert zero_convs == [(c, c, 1, 1, 1) for c in SD21_RESIDUAL_CHANNELS]
    assert ours["controlnet_mid_block.weight"] == (1280, 1280, 1, 1, 1)
    # Conv3d conditioning encoder: frames mixed by k=3, space halved by k=(1,3,3) s=(1,2,2).
    assert ours["controlnet_cond_embedding.conv_in.weight"] == (16, 3, 3, 3, 3)
    assert ours["controlnet_cond_embedding.blocks.0.weight"] == (16, 16, 3, 3, 3)
    assert ours["controlnet_cond_embedding.blocks.1.weight"] == (32, 16, 1, 3, 3)
    assert ours["controlnet_cond_embedding.blocks.5.weight"] == (256, 96, 1, 3, 3)
    assert ours["controlnet_cond_embedding.conv_out.weight"] == (320, 256, 3, 3, 3)
    assert controlnet.controlnet_cond_embedding.blocks[1].stride == (1, 2, 2)
    # Temporal blocks only after conv_in and the three downsamplers; a mixing weight per residual.
    assert sorted({int(k.split(".")[1]) for k in ours if k.startswith("temporal_blocks.")}) == [0, 3, 6, 9]
    assert [ours[f"mixing_attns.{i}"] for i in range(12)] == [()] * 12 and "mixing_attns.12" not in ours
    # Index 0: 8 heads x 64 on 320 channels, GroupNorm 32.
    first = "temporal_blocks.0."
    assert ours[first + "norm.weight"] == (320,)
    assert ours[first + "proj_in.weight"] == (512, 320)
    assert ours[first + "transformer_blocks.0.attn1.to_q.weight"] == (512, 512)
    assert ours[first + "transformer_blocks.0.attn2.to_k.weight"] == (512, 512)  # self-attention, not 1024 text
    assert ours[first + "transformer_blocks.0.ff.net.0.proj.weight"] == (2 * 4 * 512, 512)  # GEGLU
    assert ours[first + "transformer_blocks.0.ff.net.2.weight"] == (512, 4 * 512)
    assert not any(k.startswith(first) and "pos_embed" in k for k in ours)
    assert "temporal_blocks.0.transformer_blocks.1.norm1.weight" not in ours  # one layer
    blocks = controlnet.temporal_blocks
    assert (blocks[0].num_attention_heads, blocks[0].attention_head_dim, blocks[0].norm.num_groups) == (8, 64, 32)
    # After a downsampler: head size attention_head_dim[k], heads = channels // head size.
    for index, channels, head_size in ((3, 320, 5), (6, 640, 10), (9, 1280, 20)):
        assert (blocks[index].num_attention_heads, blocks[index].attention_head_dim) == (64, head_size)
        assert ours[f"temporal_blocks.{index}.proj_in.weight"] == (channels, channels)
        assert blocks[index].norm.num_groups == 32

    controlnet.save_config(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["_class_name"] == "ControlNetModel3D" and saved["use_temporal_transformer"] is True
    with torch.device("meta"):
        plain = ControlNetModel3D.from_config({**REAL_3D_CONFIG, "use_temporal_transformer": False})
    assert not any(k.startswith(("temporal_blocks.", "mixing_attns.")) for k in plain.state_dict())


def test_tiny_3d_layout_is_derived_from_the_blocks():
    controlnet = ControlNetModel3D.from_config(TINY_3D)
    # conv_in, resnet, downsampler | resnet: temporal blocks at 0 and 2.
    assert controlnet.temporal_indices == (0, 2)
    first = controlnet.temporal_blocks[0]
    # DiffusionSat's rule at any width: 8 heads of 64 and GroupNorm 32, here on 32 channels.
    assert (first.num_attention_heads, first.attention_head_dim, first.norm.num_groups) == (8, 64, 32)
    assert tuple(first.proj_in.weight.shape) == (512, 32)
    second = controlnet.temporal_blocks[2]
    assert (second.num_attention_heads, second.attention_head_dim, second.norm.num_groups) == (16, 2, 8)
    compact = ControlNetModel3D.from_config({**TINY_3D, "gfm4d_compact_first_temporal": True}).temporal_blocks[0]
    # The GFM4D-only compact block: 8 heads of 32 // 4 = 8; 32 divides by 32: GroupNorm 32.
    assert (compact.num_attention_heads, compact.attention_head_dim, compact.norm.num_groups) == (8, 8, 32)
    deeper_config = {**TINY_3D, "layers_per_block": 2, "block_out_channels": [16, 32, 48], "attention_head_dim": [4, 8, 8],
                     "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]}
    deeper = ControlNetModel3D.from_config({**deeper_config, "gfm4d_compact_first_temporal": True})
    assert deeper.temporal_indices == (0, 3, 6) and len(deeper.controlnet_down_blocks) == 9
    # 16 channels, compact: heads of 4; 16 does not divide by 32, so the UNet's norm_num_groups.
    assert (deeper.temporal_blocks[0].attention_head_dim, deeper.temporal_blocks[0].norm.num_groups) == (4, 8)
    # The original rule cannot split 16 channels into 32 groups (nor could DiffusionSat): said, not crashed.
    with pytest.raises(ValueError, match="gfm4d_compact_first_temporal"):
        ControlNetModel3D.from_config(deeper_config)


def test_narrow_checkpoint_saved_by_the_original_code_loads(tmp_path):
    """A 32-channel temporal ControlNet as DiffusionSat saves it (8 x 64 first block, no GFM4D keys)."""
    torch.manual_seed(3)
    original = ControlNetModel3D.from_config(TINY_3D)
    original.save_pretrained(tmp_path, safe_serialization=False)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("gfm4d_compact_first_temporal")  # the original code writes no such key
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = ControlNetModel3D.from_pretrained(tmp_path)
    weight = "temporal_blocks.0.proj_in.weight"
    assert tuple(loaded.state_dict()[weight].shape) == (512, 32)
    assert torch.equal(loaded.state_dict()[weight], original.state_dict()[weight])


def test_demo_temporal_controlnet_asks_for_the_compact_block(demo_dir, tmp_path):
    from engine.models.demo import _is_complete

    config = json.loads((demo_dir / "demo-controlnet-3d" / "controlnet" / "config.json").read_text())
    assert config["gfm4d_compact_first_temporal"] is True
    # A copy built before the key existed is outdated: `gfm4d demo` rebuilds it instead of failing to load it.
    old = tmp_path / "demo-controlnet-3d"
    shutil.copytree(demo_dir / "demo-controlnet-3d", old)
    (old / "controlnet" / "config.json").write_text(
        json.dumps({k: v for k, v in config.items() if k != "gfm4d_compact_first_temporal"}))
    assert _is_complete(demo_dir / "demo-controlnet-3d") and not _is_complete(old)


# --- forward ----------------------------------------------------------------------------------


TINY_RESIDUALS = [(B, 32, 16, 16), (B, 32, 16, 16), (B, 32, 8, 8), (B, 64, 8, 8), (B, 64, 8, 8)]  # + mid


def test_2d_condition_is_8_over_scale_times_the_latent():
    controlnet = tiny_controlnet(TINY_2D, seed=3)  # conditioning_scale 2, 10 bands
    sample, timestep, text, metadata = inputs(size=16)
    condition = sentinel(size=64)
    residuals = run(controlnet, sample, timestep, text, condition, metadata=metadata)
    assert shapes(residuals) == TINY_RESIDUALS
    with pytest.raises(ValueError, match="64x64 px for a 16x16 latent"):
        run(controlnet, sample, timestep, text, torch.rand(B, 10, 128, 128), metadata=metadata)
    scale_1 = tiny_controlnet(TINY_2D, seed=3, conditioning_scale=1, conditioning_in_channels=3)
    assert shapes(run(scale_1, sample, timestep, text, torch.rand(B, 3, 128, 128), metadata=metadata)) == TINY_RESIDUALS


def test_3d_takes_frames_8x_the_latent():
    controlnet = tiny_controlnet(TINY_3D, seed=4)
    sample, timestep, text, metadata = inputs(size=16)
    residuals = run(controlnet, sample, timestep, text, frames(3, size=128), metadata=metadata)
    assert shapes(residuals) == TINY_RESIDUALS
    with pytest.raises(ValueError, match="each conditioning frame must be 128x128"):
        run(controlnet, sample, timestep, text, frames(3, size=64), metadata=metadata)
    with pytest.raises(ValueError, match="frame stack"):
        run(controlnet, sample, timestep, text, frames(3, size=128)[:, :, 0], metadata=metadata)
    with pytest.raises(ValueError, match="pass zeros"):
        run(controlnet, sample, timestep, text, frames(3, size=128))


def frame_wise(controlnet: ControlNetModel3D) -> ControlNetModel3D:
    """Zero the taps that look at neighbouring frames, so each frame is encoded on its own."""
    encoder = controlnet.controlnet_cond_embedding
    with torch.no_grad():
        for conv in (encoder.conv_in, *encoder.blocks, encoder.conv_out):
            if conv.kernel_size[0] == 3:
                conv.weight[:, :, [0, 2]] = 0
    return controlnet


def test_3d_residuals_are_summed_over_frames():
    controlnet = frame_wise(tiny_controlnet(TINY_3D, seed=5))
    with torch.no_grad():
        for mixing in controlnet.mixing_attns:
            mixing.zero_()
    sample, timestep, text, metadata = inputs()
    one = frames(1)
    single = run(controlnet, sample, timestep, text, one, metadata=metadata, cond_metadata=metadata)
    two = one.repeat(1, 1, 2, 1, 1)  # the same frame twice
    double = run(controlnet, sample, timestep, text, two, metadata=metadata, cond_metadata=metadata)
    for a, b in zip((*double[0], double[1]), (*single[0], single[1])):
        torch.testing.assert_close(a, 2 * b, rtol=1e-4, atol=1e-5)
    assert max_difference(single, double) > 1e-2  # a sum, not a mean


def test_3d_temporal_mixing_is_clamped_and_only_where_there_is_a_block():
    controlnet = tiny_controlnet(TINY_3D, seed=6)
    sample, timestep, text, metadata = inputs()
    condition = frames(3)

    def with_mixing(index: int, value: float):
        with torch.no_grad():
            controlnet.mixing_attns[index].fill_(value)
        return run(controlnet, sample, timestep, text, condition, metadata=metadata)

    off, on, over = with_mixing(0, 0.0), with_mixing(0, 1.0), with_mixing(0, 5.0)
    assert (off[0][0] - on[0][0]).abs().max() > 1e-3  # the temporal block changes residual 0
    assert torch.equal(on[0][1], off[0][1])  # and only residual 0
    assert torch.equal(over[0][0], on[0][0])  # α = clamp(5, 0, 1) = 1
    with_mixing(0, 0.5)
    assert torch.equal(with_mixing(1, 1.0)[0][1], with_mixing(1, 0.0)[0][1])  # Identity: mixing unused


def test_conditioning_and_cond_metadata_change_the_residuals():
    sample, timestep, text, metadata = inputs()
    other = torch.tensor([OTHER_METADATA] * B)
    for controlnet, condition in (
        (tiny_controlnet(TINY_2D, seed=7), sentinel()),
        (tiny_controlnet(TINY_3D, seed=8), frames(3)),
    ):
        base = run(controlnet, sample, timestep, text, condition, metadata=metadata, cond_metadata=metadata)
        moved = run(controlnet, sample, timestep, text, 1 - condition, metadata=metadata, cond_metadata=metadata)
        recast = run(controlnet, sample, timestep, text, condition, metadata=metadata, cond_metadata=other)
        without = run(controlnet, sample, timestep, text, condition, metadata=metadata)
        assert max_difference(base, moved) > 1e-3
        assert max_difference(base, recast) > 1e-3
        assert max_difference(base, without) > 1e-3
        # The forward's conditioning_scale is a plain multiplier.
        half = run(controlnet, sample, timestep, text, condition, metadata=metadata, cond_metadata=metadata,
                   conditioning_scale=0.5)
        torch.testing.assert_close(half[0][2], 0.5 * base[0][2])


def test_3d_shared_cond_metadata_equals_repeated_frames():
    controlnet = tiny_controlnet(TINY_3D, seed=9)
    sample, timestep, text, metadata = inputs()
    condition = frames(3)
    shared = run(controlnet, sample, timestep, text, condition, metadata=metadata, cond_metadata=metadata)
    per_frame = metadata[:, :, None].repeat(1, 1, 3)
    repeated = run(controlnet, sample, timestep, text, condition, metadata=metadata, cond_metadata=per_frame)
    assert max_difference(shared, repeated) < 1e-5
    per_frame[:, :, 1] = torch.tensor(OTHER_METADATA)  # one frame from another date and place
    assert max_difference(shared, run(controlnet, sample, timestep, text, condition, metadata=metadata,
                                      cond_metadata=per_frame)) > 1e-3
    with pytest.raises(ValueError, match="cond_metadata has 2 frames"):
        run(controlnet, sample, timestep, text, condition, metadata=metadata, cond_metadata=per_frame[:, :, :2])


def test_2d_cond_metadata_frames_are_summed_into_the_time_embedding():
    controlnet = tiny_controlnet(TINY_2D, seed=10)
    sample, timestep, text, metadata = inputs()
    condition = sentinel()
    seen = []
    controlnet.down_blocks[0].resnets[0].register_forward_pre_hook(lambda module, args: seen.append(args[1]))

    def temb(cond_metadata):
        run(controlnet, sample, timestep, text, condition, metadata=metadata, cond_metadata=cond_metadata)
        return seen[-1]

    none, single = temb(None), temb(metadata)
    assert (single - none).abs().max() > 1e-3
    torch.testing.assert_close(temb(metadata[:, :, None]), single)  # (B, 7, 1) == (B, 7)
    torch.testing.assert_close(temb(metadata[:, :, None].repeat(1, 1, 2)) - none, 2 * (single - none))


def test_satunet_takes_the_controlnet_residuals():
    unet = tiny_unet(seed=11)
    sample, timestep, text, metadata = inputs()
    for controlnet, condition in (
        (tiny_controlnet(TINY_2D, seed=12), sentinel()),
        (tiny_controlnet(TINY_3D, seed=13), frames(3)),
    ):
        down, mid = run(controlnet, sample, timestep, text, condition, metadata=metadata, cond_metadata=metadata)
        with torch.no_grad():
            plain = unet(sample, timestep, text, metadata=metadata).sample
            guided = unet(sample, timestep, text, metadata=metadata, down_block_additional_residuals=down,
                          mid_block_additional_residual=mid).sample
            zeros = unet(sample, timestep, text, metadata=metadata,
                         down_block_additional_residuals=[torch.zeros_like(r) for r in down],
                         mid_block_additional_residual=torch.zeros_like(mid)).sample
        assert torch.equal(zeros, plain)  # residuals are added to the skips
        assert (guided - plain).abs().max() > 1e-3


def test_from_unet_copies_the_trunk():
    unet = tiny_unet(seed=14)
    controlnet = ControlNetModel3D.from_unet(unet, use_temporal_transformer=True)
    state, unet_state = controlnet.state_dict(), unet.state_dict()
    trunk = [k for k in state if k.startswith(("conv_in.", "time_embedding.", "metadata_embedding.", "down_blocks.",
                                                "mid_block."))]
    assert len(trunk) > 100 and all(torch.equal(state[k], unet_state[k]) for k in trunk)
    assert controlnet.config.cross_attention_dim == 32 and controlnet.config.num_metadata == 7
    assert not controlnet.controlnet_mid_block.weight.any()  # zero convs stay zero


# --- saving and loading -----------------------------------------------------------------------


@pytest.mark.parametrize(("config", "kind"), [(TINY_3D, CONTROLNET_3D), (TINY_2D, CONTROLNET_2D)])
def test_released_layout_reloads_identically(tmp_path, config, kind):
    controlnet = tiny_controlnet(config, seed=15)
    folder = save_released(controlnet, tmp_path / "run" / "controlnet")
    reloaded = build_controlnet(folder, kind).eval()
    assert type(reloaded) is type(controlnet)
    sample, timestep, text, metadata = inputs()
    condition = frames(3) if kind == CONTROLNET_3D else sentinel()
    before = run(controlnet, sample, timestep, text, condition, metadata=metadata, cond_metadata=metadata)
    after = run(reloaded, sample, timestep, text, condition, metadata=metadata, cond_metadata=metadata)
    assert all(torch.equal(a, b) for a, b in zip((*before[0], before[1]), (*after[0], after[1])))


def test_demo_controlnets_are_listed_and_loaded(demo_dir, no_sd21_env):
    registry = ModelRegistry(demo_dir)
    infos = {info.name: info for info in registry.list()}
    temporal, superres = infos["demo-controlnet-3d"], infos["demo-superres"]
    assert (temporal.kind, superres.kind) == (CONTROLNET_3D, CONTROLNET_2D)
    assert temporal.tasks == ("predict",) and superres.tasks == ("superres",)  # 10 Sentinel-2 bands
    assert temporal.ready and superres.ready and temporal.num_frames == 3
    # 3D: UNet from the base model named in gfm4d.json; 2D: the run folder's own unet/.
    assert temporal.base_model == "demo-satunet" and temporal.unet_path == infos["demo-satunet"].unet_path
    assert superres.base_model is None and superres.unet_path == demo_dir / "demo-superres" / "unet"
    assert temporal.components["controlnet"] == demo_dir / "demo-controlnet-3d" / "controlnet"
    assert json.loads((temporal.components["controlnet"] / "config.json").read_text())["_class_name"] == (
        "ControlNetModel3D")
    assert json.loads((superres.components["controlnet"] / "config.json").read_text())["_class_name"] == (
        "ControlNetModel")

    model = registry.load("demo-controlnet-3d")
    assert isinstance(model.controlnet, ControlNetModel3D) and isinstance(model.unet, SatUNet)
    assert not model.controlnet.training and model.controlnet.temporal_indices == (0, 2)
    sr = registry.load("demo-superres").controlnet
    assert isinstance(sr, MetadataControlNet) and sr.condition_factor == 4
    assert registry.load("demo-satunet").controlnet is None

    # The demo's zero convs are filled: its conditioning changes the UNet's prediction.
    sample, timestep, text, metadata = inputs(batch=1, size=16)
    outputs = []
    for condition in (frames(3, batch=1, size=128), torch.zeros(1, 3, 3, 128, 128)):
        down, mid = run(model.controlnet, sample, timestep, text, condition, metadata=metadata, cond_metadata=metadata)
        with torch.no_grad():
            outputs.append(model.unet(sample, timestep, text, metadata=metadata, down_block_additional_residuals=down,
                                      mid_block_additional_residual=mid).sample)
    assert (outputs[0] - outputs[1]).abs().mean() > 1e-3


def copy_model(demo_dir: Path, name: str, models: Path, new_name: str | None = None) -> Path:
    return shutil.copytree(demo_dir / name, models / (new_name or name))


def set_settings(folder: Path, **changes) -> None:
    path = folder / "gfm4d.json"
    settings = json.loads(path.read_text())
    settings.update(changes)
    write_json(path, {k: v for k, v in settings.items() if v is not None})


def test_base_unet_choice(demo_dir, tmp_path, no_sd21_env):
    models = tmp_path / "models"
    copy_model(demo_dir, "demo-satunet", models)
    superres = copy_model(demo_dir, "demo-superres", models)
    temporal = copy_model(demo_dir, "demo-controlnet-3d", models)

    set_settings(superres, base_model="demo-satunet")  # explicit beats the folder's own unet/
    assert inspect_model_folder(superres).unet_path == models / "demo-satunet" / "checkpoint-100" / "unet"

    set_settings(temporal, base_model=None)  # no base: listed, not ready, loading says what to do
    info = ModelRegistry(models).get("demo-controlnet-3d")
    assert info.kind == CONTROLNET_3D and info.unet_path is None and not info.ready
    with pytest.raises(ModelError, match='"base_model": '):
        ModelRegistry(models).load("demo-controlnet-3d")

    shutil.copytree(models / "demo-satunet" / "checkpoint-100" / "unet", temporal / "unet")  # a finished run's unet/
    assert inspect_model_folder(temporal).unet_path == temporal / "unet"
    assert ModelRegistry(models).load("demo-controlnet-3d").unet.config.num_metadata == 7


@pytest.mark.parametrize(
    ("base", "reason"),
    [
        ("no-such-model", "has no folder 'no-such-model'"),
        ("demo-superres", "the base must be a single-image model"),
        ("demo-controlnet-3d", "this ControlNet itself"),
        ("../demo-satunet", "not a path"),
    ],
)
def test_bad_base_model_says_why(demo_dir, tmp_path, no_sd21_env, base, reason):
    models = tmp_path / "models"
    for name in ("demo-satunet", "demo-superres", "demo-controlnet-3d"):
        copy_model(demo_dir, name, models)
    set_settings(models / "demo-controlnet-3d", base_model=base)
    registry = ModelRegistry(models)
    with pytest.raises(ModelError, match=reason):
        registry.get("demo-controlnet-3d")
    assert reason in registry.scan().skipped["demo-controlnet-3d"]


def test_controlnet_must_fit_its_base_unet(demo_dir, tmp_path, no_sd21_env):
    models = tmp_path / "models"
    temporal = copy_model(demo_dir, "demo-controlnet-3d", models)
    wide = models / "wide-satunet" / "unet"
    torch.manual_seed(0)
    save_released(SatUNet.from_config({**TINY_UNET, "block_out_channels": [32, 32]}), wide)
    set_settings(temporal, base_model="wide-satunet")
    for component in ("vae", "text_encoder", "tokenizer", "scheduler"):  # and components come from the base
        shutil.move(temporal / component, models / "wide-satunet" / component)
    info = ModelRegistry(models).get("demo-controlnet-3d")
    assert info.ready and info.components["vae"] == models / "wide-satunet" / "vae"
    with pytest.raises(ModelError, match=r"does not fit the UNet .*block_out_channels \[32, 64\] != \[32, 32\]"):
        ModelRegistry(models).load("demo-controlnet-3d")


def test_plain_unet_is_not_a_metadata_controlnet_base(demo_dir, tmp_path, no_sd21_env):
    models = tmp_path / "models"
    copy_model(demo_dir, "demo-sd", models)
    temporal = copy_model(demo_dir, "demo-controlnet-3d", models)
    set_settings(temporal, base_model="demo-sd")
    with pytest.raises(ModelError, match="is a sd-unet, but this ControlNet needs a satunet base"):
        inspect_model_folder(temporal)


def test_import_a_controlnet_run_with_a_base_model(demo_dir, tmp_path, no_sd21_env):
    models = tmp_path / "models"
    copy_model(demo_dir, "demo-satunet", models)
    source = copy_model(demo_dir, "demo-controlnet-3d", tmp_path / "downloads", "controlnet3d-texas")
    (source / "checkpoint-50" / "controlnet").mkdir(parents=True)
    (source / "checkpoint-50" / "optimizer.bin").write_bytes(b"\0" * 100)
    registry = ModelRegistry(models)

    info = registry.import_model(source)

    assert info.kind == CONTROLNET_3D and info.base_model == "demo-satunet" and info.ready
    assert info.components["controlnet"] == models / "controlnet3d-texas" / "controlnet"
    assert not (models / "controlnet3d-texas" / "checkpoint-50").exists()
    assert not (models / "controlnet3d-texas" / "unet").exists()  # the base's UNet stays in the base
    loaded = registry.load("controlnet3d-texas").controlnet.state_dict()
    original = ModelRegistry(demo_dir).load("demo-controlnet-3d").controlnet.state_dict()
    assert loaded.keys() == original.keys() and all(torch.equal(loaded[k], original[k]) for k in loaded)
    with pytest.raises(ModelError, match="has no folder 'demo-satunet'"):
        ModelRegistry(tmp_path / "elsewhere").import_model(source, name="orphan")
