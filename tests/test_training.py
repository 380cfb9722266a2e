"""gfm4d train: chips carry inference's metadata, training learns, resumes bit for bit, exports loadable models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine

from engine.errors import Cancelled, InputError
from engine.training.chips import build_chip_bank, cut_source
from engine.training.recipe import load_recipe, run_training
from engine.training.sources import TrainingSource, load_sources

from conftest import SHARED_DATA

TRAIN_DATA = SHARED_DATA / "train"
OSBS = TRAIN_DATA / "OSBS_029.tif"
SJER = TRAIN_DATA / "2018_SJER_3_252000_4107000_image_477.tif"

TINY = {
    "chip_size": 32, "scales": [1, 2], "sample_every": 1000,
    "vae": {"block_out_channels": [8, 8, 8, 8], "norm_num_groups": 4, "steps": 3, "batch": 2, "crop": 32,
            "checkpoint_every": 3, "eval_every": 3},
    "quality_chips": 2, "default_steps": 2,
    "unet": {"block_out_channels": [16, 32], "attention_levels": [False, True], "attention_head_dim": [2, 2],
             "layers_per_block": 1, "norm_num_groups": 8, "steps": 6, "batch": 4, "checkpoint_every": 3,
             "warmup": 2},
}


def _needs_data():
    if not OSBS.is_file():
        pytest.skip(f"training imagery not found at {TRAIN_DATA}")


def _recipe(tmp_path: Path, **changes) -> Path:
    document = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if name:
            document[section][name] = value
        else:
            document[key] = value
    path = tmp_path / "recipe.yaml"
    import yaml

    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def _sources(tmp_path: Path) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(
        f"sources:\n  - {{path: {OSBS}, land_cover: forest, country: the united states, licence: CC BY 4.0}}\n"
        f"  - {{path: {SJER}, land_cover: forest, licence: CC BY 4.0}}\n", encoding="utf-8")
    return path


def test_chip_metadata_is_what_generation_computes_for_that_window():
    _needs_data()
    from engine.geo.grid import OutputGrid
    from engine.geo.tiling import Span
    from engine.pipelines.canvas import LatentCanvas
    from engine.pipelines.generate import GenerateRequest, window_metadata

    source = TrainingSource(paths=(SJER,), date="2018-06-20", cloud_cover=0.1)
    chips = list(cut_source(source, 64, (2,), holdout=0.2))
    assert chips
    for image, record, _ in chips[:3]:
        grid = OutputGrid(rasterio.crs.CRS.from_wkt(record.crs), Affine(*record.transform), 64, 64)
        canvas = LatentCanvas.over(grid, 8, 4, 8)
        request = GenerateRequest(grid=grid, prompt="", date=record.date, cloud_cover=0.1)
        expected = window_metadata(canvas, [Span(0, 0, 8, 8)], Span(0, 0, 8, 8), request)[0]
        assert (expected.lon, expected.lat, expected.gsd_m) == (record.lon, record.lat, record.gsd_m)
        assert record.gsd_m == pytest.approx(0.2, rel=1e-3)  # 0.1 m pooled 2x
        assert image.shape == (3, 64, 64) and image.dtype == np.uint8


def test_chips_are_the_pooled_pixels_and_held_out_chips_lie_east_of_every_training_chip():
    _needs_data()
    source = TrainingSource(paths=(OSBS,))
    chips = list(cut_source(source, 32, (1, 2), holdout=0.25))
    with rasterio.open(OSBS) as ds:
        image, record, _ = next((i, r, m) for i, r, m in chips if r.scale == 2)
        window = ds.read([1, 2, 3], window=rasterio.windows.Window(record.col, record.row, 64, 64), masked=True)
        pooled = window.astype(np.float64).reshape(3, 32, 2, 32, 2).mean(axis=(2, 4))  # nodata left out, as GDAL does
        close = np.ma.filled(np.ma.abs(image.astype(np.float64) - pooled) <= 0.5 + 1e-9, True)
        assert close.mean() >= 0.98  # the rest: the few nodata pixels, filled with the chip's mean colour
        split_col = round(ds.width * 0.75)
    train = [r for _, r, _ in chips if r.split == "train"]
    heldout = [r for _, r, _ in chips if r.split == "heldout"]
    assert train and heldout
    assert max(r.col + 32 * r.scale for r in train) <= split_col <= min(r.col for r in heldout)


def test_a_few_steps_reduce_the_loss_and_write_a_model_that_generates(tmp_path):
    _needs_data()
    recipe = load_recipe(_recipe(tmp_path, **{"unet.steps": 40, "unet.learning_rate": 2e-3, "unet.checkpoint_every": 40}))
    result = run_training(load_sources([_sources(tmp_path)]), recipe, tmp_path / "run", tmp_path / "models" / "tiny",
                          log=lambda line: None)
    history = torch.load(sorted((tmp_path / "run" / "unet" / "checkpoints").glob("*.pt"))[-1], weights_only=False)["history"]
    losses = [h["loss"] for h in history]
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    assert result.steps == 40 and (tmp_path / "models" / "tiny" / "README.md").is_file()
    card = (tmp_path / "models" / "tiny" / "README.md").read_text()
    assert "OSBS_029.tif" in card and "CC BY 4.0" in card and "PSNR" in card
    assert "random UNet weights" in card and "| this model |" in card

    from engine.geo.grid import grid_from_extent
    from engine.models.registry import ModelRegistry
    from engine.pipelines.generate import GenerateRequest, generate

    model = ModelRegistry(tmp_path / "models").load("tiny")
    assert model.unet.config.num_metadata == 7 and model.info.native_resolution == 32
    settings = json.loads((tmp_path / "models" / "tiny" / "gfm4d.json").read_text())
    assert settings["default_guidance"] == 2.5
    grid = grid_from_extent((400000, 3280000, 400064, 3280064), "EPSG:32617", pixel_size=1.0)
    out = generate(model, GenerateRequest(grid=grid, prompt="a fmow satellite image of a forest", steps=2), tmp_path / "g.tif")
    with rasterio.open(out.path) as ds:
        assert (ds.width, ds.height) == (64, 64) and ds.crs.to_epsg() == 32617
        assert ds.read().std() > 0


def _straight_and_interrupted_runs(tmp_path: Path, sources, recipe_path: Path, models: Path) -> None:
    """`models/a` trained in one go; `models/b` cancelled after 4 UNet steps (checkpoint at 3), then resumed."""
    run_training(sources, load_recipe(recipe_path), tmp_path / "straight", models / "a", log=lambda line: None)
    calls = {"n": 0}

    def cancel_after_four_steps() -> bool:
        calls["n"] += 1
        return calls["n"] > 4 + 3  # 3 VAE steps, then 4 UNet steps; the checkpoint is at UNet step 3

    with pytest.raises(Cancelled):
        run_training(sources, load_recipe(recipe_path), tmp_path / "resumed", models / "b",
                     log=lambda line: None, cancel=cancel_after_four_steps)
    assert not (models / "b").exists()
    run_training(sources, load_recipe(recipe_path), tmp_path / "resumed", models / "b", log=lambda line: None)


def test_an_interrupted_run_resumes_bit_for_bit(tmp_path):
    _needs_data()
    sources = load_sources([_sources(tmp_path)])
    _straight_and_interrupted_runs(tmp_path, sources, _recipe(tmp_path), tmp_path / "out")
    from safetensors.torch import load_file

    a = load_file(tmp_path / "out" / "a" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "out" / "b" / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_on_a_toy_set_changes_the_output_and_loads_in_generate(tmp_path):
    _needs_data()
    sources = load_sources([_sources(tmp_path)])
    run_training(sources, load_recipe(_recipe(tmp_path)), tmp_path / "base-run", tmp_path / "models" / "base",
                 log=lambda line: None)
    from engine.models.registry import ModelRegistry

    registry = ModelRegistry(tmp_path / "models")
    recipe = load_recipe(_recipe(tmp_path, mode="lora", base_model="base", **{"unet.learning_rate": 1e-2}))
    run_training(sources, recipe, tmp_path / "lora-run", tmp_path / "lora", registry=registry, log=lambda line: None)
    weights = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    assert weights.is_file()

    from engine.geo.grid import grid_from_extent
    from engine.pipelines.generate import GenerateRequest, generate

    registry = ModelRegistry(tmp_path / "models")
    registry.allow_lora_paths = True  # as the local command line does for --lora PATH
    grid = grid_from_extent((400000, 3280000, 400032, 3280032), "EPSG:32617", pixel_size=1.0)
    request = GenerateRequest(grid=grid, prompt="a fmow satellite image of a forest", steps=2, seed=4)
    images = []
    for loras in ((), registry.lora_specs([{"name": str(weights), "scale": 1.0}])):
        out = generate(registry.load("base", loras=loras), request, tmp_path / f"g{len(loras)}.tif")
        with rasterio.open(out.path) as ds:
            images.append(ds.read())
    assert not np.array_equal(images[0], images[1])


def test_a_full_fine_tune_continues_the_base_model_and_exports_a_model_with_its_vae(tmp_path):
    _needs_data()
    sources = load_sources([_sources(tmp_path)])
    run_training(sources, load_recipe(_recipe(tmp_path)), tmp_path / "base-run", tmp_path / "models" / "base",
                 log=lambda line: None)
    from engine.models.registry import ModelRegistry
    from safetensors.torch import load_file

    # The recipe's architecture keys are the defaults', not the base's: a fine-tune keeps its base's
    # architecture, and so does the random-weight twin the card scores it against.
    recipe = load_recipe(_recipe(tmp_path, mode="full", base_model="base", quality_chips=2, native_resolution=64,
                                 **{"unet.steps": 4, "unet.learning_rate": 1e-3,
                                    "unet.block_out_channels": [64, 128, 192], "unet.norm_num_groups": 32}))
    run_training(sources, recipe, tmp_path / "full-run", tmp_path / "models" / "tuned",
                 registry=ModelRegistry(tmp_path / "models"), log=lambda line: None)
    unet = "unet/diffusion_pytorch_model.safetensors"
    vae = "vae/diffusion_pytorch_model.safetensors"
    base, tuned = (load_file(tmp_path / "models" / name / unet) for name in ("base", "tuned"))
    assert base.keys() == tuned.keys()
    changed = [k for k in base if not torch.equal(base[k], tuned[k])]
    assert len(changed) > len(base) // 2  # every layer trains, not just adapters
    base_vae, tuned_vae = (load_file(tmp_path / "models" / name / vae) for name in ("base", "tuned"))
    assert all(torch.equal(base_vae[k], tuned_vae[k]) for k in base_vae)  # the base's VAE, unchanged
    for part in ("unet", "vae", "text_encoder"):  # no path of the exporting machine in a shipped model
        assert "_name_or_path" not in json.loads((tmp_path / "models" / "tuned" / part / "config.json").read_text())
    card = (tmp_path / "models" / "tuned" / "README.md").read_text()
    assert "mode `full` on `base`" in card and "random" in card
    # Its lineage: how the base's VAE and UNet were made, from the base's own card.
    assert "- The base model `base`, as its card gives it:\n  - VAE: (8, 8, 8, 8) channels" in card
    tuned = ModelRegistry(tmp_path / "models").load("tuned")
    assert tuned.info.native_resolution == 64  # trained on 32 px chips, generating 64 px windows


def test_the_decoder_stage_trains_the_decoder_alone_keeps_the_latents_and_resumes_bit_for_bit(tmp_path):
    _needs_data()
    sources = load_sources([_sources(tmp_path)])
    stage = {"decoder": {"steps": 6, "crop": 32, "batch": 2, "discriminator_channels": [8, 8, 8],
                           "learning_rate": 1e-3, "adversarial_ramp": 2, "checkpoint_every": 2, "eval_every": 6}}
    (tmp_path / "plain").mkdir()
    plain = _recipe(tmp_path / "plain", quality_chips=2, **{"unet.sample_latents": False})
    sharp = _recipe(tmp_path, quality_chips=2, **{"unet.sample_latents": False}, **stage)
    run_training(sources, load_recipe(plain), tmp_path / "run", tmp_path / "models" / "plain", log=lambda line: None)

    calls = {"n": 0}

    def cancel_inside_the_decoder_stage() -> bool:  # VAE and UNet are in the run folder already: only the decoder trains
        calls["n"] += 1
        return calls["n"] > 3  # after 3 of its 6 steps; the checkpoint is at step 2

    with pytest.raises(Cancelled):
        run_training(sources, load_recipe(sharp), tmp_path / "run", tmp_path / "models" / "sharp",
                     log=lambda line: None, cancel=cancel_inside_the_decoder_stage)
    assert not (tmp_path / "models" / "sharp").exists()
    run_training(sources, load_recipe(sharp), tmp_path / "run", tmp_path / "models" / "sharp", log=lambda line: None)
    run_training(sources, load_recipe(sharp), tmp_path / "straight", tmp_path / "models" / "straight",
                 log=lambda line: None)

    from safetensors.torch import load_file

    vae = "vae/diffusion_pytorch_model.safetensors"
    before, after, straight = (load_file(tmp_path / "models" / name / vae) for name in ("plain", "sharp", "straight"))
    decoder = [k for k in before if k.startswith(("decoder.", "post_quant_conv."))]
    assert decoder and all(not torch.equal(before[k], after[k]) for k in decoder if k.endswith("conv_out.weight"))
    assert sum(not torch.equal(before[k], after[k]) for k in decoder) > len(decoder) // 2
    assert all(torch.equal(before[k], after[k]) for k in before if k not in decoder)  # encoder: the same latents
    assert all(torch.equal(after[k], straight[k]) for k in after)  # resumed = uninterrupted
    from engine.training.state import load_latest

    # The decoder learns on the latents this UNet was trained to paint: the posterior means.
    assert load_latest(tmp_path / "run" / "decoder" / "checkpoints")["config"]["sample_posterior"] is False
    unet = "unet/diffusion_pytorch_model.safetensors"
    plain_unet, sharp_unet = (load_file(tmp_path / "models" / name / unet) for name in ("plain", "sharp"))
    assert all(torch.equal(plain_unet[k], sharp_unet[k]) for k in plain_unet)  # the UNet is not retrained
    from engine.models.registry import ModelRegistry

    plain_vae, sharp_vae = (ModelRegistry(tmp_path / "models").load(n).vae.float() for n in ("plain", "sharp"))
    assert plain_vae.config.latent_shift == sharp_vae.config.latent_shift
    cards = {name: (tmp_path / "models" / name / "README.md").read_text() for name in ("plain", "sharp")}
    assert "decoder stage" in cards["sharp"]
    # The held-out figures are of the new decoder's samples, not the plain model's read back from the run folder.
    scores = {name: re.search(r"\| this model \| ([\d.]+) \|", card).group(1) for name, card in cards.items()}
    assert scores["plain"] != scores["sharp"]
    with pytest.raises(InputError, match="LoRA keeps its base model's VAE"):
        load_recipe(_recipe(tmp_path, mode="lora", base_model="plain", **stage))


@pytest.mark.parametrize("sample_posterior", [False, True])
def test_the_decoder_stage_learns_on_the_latents_the_unet_paints(tmp_path, sample_posterior):
    """A deterministic autoencoder's posterior keeps its starting (wide) log-variance: a decoder trained on
    draws from it learns on noise the UNet never paints, and reconstructs held-out chips far worse."""
    _needs_data()
    from engine.training.decoder import DecoderConfig, train_decoder
    from engine.training.vae import VAEConfig, build_vae

    bank = build_chip_bank((TrainingSource(paths=(OSBS,)),), tmp_path / "bank", 32, (1,), 0.2)
    vae = build_vae(VAEConfig(block_out_channels=(8, 8, 8, 8), norm_num_groups=4))
    with torch.no_grad():  # log-variance 0: a posterior as wide as a KL VAE's prior
        vae.quant_conv.weight[4:] = 0.0
        vae.quant_conv.bias[4:] = 0.0
    decoded = []
    decode = vae.decode
    vae.decode = lambda latents, *a, **k: decoded.append(latents.detach().clone()) or decode(latents, *a, **k)
    encode = vae.encode
    encoded = []
    vae.encode = lambda images, *a, **k: encoded.append(encode(images, *a, **k)) or encoded[-1]
    train_decoder(vae, bank, tmp_path / "decoder", DecoderConfig(steps=1, crop=32, batch=2, eval_every=10,
                  discriminator_channels=(8, 8, 8), sample_posterior=sample_posterior), log=lambda line: None)
    posterior = encoded[0].latent_dist
    assert torch.allclose(posterior.std, torch.ones(()))  # draws and means differ clearly
    assert torch.equal(decoded[0], posterior.mean) is not sample_posterior


def test_a_zero_terminal_snr_model_is_trained_and_sampled_from_pure_noise(tmp_path):
    _needs_data()
    from diffusers import DDIMScheduler

    recipe = load_recipe(_recipe(tmp_path, zero_terminal_snr=True, quality_chips=0))
    run_training(load_sources([_sources(tmp_path)]), recipe, tmp_path / "run", tmp_path / "models" / "zsnr",
                 log=lambda line: None)
    config = json.loads((tmp_path / "models" / "zsnr" / "scheduler" / "scheduler_config.json").read_text())
    assert config["rescale_betas_zero_snr"] is True and config["timestep_spacing"] == "trailing"
    scheduler = DDIMScheduler.from_config(config)
    assert float(scheduler.alphas_cumprod[-1]) == 0.0  # the last training step is pure noise
    scheduler.set_timesteps(4)
    assert int(scheduler.timesteps[0]) == 999  # and sampling starts there
    trained = DDIMScheduler.from_pretrained(tmp_path / "run" / "components" / "scheduler")
    assert torch.equal(trained.alphas_cumprod, scheduler.alphas_cumprod)  # trained on the schedule it samples with

    from engine.geo.grid import grid_from_extent
    from engine.models.registry import ModelRegistry
    from engine.pipelines.generate import GenerateRequest, generate

    grid = grid_from_extent((400000, 3280000, 400032, 3280032), "EPSG:32617", pixel_size=1.0)
    out = generate(ModelRegistry(tmp_path / "models").load("zsnr"), GenerateRequest(grid=grid, prompt="", steps=3),
                   tmp_path / "g.tif")
    with rasterio.open(out.path) as ds:
        pixels = ds.read()
    assert np.isfinite(pixels).all() and pixels.std() > 0
    with pytest.raises(InputError, match="only a model trained from scratch"):
        load_recipe(_recipe(tmp_path, zero_terminal_snr=True, mode="full", base_model="zsnr"))


class _AnyCaption(dict):
    def __init__(self, embedding):
        super().__init__()
        self.embedding = embedding

    def __missing__(self, caption):
        return self.embedding


def test_latents_are_drawn_from_the_posterior_or_taken_at_its_mean():
    from dataclasses import replace

    from engine.training.diffusion import DiffusionData, UNetConfig, make_batch

    means = torch.randn(3, 1, 4, 4, 4).half()
    stds = torch.full_like(means, 5.0)  # a wide posterior: draws are mostly noise
    data = DiffusionData(means=means, stds=stds, metadata=torch.zeros(3, 7), land_covers=["forest"] * 3,
                         countries=[None] * 3, weights=torch.full((3,), 1 / 3, dtype=torch.float64),
                         embeddings=_AnyCaption(torch.zeros(2, 8)),
                         scaling_factor=0.5)
    config = UNetConfig(batch=4)
    drawn = make_batch(data, config, torch.Generator().manual_seed(0))[0]
    at_mean = make_batch(data, replace(config, sample_latents=False), torch.Generator().manual_seed(0))[0]
    generator = torch.Generator().manual_seed(0)
    from engine.training.batches import dihedral, draw

    chosen = draw(data.weights, 4, generator)
    codes = torch.randint(0, 8, (4,), generator=generator)
    expected = dihedral(means[chosen, 0].float(), codes) * 0.5
    assert torch.equal(at_mean, expected)
    assert (drawn - expected).std() > 1.0  # the draws carry the posterior's width


def test_the_unconditional_pair_guidance_uses_is_trained_empty_caption_with_all_zero_metadata():
    from dataclasses import replace

    from engine.training.diffusion import DiffusionData, UNetConfig, make_batch

    captions = ["", "a fmow satellite image of a forest", "a fmow satellite image of a forest in the united states",
                "a fmow satellite image in the united states"]
    data = DiffusionData(means=torch.zeros(2, 1, 4, 2, 2).half(), stds=torch.zeros(2, 1, 4, 2, 2).half(),
                         metadata=torch.rand(2, 7) + 1, land_covers=["forest"] * 2, countries=["the united states"] * 2,
                         weights=torch.full((2,), 0.5, dtype=torch.float64),
                         embeddings={t: torch.full((2, 3), float(i)) for i, t in enumerate(captions)}, scaling_factor=1.0)
    plain = UNetConfig(batch=400, metadata_dropout=0.0, caption_dropout=0.0, caption_part_dropout=0.0)

    def unconditional_rows(config):
        _, metadata, hidden, _ = make_batch(data, config, torch.Generator().manual_seed(3))
        empty, all_zero = hidden[:, 0, 0] == 0, (metadata == 0).all(dim=1)
        return empty, all_zero

    empty, all_zero = unconditional_rows(replace(plain, unconditional_dropout=0.0))
    assert not empty.any() and not all_zero.any()
    empty, all_zero = unconditional_rows(replace(plain, unconditional_dropout=0.25))
    assert torch.equal(empty, all_zero)  # dropped together, never one without the other
    assert 0.15 < float(all_zero.float().mean()) < 0.35
    empty, all_zero = unconditional_rows(replace(plain, metadata_dropout=0.1, caption_dropout=0.1))
    assert 0.05 < float(empty.float().mean()) and float(all_zero.float().mean()) > 0.05  # the default keeps the pair


def test_bad_training_data_gets_one_clear_line(tmp_path):
    _needs_data()
    with pytest.raises(InputError, match="does not exist"):
        load_sources([tmp_path / "missing.tif"])
    gray = tmp_path / "gray.tif"
    with rasterio.open(gray, "w", driver="GTiff", width=64, height=64, count=2, dtype="uint8", crs="EPSG:32617",
                       transform=Affine(1, 0, 0, 0, -1, 64)) as ds:
        ds.write(np.zeros((2, 64, 64), np.uint8) + 7)
    with pytest.raises(InputError, match="red, green and blue"):
        list(cut_source(TrainingSource(paths=(gray,)), 32, (1,), 0.2))
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8") as ds:
        ds.write(np.zeros((3, 64, 64), np.uint8) + 7)
    with pytest.raises(InputError, match="CRS|georeferenc"):
        list(cut_source(TrainingSource(paths=(plain,)), 32, (1,), 0.2))
    with pytest.raises(InputError, match="training chips"):
        build_chip_bank((TrainingSource(paths=(OSBS,)),), tmp_path / "bank", 256, (1,), 0.2)
    with pytest.raises(InputError, match="unknown recipe keys"):
        load_recipe(None, nmae="x")


def test_the_residual_vae_starts_at_the_shrink_and_enlarge_baseline_and_normalises_its_latents():
    from engine.models.residual_vae import ResidualAutoencoderKL
    from engine.training.chips import bicubic_baseline
    from engine.training.vae import VAEConfig, build_vae

    vae = build_vae(VAEConfig(block_out_channels=(8, 8, 8, 8), norm_num_groups=4)).eval()
    assert isinstance(vae, ResidualAutoencoderKL)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        recon = vae.decode(vae.encode(images).latent_dist.mean).sample
    expected = torch.from_numpy(bicubic_baseline(((images + 1) * 127.5).numpy())) / 127.5 - 1
    assert torch.allclose(recon, expected, atol=1e-4)
    with torch.no_grad():
        vae.set_latent_normalisation([0.1, -0.2, 0.3, 0.0], [2.0, 3.0, 4.0, 5.0])
        latents = vae.encode(images).latent_dist.mean
        again = vae.decode(latents).sample
    assert torch.allclose(again, recon, atol=1e-5) and vae.config.scaling_factor == 1.0
    pooled = torch.nn.functional.avg_pool2d(images, 8)
    assert torch.allclose(latents[:, 1], (pooled[:, 1] + 0.2) * 3.0, atol=1e-5)


def test_a_deterministic_vae_decodes_the_posterior_mean_and_leaves_its_log_variance_alone():
    from dataclasses import replace

    from engine.training.vae import VAEConfig, build_vae, vae_loss

    config = VAEConfig(block_out_channels=(8, 8, 8, 8), norm_num_groups=4, sample_posterior=False, kl_weight=1.0)
    vae = build_vae(config)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    first, _ = vae_loss(vae, images, config, torch.Generator().manual_seed(0))
    second, _ = vae_loss(vae, images, config, torch.Generator().manual_seed(1))
    assert torch.equal(first, second)  # no draw: the same images give the same loss whatever the seed
    first.backward()
    channels = config.latent_channels
    weight, bias = vae.encoder.conv_out.weight.grad, vae.encoder.conv_out.bias.grad
    assert weight[:channels].abs().sum() > 0  # the means learn
    assert weight[channels:].abs().sum() == 0 and bias[channels:].abs().sum() == 0  # the log-variance gets nothing
    vae.zero_grad()
    sampled, _ = vae_loss(vae, images, replace(config, sample_posterior=True), torch.Generator().manual_seed(0))
    sampled.backward()
    assert vae.encoder.conv_out.bias.grad[channels:].abs().sum() > 0  # drawing from the posterior widens or narrows it


JOPLIN = SHARED_DATA / "rasters" / "xv2deploy_pre_tile_1361-10160.tif"
JOPLIN_DAMAGE = SHARED_DATA / "vectors" / "xview2_deploy_joplin" / "damage.shp"


def test_polygons_with_classes_caption_the_chips_they_cover_as_inpainting_prompts_them(tmp_path):
    if not JOPLIN_DAMAGE.is_file():
        pytest.skip("the Joplin damage polygons are not in the shared data")
    import pyproj
    import shapely

    from engine.geo.damage_classes import classify_polygons
    from engine.geo.vectors import read_polygons
    from engine.training.labels import MIN_CLASS_SHARE

    sources = tmp_path / "sources.yaml"
    sources.write_text(f"sources:\n  - {{path: {JOPLIN}, polygons: {JOPLIN_DAMAGE}, class_field: dmg, "
                       "disaster_type: tornado, land_cover: town}\n", encoding="utf-8")
    (source,) = load_sources([sources]).sources
    assert source.disaster_type == "wind"
    chips = [record for _, record, _ in cut_source(source, 64, (1, 2), 0.2)]
    layer = read_polygons(JOPLIN_DAMAGE)
    classes = classify_polygons(layer, "dmg", disaster_type="wind")  # what inpaint conditions each class on
    to_tile = pyproj.Transformer.from_crs(layer.crs, "EPSG:26915", always_xy=True).transform
    moved = [shapely.transform(g, lambda xy: np.column_stack(to_tile(xy[:, 0], xy[:, 1]))) for g in layer.geometries]
    polygons = [(g.buffer(0), int(c)) for g, c in zip(moved, classes.codes)]
    captioned = [r for r in chips if r.caption]
    assert 0 < len(captioned) < len(chips)
    for record in chips:
        a, b, c, d, e, f = record.transform
        box = shapely.box(c, f + 64 * e, c + 64 * a, f)
        areas = {}
        for polygon, code in polygons:
            areas[code] = areas.get(code, 0.0) + polygon.intersection(box).area
        code, area = max(areas.items(), key=lambda item: (item[1], item[0]))
        share = area / box.area
        if record.caption:
            assert record.caption == classes.prompt(code) and share > MIN_CLASS_SHARE - 0.05
            assert record.land_cover == "town"
        else:
            assert share < MIN_CLASS_SHARE + 0.05 and record.land_cover == "town"
    with pytest.raises(InputError, match="without 'polygons'"):
        sources.write_text(f"sources:\n  - {{path: {JOPLIN}, class_field: dmg}}\n", encoding="utf-8")
        load_sources([sources])


def test_event_chips_are_centred_on_event_polygons_where_the_event_fills_most_of_the_chip(tmp_path):
    _needs_data()
    import shapely

    from engine.training.chips import ChipBank

    with rasterio.open(OSBS) as ds:
        transform, crs = ds.transform, ds.crs.to_string()
    # A 24 px square burn whose corner is 12 px past the 16 px grid of 32 px chips: on the grid it
    # covers at most 20 x 20 px of a chip (39%), centred it covers 56%.
    corners = [transform @ xy for xy in [(28, 28), (52, 28), (52, 52), (28, 52)]]
    burn = shapely.Polygon(corners)
    perimeter = tmp_path / "burn.geojson"
    perimeter.write_text(json.dumps({"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": crs}},
                                     "features": [{"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(burn)}]}))
    sources = tmp_path / "sources.yaml"
    sources.write_text(f"sources:\n  - {{path: {OSBS}, polygons: {perimeter}, class: burnt-area, "
                       "disaster_type: fire, land_cover: forest}\n", encoding="utf-8")
    (source,) = load_sources([sources]).sources

    def burnt_share(record) -> float:
        a, b, c, d, e, f = record.transform
        return burn.intersection(shapely.box(c, f + 32 * e, c + 32 * a, f)).area / (32 * a) ** 2

    grid = [record for _, record, _ in cut_source(source, 32, (1,), 0.2)]
    assert max(burnt_share(r) for r in grid) < 0.4
    chips = [record for _, record, _ in cut_source(source, 32, (1,), 0.2, event_share=0.5)]
    added = [r for r in chips if (r.col, r.row) not in {(g.col, g.row) for g in grid}]
    assert added and all(r.split == "train" and r.caption and "burnt areas" in r.caption for r in added)
    assert all(burnt_share(r) >= 0.5 for r in added)
    assert (24, 24) in {(r.col, r.row) for r in added}  # the chip centred on the burn: 24 of its 32 px burnt
    assert len(chips) == len(grid) + len(added)  # the grid's chips stay as they were
    bank = build_chip_bank((source,), tmp_path / "bank", 32, (1,), 0.2, event_share=0.5)
    assert len(ChipBank(tmp_path / "bank")) == len(chips)
    assert build_chip_bank((source,), tmp_path / "bank", 32, (1,), 0.2).signature != bank.signature
    with pytest.raises(InputError, match="event_chips is the least share"):
        load_recipe(_recipe(tmp_path, event_chips=1.5))
    with pytest.raises(InputError, match="native_resolution must be a multiple of 8"):
        load_recipe(_recipe(tmp_path, native_resolution=100))


def test_a_chip_with_a_class_caption_trains_on_that_caption():
    from dataclasses import replace

    from engine.training.diffusion import DiffusionData, UNetConfig, make_batch

    burnt = "a fmow satellite image after being affected by a fire natural disaster with burnt areas"
    texts = ["", burnt, "a fmow satellite image of a forest", "a fmow satellite image"]
    data = DiffusionData(means=torch.zeros(2, 1, 4, 2, 2).half(), stds=torch.zeros(2, 1, 4, 2, 2).half(),
                         metadata=torch.rand(2, 7) + 1, land_covers=["forest"] * 2, countries=[None] * 2,
                         weights=torch.tensor([1.0, 0.0], dtype=torch.float64),
                         embeddings={t: torch.full((2, 3), float(i)) for i, t in enumerate(texts)}, scaling_factor=1.0,
                         captions=[burnt, None])
    config = UNetConfig(batch=200, metadata_dropout=0.0, caption_dropout=0.1, caption_part_dropout=0.5,
                        unconditional_dropout=0.0)
    hidden = make_batch(data, config, torch.Generator().manual_seed(0))[2][:, 0, 0]
    assert set(hidden.tolist()) == {0.0, 1.0}  # the whole class caption, or (caption dropout) none
    assert 0.03 < float((hidden == 0).float().mean()) < 0.2
    data = replace(data, weights=torch.tensor([0.0, 1.0], dtype=torch.float64))
    hidden = make_batch(data, config, torch.Generator().manual_seed(0))[2][:, 0, 0]
    assert {2.0, 3.0} <= set(hidden.tolist()) and 1.0 not in hidden.tolist()  # its land cover, parts dropped


def _stac_item(assets: dict, **properties) -> dict:
    return {"type": "Feature", "stac_version": "1.0.0", "id": "LC81070352015122LGN00", "geometry": None,
            "properties": {"datetime": "2015-05-02T01:23:45Z", **properties}, "assets": assets, "links": []}


def test_a_stac_item_is_a_training_source_with_its_rgb_assets_date_and_cloud_cover(tmp_path):
    _needs_data()
    bands = {colour: TRAIN_DATA / f"LC81070352015122LGN00_B{n}.tif" for colour, n in (("red", 4), ("green", 3), ("blue", 2))}
    assets = {f"B{n}": {"href": str(bands[colour]), "eo:bands": [{"name": f"B{n}", "common_name": colour}]}
              for colour, n in (("blue", 2), ("red", 4), ("green", 3))}
    item = tmp_path / "item.json"
    item.write_text(json.dumps(_stac_item(assets, **{"eo:cloud_cover": 12.0})), encoding="utf-8")
    (source,) = load_sources([item]).sources
    assert source.paths == (bands["red"], bands["green"], bands["blue"])
    assert source.date == "2015-05-02" and source.cloud_cover == pytest.approx(0.12)
    listed = tmp_path / "sources.yaml"
    listed.write_text(f"sources:\n  - {{stac: {item.name}, land_cover: mountain, licence: public domain}}\n", encoding="utf-8")
    (entry,) = load_sources([listed]).sources
    assert entry.paths == source.paths and entry.land_cover == "mountain" and entry.date == "2015-05-02"
    visual = tmp_path / "visual.json"
    visual.write_text(json.dumps(_stac_item({"visual": {"href": str(OSBS), "roles": ["visual"]}})), encoding="utf-8")
    assert load_sources([visual]).sources[0].paths == (OSBS,)
    remote = tmp_path / "remote.json"
    remote.write_text(json.dumps(_stac_item({"visual": {"href": "https://example.com/a.tif"}})), encoding="utf-8")
    with pytest.raises(InputError, match="not a local file"):
        load_sources([remote])
    del assets["B3"]
    item.write_text(json.dumps(_stac_item(assets)), encoding="utf-8")
    with pytest.raises(InputError, match="red, green and blue"):
        load_sources([item])


def test_the_train_task_fits_a_lora_on_uploaded_rasters_and_installs_it(tmp_path):
    _needs_data()
    run_training(load_sources([_sources(tmp_path)]), load_recipe(_recipe(tmp_path)), tmp_path / "base-run",
                 tmp_path / "models" / "base", log=lambda line: None)
    from engine.tasks import DeviceRegistry, run_task_locally

    registry = DeviceRegistry(tmp_path / "models", device="cpu")
    progress = []
    written = run_task_locally(
        registry, {"task": "train", "name": "my-lora", "model": "base", "mode": "lora", "chip_size": 32, "scales": [1],
                   "steps": 3, "batch": 2, "land_cover": "forest"},
        {"rasters.0": OSBS}, {"card": tmp_path / "card.md", "loss_curve": tmp_path / "loss.png"}, progress=progress.append)
    card = written["card"].read_text()
    assert "OSBS_029.tif" in card and "- LoRA (PEFT) of rank 8 on the attention projections of base's UNet" in card
    assert "- VAE: base's, unchanged." in card  # the LoRA's card describes the base, not a default recipe's VAE
    assert (tmp_path / "models" / "loras" / "my-lora.safetensors").is_file()
    assert progress and progress[-1].done == progress[-1].total == 3
    served = registry.load("base", device="cpu", dtype=torch.float32).unet  # what the engine's generate jobs use
    assert not getattr(served, "peft_config", None)  # training worked on its own copy
    with pytest.raises(InputError, match="exists already"):
        run_task_locally(registry, {"task": "train", "name": "my-lora", "model": "base", "mode": "lora"},
                         {"rasters.0": OSBS}, {"card": tmp_path / "card2.md"})
    with rasterio.open(OSBS) as ds:  # a burn perimeter over the raster's west half
        (left, bottom, right, top), crs = ds.bounds, ds.crs.to_string()
    west = [[left, bottom], [(left + right) / 2, bottom], [(left + right) / 2, top], [left, top], [left, bottom]]
    perimeter = tmp_path / "perimeter.geojson"
    perimeter.write_text(json.dumps({"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": crs}},
                                     "features": [{"type": "Feature", "properties": {}, "geometry": {
                                         "type": "Polygon", "coordinates": [west]}}]}), encoding="utf-8")
    burn = {"task": "train", "name": "burn", "model": "base", "mode": "lora", "chip_size": 32, "scales": [1], "steps": 2,
            "batch": 2, "land_cover": "forest", "polygon_class": "burnt-area", "disaster_type": "wildfire"}
    with pytest.raises(InputError, match="upload the polygons"):
        run_task_locally(registry, burn, {"rasters.0": OSBS}, {"card": tmp_path / "card3.md"})
    written = run_task_locally(registry, burn, {"rasters.0": OSBS, "polygons": perimeter}, {"card": tmp_path / "card4.md"})
    assert "'a fmow satellite image after being affected by a fire natural disaster with burnt areas'" in written["card"].read_text()


def test_the_card_distances_grow_with_the_difference_and_report_a_spread():
    from engine.training.quality import distances

    rng = np.random.default_rng(0)
    real = rng.integers(90, 140, (16, 3, 32, 32)).astype(np.uint8)  # grey, mildly noisy chips
    similar = rng.integers(90, 140, (16, 3, 32, 32)).astype(np.uint8)
    different = np.repeat(np.linspace(0, 255, 32, dtype=np.uint8)[None, None, None, :], 16, axis=0).repeat(3, 1).repeat(32, 2)
    near, far = distances(similar, real), distances(different, real)
    assert far["fd_texture"] > 10 * near["fd_texture"] and far["kd_texture"] > 10 * abs(near["kd_texture"])
    assert near["kd_texture_std"] > 0 and far["kd_texture_std"] > 0  # subsets of half the set differ
    assert near["images"] == 16


def test_labelled_chips_get_their_share_of_the_draws_and_a_bad_share_is_refused(tmp_path):
    from engine.training.batches import draw, place_weights, with_labelled_share

    places = ["farm"] * 90 + ["spain"] * 10
    labelled = [index >= 98 for index in range(100)]  # two of Spain's chips show its flood
    weights = place_weights(places)
    assert float(weights[torch.tensor(labelled)].sum()) < 0.06  # rarely drawn as they are
    shared = with_labelled_share(weights, labelled, 0.25)
    assert float(shared.sum()) == pytest.approx(1.0)
    assert float(shared[torch.tensor(labelled)].sum()) == pytest.approx(0.25)
    assert float(shared[90] / shared[0]) == pytest.approx(float(weights[90] / weights[0]))  # the places keep their balance
    drawn = draw(shared, 20000, torch.Generator().manual_seed(0))
    assert 0.23 < float((drawn >= 98).float().mean()) < 0.27
    assert with_labelled_share(weights, [False] * 100, 0.25) is weights  # nothing labelled: nothing to favour

    with pytest.raises(InputError, match="unet.labelled_share .* between 0 and 1, not 1.5"):
        load_recipe(_recipe(tmp_path, **{"unet.labelled_share": 1.5}))
    assert load_recipe(_recipe(tmp_path), **{"unet.labelled_share": 0.2}).unet.labelled_share == 0.2


def test_labelled_chips_drop_their_metadata_at_their_own_rate(tmp_path):
    from engine.training.diffusion import DiffusionData, UNetConfig, make_batch

    flood = "a fmow satellite image after being affected by a flooding natural disaster with flooded areas"
    texts = ["", flood, "a fmow satellite image of a farm", "a fmow satellite image"]
    data = DiffusionData(means=torch.zeros(2, 1, 4, 2, 2).half(), stds=torch.zeros(2, 1, 4, 2, 2).half(),
                         metadata=torch.rand(2, 7) + 1, land_covers=["farm"] * 2, countries=[None] * 2,
                         weights=torch.full((2,), 0.5, dtype=torch.float64),
                         embeddings={t: torch.full((2, 3), float(i)) for i, t in enumerate(texts)}, scaling_factor=1.0,
                         captions=[flood, None])
    config = UNetConfig(batch=2000, metadata_dropout=0.1, labelled_metadata_dropout=0.6, caption_dropout=0.0,
                        unconditional_dropout=0.0, caption_part_dropout=0.0)
    _, metadata, hidden, _ = make_batch(data, config, torch.Generator().manual_seed(0))
    labelled = hidden[:, 0, 0] == 1.0
    dropped = (metadata == 0).float()
    assert 0.55 < float(dropped[labelled].mean()) < 0.65
    assert 0.07 < float(dropped[~labelled].mean()) < 0.13
    with pytest.raises(InputError, match="labelled_metadata_dropout .* between 0 and 1, not 2"):
        load_recipe(_recipe(tmp_path, **{"unet.labelled_metadata_dropout": 2}))


def test_a_text_encoder_trained_with_the_unet_is_exported_and_resumes_bit_for_bit(tmp_path):
    _needs_data()
    from safetensors.torch import load_file

    from engine.models.registry import ModelRegistry

    sources = load_sources([_sources(tmp_path)])
    recipe_path = _recipe(tmp_path, **{"unet.train_text_encoder": True, "unet.learning_rate": 1e-2})
    _straight_and_interrupted_runs(tmp_path, sources, recipe_path, tmp_path / "models")

    weights = "text_encoder/model.safetensors"
    initial = load_file(tmp_path / "straight" / "components" / weights)
    a, b = (load_file(tmp_path / "models" / name / weights) for name in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    changed = [k for k in a if not torch.equal(a[k], initial[k].half())]
    assert len(changed) > len(a) // 2
    assert "text encoder trained with the UNet" in (tmp_path / "models" / "a" / "README.md").read_text()
    loaded = ModelRegistry(tmp_path / "models").load("a").text_encoder.state_dict()  # the trained one, not a fallback
    assert all(torch.equal(loaded[k].half().cpu(), a[k]) for k in changed)


def undo_dihedral(images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The inverse of batches.dihedral: mirrored back, then turned back."""
    out = []
    for image, code in zip(images, codes.tolist()):
        image = torch.flip(image, dims=(-1,)) if code >= 4 else image
        out.append(torch.rot90(image, -(code % 4), dims=(-2, -1)))
    return torch.stack(out)


