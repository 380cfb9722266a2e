"""Training batches drawn from a chip bank: places balanced, chips flipped and rotated.

Every draw takes a `torch.Generator`, so a step's batch depends only on the seed and the step.
A place with many chips (a ten-date time series) would crowd out the rest, so a place's share
of the draws grows with the square root of its chip count, not linearly.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch


def place_weights(groups: list[str]) -> torch.Tensor:
    """Per-chip sampling weights: each group's total weight is sqrt(its chip count)."""
    counts = Counter(groups)
    weights = torch.tensor([counts[g] ** -0.5 for g in groups], dtype=torch.float64)
    return weights / weights.sum()


def with_labelled_share(weights: torch.Tensor, labelled: list[bool], share: float | None) -> torch.Tensor:
    """Weights rescaled so the labelled chips together get `share` of the draws (unchanged when None
    or when every chip, or none, is labelled); within each part the relative weights stay."""
    mask = torch.tensor(labelled, dtype=torch.bool)
    if share is None or mask.all() or not mask.any():
        return weights
    out = weights.clone()
    out[mask] *= share / weights[mask].sum()
    out[~mask] *= (1 - share) / weights[~mask].sum()
    return out


def draw(weights: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    return torch.multinomial(weights, count, replacement=True, generator=generator)


def dihedral(images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Each image (N, C, H, W) turned by code % 4 quarter turns and mirrored when code >= 4."""
    out = []
    for image, code in zip(images, codes.tolist()):
        image = torch.rot90(image, code % 4, dims=(-2, -1))
        out.append(torch.flip(image, dims=(-1,)) if code >= 4 else image)
    return torch.stack(out)


class Rows:
    """Rows `indices` of an array (a memory-mapped bank), indexed 0..len-1, read only when drawn."""

    def __init__(self, array, indices) -> None:
        self.array, self.indices = array, np.asarray(indices)

    def __getitem__(self, i: int):
        return self.array[self.indices[i]]

    def __len__(self) -> int:
        return len(self.indices)


def unit_images(bank_images: np.ndarray, indices: torch.Tensor) -> torch.Tensor:
    """Chips as float tensors in the models' [-1, 1]."""
    array = np.stack([bank_images[i] for i in indices.tolist()]).astype(np.float32)
    return torch.from_numpy(array) / 127.5 - 1.0


def random_crops(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    n, _, height, width = images.shape
    rows = torch.randint(0, height - size + 1, (n,), generator=generator).tolist()
    cols = torch.randint(0, width - size + 1, (n,), generator=generator).tolist()
    return torch.stack([img[:, r:r + size, c:c + size] for img, r, c in zip(images, rows, cols)])
