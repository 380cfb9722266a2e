"""Single-file checkpoints: recognised from their tensor names, converted once, and the same model as the original.

Tiny random SD 1.x, SD 2.x, SDXL (and their inpainting variants) and SD3 in diffusers layout are written
in the original single-file format (tests/original_checkpoints.py, checked against diffusers'
forward converters), imported with a diffusers folder as `--config`, and must hold exactly the
original weights and generate the same image as the folder they came from. FLUX.1 likewise, except
that diffusers' FLUX converter only takes FLUX.1's full width (3072): a tiny FLUX goes through the
same converter with that one number set to its width.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from safetensors.torch import save_file

from engine.cli import main
from engine.errors import ModelError
from engine.geo.grid import grid_from_extent
from engine.models.registry import ModelRegistry
from engine.models.single_file import inspect_checkpoint
from engine.models.tiny_backbones import build_tiny_backbone
from engine.pipelines.generate import GenerateRequest, generate

sys.path.insert(0, str(Path(__file__).parent))
from original_checkpoints import flux_converter, write_original_checkpoint  # noqa: E402

KINDS = {"sd": "sd-unet", "sd2": "sd-unet", "sd-inpaint": "sd-inpaint-unet", "sdxl": "sdxl-unet",
         "sdxl-inpaint": "sdxl-inpaint-unet", "sd3": "sd3-transformer"}


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """family -> (diffusers folder, original-format .safetensors of the same weights)."""
    root = tmp_path_factory.mktemp("single-file")
    made = {}
    for family in KINDS:
        folder = build_tiny_backbone(root / "configs" / family, family, seed=5)
        made[family] = (folder, write_original_checkpoint(folder, root / f"{family}-original.safetensors", family))
    return made


@pytest.fixture(scope="module")
def flux_originals(tmp_path_factory):
    """flux / flux-fill -> (diffusers folder, the transformer alone as Black Forest Labs' .safetensors)."""
    root = tmp_path_factory.mktemp("single-file-flux")
    made = {}
    for family in ("flux", "flux-fill"):
        folder = build_tiny_backbone(root / "configs" / family, family, seed=5)
        made[family] = (folder, write_original_checkpoint(folder, root / f"{family}.safetensors", family))
    return made


@pytest.fixture
def flux_converter_at_tiny_width(monkeypatch):
    """diffusers' FLUX converter with FLUX.1's fixed width 3072 replaced by the tiny model's 32 (its only change)."""
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    monkeypatch.setitem(SINGLE_FILE_LOADABLE_CLASSES["FluxTransformer2DModel"], "checkpoint_mapping_fn", flux_converter(32))


def _generate(registry, name, path):
    grid = grid_from_extent((600000, 5100000, 600064, 5100064), "EPSG:32632", resolution_m=1)
    request = GenerateRequest(grid=grid, prompt="a satellite image of a farm", steps=2, guidance_scale=3.0, seed=3,
                              window=64, overlap=16)
    with rasterio.open(generate(registry.load(name), request, path).path) as src:
        return src.read().astype(int)


def _networks(model) -> dict:
    """Every network of a loaded model by its diffusers name (the denoiser as `unet`, SDXL/SD3's extra encoders too)."""
    modules = model.backbone.modules() if hasattr(model.backbone, "modules") else {}
    extra = {name: module for name, module in modules.items() if name.startswith("text_encoder")}
    return {"unet": model.unet, "vae": model.vae, "text_encoder": model.text_encoder, **extra}


@pytest.mark.parametrize("family", [f for f in KINDS if f != "sd3"])
def test_checkpoints_are_recognised_from_their_tensor_names(family, originals):
    checkpoint = inspect_checkpoint(originals[family][1])
    assert checkpoint.kind == KINDS[family]
    assert checkpoint.overrides["in_channels"] == (9 if "inpaint" in family else 4)
    assert checkpoint.context_dim == (80 if family.startswith("sdxl") else 32)  # the UNet's cross-attention width


def test_an_sd3_checkpoint_is_recognised_with_its_layer_count(originals):
    checkpoint = inspect_checkpoint(originals["sd3"][1])
    assert (checkpoint.kind, checkpoint.family, checkpoint.denoiser) == ("sd3-transformer", "sd3", "transformer")
    assert checkpoint.overrides == {"num_layers": 2} and checkpoint.context_dim is None


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3"])
def test_an_imported_checkpoint_generates_what_its_diffusers_original_does(family, originals, tmp_path, capsys):
    folder, file = originals[family]
    models = tmp_path / "models"
    assert main(["--models-dir", str(models), "models", "import", str(file), "--name", "imported",
                 "--config", str(folder)]) == 0
    assert f"imported imported ({KINDS[family]}" in capsys.readouterr().out
    assert [p.name for p in models.iterdir()] == ["imported"]  # no staging folder left behind
    original = _generate(ModelRegistry(folder.parent), family, tmp_path / "original.tif")
    converted = _generate(ModelRegistry(models), "imported", tmp_path / "converted.tif")
    assert original.std() > 0
    assert np.abs(original - converted).max() <= 1


@pytest.mark.parametrize("family,base", [("sd2", "sd2"), ("sd-inpaint", "sd"), ("sdxl-inpaint", "sdxl"), ("sd3", "sd3")])
def test_every_weight_comes_out_as_it_went_in(family, base, originals, tmp_path):
    """SD 2.x's OpenCLIP encoder included; an inpainting file's 9 input channels override its base model's UNet config;
    SD3's three text encoders (T5's embedding stored once, as `shared`) and its MMDiT."""
    folder, file = originals[family]
    registry = ModelRegistry(tmp_path)
    info = registry.import_model(file, name="converted", config=originals[base][0])
    assert info.kind == KINDS[family] and info.tasks == (("inpaint",) if "inpaint" in family else ("generate", "inpaint"))
    converted, original = registry.load("converted"), ModelRegistry(folder.parent).load(family)
    ours, theirs = _networks(converted), _networks(original)
    assert ours.keys() == theirs.keys() and len(ours) == {"sdxl-inpaint": 4, "sd3": 5}.get(family, 3)
    for part in ours:
        mine, reference = ours[part].state_dict(), theirs[part].state_dict()
        assert mine.keys() == reference.keys() and all(torch.equal(mine[k], reference[k]) for k in mine), part


@pytest.mark.parametrize("family", ["flux", "flux-fill"])
def test_flux_checkpoints_are_recognised_with_their_variant_and_layer_counts(family, flux_originals):
    checkpoint = inspect_checkpoint(flux_originals[family][1])
    assert checkpoint.kind == f"{family}-transformer" and checkpoint.family == "flux"
    assert checkpoint.overrides == {"in_channels": 384 if family == "flux-fill" else 64, "guidance_embeds": True,
                                    "num_layers": 1, "num_single_layers": 1}


def test_a_tiny_flux_reaches_diffusers_converter_which_only_takes_full_width(flux_originals, tmp_path):
    """diffusers splits FLUX.1's fused single-block weights at the fixed width 3072: a 32-wide file is refused there,
    with one line naming the part and the flag, and nothing is left in the models folder."""
    folder, file = flux_originals["flux"]
    models = tmp_path / "models"
    with pytest.raises(ModelError, match=r"^cannot convert the transformer of flux.safetensors .*3072.*--config FOLDER") as error:
        ModelRegistry(models).import_model(file, name="tiny", config=folder)
    assert len(str(error.value).splitlines()) == 1
    assert not any(models.iterdir())


def test_an_imported_flux_generates_what_its_diffusers_original_does(flux_originals, flux_converter_at_tiny_width,
                                                                     tmp_path):
    """The transformer from the file; the VAE and both text encoders, which FLUX.1's files lack, from the config folder."""
    folder, file = flux_originals["flux"]
    registry = ModelRegistry(tmp_path / "models")
    assert registry.import_model(file, name="imported", config=folder).kind == "flux-transformer"
    original = _generate(ModelRegistry(folder.parent), "flux", tmp_path / "original.tif")
    converted = _generate(registry, "imported", tmp_path / "converted.tif")
    assert original.std() > 0
    assert np.abs(original - converted).max() <= 1


def test_a_flux_fill_file_keeps_every_weight_with_a_flux_dev_config(flux_originals, flux_converter_at_tiny_width,
                                                                    tmp_path):
    """Fill's 384 input channels override the FLUX.1 [dev] folder's transformer config."""
    (folder, file), (base, _) = flux_originals["flux-fill"], flux_originals["flux"]
    registry = ModelRegistry(tmp_path)
    info = registry.import_model(file, name="converted", config=base)
    assert info.kind == "flux-fill-transformer" and info.tasks == ("inpaint",)
    ours, theirs = _networks(registry.load("converted")), _networks(ModelRegistry(folder.parent).load("flux-fill"))
    assert ours.keys() == theirs.keys() == {"unet", "vae", "text_encoder", "text_encoder_2"}
    for part in ours:
        mine, reference = ours[part].state_dict(), theirs[part].state_dict()
        assert mine.keys() == reference.keys() and all(torch.equal(mine[k], reference[k]) for k in mine), part


def test_a_dropped_checkpoint_is_listed_with_its_family_and_converted_on_first_use(originals, tmp_path, capsys):
    models = tmp_path / "models"
    shutil.copytree(originals["sdxl"][0], models / "sdxl-base")  # lends its configs
    shutil.copy(originals["sdxl"][1], models / "civitai-xl.safetensors")
    assert main(["--models-dir", str(models), "models", "list", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    dropped = listed["civitai-xl"]
    assert (dropped["family"], dropped["kind"], dropped["ready"]) == ("sdxl", "sdxl-unet", True)
    assert "first use" in dropped["readiness"] and dropped["parameters"] == listed["sdxl-base"]["parameters"]

    registry = ModelRegistry(models)
    model = registry.load("civitai-xl")
    assert model.info.path == models / "civitai-xl" and (models / "civitai-xl" / "unet").is_dir()
    assert sorted(p.name for p in models.iterdir()) == ["civitai-xl", "civitai-xl.safetensors", "sdxl-base"]
    assert [info.path for info in registry.list() if info.name == "civitai-xl"] == [models / "civitai-xl"]


def test_without_configs_the_error_names_the_flag(originals, tmp_path, capsys):
    models = tmp_path / "models"
    file = originals["sdxl"][1]
    assert main(["--models-dir", str(models), "models", "import", str(file)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "SDXL checkpoint" in error and "--config FOLDER" in error
    # A config folder of another family is refused before anything is converted.
    with pytest.raises(ModelError, match=r"holds Stable Diffusion 1.x/2.x configs; pass --config FOLDER"):
        ModelRegistry(models).import_model(file, config=originals["sd"][0])
    # A dropped file without a model of its family to lend configs is listed, not ready, with the command to run.
    models.mkdir(exist_ok=True)
    shutil.copy(file, models / "lonely.safetensors")
    info = ModelRegistry(models).get("lonely")
    assert info.family == "sdxl" and not info.ready
    with pytest.raises(ModelError, match="--config FOLDER"):
        ModelRegistry(models).load("lonely")
    assert sorted(p.name for p in models.iterdir()) == ["lonely.safetensors"]


def test_damaged_and_unknown_files_are_refused_with_a_reason(originals, tmp_path):
    registry = ModelRegistry(tmp_path / "models")
    config = originals["sd"][0]
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(originals["sd"][1].read_bytes()[:5000])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    unknown = tmp_path / "vae-only.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(4, 4, 3, 3)}, str(unknown))
    pickled = tmp_path / "model.ckpt"
    pickled.write_bytes(b"not read")
    for path, reason in ((truncated, "not a readable .safetensors file"), (garbage, "not a readable .safetensors file"),
                         (unknown, "not a checkpoint GFM4D knows"), (pickled, "as .safetensors only")):
        with pytest.raises(ModelError, match=reason):
            registry.import_model(path, config=config)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
    # Dropped in the models folder, they are skipped with the reason; the others stay listed.
    models = tmp_path / "dropped"
    models.mkdir()
    shutil.copy(garbage, models / "garbage.safetensors")
    scan = ModelRegistry(models).scan()
    assert "not a readable .safetensors" in scan.skipped["garbage.safetensors"]
