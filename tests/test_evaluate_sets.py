"""Set and learned metrics: FID/KID/IS maths against independent formulas, the networks behind them
loaded from local files only, and two sets of real NAIP chips compared end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window
from scipy.stats import entropy

from engine.errors import InputError
from engine.evaluate import sets
from engine.evaluate.learned import LPIPS, CLIPScore
from engine.evaluate.networks import FeatureNetwork, NetworkPaths
from engine.evaluate.run import SetOptions, evaluate_sets
from evaluate_networks import (IdentityBackbone, TinyBackbone, TinyFeatures, TinyStyleGANInception, save_export,
                               save_lpips_weights, save_script, save_tiny_clip)

TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "train"
CLIP_WORDS = ["a", "satellite", "image", "of", "farmland", "flood"]


# --- FID / KID / IS maths ------------------------------------------------------------------------


def _fid_by_eigenvalues(a: np.ndarray, b: np.ndarray) -> float:
    """FID written independently: Tr((S_a S_b)^1/2) as the sum of the square roots of the eigenvalues."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a.T), np.cov(b.T)
    roots = np.sqrt(np.clip(np.linalg.eigvals(s_a @ s_b).real, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * roots)


def test_fid_matches_an_independent_implementation_on_random_features():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))
    b = rng.normal(0.3, 1.5, size=(250, 12)) @ rng.normal(size=(12, 12))
    assert sets.frechet_distance(a, b) == pytest.approx(_fid_by_eigenvalues(a, b), rel=1e-6)


def test_fid_of_identical_sets_is_zero_and_of_shifted_sets_the_squared_shift():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(500, 8))
    assert sets.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-7)
    shift = np.array([1.0, -2.0, 0.5, 0, 0, 0, 3.0, 0])
    # Same sample covariance, means apart by `shift`: FID = |shift|^2 exactly.
    assert sets.frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)


def test_fid_of_two_gaussians_approaches_the_closed_form():
    rng = np.random.default_rng(3)
    sd_a, sd_b = np.array([1.0, 2.0, 0.5]), np.array([1.5, 1.0, 0.5])
    mu_a, mu_b = np.zeros(3), np.array([1.0, 0.0, -1.0])
    a = mu_a + rng.normal(size=(40000, 3)) * sd_a
    b = mu_b + rng.normal(size=(40000, 3)) * sd_b
    closed = float(((mu_a - mu_b) ** 2).sum() + ((sd_a - sd_b) ** 2).sum())  # diagonal covariances
    assert sets.frechet_distance(a, b) == pytest.approx(closed, abs=0.05)


def _mmd2_by_loops(a, b):
    """Unbiased polynomial-kernel MMD^2 written out pair by pair."""
    d = a.shape[1]
    k = lambda x, y: (float(x @ y) / d + 1) ** 3  # noqa: E731
    m, n = len(a), len(b)
    xx = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a[i], b[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_matches_an_independent_implementation_on_random_features():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(30, 6)), rng.normal(0.5, 1.0, size=(30, 6))
    kid = sets.kernel_inception_distance(a, b, subsets=3, subset_size=1000)
    assert kid.subset_size == 30  # the whole sets in every subset: each subset's MMD is the same
    assert kid.mean == pytest.approx(_mmd2_by_loops(a, b), rel=1e-9)
    assert kid.std == pytest.approx(0.0, abs=1e-12)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_the_shift():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    same = sets.kernel_inception_distance(a, b, subsets=20, subset_size=200)
    shifted = sets.kernel_inception_distance(a, b + 1.0, subsets=20, subset_size=200)
    assert abs(same.mean) < 3 * same.std + 1e-3
    assert shifted.mean > 10 * abs(same.mean) and shifted.mean > 0.5


def test_inception_score_matches_the_entropy_formula_and_its_bounds():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(200, 7)) * 3
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = np.exp(entropy(p.mean(0)) - np.mean([entropy(row) for row in p]))
    assert sets.inception_score(p, splits=1)[0] == pytest.approx(expected, rel=1e-9)
    assert sets.inception_score(np.full((50, 4), 0.25), splits=5)[0] == pytest.approx(1.0)
    assert sets.inception_score(np.eye(4)[np.arange(40) % 4], splits=5)[0] == pytest.approx(4.0)


def test_bootstrap_interval_brackets_the_statistic():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(200, 4)), rng.normal(0.5, 1, size=(200, 4))
    interval = sets.bootstrap(sets.frechet_distance, a, b, resamples=50)
    assert interval.low <= interval.value <= interval.high and interval.high > interval.low
    assert interval.value == pytest.approx(sets.frechet_distance(a, b))


