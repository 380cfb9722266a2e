"""Progress of a job, shared by the pipelines, the engine's server and thin clients (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Progress:
    """Where a job is: `done` of `total` work units (denoising steps and decoded blocks)."""

    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0
