"""Generation end to end on the demo SatUNet: grids, seams, metadata per window, seeds, cancel."""

import numpy as np
import pyproj
import pytest
import rasterio
import torch

from engine.errors import Cancelled, InputError
from engine.geo.grid import grid_from_extent
from engine.geo.tiling import Span, plan_windows
from engine.pipelines import canvas as canvas_module
from engine.pipelines.canvas import LatentCanvas
from engine.pipelines.generate import GenerateRequest, generate, window_metadata
from engine.pipelines.sampling import CanvasJob, denoise_canvas, encode_prompt, position_noise, predict_canvas
from engine.pipelines.staging import StagedRegion, window_weights

PROMPT = "a fmow satellite image of a farm in italy"


@pytest.fixture(scope="session")
def model(tmp_path_factory):
    from engine.models.demo import build_demo_models
    from engine.models.registry import ModelRegistry

    models_dir = tmp_path_factory.mktemp("models")
    build_demo_models(models_dir)
    return ModelRegistry(models_dir).load("demo-satunet")


def _three_by_two_utm():
    # Demo windows are 128 px (16 cells) with 32 px (4 cells) overlap: 3 x 2 windows cover 320 x 224 px.
    return grid_from_extent((600000, 5100000, 600000 + 320 * 2, 5100000 + 224 * 2), "EPSG:32632", resolution_m=2)


def _request(grid, **kw):
    args = dict(grid=grid, prompt=PROMPT, steps=3, guidance_scale=3.0, seed=5)
    args.update(kw)
    return GenerateRequest(**args)


def test_three_by_two_tiles_in_utm_have_the_exact_grid(model, tmp_path):
    grid = _three_by_two_utm()
    result = generate(model, _request(grid), tmp_path / "utm.tif")
    assert result.windows == 6 and result.regions == 1
    with rasterio.open(result.path) as src:
        assert src.crs.to_epsg() == 32632
        assert src.transform == grid.transform
        assert (src.width, src.height, src.count, src.dtypes[0]) == (320, 224, 3, "uint8")
        assert src.tags()["GFM4D_PROMPT"] == PROMPT
        pixels = src.read()
    assert pixels.std() > 0, "a generated image is not a constant"


def test_three_by_two_tiles_in_epsg4326_have_the_exact_grid(model, tmp_path):
    size = 1e-5
    grid = grid_from_extent((11.0, 45.0, 11.0 + 320 * size, 45.0 + 224 * size), "EPSG:4326", pixel_size=size)
    result = generate(model, _request(grid), tmp_path / "geo.tif")
    assert result.windows == 6
    with rasterio.open(result.path) as src:
        assert src.crs.to_epsg() == 4326
        assert src.transform.almost_equals(grid.transform, precision=1e-12)
        assert (src.width, src.height) == (320, 224)
        left, bottom, right, top = src.bounds
    assert left == pytest.approx(11.0, abs=1e-12) and top == pytest.approx(45.0 + 224 * size, abs=1e-12)


def test_each_window_is_conditioned_on_its_own_centre(model):
    grid = grid_from_extent((11.0, 45.0, 11.0 + 320e-5, 45.0 + 224e-5), "EPSG:4326", pixel_size=1e-5)
    canvas = LatentCanvas.over(grid, model.vae_scale_factor, model.latent_channels, 16)
    windows = plan_windows(canvas.height, canvas.width, 16, 4)
    metadata = window_metadata(canvas, windows, Span(0, 0, 0, 0), _request(grid, cloud_cover=0.25))
    geod = pyproj.Geod(ellps="WGS84")
    for span, item in zip(windows, metadata):
        lon = 11.0 + (span.col + span.width / 2) * 8 * 1e-5
        lat = 45.0 + 224e-5 - (span.row + span.height / 2) * 8 * 1e-5
        assert item.lon == pytest.approx(lon, abs=1e-9) and item.lat == pytest.approx(lat, abs=1e-9)
        _, _, ground = geod.inv(lon, lat, lon + 1e-5, lat)
        assert item.gsd_m == pytest.approx((ground + geod.inv(lon, lat, lon, lat + 1e-5)[2]) / 2, rel=1e-3)
        assert item.cloud_cover == 0.25
    assert len({round(m.lon, 9) for m in metadata}) == 3 and len({round(m.lat, 9) for m in metadata}) == 2