@pytest.mark.parametrize("call, words", [
    (lambda: sets.frechet_distance(np.zeros((1, 4)), np.zeros((5, 4))), "at least 2"),
    (lambda: sets.frechet_distance(np.zeros((5, 4)), np.zeros((5, 3))), "dimensions"),
    (lambda: sets.inception_score(np.full((4, 2), 0.5), splits=10), "at least 10"),
    (lambda: sets.inception_score(np.ones((20, 2)), splits=2), "probabilities"),
])
def test_sets_too_small_or_mismatched_get_one_clear_line(call, words):
    with pytest.raises(InputError, match=words) as error:
        call()
    assert "\n" not in str(error.value)


# --- networks from local files --------------------------------------------------------------------


@pytest.fixture(scope="module")
def networks(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("metric-networks")
    save_script(TinyStyleGANInception(), folder / "inception.pt")
    save_script(TinyBackbone(), folder / "lpips_net.pt")
    save_lpips_weights(folder / "lpips_weights.pth", [4, 6])
    save_tiny_clip(folder / "clip", CLIP_WORDS)
    return folder


def test_missing_networks_are_named_with_where_to_get_them(tmp_path):
    with pytest.raises(InputError, match=r"inception network.*nothing is downloaded.*inception-2015-12-05"):
        FeatureNetwork.load(None)
    with pytest.raises(InputError, match=r"lpips weights.*looked for .*alex.pth"):
        LPIPS.load(save_script(TinyBackbone(), tmp_path / "b.pt"), tmp_path / "absent.pth")
    with pytest.raises(InputError, match=r"CLIP score needs the clip network.*save_pretrained"):
        CLIPScore.load(tmp_path)
    torch.save(TinyFeatures().state_dict(), tmp_path / "weights_only.pt")
    with pytest.raises(InputError, match="not only its weights"):
        FeatureNetwork.load(tmp_path / "weights_only.pt")


def test_torchscript_and_export_feature_networks_give_the_modules_features(tmp_path):
    images = np.random.default_rng(8).random((5, 3, 40, 40)).astype(np.float32)
    module = TinyFeatures()
    scripted = FeatureNetwork.load(save_script(module, tmp_path / "f.pt", seed=3), input_size=32)
    exported = FeatureNetwork.load(save_export(module, tmp_path / "f.pt2", seed=3), input_size=32)
    with torch.no_grad():
        resized = torch.nn.functional.interpolate(torch.from_numpy(images), size=(32, 32), mode="bilinear",
                                                  antialias=True)
        expected = module(resized).numpy()
    np.testing.assert_allclose(scripted.features(images), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(exported.features(images), expected, rtol=1e-5, atol=1e-6)
    probabilities = scripted.probabilities(images)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-6)


def test_stylegan_inception_convention_gets_uint8_images(networks):
    images = np.random.default_rng(9).random((3, 3, 50, 50)).astype(np.float32)
    network = FeatureNetwork.load(networks / "inception.pt")
    assert network.nvidia
    module = network.module
    as_uint8 = torch.from_numpy(np.round(images * 255).astype(np.uint8))
    with torch.no_grad():
        features, probabilities = module(as_uint8, return_features=True).numpy(), module(as_uint8).numpy()
    np.testing.assert_allclose(network.features(images), features, rtol=1e-5)
    np.testing.assert_allclose(network.probabilities(images), probabilities, rtol=1e-5)


def test_lpips_follows_the_published_formula(tmp_path):
    rng = np.random.default_rng(10)
    x, y = rng.random((2, 3, 16, 16)), rng.random((2, 3, 16, 16))
    weights = torch.tensor([0.2, 0.5, 1.0]).view(1, 3, 1, 1)
    lpips = LPIPS(IdentityBackbone(), [weights])
    shift, scale = np.array([-0.030, -0.088, -0.188])[:, None, None], np.array([0.458, 0.448, 0.450])[:, None, None]
    expected = []
    for a, b in zip(x, y):
        fa, fb = (2 * a - 1 - shift) / scale, (2 * b - 1 - shift) / scale
        na, nb = fa / (np.sqrt((fa ** 2).sum(0)) + 1e-10), fb / (np.sqrt((fb ** 2).sum(0)) + 1e-10)
        expected.append(float((((na - nb) ** 2) * np.array([0.2, 0.5, 1.0])[:, None, None]).sum(0).mean()))
    np.testing.assert_allclose(lpips(x, y), expected, rtol=1e-5)
    np.testing.assert_allclose(lpips(x, x), 0.0, atol=1e-7)


def test_lpips_with_a_file_backbone_and_weights(networks):
    lpips = LPIPS.load(networks / "lpips_net.pt", networks / "lpips_weights.pth")
    rng = np.random.default_rng(11)
    x = rng.random((2, 3, 24, 24))
    near, far = np.clip(x + 0.01, 0, 1), rng.random((2, 3, 24, 24))
    assert (lpips(x, x) == 0).all() and (lpips(x, near) < lpips(x, far)).all()


def test_clip_score_is_100_times_the_models_cosine(networks):
    from transformers import CLIPModel, CLIPTokenizer

    scorer = CLIPScore.load(networks / "clip")
    images = np.random.default_rng(12).random((4, 3, 32, 32)).astype(np.float32)
    model = CLIPModel.from_pretrained(str(networks / "clip"))
    tokenizer = CLIPTokenizer.from_pretrained(str(networks / "clip"))
    pixels = (torch.from_numpy(images) - torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)) \
        / torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    positive = 0
    for prompt in ("a satellite image of farmland", "flood", "a flood", "image of a flood", "farmland"):
        with torch.no_grad():
            out = model(input_ids=tokenizer([prompt], return_tensors="pt").input_ids, pixel_values=pixels)
            cosine = (out.logits_per_image[:, 0] / model.logit_scale.exp()).numpy()
        positive += int((cosine > 0).sum())
        np.testing.assert_allclose(scorer(images, prompt), 100 * np.clip(cosine, 0, None), rtol=1e-4, atol=1e-4)
    assert positive > 0  # the clamp at zero is not all that was compared


