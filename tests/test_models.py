"""Model registry, SatUNet, weight loading and demo models (spec: specs/diffusionsat.md §1-4)."""

import hashlib
import json
import math
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UNet2DConditionModel
from diffusers import PNDMScheduler, UniPCMultistepScheduler

from engine.errors import ModelError
from engine.models.demo import build_demo_models
from engine.models.layout import (
    CONTROLNET_2D,
    CONTROLNET_3D,
    SATUNET,
    SD_INPAINT_UNET,
    SD_UNET,
    inspect_model_folder,
    recognise_controlnet_config,
    recognise_unet_config,
)
from engine.models.loading import build_unet
from engine.models.metadata_embedding import project_metadata
from engine.models.registry import BUILTIN_DIR, ModelRegistry
from engine.models.satunet import SatUNet
from engine.models.weights import load_into, load_state_dict

# The authors' worked example (spec §1): lon 153.3167, lat -27.862, gsd 0.4115 m, 2017-02-11.
EXAMPLE_METADATA = [925.8798, 345.2111, 411.4541, 0.0, 308.3333, 166.6667, 354.8387]

# A DiffusionSat unet/config.json as its SatUNet (diffusers 0.17 era) writes it: SD-2.1-768's UNet
# config, the constructor keys of that time, and the two metadata keys.
REAL_SATUNET_CONFIG = {
    "_class_name": "SatUNet",
    "_diffusers_version": "0.17.0.dev0",
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "num_metadata": 7,
    "only_cross_attention": False,
    "out_channels": 4,
    "resnet_time_scale_shift": "default",
    "sample_size": 96,
    "time_cond_proj_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": True,
    "use_linear_projection": True,
    "use_metadata": True,
}
# The same with tiny numbers, so that it can be instantiated in a test.
TINY_REAL_CONFIG = {
    **REAL_SATUNET_CONFIG,
    "attention_head_dim": [2, 4],
    "block_out_channels": [32, 64],
    "cross_attention_dim": 32,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 8,
}
C = 32  # block_out_channels[0] of the tiny configs
SD2_UNET_PARAMETERS = 865_910_724  # published size of the SD-2.x UNet


class NotATensor:
    """Any Python object a weights-only unpickler must refuse."""


def tiny_satunet(seed: int = 0, **overrides) -> SatUNet:
    torch.manual_seed(seed)
    return SatUNet.from_config({**TINY_REAL_CONFIG, **overrides}).eval()


def unet_inputs(batch: int = 2, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, 16, 16, generator=generator)
    text = torch.randn(batch, 77, C, generator=generator)
    metadata = torch.tensor([EXAMPLE_METADATA] * batch)
    return sample, torch.tensor([500] * batch), text, metadata


def run(unet, sample, timestep, text, metadata=None):
    with torch.no_grad():
        return unet(sample, timestep, text, metadata=metadata).sample


def save_diffusionsat_unet(unet: torch.nn.Module, folder: Path) -> Path:
    """Write a UNet the way DiffusionSat's training run does: config.json + a .bin state dict."""
    unet.save_config(folder)
    torch.save(unet.state_dict(), folder / "diffusion_pytorch_model.bin")
    return folder


def capture(seen: dict, key: str, position: int | None = None):
    """A forward hook (position None: the output) or pre-hook (an input) that records, changes nothing."""

    def hook(module, args, *output):
        seen.setdefault(key, output[0] if position is None else args[position])

    return hook


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")


def reference_sinusoid(value: float, dim: int) -> torch.Tensor:
    """diffusers' timestep sinusoid (flip_sin_to_cos, freq_shift 0, period 10000) in float64."""
    half = dim // 2
    phases = value * torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
    return torch.cat([torch.cos(phases), torch.sin(phases)])


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("models")
    build_demo_models(models)
    return models


@pytest.fixture
def no_sd21_env(monkeypatch):
    monkeypatch.delenv("GFM4D_SD21_DIR", raising=False)


def copy_demo(demo_dir: Path, name: str, destination: Path, new_name: str | None = None) -> Path:
    target = destination / (new_name or name)
    shutil.copytree(demo_dir / name, target)
    return target


