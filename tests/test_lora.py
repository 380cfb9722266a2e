"""LoRAs change GFM4D's output exactly as diffusers' own LoRA loading does, on every family.

A LoRA with known (seeded, non-zero) weights is made with PEFT on the denoiser and saved with the
pipeline's own `save_lora_weights`.
The reference is the vanilla diffusers pipeline after `load_lora_weights` + `set_adapters` (LoRA
layers active at run time); GFM4D fuses the same LoRA into its weights. The same LoRA in Kohya's
key layout must give the same result through diffusers' converter.
"""

import json

import pytest
import safetensors.torch
import torch

from engine.cli import main
from engine.errors import InputError
from engine.geo.tiling import Span
from engine.models.backbones.flux import pack, unpack
from engine.models.demo import build_demo_models
from engine.models.lora import LoraSpec, parse_lora
from engine.models.registry import ModelRegistry
from engine.models.tiny_backbones import build_tiny_backbone
from engine.pipelines.sampling import CanvasJob, denoise_canvas, encode_prompt, position_noise

PROMPT = "a fmow satellite image of a farm in italy"
PIPELINES = {"demo-sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
             "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}
SCALE = 0.7
STEPS = 2
GUIDANCE = 3.0
CELLS = 8


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("lora-models")
    build_demo_models(path)
    for family in ("sdxl", "sd3", "flux"):
        build_tiny_backbone(path / family, family, seed=3)
    (path / "loras").mkdir()
    for name in PIPELINES:
        _write_lora(path, name)
    _write_kohya(path / "loras" / "demo-sd-lora.safetensors", path / "loras" / "demo-sd-kohya.safetensors")
    _write_text_encoder_lora(path)
    return path


def _pipeline(models_dir, name):
    import diffusers

    cls = getattr(diffusers, PIPELINES[name])
    extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False} if name == "demo-sd" else {}
    pipe = cls.from_pretrained(models_dir / name, local_files_only=True, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _write_lora(models_dir, name):
    """A rank-4 LoRA with seeded non-zero weights on the denoiser's attention projections."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = _pipeline(models_dir, name)
    torch.manual_seed(len(name))
    attention = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    denoiser_key = "unet" if name in ("demo-sd", "sdxl") else "transformer"
    denoiser = getattr(pipe, denoiser_key)
    denoiser.add_adapter(attention)
    layers = {f"{denoiser_key}_lora_layers": get_peft_model_state_dict(denoiser)}
    type(pipe).save_lora_weights(models_dir / "loras", weight_name=f"{name}-lora.safetensors", **layers)


def _write_text_encoder_lora(models_dir):
    """A LoRA on the text encoder only (q and v projections), with seeded non-zero weights."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    pipe = _pipeline(models_dir, "demo-sd")
    torch.manual_seed(99)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    encoder = inject_adapter_in_model(config, pipe.text_encoder)
    layers = get_peft_model_state_dict(encoder)
    type(pipe).save_lora_weights(models_dir / "loras", weight_name="demo-sd-text.safetensors",
                                 text_encoder_lora_layers=layers)


def _write_kohya(source, target):
    """The same LoRA with Kohya's key names (lora_unet_..., lora_down/lora_up, alpha)."""
    kohya = {}
    for key, value in safetensors.torch.load_file(str(source)).items():
        module, _, kind = key.rpartition(".lora_")
        prefix, _, path = module.partition(".")
        stem = {"unet": "lora_unet_", "text_encoder": "lora_te_"}[prefix] + path.replace(".", "_")
        kohya[f"{stem}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = value
        kohya[f"{stem}.alpha"] = torch.tensor(4.0)
    safetensors.torch.save_file(kohya, str(target))


def _ours(model, prompt):
    noise = position_noise(5, Span(0, 0, CELLS, CELLS), model.latent_channels)
    text = encode_prompt(model, prompt, "", GUIDANCE)
    job = CanvasJob(noise=noise, windows=[Span(0, 0, CELLS, CELLS)], window_metadata=None, overlap=2)
    out = denoise_canvas(model, model.make_scheduler(), job, text, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                         batch_size=1)
    return out, noise


def _reference(pipe, name, prompt, noise):
    latents = pack(noise) if name == "flux" else noise
    out = pipe(prompt, height=CELLS * 8, width=CELLS * 8, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
               latents=latents, output_type="latent").images
    return unpack(out, CELLS, CELLS) if name == "flux" else out


@pytest.mark.parametrize("name", list(PIPELINES))
def test_a_lora_changes_the_output_as_diffusers_lora_loading_does(name, models_dir):
    registry = ModelRegistry(models_dir)
    lora = models_dir / "loras" / f"{name}-lora.safetensors"
    plain, noise = _ours(registry.load(name), PROMPT)
    with_lora, _ = _ours(registry.load(name, loras=(LoraSpec(lora, SCALE),)), PROMPT)

    pipe = _pipeline(models_dir, name)
    pipe.load_lora_weights(str(lora), adapter_name="test")
    pipe.set_adapters(["test"], adapter_weights=[SCALE])
    reference = _reference(pipe, name, PROMPT, noise)
    assert torch.allclose(with_lora, reference, atol=1e-4, rtol=1e-4), (with_lora - reference).abs().max()
    # The LoRA really changes the result (by far more than the tolerance), and the plain model stays plain.
    assert (with_lora - plain).abs().max() > 1e-2
    again, _ = _ours(registry.load(name), PROMPT)
    assert torch.equal(again, plain)


def test_a_kohya_lora_is_converted_like_diffusers_does(models_dir):
    registry = ModelRegistry(models_dir)
    peft_format, _ = _ours(registry.load("demo-sd", loras=(LoraSpec(models_dir / "loras" / "demo-sd-lora.safetensors", SCALE),)), PROMPT)
    kohya, _ = _ours(registry.load("demo-sd", loras=(LoraSpec(models_dir / "loras" / "demo-sd-kohya.safetensors", SCALE),)), PROMPT)
    assert torch.allclose(kohya, peft_format, atol=1e-5)


def test_a_text_encoder_lora_changes_the_prompt_embedding_by_its_weights(models_dir):
    """Reference: the vanilla pipeline with W + scale * B @ A written into the text encoder by hand."""
    registry = ModelRegistry(models_dir)
    lora = models_dir / "loras" / "demo-sd-text.safetensors"
    plain, noise = _ours(registry.load("demo-sd"), PROMPT)
    with_lora, _ = _ours(registry.load("demo-sd", loras=(LoraSpec(lora, SCALE),)), PROMPT)

    pipe = _pipeline(models_dir, "demo-sd")
    weights = safetensors.torch.load_file(str(lora))
    modules = dict(pipe.text_encoder.named_modules())
    merged = 0
    with torch.no_grad():
        for key, down in weights.items():
            if ".lora_A." in key:
                path = key.removeprefix("text_encoder.").split(".lora_A.")[0]
                path = path if path in modules else path.removeprefix("text_model.")
                up = weights[key.replace(".lora_A.", ".lora_B.")]
                modules[path].weight += SCALE * (4 / 4) * up @ down
                merged += 1
    assert merged == 4  # q and v of both layers
    reference = _reference(pipe, "demo-sd", PROMPT, noise)
    assert torch.allclose(with_lora, reference, atol=1e-4, rtol=1e-4), (with_lora - reference).abs().max()
    assert (with_lora - plain).abs().max() > 1e-2


def test_loras_are_named_from_the_models_folder_and_paths_only_where_allowed(models_dir, tmp_path):
    registry = ModelRegistry(models_dir)
    assert set(registry.loras()) == {f"{name}-lora" for name in PIPELINES} | {"demo-sd-kohya", "demo-sd-text"}
    assert "sdxl" in {info.name for info in registry.list()}  # the loras/ folder is not a model
    spec, = registry.lora_specs([{"name": "sdxl-lora", "scale": 0.5}])
    assert spec == LoraSpec(models_dir / "loras" / "sdxl-lora.safetensors", 0.5)
    elsewhere = tmp_path / "mine.safetensors"
    elsewhere.write_bytes((models_dir / "loras" / "flux-lora.safetensors").read_bytes())
    with pytest.raises(InputError, match="by name from its models folder"):
        registry.lora_specs([{"name": str(elsewhere)}])
    registry.allow_lora_paths = True
    assert registry.lora_specs([(str(elsewhere), 1.0)]) == (LoraSpec(elsewhere.resolve(), 1.0),)
    with pytest.raises(InputError, match="available LoRAs: .*sdxl-lora"):
        registry.lora_specs([{"name": "nope"}])
    assert parse_lora("C:/loras/x.safetensors:0.8") == ("C:/loras/x.safetensors", 0.8)
    assert parse_lora("C:\\x.safetensors") == ("C:\\x.safetensors", 1.0)
    with pytest.raises(InputError, match="scale"):
        parse_lora("x.safetensors:strong")


def test_cli_lists_loras_and_generates_with_one(models_dir, tmp_path, capsys):
    assert main(["--models-dir", str(models_dir), "models", "list"]) == 0
    listed = capsys.readouterr().out
    assert "sdxl-lora" in listed and "lora" in listed and "demo-sd-kohya" in listed
    lora = models_dir / "loras" / "sdxl-lora.safetensors"
    outputs = []
    for name, extra in (("plain", []), ("lora", ["--lora", f"{lora}:{SCALE}"])):
        out = tmp_path / f"{name}.tif"
        argv = ["--models-dir", str(models_dir), "--device", "cpu", "generate", "--prompt", PROMPT, "--model", "sdxl",
                "--extent", "600000", "5100000", "600064", "5100064", "--crs", "EPSG:32632", "--resolution", "1",
                "--steps", "2", "--window", "64", "-o", str(out), *extra]
        assert main(argv) == 0
        outputs.append(out)
    import rasterio

    plain, with_lora = (rasterio.open(p).read() for p in outputs)
    assert plain.shape == with_lora.shape and (plain != with_lora).any()


def test_task_params_take_loras_by_name(models_dir, tmp_path):
    from engine.tasks import DeviceRegistry, run_task_locally

    registry = DeviceRegistry(models_dir, device="cpu")
    payload = {"task": "generate", "model": "flux", "prompt": PROMPT, "extent": [600000, 5100000, 600064, 5100064],
               "crs": "EPSG:32632", "resolution_m": 1, "steps": 2, "window": 64, "lora": [{"name": "flux-lora", "scale": 0.5}]}
    written = run_task_locally(registry, payload, {}, {"image": tmp_path / "x.tif"})
    assert written["image"].is_file()
    with pytest.raises(InputError, match="unknown LoRA"):
        run_task_locally(registry, {**payload, "lora": [{"name": str(models_dir / "loras" / "flux-lora.safetensors")}]},
                         {}, {"image": tmp_path / "y.tif"})
    assert not (tmp_path / "y.tif").exists()
    assert json.loads(json.dumps(payload))["lora"][0]["scale"] == 0.5
