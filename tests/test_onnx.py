"""The ONNX Runtime backend on CPU with the demo models: each graph against torch, a whole job, the graph cache.

Tolerances: float32 graphs differ from torch only by operation order and fused kernels, ~1e-6
relative per network; 1e-4 of the output's scale leaves room for that and still fails on any
wrong input, weight or branch (those change outputs by tens of percent). A whole generate job
(three DDIM steps, 6 windows, VAE) is compared in 8-bit pixels: at most 2 levels off anywhere.
"""

import json
import shutil

import numpy as np
import pytest
import rasterio
import torch

from engine.errors import ModelError
from engine.geo.grid import grid_from_extent
from engine.pipelines.generate import GenerateRequest, generate
from engine.runtime import onnx as onnx_module
from engine.runtime.onnx import folder_fingerprint, providers_for
from engine.runtime.onnx_models import OnnxControlNet, OnnxTextEncoder, OnnxUNet, OnnxVAE

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

RELATIVE = 1e-4


def close(onnx_out: torch.Tensor, torch_out: torch.Tensor) -> bool:
    scale = torch_out.abs().max().item()
    return onnx_out.shape == torch_out.shape and (onnx_out.float() - torch_out.float()).abs().max().item() <= RELATIVE * scale


@pytest.fixture(scope="module")
def cache(tmp_path_factory, models_dir):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def registries(models_dir, cache):
    from engine.models.registry import ModelRegistry

    mp = pytest.MonkeyPatch()
    mp.setenv("GFM4D_ONNX_CACHE", str(cache))
    mp.delenv("GFM4D_BACKEND", raising=False)
    yield ModelRegistry(models_dir, backend="torch"), ModelRegistry(models_dir, backend="onnx")
    mp.undo()


@pytest.fixture(scope="module")
def satunet(registries):
    torch_registry, onnx_registry = registries
    return torch_registry.load("demo-satunet"), onnx_registry.load("demo-satunet")


def test_onnx_backend_puts_stand_ins_in_place_of_the_networks(satunet):
    reference, model = satunet
    assert (reference.backend, model.backend) == ("torch", "onnx")
    assert isinstance(model.unet, OnnxUNet) and isinstance(model.vae, OnnxVAE)
    assert isinstance(model.text_encoder, OnnxTextEncoder) and model.controlnet is None
    assert model.unet.config.use_metadata and model.vae.config.latent_channels == 4  # the torch module's config


def test_unet_with_metadata_matches_torch_at_other_batches_and_sizes(satunet):
    reference, model = satunet
    torch.manual_seed(0)
    for batch, height, width in ((2, 16, 16), (1, 16, 24), (5, 24, 16)):  # the graph was traced on the first call only
        x, text = torch.randn(batch, 4, height, width), torch.randn(batch, 77, 32)
        metadata = torch.rand(batch, 7) * 1000
        for t in (torch.tensor(981), torch.tensor(1)):
            with torch.no_grad():
                expected = reference.unet(x, t, encoder_hidden_states=text, metadata=metadata).sample
            got = model.unet(x, t, encoder_hidden_states=text, metadata=metadata).sample
            assert close(got, expected)
    # Metadata really is an input of the graph, not a constant frozen at export.
    other = model.unet(x, t, encoder_hidden_states=text, metadata=metadata + 200).sample
    assert (other - got).abs().max() > 100 * RELATIVE * got.abs().max()