# --- recognition (spec §3) -------------------------------------------------------------------


SD21_UNET_CONFIG = {  # the plain SD-2.1 UNet config DiffusionSat started from
    **{k: v for k, v in REAL_SATUNET_CONFIG.items() if k not in ("use_metadata", "num_metadata")},
    "_class_name": "UNet2DConditionModel",
}


@pytest.mark.parametrize(
    ("config", "kind"),
    [
        (REAL_SATUNET_CONFIG, SATUNET),
        ({**REAL_SATUNET_CONFIG, "use_metadata": False}, SD_UNET),  # a SatUNet without metadata is plain
        (SD21_UNET_CONFIG, SD_UNET),
        ({**SD21_UNET_CONFIG, "in_channels": 9}, SD_INPAINT_UNET),
    ],
)
def test_unet_configs_are_recognised(config, kind):
    assert recognise_unet_config(config) == kind


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"_class_name": "UNet2DConditionModel", "in_channels": 8}, "in_channels=8"),
        ({"_class_name": "UNet3DConditionModel"}, "UNet3DConditionModel"),
    ],
)
def test_unusable_unet_configs_say_why(config, reason):
    with pytest.raises(ModelError, match=reason):
        recognise_unet_config(config)


def test_controlnet_configs_are_recognised():
    metadata_keys = {"use_metadata": True, "num_metadata": 7, "conditioning_in_channels": 10, "conditioning_scale": 2}
    assert recognise_controlnet_config({"_class_name": "ControlNetModel", **metadata_keys}) == CONTROLNET_2D
    assert recognise_controlnet_config({"_class_name": "ControlNetModel3D", "use_temporal_transformer": True}) == (
        CONTROLNET_3D
    )
    with pytest.raises(ModelError, match="plain diffusers ControlNetModel"):
        recognise_controlnet_config({"_class_name": "ControlNetModel", "conditioning_channels": 3})


