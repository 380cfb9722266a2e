"""Captions in DiffusionSat's fMoW template, with parts dropped at random as in its training.

`a fmow satellite image of a {land_cover} in {country}`: each bracketed part is kept or dropped
on its own, so the short prompts a user types ("a fmow satellite image of a farm") are in
distribution, and so is the bare "a fmow satellite image".
"""

from __future__ import annotations

import torch

BASE = "a fmow satellite image"


def caption(land_cover: str | None, country: str | None) -> str:
    text = BASE
    if land_cover:
        text += f" of a {land_cover}"
    if country:
        text += f" in {country}"
    return text


def training_caption(land_cover: str | None, country: str | None, drop: float, generator: torch.Generator) -> str:
    keep_cover, keep_country = (torch.rand(2, generator=generator) >= drop).tolist()
    return caption(land_cover if keep_cover else None, country if keep_country else None)
