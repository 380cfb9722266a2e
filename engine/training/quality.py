"""How close a model's samples are to held-out chips of the same places: the model card's figures.

Inception-v3 weights (what "FID" usually means) cannot be had offline, so the card measures the
Fréchet distance (FD) and kernel distance (KD, KID's unbiased MMD) on texture features that need
no trained network: per-band mean and spread, gradient strength, a local-binary-pattern histogram
and Gabor energies at three scales and four orientations (scikit-image). The same features score a
random-weight model the same way, so the gain is measured, not claimed. `gfm4d evaluate` computes
Inception FID/KID on the same sets when given the network's weights.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .chips import ChipBank

GABOR_FREQUENCIES = (0.05, 0.12, 0.25)
GABOR_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
LBP_POINTS = 8


def texture_features(images: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) uint8 -> (N, D) float64 texture and colour features."""
    from skimage.feature import local_binary_pattern
    from skimage.filters import gabor, sobel

    rows = []
    for image in np.asarray(images):
        unit = image.astype(np.float64) / 255.0
        grey = unit.mean(axis=0)
        colour = [*unit.mean(axis=(1, 2)), *unit.std(axis=(1, 2))]
        edges = sobel(grey)
        lbp = local_binary_pattern((grey * 255).astype(np.uint8), LBP_POINTS, 1, method="uniform")
        histogram, _ = np.histogram(lbp, bins=LBP_POINTS + 2, range=(0, LBP_POINTS + 2), density=True)
        energies = []
        for frequency in GABOR_FREQUENCIES:
            for angle in GABOR_ANGLES:
                real, imaginary = gabor(grey, frequency=frequency, theta=angle)
                energies.append(float(np.sqrt(real**2 + imaginary**2).mean()))
        rows.append([*colour, edges.mean(), edges.std(), *histogram, *energies])
    return np.array(rows, dtype=np.float64)


def samples_for_chips(model, bank: ChipBank, indices: np.ndarray, steps: int, seed: int = 0) -> np.ndarray:
    """One generated image per chip, on the chip's own grid with its metadata and caption: (N, 3, S, S) uint8."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    from engine.geo.grid import OutputGrid
    from engine.pipelines.generate import GenerateRequest, generate

    from .captions import caption

    out = []
    with tempfile.TemporaryDirectory(prefix="gfm4d-quality-") as scratch:
        for k, index in enumerate(indices):
            record = bank.records[int(index)]
            grid = OutputGrid(CRS.from_wkt(record.crs), Affine(*record.transform), bank.size, bank.size)
            request = GenerateRequest(grid=grid, prompt=record.caption or caption(record.land_cover, record.country),
                                      date=record.date,
                                      cloud_cover=record.cloud_cover, steps=steps, seed=seed + k,
                                      window=min(bank.size, model.info.native_resolution), overlap=0)
            path = Path(scratch) / f"{k}.tif"
            generate(model, request, path)
            with rasterio.open(path) as ds:
                out.append(ds.read([1, 2, 3]))
    return np.stack(out)


def distances(generated: np.ndarray, real: np.ndarray, seed: int = 0) -> dict:
    """FD and KD (with its spread over subsets) between texture features of two image sets."""
    from engine.evaluate.sets import frechet_distance, kernel_inception_distance

    a, b = texture_features(generated), texture_features(real)
    scale = b.std(axis=0) + 1e-9  # features in units of the real set's spread, so none dominates
    a, b = a / scale, b / scale
    # subsets of half the set: whole-set subsets would all be the same draw, with no spread to report
    kid = kernel_inception_distance(a, b, subsets=50, subset_size=max(2, min(len(a), len(b)) // 2), seed=seed)
    return {"fd_texture": frechet_distance(a, b), "kd_texture": kid.mean, "kd_texture_std": kid.std, "images": len(a)}


def heldout_quality(model_folder: Path, bank: ChipBank, recipe, count: int, steps: int) -> dict:
    """FD/KD on texture features of the model's samples and of a random-weight twin, vs held-out chips.

    The twin has the trained VAE and text encoder but a freshly initialised UNet (the model's own
    architecture, the recipe's seed; a fine-tuned model's is its base's, not the recipe's):
    what the same pipeline paints before any diffusion training.
    """
    import torch

    from engine.models.registry import ModelRegistry

    heldout = bank.indices("heldout")
    chosen = heldout[np.linspace(0, len(heldout) - 1, min(count, len(heldout))).round().astype(int)]
    real = np.asarray(bank.images[chosen])
    model_folder = Path(model_folder)
    model = ModelRegistry(model_folder.parent).load(model_folder.name)
    trained = samples_for_chips(model, bank, chosen, steps)
    torch.manual_seed(recipe.unet.seed)
    twin = type(model.unet).from_config(model.unet.config)
    model.unet.load_state_dict(twin.state_dict())  # copied into the loaded weights, in their dtype
    untrained = samples_for_chips(model, bank, chosen, steps)
    return {"trained": distances(trained, real), "random_weights": distances(untrained, real),
            "steps": steps, "guidance": model.info.default_guidance}