# --- two sets of real chips ---------------------------------------------------------------------


def _chips(folder: Path, dates: list[str], size: int = 96) -> Path:
    """Four chips of each NAIP date (RGB, real pixels) as GeoTIFFs."""
    folder.mkdir()
    for date in dates:
        with rasterio.open(TRAIN / f"naip_m_4709963_se_14_1_{date}.tif") as src:
            for i, (col, row) in enumerate([(200, 200), (400, 200), (200, 400), (400, 400)]):
                window = Window(col, row, size, size)
                profile = {**src.profile, "count": 3, "width": size, "height": size,
                           "transform": src.window_transform(window)}
                with rasterio.open(folder / f"{date}_{i}.tif", "w", **profile) as dst:
                    dst.write(src.read([1, 2, 3], window=window))
    return folder


def test_two_sets_of_real_chips_give_fid_kid_is_with_counts_and_intervals(networks, tmp_path):
    if not TRAIN.is_dir():
        pytest.skip(f"the NAIP time series is not at {TRAIN}")
    early = _chips(tmp_path / "early", ["20090818", "20100629", "20120731"])
    late = _chips(tmp_path / "late", ["20170827", "20180716", "20190904"])
    manifest = tmp_path / "late.jsonl"
    manifest.write_text("".join(json.dumps({"image": f"late/{p.name}"}) + "\n" for p in sorted(late.iterdir())))
    outputs = {"report": tmp_path / "s.json", "table": tmp_path / "s.csv", "plot": tmp_path / "s.png"}
    options = SetOptions(metrics=["fid", "kid", "is", "clip"], input_size=64, bootstrap=20, is_splits=2,
                         kid_subsets=10, prompt="a satellite image of farmland",
                         networks=NetworkPaths.from_folder(networks))
    report = evaluate_sets(early, manifest, outputs, options)
    assert report["set_a"]["count"] == 12 and report["set_b"]["count"] == 12
    fid = report["metrics"]["fid"]
    network = FeatureNetwork.load(networks / "inception.pt", input_size=64)
    from engine.evaluate.images import load_set

    feats_a = network.features(load_set(early, 64)[0])
    feats_b = network.features(load_set(manifest, 64)[0])
    assert fid["value"] == pytest.approx(sets.frechet_distance(feats_a, feats_b))
    assert fid["low"] <= fid["value"] <= fid["high"]
    assert 1.0 <= report["metrics"]["is"]["value"] <= 5.0
    assert set(report["metrics"]) == {"fid", "kid", "is", "clip"}
    assert json.loads(outputs["report"].read_text())["metrics"]["fid"]["value"] == pytest.approx(fid["value"])
    assert outputs["table"].read_text().splitlines()[0] == "metric,value,std,low,high,count_a,count_b"
    assert outputs["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    same = evaluate_sets(early, early, {"report": tmp_path / "same.json"},
                         SetOptions(metrics=["fid"], input_size=64, bootstrap=0, networks=options.networks))
    assert same["metrics"]["fid"]["value"] == pytest.approx(0.0, abs=1e-6)


def test_a_set_smaller_than_the_metric_needs_is_one_clear_line(networks, tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    with rasterio.open(TRAIN / "naip_m_4709963_se_14_1_20090818.tif") as src:
        profile = {**src.profile, "width": 32, "height": 32, "transform": src.window_transform(Window(300, 300, 32, 32))}
        with rasterio.open(folder / "only.tif", "w", **profile) as dst:
            dst.write(src.read(window=Window(300, 300, 32, 32)))
    with pytest.raises(InputError, match=r"has 1 image\(s\); the metrics asked for need at least 10") as error:
        evaluate_sets(folder, folder, {"report": tmp_path / "r.json"},
                      SetOptions(metrics=["is"], networks=NetworkPaths.from_folder(networks)))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "r.json").exists()