def test_same_seed_same_pixels_other_seed_other_pixels(model, tmp_path):
    grid = grid_from_extent((600000, 5100000, 600256, 5100256), "EPSG:32632", resolution_m=2)
    paths = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        paths.append(generate(model, _request(grid, seed=seed), tmp_path / f"{name}.tif").path)
    a, b, c = (rasterio.open(p).read() for p in paths)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_blended_prediction_in_the_overlap_is_the_weighted_average_of_the_windows(model):
    """The seam test: every cell's prediction is sum(w_i * pred_i) / sum(w_i) over its windows."""
    torch.manual_seed(0)
    height, width, overlap = 16, 28, 4
    windows = plan_windows(height, width, 16, overlap)
    assert len(windows) == 2
    latents = torch.randn(1, model.latent_channels, height, width)
    metadata = [np.array([500, 400, 1000, 0, 300, 500, 500], np.float32), np.array([501, 400, 1000, 0, 300, 500, 500], np.float32)]
    job = CanvasJob(noise=latents, windows=windows, window_metadata=metadata, overlap=overlap)
    text = encode_prompt(model, PROMPT, "", guidance_scale=2.0)
    t = torch.tensor(500)
    weights = window_weights(windows, overlap, "cpu")
    blended = predict_canvas(model, latents, t, StagedRegion(model, job, text), 2.0, batch_size=2)

    singles = []
    for span, md in zip(windows, metadata):
        x = latents[(slice(None), slice(None)) + span.slices]
        hidden = torch.cat([text.uncond, text.cond])
        meta = torch.from_numpy(np.stack([np.zeros(7, np.float32), md]))
        out = model.unet(torch.cat([x, x]), t, encoder_hidden_states=hidden, metadata=meta).sample
        uncond, cond = out.chunk(2)
        singles.append(uncond + 2.0 * (cond - uncond))
    left, right = windows
    overlap_cols = slice(right.col, left.col + left.width)
    w_left = weights[0][..., :, right.col - left.col :]
    w_right = weights[1][..., :, : left.col + left.width - right.col]
    expected = (singles[0][..., :, right.col - left.col :] * w_left + singles[1][..., :, : left.col + left.width - right.col] * w_right) / (w_left + w_right)
    assert torch.allclose(blended[..., :, overlap_cols], expected, atol=1e-5)
    # Outside the overlap each window alone decides.
    assert torch.allclose(blended[..., :, : right.col], singles[0][..., :, : right.col], atol=1e-5)
    # And the two windows really disagree there, so the test could fail.
    assert not torch.allclose(singles[0][..., :, right.col - left.col :], singles[1][..., :, : left.col + left.width - right.col], atol=1e-3)


def test_known_latents_are_kept_exactly(model):
    noise = position_noise(3, Span(0, 0, 16, 24), model.latent_channels)
    known = torch.randn(1, model.latent_channels, 16, 24)
    mask = torch.zeros(1, 1, 16, 24)
    mask[..., :, :8] = 1
    job = CanvasJob(noise=noise, windows=plan_windows(16, 24, 16, 4), window_metadata=[np.zeros(7, np.float32)] * 2,
                    overlap=4, known=known, known_mask=mask)
    text = encode_prompt(model, PROMPT, "", 1.0)
    out = denoise_canvas(model, model.make_scheduler(), job, text, num_inference_steps=3, guidance_scale=1.0, batch_size=2)
    assert torch.equal(out[..., :, :8], known[..., :, :8])
    assert not torch.allclose(out[..., :, 8:], known[..., :, 8:])


def test_noise_depends_only_on_position():
    whole = position_noise(11, Span(0, 0, 150, 140), 4)
    part = position_noise(11, Span(60, 70, 80, 70), 4)
    assert torch.equal(whole[..., 60:140, 70:140], part)
    assert not torch.equal(position_noise(12, Span(0, 0, 8, 8), 4), whole[..., :8, :8])


def test_regions_and_scratch_file_canvas_give_a_complete_image(model, tmp_path, monkeypatch):
    # 48 x 17 cells; regions of 32 cells overlapping by one window (16 cells): two regions.
    grid = grid_from_extent((600000, 5100000, 600000 + 384 * 2, 5100000 + 136 * 2), "EPSG:32632", resolution_m=2)
    monkeypatch.setattr(canvas_module, "IN_MEMORY_LIMIT", 1)  # force the memory-mapped canvas
    result = generate(model, _request(grid, max_region_cells=32), tmp_path / "regions.tif")
    assert result.regions == 2
    with rasterio.open(result.path) as src:
        assert (src.width, src.height) == (384, 136)
        pixels = src.read()
    # Both regions produced image content, and the scratch canvas is gone.
    assert pixels[:, :, :128].std() > 0 and pixels[:, :, 256:].std() > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["regions.tif"]


def test_progress_counts_every_step_and_block(model, tmp_path):
    grid = grid_from_extent((600000, 5100000, 600256, 5100256), "EPSG:32632", resolution_m=2)
    seen = []
    generate(model, _request(grid, steps=4), tmp_path / "p.tif", progress=seen.append)
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert sum(1 for p in seen if "step" in p.message) == 4


def test_cancel_between_steps_leaves_no_file(model, tmp_path):
    grid = grid_from_extent((600000, 5100000, 600256, 5100256), "EPSG:32632", resolution_m=2)
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(Cancelled):
        generate(model, _request(grid, steps=5), tmp_path / "c.tif", cancel=cancel)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, words",
    [({"window": 100}, "multiples of 8"), ({"overlap": 128}, "smaller than the window"), ({"steps": 0}, "steps must be from 1 to 1000"), ({"steps": 1001}, "steps must be from 1 to 1000"),
     ({"cloud_cover": 40}, "fraction")],
)
def test_bad_requests_are_explained(model, tmp_path, kwargs, words):
    grid = grid_from_extent((0, 0, 256, 256), "EPSG:32632", resolution_m=2)
    with pytest.raises(InputError, match=words):
        generate(model, _request(grid, **kwargs), tmp_path / "x.tif")
