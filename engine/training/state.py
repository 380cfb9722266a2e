"""Resumable training state: one file per checkpoint, written atomically, the newest one found again.

A checkpoint holds everything a step depends on (weights, EMA, optimiser, step, loss history);
the randomness of step `k` comes from `step_generator(seed, k)`, so a run resumed from a
checkpoint repeats the uninterrupted run bit for bit.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path

import torch

_CHECKPOINT = re.compile(r"step-(\d+)\.pt$")
KEEP = 2


def warmup_cosine(peak: float, warmup: int, total: int, step: int) -> float:
    """Learning rate at `step`: linear warm-up to `peak`, then cosine decay to a tenth of it at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random stream of one training step: a function of the seed and the step alone."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))


def save_checkpoint(folder: Path, step: int, state: dict) -> Path:
    """Write `state` as `folder/step-N.pt` through a scratch file; keep the newest KEEP."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step-{step:08d}.pt"
    handle, scratch = tempfile.mkstemp(prefix=".step-", suffix=".tmp", dir=folder)
    os.close(handle)
    try:
        torch.save({"step": step, **state}, scratch)
        os.replace(scratch, target)
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)
    for old in sorted(checkpoints(folder))[:-KEEP]:
        old.unlink(missing_ok=True)
    return target


def checkpoints(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _CHECKPOINT.search(p.name))


def load_latest(folder: Path) -> dict | None:
    """The newest readable checkpoint's state, or None for a fresh run."""
    for path in reversed(checkpoints(folder)):
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError):
            continue  # a checkpoint cut short by a crash: fall back to the one before
    return None