def _burn_source(tmp_path: Path):
    """OSBS (400 x 400 px) with 24 px square 'burnt-area' polygons with corners at pixels (28, 28) and, in
    the held-out strip, (350, 200)."""
    import shapely

    with rasterio.open(OSBS) as ds:
        transform, crs = ds.transform, ds.crs.to_string()
    burns = [shapely.Polygon([transform @ (x + dx, y + dy) for dx, dy in [(0, 0), (24, 0), (24, 24), (0, 24)]])
             for x, y in [(28, 28), (350, 200)]]
    perimeter = tmp_path / "burn.geojson"
    perimeter.write_text(json.dumps({"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": crs}},
                                     "features": [{"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(b)}
                                                  for b in burns]}))
    sources = tmp_path / "burn-sources.yaml"
    sources.write_text(f"sources:\n  - {{path: {OSBS}, polygons: {perimeter}, class: burnt-area, "
                       "disaster_type: fire, land_cover: forest}\n", encoding="utf-8")
    return sources, perimeter


def test_an_inpainting_fine_tune_masks_event_chips_with_their_polygons_and_exports_a_9_channel_model(tmp_path):
    _needs_data()
    from dataclasses import replace

    from engine.models.registry import ModelRegistry
    from engine.pipelines.inpaint import InpaintOutputs, InpaintRequest, inpaint
    from engine.training.batches import Rows
    from engine.training.chips import ChipBank
    from engine.training.diffusion import DiffusionData, UNetConfig, make_batch
    from engine.training.inpainting import widen_conv_in

    sources_path, perimeter = _burn_source(tmp_path)
    sources = load_sources([sources_path])
    run_training(sources, load_recipe(_recipe(tmp_path)), tmp_path / "base-run", tmp_path / "models" / "base",
                 log=lambda line: None)
    registry = ModelRegistry(tmp_path / "models")

    # Widened with zero weights, the UNet starts as its base, whatever the extra channels hold.
    unet = ModelRegistry(tmp_path / "models").load("base").unet.float()
    latents, hidden = torch.randn(1, 4, 4, 4), torch.randn(1, 77, unet.config.cross_attention_dim)
    before = unet(latents, 500, hidden, metadata=torch.zeros(1, 7)).sample
    widen_conv_in(unet)
    after = unet(torch.cat([latents, torch.randn(1, 5, 4, 4)], 1), 500, hidden, metadata=torch.zeros(1, 7)).sample
    assert unet.config.in_channels == 9 and torch.allclose(before, after, atol=1e-5)

    recipe = load_recipe(_recipe(tmp_path, mode="full", base_model="base", event_chips=0.5, native_resolution=64,
                                 default_guidance=1.5, **{"unet.inpainting": True, "unet.labelled_share": 0.5, "unet.steps": 4,
                                    "unet.block_out_channels": [64, 128, 192], "unet.norm_num_groups": 32}))
    run_training(sources, recipe, tmp_path / "run", tmp_path / "models" / "burns", registry=registry,
                 log=lambda line: None)

    # The bank marks each chip's event pixels: the chip centred on the burn (at 24, 24) has it at 4..28.
    bank = ChipBank(tmp_path / "run" / "bank")
    centred = next(i for i, r in enumerate(bank.records) if (r.col, r.row, r.scale) == (24, 24, 1))
    expected = np.zeros((32, 32), np.uint8)
    expected[4:28, 4:28] = 1
    assert np.array_equal(bank.event_masks[centred], expected)
    from engine.training.labels import MIN_CLASS_SHARE

    uncaptioned = bank.event_masks[[i for i, r in enumerate(bank.records) if r.caption is None]]
    assert uncaptioned.any() and uncaptioned.mean(axis=(1, 2)).max() < MIN_CLASS_SHARE + 0.05

    # A batch of that chip: the mask channel is its burn on latent cells (turned with the chip), and the
    # masked image's latents do not see the burnt pixels but do see the rest.
    train_idx = bank.indices("train")
    row = int(np.flatnonzero(train_idx == centred)[0])
    weights = torch.zeros(len(train_idx), dtype=torch.float64)
    weights[row] = 1.0
    captions = [bank.records[i].caption for i in train_idx]
    images = np.asarray(bank.images[train_idx]).copy()
    data = DiffusionData(means=torch.zeros(len(train_idx), 1, 4, 4, 4), stds=torch.zeros(len(train_idx), 1, 4, 4, 4),
                         metadata=torch.zeros(len(train_idx), 7), land_covers=["forest"] * len(train_idx),
                         countries=[None] * len(train_idx), weights=weights, embeddings={},
                         scaling_factor=1.0, captions=captions, images=images,
                         event_masks=Rows(bank.event_masks, train_idx), vae=registry.load("burns").vae.float())
    config = UNetConfig(batch=4, inpainting=True)
    data.embeddings = {t: torch.zeros(1) for t in {"", captions[row]}}
    extra = make_batch(data, config, torch.Generator().manual_seed(0))[3]
    codes = torch.randint(0, 8, (4,), generator=(lambda g: (g, torch.multinomial(weights, 4, True, generator=g))[0])(
        torch.Generator().manual_seed(0)))
    from engine.training.batches import dihedral

    cells = torch.nn.functional.max_pool2d(torch.from_numpy(expected).float()[None, None], 8)
    assert torch.equal(extra[:, :1], dihedral(cells.expand(4, 1, 4, 4), codes))
    # Turned back, the four draws' inputs are one: they turn with the chip's latents (which the bank stores
    # once and turns in latent space), so where nothing is masked they are the target latents.
    assert len(set(codes.tolist())) > 1
    unturned = [undo_dihedral(extra[i:i + 1], codes[i:i + 1]) for i in range(4)]
    assert all(torch.allclose(u, unturned[0], atol=1e-6) for u in unturned)
    inside = images.copy()
    inside[row][:, 4:28, 4:28] = 255 - inside[row][:, 4:28, 4:28]
    outside = images.copy()
    outside[row][:, 28:, :] = 255 - outside[row][:, 28:, :]
    again = [make_batch(replace(data, images=changed), config, torch.Generator().manual_seed(0))[3]
             for changed in (inside, outside)]
    assert torch.equal(again[0], extra) and not torch.equal(again[1][:, 1:], extra[:, 1:])

    # The model: 9 input channels, for inpaint only, and inpaint uses them.
    model = registry.load("burns")
    assert model.unet.config.in_channels == 9 and model.info.tasks == ("inpaint",)
    card = (tmp_path / "models" / "burns" / "README.md").read_text()
    assert "an inpainting UNet (9 input channels" in card
    # The card's held-out event check: the east burn (24 x 24 px; scored 2 px in from its edge, where OSBS
    # has data), inpainted by this model and by its base.
    from scipy import ndimage

    with rasterio.open(OSBS) as ds:
        burnt = np.zeros((ds.height, ds.width), bool)
        burnt[200:224, 350:374] = True
        scored = int(ndimage.binary_erosion(burnt & (ds.dataset_mask() > 0), iterations=2).sum())
    assert 350 < scored <= 400
    assert "| held-out event (source) | pixels | MAE: my-satunet | MAE: base |" in card
    row = re.search(rf"\| OSBS_029 \| {scored} \| ([\d.]+) \| ([\d.]+) \|", card)
    from engine.training.event_check import score_heldout_events

    again = score_heldout_events({"base": ModelRegistry(tmp_path / "models").load("base")}, sources.sources, 0.2, 2,
                                 recipe.default_guidance)
    assert float(row.group(2)) == round(again["OSBS_029"]["base"]["mae"], 1)  # the base as shipped, not as trained here
    assert f"guidance {recipe.default_guidance:g} (this model's default) for every model" in card
    outputs = InpaintOutputs(tmp_path / "post.tif", tmp_path / "label.tif")
    inpaint(model, InpaintRequest(image=OSBS, polygons=perimeter, class_field=None, steps=2, seed=1), outputs)
    with rasterio.open(outputs.image) as post, rasterio.open(OSBS) as pre:
        assert post.tags()["GFM4D_METHOD"] == "inpainting-unet"
        changed = (post.read() != pre.read()).any(axis=0)
        assert changed[30:50, 30:50].all() and changed[202:222, 352:372].all() and not changed[:20].any()
    with pytest.raises(InputError, match="a LoRA cannot add"):
        run_training(sources, load_recipe(_recipe(tmp_path, mode="lora", base_model="base", **{"unet.inpainting": True})),
                     tmp_path / "lora-run", tmp_path / "models" / "lora", registry=registry, log=lambda line: None)
    assert not (tmp_path / "lora-run" / "bank").exists()  # refused before any chip was cut
    # Fine-tuning an inpainting model goes on as one, without being told.
    again = load_recipe(_recipe(tmp_path, mode="full", base_model="burns", native_resolution=64, quality_chips=0,
                                **{"unet.steps": 2, "unet.block_out_channels": [64, 128, 192], "unet.norm_num_groups": 32}))
    logged = []
    run_training(sources, again, tmp_path / "again-run", tmp_path / "models" / "burns-2", registry=registry,
                 log=logged.append)
    assert any("burns is an inpainting model" in line for line in logged)
    assert ModelRegistry(tmp_path / "models").load("burns-2").info.tasks == ("inpaint",)
    # The run folder of a plain model does not continue as an inpainting one: refused in a sentence.
    with pytest.raises(InputError, match=r"holds checkpoints of a different UNet \(conv_in.weight is \(16, 4, 3, 3\) there, \(16, 9, 3, 3\) in this recipe\)"):
        run_training(sources, recipe, tmp_path / "base-run", tmp_path / "models" / "mixed", registry=registry,
                     log=lambda line: None)
    assert not (tmp_path / "models" / "mixed").exists()
    # Through the train task: an inpainting model is a base it accepts (generate does not use one), a LoRA
    # on it stays an inpainting LoRA, and `inpainting` on a plain base refuses a LoRA.
    from engine.tasks import DeviceRegistry, all_tasks, run_task_locally

    tasks = DeviceRegistry(tmp_path / "models", device="cpu")
    assert all_tasks()["train"].can_use(tasks.get("burns")) and not all_tasks()["generate"].can_use(tasks.get("burns"))
    lora = {"task": "train", "mode": "lora", "chip_size": 32, "scales": [1], "steps": 2, "batch": 2}
    written = run_task_locally(tasks, {**lora, "name": "burns-lora", "model": "burns"}, {"rasters.0": OSBS},
                               {"card": tmp_path / "burns-lora.md"})
    assert "an inpainting UNet (9 input channels" in written["card"].read_text()
    with pytest.raises(InputError, match="a LoRA cannot add"):
        run_task_locally(tasks, {**lora, "name": "plain-lora", "model": "base", "inpainting": True}, {"rasters.0": OSBS},
                         {"card": tmp_path / "plain-lora.md"})
