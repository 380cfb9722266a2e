"""SDXL, SD3 and FLUX through GFM4D's one sampling loop, checked against diffusers' own pipelines.

Tiny random models in diffusers layout (engine.models.tiny_backbones) are loaded twice: by GFM4D
and by the vanilla diffusers pipeline, the reference implementation. With the same initial noise
and prompt, a single-window generation must give the same latents and the same pixels; several
windows must blend into one seamless canvas; inpainting must copy every pixel outside the mask.
"""

import datetime as dt

import numpy as np
import pytest
import rasterio
import shapely
import torch

from engine.errors import InputError, ModelError
from engine.geo.grid import grid_from_extent
from engine.geo.metadata import SatMetadata
from engine.geo.tiling import Span, plan_windows
from engine.geo.vectors import PolygonLayer
from engine.models.backbones.flux import pack, unpack
from engine.models.registry import ModelRegistry
from engine.models.tiny_backbones import build_tiny_backbone
from engine.pipelines.canvas import LatentCanvas
from engine.pipelines.captions import metadata_caption
from engine.pipelines.generate import GenerateRequest, generate, window_metadata
from engine.pipelines.inpaint import InpaintOutputs, InpaintRequest, inpaint
from engine.pipelines.sampling import CanvasJob, denoise_canvas, encode_prompt, position_noise, predict_canvas
from engine.pipelines.staging import StagedRegion, window_weights

