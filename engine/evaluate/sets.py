"""Set metrics on feature vectors: Fréchet distance (FID), kernel distance (KID), Inception Score.

These take features (or class probabilities) that a network has already computed, as (N, D)
arrays, so they are independent of the network and of any GIS or server code; model-training
code calls them directly to score generated samples against held-out chips:

    from engine.evaluate.sets import frechet_distance, kernel_inception_distance
    fid = frechet_distance(features_generated, features_real)
    kid = kernel_inception_distance(features_generated, features_real).mean

Definitions (as in the papers and the reference implementations):
- FID (Heusel et al. 2017): ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2), with the sample
  means and (N-1)-normalised covariances; the matrix square root is scipy's `sqrtm`.
- KID (Binkowski et al. 2018): the unbiased MMD^2 with the cubic polynomial kernel
  k(x, y) = (x.y / D + 1)^3, averaged over random subsets (default 100 subsets of up to 1000).
- IS (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), the mean over `splits` equal splits.
Each comes with a bootstrap confidence interval where asked (`bootstrap`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
from scipy import linalg

from engine.errors import InputError

MIN_FID_SAMPLES = 2
MIN_KID_SAMPLES = 2


def _features(x, name: str, minimum: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"the {name} features must be an (N, D) array, not shape {x.shape}")
    if len(x) < minimum:
        raise InputError(f"the {name} set has {len(x)} image(s); this metric needs at least {minimum}")
    if not np.isfinite(x).all():
        raise InputError(f"the {name} features contain NaN or infinite values; check the feature network")
    return x


def _same_width(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise InputError(f"the two sets have features of {a.shape[1]} and {b.shape[1]} dimensions; use the same network")


def frechet_distance(features_a, features_b) -> float:
    """FID between two sets of feature vectors ((N, D) and (M, D) arrays); 0 for identical sets.

    Sets need at least two vectors each; for a stable covariance use many more than D (FID with
    Inception's 2048 features is customarily reported on >= 10 000 images and is biased upward
    with fewer: compare numbers only at equal set sizes).
    """
    a = _features(features_a, "first", MIN_FID_SAMPLES)
    b = _features(features_b, "second", MIN_FID_SAMPLES)
    _same_width(a, b)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    return frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b)


def frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b, eps: float = 1e-6) -> float:
    """FID between two Gaussians given by mean vectors and covariance matrices."""
    diff = np.asarray(mu_a, dtype=np.float64) - np.asarray(mu_b, dtype=np.float64)
    cov_a, cov_b = np.asarray(cov_a, dtype=np.float64), np.asarray(cov_b, dtype=np.float64)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():  # singular product: regularise as the reference implementation does
        offset = np.eye(len(cov_a)) * eps
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = np.real(covmean)
    value = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))
    return max(value, 0.0)  # a squared distance; rounding can leave -1e-12 for identical sets


def polynomial_mmd2(a: np.ndarray, b: np.ndarray, degree: int = 3, gamma: float | None = None, coef: float = 1.0) -> float:
    """Unbiased MMD^2 between two samples with the kernel (gamma x.y + coef)^degree (gamma: 1/D)."""
    gamma = 1.0 / a.shape[1] if gamma is None else gamma
    k_aa = (a @ a.T * gamma + coef) ** degree
    k_bb = (b @ b.T * gamma + coef) ** degree
    k_ab = (a @ b.T * gamma + coef) ** degree
    m, n = len(a), len(b)
    sum_aa = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
    sum_bb = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
    return float(sum_aa + sum_bb - 2.0 * k_ab.mean())


@dataclass
class KID:
    """KID: the mean and standard deviation of the MMD^2 over the subsets, and their size."""

    mean: float
    std: float
    subsets: int
    subset_size: int

    def as_dict(self) -> dict:
        return asdict(self)


def kernel_inception_distance(
    features_a, features_b, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> KID:
    """KID between two sets of feature vectors: unbiased polynomial-kernel MMD^2 over random subsets.

    Each subset draws min(subset_size, N, M) vectors from each set without replacement (a set
    smaller than `subset_size` is used whole in every subset). Unlike FID it is unbiased, so values
    from sets of different sizes are comparable; it can be slightly negative for similar sets.
    """
    a = _features(features_a, "first", MIN_KID_SAMPLES)
    b = _features(features_b, "second", MIN_KID_SAMPLES)
    _same_width(a, b)
    if subsets < 1 or subset_size < 2:
        raise InputError("KID needs at least one subset of at least two images")
    size = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        pick_a = a[rng.choice(len(a), size, replace=False)]
        pick_b = b[rng.choice(len(b), size, replace=False)]
        values.append(polynomial_mmd2(pick_a, pick_b))
    return KID(float(np.mean(values)), float(np.std(values)), subsets, size)


def inception_score(probabilities, splits: int = 10) -> tuple[float, float]:
    """Inception Score (mean, std over `splits`) of (N, C) class probabilities (rows sum to 1).

    Between 1 (every image gets the same class distribution) and C (each image is confidently one
    class and the classes are used evenly).
    """
    p = _features(probabilities, "classified", 2)
    if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise InputError("Inception Score needs class probabilities (non-negative rows summing to 1); "
                         "apply a softmax to the classifier's logits first")
    if splits < 1 or len(p) < splits:
        raise InputError(f"the Inception Score over {splits} splits needs at least {splits} images, not {len(p)}")
    scores = []
    for part in np.array_split(p, splits):
        marginal = part.mean(axis=0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(marginal)), 0.0).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


@dataclass
class Interval:
    """A statistic with its bootstrap confidence interval."""

    value: float
    low: float
    high: float
    confidence: float
    resamples: int

    def as_dict(self) -> dict:
        return asdict(self)


def bootstrap(
    statistic: Callable[..., float],
    *sets: np.ndarray,
    resamples: int = 100,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap: `statistic(*sets)` and its interval from resampling each set with replacement.

    E.g. `bootstrap(frechet_distance, fa, fb)` or `bootstrap(lambda p: inception_score(p, 1)[0], probs)`.
    """
    if not 0 < confidence < 1:
        raise InputError(f"the confidence level must lie between 0 and 1, not {confidence}")
    if resamples < 2:
        raise InputError(f"a bootstrap needs at least 2 resamples, not {resamples}")
    arrays = [np.asarray(s) for s in sets]
    value = float(statistic(*arrays))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        draws.append(float(statistic(*[s[rng.integers(0, len(s), len(s))] for s in arrays])))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Interval(value, float(low), float(high), confidence, resamples)