def test_real_diffusionsat_run_folder_is_recognised(tmp_path, no_sd21_env):
    run_dir = tmp_path / "finetune_sd21_sn-satlas-fmow_snr5_md7norm_bs64"
    write_json(run_dir / "checkpoint-150000" / "unet" / "config.json", REAL_SATUNET_CONFIG)
    (run_dir / "checkpoint-150000" / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not read here")
    write_json(run_dir / "model_index.json", {"_class_name": "SomethingElse", "unet": ["x", "UNet2DModel"]})

    info = inspect_model_folder(run_dir)

    assert info.kind == SATUNET and info.uses_metadata and info.num_metadata == 7
    assert info.unet_path == run_dir / "checkpoint-150000" / "unet"
    assert info.prediction_type == "v_prediction"
    assert info.native_resolution == 512  # not sample_size 96 x 8 = 768
    assert info.missing_components == ("vae", "text_encoder", "tokenizer", "scheduler")
    assert not info.ready


def test_real_config_builds_the_full_size_satunet(tmp_path):
    with torch.device("meta"):  # shapes only: no memory, no init time
        satunet = SatUNet.from_config(REAL_SATUNET_CONFIG)
        plain = UNet2DConditionModel.from_config(SD21_UNET_CONFIG)
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(plain) == SD2_UNET_PARAMETERS
    assert count(satunet) - count(plain) == 7 * (320 * 1280 + 1280 + 1280 * 1280 + 1280)
    shapes = {k: tuple(v.shape) for k, v in satunet.state_dict().items() if k.startswith("metadata_embedding.")}
    assert shapes["metadata_embedding.6.linear_1.weight"] == (1280, 320)
    assert shapes["metadata_embedding.6.linear_2.weight"] == (1280, 1280)
    assert set(satunet.state_dict()) - set(shapes) == set(plain.state_dict())

    satunet.save_config(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["_class_name"] == "SatUNet"
    assert (saved["use_metadata"], saved["num_metadata"]) == (True, 7)
    assert saved["attention_head_dim"] == [5, 10, 20, 20] and saved["cross_attention_dim"] == 1024
    assert saved["class_embed_type"] is None and saved["class_embeddings_concat"] is False


def test_unknown_config_keys_are_tolerated():
    unet = tiny_satunet(legacy_option_removed_since=True)
    assert unet.config.use_metadata is True
    assert unet.conv_in.out_channels == 32 and len(unet.metadata_embedding) == 7


# --- SatUNet --------------------------------------------------------------------------------


def test_satunet_state_dict_has_diffusionsat_metadata_keys():
    state = tiny_satunet().state_dict()
    metadata = {k: tuple(v.shape) for k, v in state.items() if "metadata" in k}
    expected = {}
    for i in range(7):
        expected[f"metadata_embedding.{i}.linear_1.weight"] = (4 * C, C)
        expected[f"metadata_embedding.{i}.linear_1.bias"] = (4 * C,)
        expected[f"metadata_embedding.{i}.linear_2.weight"] = (4 * C, 4 * C)
        expected[f"metadata_embedding.{i}.linear_2.bias"] = (4 * C,)
    assert metadata == expected


def test_satunet_saved_in_diffusionsat_layout_reloads_identically(tmp_path):
    unet = tiny_satunet(seed=3)
    folder = save_diffusionsat_unet(unet, tmp_path / "unet")
    assert json.loads((folder / "config.json").read_text())["_class_name"] == "SatUNet"

    reloaded = build_unet(folder, SATUNET).eval()

    assert isinstance(reloaded, SatUNet)
    inputs = unet_inputs()
    assert torch.equal(run(unet, *inputs), run(reloaded, *inputs))


def test_metadata_changes_the_output():
    unet = tiny_satunet(seed=4)
    sample, timestep, text, metadata = unet_inputs()
    other = metadata.clone()
    other[:, 2] = 10000.0  # gsd 10 m instead of 0.41 m
    base = run(unet, sample, timestep, text, metadata)
    assert (base - run(unet, sample, timestep, text, other)).abs().max() > 1e-4
    assert (base - run(unet, sample, timestep, text, torch.zeros_like(metadata))).abs().max() > 1e-4


def test_zero_metadata_goes_through_the_mlps_and_none_is_refused():
    # CFG's unconditional half uses zeros, which embed to sinusoid [cos 0 = 1 ..., sin 0 = 0 ...]
    # and then through every MLP; skipping the MLPs (metadata=None) is a different model.
    unet = tiny_satunet(seed=5)
    sample, timestep, text, metadata = unet_inputs()
    zero_sinusoid = torch.cat([torch.ones(C // 2), torch.zeros(C // 2)]).expand(2, C)
    with torch.no_grad():
        expected = sum(mlp(zero_sinusoid) for mlp in unet.metadata_embedding)
        embedded = unet.get_class_embed(sample, torch.zeros(2, 7))
    torch.testing.assert_close(embedded, expected)
    assert expected.abs().max() > 1e-3
    with pytest.raises(ValueError, match="pass zeros"):
        run(unet, sample, timestep, text, None)


def test_metadata_embedding_is_added_to_the_time_embedding():
    unet = tiny_satunet(seed=6)
    sample, timestep, text, metadata = unet_inputs()
    seen = {}
    unet.time_embedding.register_forward_hook(capture(seen, "time"))
    unet.down_blocks[0].resnets[0].register_forward_pre_hook(capture(seen, "temb", position=1))
    run(unet, sample, timestep, text, metadata)
    with torch.no_grad():
        metadata_embedding = unet.get_class_embed(sample, metadata)
    assert seen["temb"].shape == (2, 4 * C)  # added, not concatenated
    torch.testing.assert_close(seen["temb"], seen["time"] + metadata_embedding)


def test_metadata_sinusoid_is_float32_even_in_a_half_precision_model():
    unet = tiny_satunet(seed=7).half()
    sample, timestep, text, metadata = unet_inputs(batch=1)
    seen = {}
    unet.metadata_embedding[0].register_forward_pre_hook(capture(seen, "lon", position=0))
    run(unet, sample.half(), timestep, text.half(), metadata)

    reference = reference_sinusoid(EXAMPLE_METADATA[0], C)
    assert seen["lon"].dtype == torch.float16
    assert (seen["lon"][0].double() - reference).abs().max() < 1e-3
    # The check has teeth: lon rounded to fp16 (926.0) before the sinusoid is far off.
    assert (reference_sinusoid(float(torch.tensor(925.8798).half()), C) - reference).abs().max() > 0.05
    with pytest.raises(ValueError, match="float32"):
        run(unet, sample.half(), timestep, text.half(), metadata.half())


def test_metadata_phase_error_at_sd_width():
    with torch.device("meta"):
        time_proj = SatUNet.from_config(REAL_SATUNET_CONFIG).time_proj  # 320 dims, no weights
    projected = project_metadata(time_proj, torch.tensor([EXAMPLE_METADATA]))
    assert projected.dtype == torch.float32 and projected.shape == (1, 7, 320)
    for index, value in enumerate(EXAMPLE_METADATA):
        cos, sin = projected[0, index, :160].double(), projected[0, index, 160:].double()
        phases = value * torch.exp(-math.log(10000) * torch.arange(160, dtype=torch.float64) / 160)
        error = torch.remainder(torch.atan2(sin, cos) - phases + math.pi, 2 * math.pi) - math.pi
        assert error.abs().max() < 1e-3, (index, value)


# --- weights ----------------------------------------------------------------------------------


def test_bin_with_python_objects_is_refused(tmp_path):
    path = tmp_path / "diffusion_pytorch_model.bin"
    torch.save({"conv_in.weight": torch.zeros(1), "payload": NotATensor()}, path)
    with pytest.raises(ModelError, match="weights_only=True"):
        load_state_dict(path)


def test_weight_mismatch_lists_missing_and_unexpected_keys(tmp_path):
    unet = tiny_satunet()
    state = {k: v for k, v in unet.state_dict().items() if not k.startswith("metadata_embedding.")}
    state["class_embedding.weight"] = torch.zeros(3)
    folder = tmp_path / "unet"
    folder.mkdir()
    torch.save(state, folder / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelError) as raised:
        load_into(tiny_satunet(), folder)
    message = str(raised.value)
    assert "28 missing (metadata_embedding.0.linear_1.weight" in message  # 7 MLPs x 4 tensors
    assert "1 unexpected (class_embedding.weight)" in message
    assert "diffusion_pytorch_model.bin (" in message  # what the folder holds


def test_fp16_safetensors_variant_is_loaded(tmp_path):
    import safetensors.torch

    unet = tiny_satunet(seed=8)
    folder = tmp_path / "unet"
    unet.save_config(folder)
    half = {k: v.half().contiguous() for k, v in unet.state_dict().items()}
    safetensors.torch.save_file(half, str(folder / "diffusion_pytorch_model.fp16.safetensors"))
    loaded = build_unet(folder, SATUNET)
    weight = loaded.metadata_embedding[3].linear_2.weight
    assert weight.dtype == torch.float32
    assert torch.equal(weight, unet.metadata_embedding[3].linear_2.weight.half().float())


# --- registry ---------------------------------------------------------------------------------


def test_demo_models_are_listed_and_loaded(demo_dir, no_sd21_env):
    registry = ModelRegistry(demo_dir)
    infos = {info.name: info for info in registry.list()}
    # The models folder's own, then the built-in GFM4D-mini and its inpainting variant shipped in the package.
    assert sorted(infos) == ["demo-controlnet-3d", "demo-prepost", "demo-satunet", "demo-sd", "demo-superres", "gfm4d-mini",
                             "gfm4d-mini-inpaint"]
    assert infos["gfm4d-mini"].path.parent == BUILTIN_DIR and infos["gfm4d-mini"].ready
    assert infos["gfm4d-mini-inpaint"].ready and infos["gfm4d-mini-inpaint"].tasks == ("inpaint",)
    sat, sd = infos["demo-satunet"], infos["demo-sd"]
    assert (sat.kind, sd.kind) == (SATUNET, SD_UNET)
    assert sat.unet_path == demo_dir / "demo-satunet" / "checkpoint-100" / "unet"
    assert sat.native_resolution == sd.native_resolution == 128
    assert sat.ready and sd.ready

    model = registry.load("demo-satunet")
    assert isinstance(model.unet, SatUNet) and not model.unet.training
    assert (model.vae_scale_factor, model.latent_channels, model.vae_scaling_factor) == (8, 4, 0.18215)
    assert registry.load("demo-satunet") is model
    assert registry.load("demo-satunet", dtype=torch.bfloat16).unet.dtype == torch.bfloat16
    assert type(registry.load("demo-sd").unet) is UNet2DConditionModel


def test_demo_tokenizer_handles_captions(demo_dir, no_sd21_env):
    tokenizer = ModelRegistry(demo_dir).load("demo-sd").tokenizer
    caption = "a fmow satellite image of a farm in Italy"
    ids = tokenizer(caption, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    assert len(ids) == 77
    words = caption.lower().split()
    assert ids[0] == tokenizer.bos_token_id and ids[len(words) + 1] == tokenizer.eos_token_id
    assert ids[len(words) + 2 :] == [tokenizer.pad_token_id] * (77 - len(words) - 2)
    assert tokenizer.convert_ids_to_tokens(ids[1 : len(words) + 1]) == [word + "</w>" for word in words]
    assert len(tokenizer("Zürich, 2017-02-11!").input_ids) > 2  # unknown words fall back to bytes


def test_schedulers(demo_dir, tmp_path, no_sd21_env):
    models = tmp_path / "models"
    run_dir = copy_demo(demo_dir, "demo-satunet", models)
    sd_dir = copy_demo(demo_dir, "demo-sd", models)
    for folder in (run_dir, sd_dir):  # an SD-2.1 "base" style (epsilon) scheduler config
        config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        write_json(folder / "scheduler" / "scheduler_config.json", {**config, "prediction_type": "epsilon"})
    registry = ModelRegistry(models)
    sat = registry.load("demo-satunet")

    scheduler = sat.make_scheduler()
    assert isinstance(scheduler, DDIMScheduler) and scheduler is not sat.make_scheduler()
    assert scheduler.config.prediction_type == "v_prediction"  # forced for DiffusionSat (spec §4)
    assert scheduler.config.steps_offset == 1
    assert float(scheduler.betas[0]) == pytest.approx(0.00085) and float(scheduler.betas[-1]) == pytest.approx(0.012)
    expected = {
        "ddim": DDIMScheduler,
        "dpm++": DPMSolverMultistepScheduler,
        "euler": EulerDiscreteScheduler,
        "pndm": PNDMScheduler,
        "unipc": UniPCMultistepScheduler,
    }
    for name, cls in expected.items():
        made = sat.make_scheduler(name)
        assert type(made) is cls and made.config.prediction_type == "v_prediction"
    with pytest.raises(ModelError, match="ddim, dpm\\+\\+, euler, pndm, unipc"):
        sat.make_scheduler("heun-ish")
    assert registry.load("demo-sd").make_scheduler().config.prediction_type == "epsilon"  # from its config


def test_run_folder_unet_choice(demo_dir, tmp_path, no_sd21_env):
    run_dir = copy_demo(demo_dir, "demo-satunet", tmp_path)
    unet = run_dir / "checkpoint-100" / "unet"
    shutil.copytree(unet, run_dir / "checkpoint-1000" / "unet_ema")
    shutil.copytree(unet, run_dir / "checkpoint-200" / "unet")
    assert inspect_model_folder(run_dir).unet_path == run_dir / "checkpoint-1000" / "unet_ema"  # highest N

    shutil.copytree(unet, run_dir / "checkpoint-1000" / "unet")
    assert inspect_model_folder(run_dir).unet_path == run_dir / "checkpoint-1000" / "unet"  # unet before EMA

    settings = json.loads((run_dir / "gfm4d.json").read_text())
    write_json(run_dir / "gfm4d.json", {**settings, "unet": "checkpoint-200/unet"})
    assert inspect_model_folder(run_dir).unet_path == run_dir / "checkpoint-200" / "unet"  # explicit

    write_json(run_dir / "gfm4d.json", settings)
    shutil.copytree(unet, run_dir / "unet")
    assert inspect_model_folder(run_dir).unet_path == run_dir / "unet"  # a finished run's final save


def test_missing_components_come_from_the_sd21_folder(demo_dir, tmp_path, monkeypatch, no_sd21_env):
    models = tmp_path / "models"
    run_dir = copy_demo(demo_dir, "demo-satunet", models)
    for component in ("vae", "text_encoder", "tokenizer", "scheduler"):
        shutil.rmtree(run_dir / component)
    sd21 = copy_demo(demo_dir, "demo-sd", tmp_path, "stable-diffusion-2-1")

    info = ModelRegistry(models, sd21_dir=sd21).get("demo-satunet")
    assert info.components["vae"] == sd21 / "vae" and info.components["tokenizer"] == sd21 / "tokenizer"
    assert info.missing_components == ()
    model = ModelRegistry(models, sd21_dir=sd21).load("demo-satunet")
    assert model.vae.config.latent_channels == 4 and isinstance(model.unet, SatUNet)

    with pytest.raises(ModelError) as raised:
        ModelRegistry(models).load("demo-satunet")
    message = str(raised.value)
    assert "vae/, text_encoder/, tokenizer/, scheduler/" in message and "GFM4D_SD21_DIR" in message

    monkeypatch.setenv("GFM4D_SD21_DIR", str(sd21))
    assert ModelRegistry(models).get("demo-satunet").components["text_encoder"] == sd21 / "text_encoder"


def test_native_resolution_rules(demo_dir, tmp_path, no_sd21_env):
    sd_dir = copy_demo(demo_dir, "demo-sd", tmp_path)
    run_dir = copy_demo(demo_dir, "demo-satunet", tmp_path)
    for folder in (sd_dir, run_dir):
        (folder / "gfm4d.json").unlink()
    # Plain SD: diffusers' default, unet sample_size 96 latents x the VAE's 8 (3 downsamplings).
    assert inspect_model_folder(sd_dir).native_resolution == 96 * 8
    # DiffusionSat: its inherited sample_size says nothing; the authors' 512.
    assert inspect_model_folder(run_dir).native_resolution == 512
    write_json(run_dir / "gfm4d.json", {"native_resolution": 256})
    assert inspect_model_folder(run_dir).native_resolution == 256
    write_json(run_dir / "gfm4d.json", {"native_resolution": 250})
    with pytest.raises(ModelError, match="multiple of 8"):
        inspect_model_folder(run_dir)


def test_unknown_name_lists_available_models(demo_dir, no_sd21_env):
    with pytest.raises(
        ModelError, match="'demo-sat'.*available models: demo-controlnet-3d, demo-prepost, demo-satunet, demo-sd, demo-superres"
    ):
        ModelRegistry(demo_dir).get("demo-sat")
    with pytest.raises(ModelError, match="available models"):
        ModelRegistry(demo_dir).get("../demo-sd")


def test_unrecognisable_folders_are_skipped_with_a_reason(demo_dir, tmp_path, no_sd21_env):
    models = tmp_path / "models"
    copy_demo(demo_dir, "demo-sd", models)
    (models / "notes").mkdir()
    (models / "notes" / "README.txt").write_text("not a model")
    write_json(models / "inpaint-3d" / "unet" / "config.json", {"_class_name": "UNet3DConditionModel"})
    (models / "inpaint-3d" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    (models / "no-weights" / "unet").mkdir(parents=True)
    write_json(models / "no-weights" / "unet" / "config.json", {"_class_name": "UNet2DConditionModel"})

    registry = ModelRegistry(models)
    assert [info.name for info in registry.list()] == ["demo-sd", "gfm4d-mini", "gfm4d-mini-inpaint"]  # and the built-in models
    skipped = registry.scan().skipped
    assert "README.txt" in skipped["notes"]
    assert "UNet3DConditionModel" in skipped["inpaint-3d"]
    assert "no weights" in skipped["no-weights"]


def test_evil_pickle_as_unet_weights_is_refused_on_load(demo_dir, tmp_path, no_sd21_env):
    models = tmp_path / "models"
    run_dir = copy_demo(demo_dir, "demo-satunet", models)
    torch.save({"payload": NotATensor()}, run_dir / "checkpoint-100" / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelError, match="refused to load"):
        ModelRegistry(models).load("demo-satunet")


# --- import -----------------------------------------------------------------------------------


def state_of(registry: ModelRegistry, name: str) -> dict:
    return registry.load(name).unet.state_dict()


def assert_same_weights(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    assert all(torch.equal(left[key], right[key]) for key in left)


def test_import_from_a_folder_copies_only_what_the_model_uses(demo_dir, tmp_path, no_sd21_env):
    source = copy_demo(demo_dir, "demo-satunet", tmp_path / "downloads", "diffusionsat-512")
    (source / "checkpoint-100" / "optimizer.bin").write_bytes(b"\0" * 1000)
    shutil.copytree(source / "checkpoint-100" / "unet", source / "checkpoint-50" / "unet")
    registry = ModelRegistry(tmp_path / "models")

    info = registry.import_model(source)

    assert info.name == "diffusionsat-512" and info.kind == SATUNET
    imported = tmp_path / "models" / "diffusionsat-512"
    assert info.unet_path == imported / "checkpoint-100" / "unet"
    assert not (imported / "checkpoint-100" / "optimizer.bin").exists() and not (imported / "checkpoint-50").exists()
    assert_same_weights(state_of(registry, "diffusionsat-512"), state_of(ModelRegistry(demo_dir), "demo-satunet"))
    with pytest.raises(ModelError, match="already exists"):
        registry.import_model(source)
    with pytest.raises(ModelError, match="not a model folder"):
        registry.import_model(tmp_path / "downloads" / "diffusionsat-512" / "vae", name="just-a-vae")
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["diffusionsat-512"]  # no leftovers


def test_import_from_the_released_zip(demo_dir, tmp_path, no_sd21_env):
    archive = tmp_path / "diffusionsat_512.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # the run folder nested one level, as released
        for path in sorted((demo_dir / "demo-satunet").rglob("*")):
            zf.write(path, Path("finetune_sd21_512") / path.relative_to(demo_dir / "demo-satunet"))
    registry = ModelRegistry(tmp_path / "models")

    info = registry.import_model(archive, name="sat512", unet="checkpoint-100/unet")

    assert info.name == "sat512" and info.kind == SATUNET and info.native_resolution == 128
    assert json.loads((info.path / "gfm4d.json").read_text())["unet"] == "checkpoint-100/unet"
    assert_same_weights(state_of(registry, "sat512"), state_of(ModelRegistry(demo_dir), "demo-satunet"))
    assert registry.import_model(archive).name == "diffusionsat_512"  # default name: the zip's


# --- demo models ------------------------------------------------------------------------------


def weight_digests(models_dir: Path) -> dict[str, str]:
    files = [p for p in sorted(models_dir.rglob("*")) if p.suffix in (".bin", ".safetensors")]
    return {str(p.relative_to(models_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_demo_models_are_deterministic_and_idempotent(demo_dir, tmp_path):
    again = tmp_path / "again"
    paths = build_demo_models(again)
    assert [p.name for p in paths] == ["demo-satunet", "demo-sd", "demo-controlnet-3d", "demo-prepost", "demo-superres"]
    digests = weight_digests(again)
    # vae + text encoder + network(s): 3 + 3 + 3 + 3 (controlnets; their UNet is demo-satunet's) + 4 (own unet/)
    assert len(digests) == 16 and digests == weight_digests(demo_dir)
    assert "demo-satunet/checkpoint-100/unet/diffusion_pytorch_model.bin" in digests
    assert not (again / "demo-satunet" / "unet").exists()  # UNet only under checkpoint-100, as released

    stamp = (again / "demo-sd" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    build_demo_models(again)
    assert (again / "demo-sd" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp

    (again / "demo-sd" / "vae" / "config.json").unlink()  # incomplete: rebuilt
    build_demo_models(again)
    assert weight_digests(again) == digests
    assert weight_digests(build_demo_models(tmp_path / "other", seed=99)[0].parent) != digests


def test_a_models_folder_copy_of_the_builtin_model_wins(demo_dir, tmp_path, no_sd21_env):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(BUILTIN_DIR / "gfm4d-mini", models / "gfm4d-mini")
    registry = ModelRegistry(models)
    assert registry.get("gfm4d-mini").path == models / "gfm4d-mini"
    assert [info.name for info in registry.list()] == ["gfm4d-mini", "gfm4d-mini-inpaint"]