PROMPT = "a fmow satellite image of a farm in italy"
FAMILIES = ("sdxl", "sd3", "flux")
PIPELINES = {"sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}
KINDS = {"sdxl": "sdxl-unet", "sd3": "sd3-transformer", "flux": "flux-transformer",
         "flux-fill": "flux-fill-transformer", "sdxl-inpaint": "sdxl-inpaint-unet"}
WINDOW = 64  # px: 8 x 8 latent cells (4 x 4 patches for SD3 and FLUX)
GUIDANCE = 3.0
STEPS = 3


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("backbones")
    for family in KINDS:
        build_tiny_backbone(path / family, family, seed=7)
    return path


@pytest.fixture(scope="module")
def registry(models_dir):
    return ModelRegistry(models_dir)


def _reference(models_dir, family):
    import diffusers

    pipe = getattr(diffusers, PIPELINES[family]).from_pretrained(models_dir / family, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _reference_run(pipe, family, prompt, noise, output_type):
    """diffusers' own pipeline from the same initial noise (packed for FLUX, as FluxPipeline takes it)."""
    cells = noise.shape[-1]
    latents = pack(noise) if family == "flux" else noise
    out = pipe(prompt, height=cells * 8, width=cells * 8, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
               latents=latents, output_type=output_type).images
    if output_type == "latent" and family == "flux":
        out = unpack(out, cells, cells)
    return out


def _grid(width_px, height_px=WINDOW):
    return grid_from_extent((600000, 5100000, 600000 + width_px, 5100000 + height_px), "EPSG:32632", resolution_m=1)


def _request(grid, **kw):
    args = dict(grid=grid, prompt=PROMPT, steps=STEPS, guidance_scale=GUIDANCE, seed=11, window=WINDOW, overlap=16,
                date=dt.date(2020, 6, 15))
    args.update(kw)
    return GenerateRequest(**args)


def _caption(model, grid, request):
    canvas = LatentCanvas.over(grid, model.vae_scale_factor, model.latent_channels, WINDOW // 8)
    centre = window_metadata(canvas, [Span(0, 0, canvas.height, canvas.width)], Span(0, 0, 0, 0), request)[0]
    return metadata_caption(PROMPT, centre)


def test_families_are_recognised_from_their_configs(registry):
    infos = {info.name: info for info in registry.list() if not info.name.startswith("gfm4d-mini")}  # built-in ones too
    assert {name: info.kind for name, info in infos.items()} == KINDS
    assert all(info.ready and info.metadata_caption and not info.uses_metadata for info in infos.values())
    assert infos["sdxl"].tasks == ("generate", "inpaint") and infos["flux-fill"].tasks == ("inpaint",)
    assert infos["sd3"].prediction_type == "flow" and infos["sdxl"].prediction_type == "epsilon"
    assert infos["sd3"].native_resolution == 64  # transformer sample_size 8 x the VAE's 8


def test_the_metadata_caption_is_diffusionsat_text_form():
    metadata = SatMetadata(lon=-77.03652, lat=38.89768, gsd_m=0.5, cloud_cover=None, date=dt.date(2020, 6, 15))
    assert metadata_caption("a fmow satellite image of a farm", metadata) == (
        "a fmow satellite image of a farm at a resolution of 0.5. The longitude, latitude is -77.0365, 38.8977. "
        "The date is 2020, 6, 15"
    )
    unknown = SatMetadata(lon=None, lat=None, gsd_m=None, cloud_cover=None, date=None)
    assert metadata_caption("a farm", unknown) == "a farm"


@pytest.mark.parametrize("family", FAMILIES)
def test_single_window_equals_the_diffusers_pipeline(family, registry, models_dir, tmp_path):
    model = registry.load(family)
    grid = _grid(WINDOW)
    request = _request(grid)
    caption = _caption(model, grid, request)
    assert "The longitude, latitude is" in caption and "The date is 2020, 6, 15" in caption
    noise = position_noise(request.seed, Span(0, 0, 8, 8), model.latent_channels)
    pipe = _reference(models_dir, family)

    # The latents of GFM4D's loop (one window) and of diffusers' loop.
    text = encode_prompt(model, caption, "", GUIDANCE)
    job = CanvasJob(noise=noise, windows=[Span(0, 0, 8, 8)], window_metadata=None, overlap=2)
    ours = denoise_canvas(model, model.make_scheduler(), job, text, num_inference_steps=STEPS,
                          guidance_scale=GUIDANCE, batch_size=1)
    reference = _reference_run(pipe, family, caption, noise, "latent")
    assert torch.allclose(ours, reference, atol=1e-4, rtol=1e-4), (ours - reference).abs().max()
    assert reference.abs().mean() > 0.1  # a real result, not zeros

    # And the pixels of the georeferenced output: diffusers' image in [0, 1] to the same uint8.
    result = generate(model, request, tmp_path / "single.tif")
    assert result.windows == 1
    with rasterio.open(result.path) as src:
        pixels = src.read().astype(int)
        assert src.transform == grid.transform and src.tags()["GFM4D_PROMPT"] == PROMPT
    image = _reference_run(pipe, family, caption, noise, "np")[0]
    expected = np.round(image.transpose(2, 0, 1) * 255).astype(int)
    assert np.abs(pixels - expected).max() <= 1
    assert pixels.std() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_two_windows_blend_into_one_seamless_canvas(family, registry, tmp_path):
    """Each window's own prompt (its centre as text); in the overlap the prediction is the weighted average."""
    model = registry.load(family)
    height, width, overlap = 8, 14, 2
    windows = plan_windows(height, width, 8, overlap)
    assert [(w.col, w.width) for w in windows] == [(0, 8), (6, 8)]
    torch.manual_seed(0)
    latents = torch.randn(1, model.latent_channels, height, width)
    captions = [metadata_caption(PROMPT, SatMetadata(lon=11.0 + i, lat=45.0, gsd_m=1.0, cloud_cover=None, date=None))
                for i in range(2)]
    text = encode_prompt(model, captions, "", GUIDANCE)
    job = CanvasJob(noise=latents, windows=windows, window_metadata=None, overlap=overlap, window_prompts=[0, 1])
    scheduler = model.make_scheduler()
    scheduler.set_timesteps(STEPS) if family == "sdxl" else model.backbone.set_timesteps(scheduler, STEPS, "cpu", (8, 8))
    t = scheduler.timesteps[1]
    weights = window_weights(windows, overlap, "cpu")
    blended = predict_canvas(model, latents, t, StagedRegion(model, job, text), GUIDANCE, batch_size=2)
    singles = []
    for index, span in enumerate(windows):
        one = CanvasJob(noise=latents, windows=[span], window_metadata=None, overlap=overlap, window_prompts=[index])
        alone = predict_canvas(model, latents, t, StagedRegion(model, one, text), GUIDANCE, batch_size=1)
        singles.append(alone[(slice(None), slice(None)) + span.slices])
    left, right = windows
    w_left, w_right = weights[0][..., :, right.col:], weights[1][..., :, : left.width - right.col]
    a, b = singles[0][..., :, right.col:], singles[1][..., :, : left.width - right.col]
    expected = (a * w_left + b * w_right) / (w_left + w_right)
    assert torch.allclose(blended[..., :, right.col : left.width], expected, atol=1e-5)
    assert torch.allclose(blended[..., :, : right.col], singles[0][..., :, : right.col], atol=1e-5)
    assert not torch.allclose(a, b, atol=1e-3)  # the windows disagree, so blending matters

    # The whole path on a two-window extent: the exact grid, every pixel generated.
    grid = _grid(112)
    result = generate(model, _request(grid), tmp_path / "two.tif")
    assert result.windows == 2
    with rasterio.open(result.path) as src:
        assert (src.width, src.height) == (112, 64) and src.transform == grid.transform
        pixels = src.read()
    assert pixels.std() > 0


@pytest.mark.parametrize("family,method", [("sd3", "masked-latent-blending"), ("sdxl-inpaint", "inpainting-unet"),
                                           ("flux-fill", "flux-fill")])
def test_inpainting_copies_every_pixel_outside_the_mask(family, method, registry, rasters_dir, tmp_path):
    raster = rasters_dir / "m_3607824_se_17_1_20160620_sub.tif"  # 300 x 300 px, R G B NIR
    with rasterio.open(raster) as src:
        crs, transform, pre = src.crs, src.transform, src.read()
    x0, y0 = transform @ (40, 40)
    x1, y1 = transform @ (80, 80)
    layer = PolygonLayer([shapely.box(x0, y1, x1, y0)], [{}], crs, "flood")
    request = InpaintRequest(image=raster, polygons=layer, disaster_type="flooding", steps=2, guidance_scale=GUIDANCE,
                             feather_m=0.0, window=WINDOW, overlap=16)
    outputs = InpaintOutputs(tmp_path / "post.tif", tmp_path / "label.tif")
    result = inpaint(registry.load(family), request, outputs)
    with rasterio.open(result.outputs.image) as src:
        post, tags = src.read(), src.tags()
    assert tags["GFM4D_METHOD"] == method
    outside = np.ones(pre.shape[1:], bool)
    outside[40:80, 40:80] = False
    assert np.array_equal(post[:, outside], pre[:, outside])
    assert np.array_equal(post[3], pre[3])
    assert (post[:3, 40:80, 40:80] != pre[:3, 40:80, 40:80]).any()


def test_flux_fill_conditioning_is_laid_out_as_flux_fill_pipeline_does(registry, models_dir):
    import diffusers

    from engine.pipelines.inpaint import flux_fill_conditioning

    model = registry.load("flux-fill")
    pipe = diffusers.FluxFillPipeline.from_pretrained(models_dir / "flux-fill", local_files_only=True)
    torch.manual_seed(0)
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 10:40, 20:50] = 1
    ours = pack(flux_fill_conditioning(model, image, mask))
    # diffusers samples the VAE posterior; GFM4D takes its mode (deterministic): hand diffusers the same latents.
    latents = pipe.vae.encode(image * (1 - mask)).latent_dist.mode()
    ref_mask, ref_image = pipe.prepare_mask_latents(mask, latents, 1, 16, 1, 64, 64, torch.float32, "cpu", None)
    assert ours.shape == (1, 16, 320)
    assert torch.allclose(ours, torch.cat([ref_image, ref_mask], dim=-1), atol=1e-6)


def test_flow_models_refuse_other_schedulers_and_odd_windows(registry, tmp_path):
    model = registry.load("flux")
    with pytest.raises(ModelError, match="rectified-flow"):
        model.make_scheduler("ddim")
    with pytest.raises(InputError, match="multiple of 16 pixels"):
        generate(model, _request(_grid(WINDOW), window=72, overlap=8), tmp_path / "odd.tif")
    assert not (tmp_path / "odd.tif").exists()


def test_parameters_are_known_before_loading(registry):
    from engine.models.footprint import model_bytes, model_parameters

    info = registry.get("sd3")
    counts = model_parameters(info)
    model = registry.load("sd3")
    loaded = {
        "unet": model.unet, "vae": model.vae, "text_encoder": model.text_encoder,
        "text_encoder_2": model.backbone.text_encoder_2, "text_encoder_3": model.backbone.text_encoder_3,
    }
    def stored(module):  # parameters and persistent buffers, tied tensors once
        return sum({t.data_ptr(): t.numel() for t in module.state_dict().values()}.values())

    assert counts == {name: stored(module) for name, module in loaded.items()}
    assert model_bytes(info, torch.float16) == 2 * sum(counts.values())


def test_models_list_says_each_models_family_and_size(models_dir, registry, capsys):
    import json

    from engine.cli import main
    from engine.models.footprint import model_parameters

    assert main(["--models-dir", str(models_dir), "models", "list", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out) if not m["name"].startswith("gfm4d-mini")}
    assert {name: m["family"] for name, m in listed.items()} == {
        "sdxl": "sdxl", "sdxl-inpaint": "sdxl", "sd3": "sd3", "flux": "flux", "flux-fill": "flux"}
    assert listed["flux"]["parameters"] == sum(model_parameters(registry.get("flux")).values()) > 0


def test_a_model_too_large_for_the_gpu_is_refused_before_loading(monkeypatch):
    from engine.runtime import memory

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**30, 80 * 2**30))
    cuda = torch.device("cuda")
    with pytest.raises(ModelError, match="needs 3.00 GiB .* 1.00 GiB free: switch on model CPU offload"):
        memory.check_fits("big", 3 * 2**30, 2 * 2**30, cuda, offload=False)
    with pytest.raises(ModelError, match="even with CPU offload"):
        memory.check_fits("big", 3 * 2**30, 2 * 2**30, cuda, offload=True)
    memory.check_fits("big", 3 * 2**30, 2**29, cuda, offload=True)  # one network at a time fits
    monkeypatch.setenv("GFM4D_OFFLOAD", "0")
    assert memory.switch("GFM4D_OFFLOAD", {"offload": True}, "offload") is False
    monkeypatch.delenv("GFM4D_OFFLOAD")
    assert memory.switch("GFM4D_OFFLOAD", {"offload": True}, "offload") is True