def test_vae_decoder_and_text_encoder_match_torch(satunet):
    reference, model = satunet
    torch.manual_seed(1)
    for shape in ((1, 4, 16, 16), (3, 4, 20, 12)):
        latents = torch.randn(shape)
        with torch.no_grad():
            expected = reference.vae.decode(latents).sample
        assert close(model.vae.decode(latents).sample, expected)
    tokens = reference.tokenizer(["a fmow satellite image of a farm in italy", ""], padding="max_length",
                                 max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = reference.text_encoder(tokens)[0]
    assert close(model.text_encoder(tokens)[0], expected)
    assert close(model.text_encoder(tokens[1:])[0], expected[1:])


def test_generate_through_onnx_matches_torch_in_pixels(satunet, tmp_path):
    reference, model = satunet
    grid = grid_from_extent((600000, 5100000, 600000 + 320 * 2, 5100000 + 224 * 2), "EPSG:32632", resolution_m=2)
    request = GenerateRequest(grid=grid, prompt="a fmow satellite image of a farm in italy", steps=3,
                              guidance_scale=3.0, seed=5, date="2016-06-20")
    images = []
    for name, m in (("torch", reference), ("onnx", model)):
        result = generate(m, request, tmp_path / f"{name}.tif")
        assert result.windows == 6
        with rasterio.open(result.path) as src:
            images.append(src.read().astype(int))
    difference = np.abs(images[0] - images[1])
    assert images[0].std() > 5  # a real image, not a constant that would match trivially
    assert difference.max() <= 2 and difference.mean() < 0.05


def test_controlnets_match_torch(registries):
    torch_registry, onnx_registry = registries
    torch.manual_seed(2)
    for name, cond_shape, cond_metadata in (
        ("demo-controlnet-3d", (2, 3, 3, 128, 128), torch.rand(2, 7, 3) * 1000),
        ("demo-prepost", (2, 3, 128, 128), torch.rand(2, 7) * 1000),
    ):
        reference, model = torch_registry.load(name), onnx_registry.load(name)
        assert isinstance(model.controlnet, OnnxControlNet)
        x, text = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 32)
        cond, metadata = torch.rand(cond_shape), torch.rand(2, 7) * 1000
        for scale in (1.0, 0.5):
            with torch.no_grad():
                down, mid = reference.controlnet(x, 500, text, cond, metadata=metadata, cond_metadata=cond_metadata,
                                                 conditioning_scale=scale)
            got_down, got_mid = model.controlnet(x, 500, text, cond, metadata=metadata, cond_metadata=cond_metadata,
                                                 conditioning_scale=scale)
            assert len(got_down) == len(down) == 4  # demo UNet: conv_in; level 0 resnet, downsampler; level 1 resnet
            assert all(close(a, b) for a, b in zip(got_down, down)) and close(got_mid, mid)
        # And the UNet graph with residuals (a second graph of the same UNet).
        with torch.no_grad():
            expected = reference.unet(x, 500, text, metadata=metadata, down_block_additional_residuals=down,
                                      mid_block_additional_residual=mid).sample
        got = model.unet(x, 500, text, metadata=metadata, down_block_additional_residuals=got_down,
                         mid_block_additional_residual=got_mid).sample
        assert close(got, expected)


def test_graphs_are_cached_by_weights_and_shapes(models_dir, cache, monkeypatch, tmp_path):
    from engine.models.registry import ModelRegistry

    monkeypatch.setenv("GFM4D_ONNX_CACHE", str(cache))
    exported = sorted(p.name for p in cache.iterdir() if p.name.startswith("unet-"))
    assert exported, "the tests above exported UNet graphs"

    def no_export(*args, **kwargs):
        raise AssertionError("a cached graph was exported again")

    monkeypatch.setattr(onnx_module, "export_graph", no_export)
    monkeypatch.setattr("engine.runtime.onnx_models.export_graph", no_export)
    fresh = ModelRegistry(models_dir, backend="onnx").load("demo-satunet")  # a new process would do the same
    x, text, metadata = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 32), torch.rand(2, 7)
    fresh.unet(x, 10, text, metadata=metadata)

    # Other weights, other graph: a copy of the model with one weight changed gets its own key.
    copy = tmp_path / "models"
    shutil.copytree(models_dir / "demo-satunet", copy / "demo-satunet")
    unet_dir = fresh.info.unet_path.relative_to(models_dir / "demo-satunet")
    weights = copy / "demo-satunet" / unet_dir / "diffusion_pytorch_model.bin"
    state = torch.load(weights, weights_only=True)
    state["conv_out.bias"] = state["conv_out.bias"] + 1.0
    torch.save(state, weights)
    assert folder_fingerprint(copy / "demo-satunet" / unet_dir) != folder_fingerprint(fresh.info.unet_path)
    changed = ModelRegistry(copy, backend="onnx").load("demo-satunet")
    with pytest.raises(AssertionError, match="exported again"):
        changed.unet(x, 10, text, metadata=metadata)


def test_backend_chosen_per_model_in_gfm4d_json(models_dir, tmp_path, cache, monkeypatch):
    from engine.models.registry import ModelRegistry

    monkeypatch.setenv("GFM4D_ONNX_CACHE", str(cache))
    monkeypatch.delenv("GFM4D_BACKEND", raising=False)
    copy = tmp_path / "models"
    shutil.copytree(models_dir / "demo-satunet", copy / "demo-satunet")
    settings_path = copy / "demo-satunet" / "gfm4d.json"
    settings = json.loads(settings_path.read_text())
    settings_path.write_text(json.dumps({**settings, "backend": "onnx"}))
    assert isinstance(ModelRegistry(copy).load("demo-satunet").unet, OnnxUNet)
    monkeypatch.setenv("GFM4D_BACKEND", "torch")  # the operator's switch beats the model's
    assert ModelRegistry(copy).load("demo-satunet").backend == "torch"
    monkeypatch.delenv("GFM4D_BACKEND")
    settings_path.write_text(json.dumps({**settings, "backend": "tensorrt"}))
    with pytest.raises(ModelError, match="unknown backend 'tensorrt'.*gfm4d.json"):
        ModelRegistry(copy).load("demo-satunet")


def test_cuda_without_onnxruntime_gpu_is_explained():
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(ModelError, match="onnxruntime-gpu"):
        providers_for(torch.device("cuda"))
    assert providers_for(torch.device("cpu")) == ["CPUExecutionProvider"]
