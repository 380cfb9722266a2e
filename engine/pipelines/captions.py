"""Metadata as text, for models that read only a prompt (SDXL, SD3, FLUX, or any model that asks for it).

DiffusionSat's "text_metadata" baseline appended the metadata to the caption; the same sentence
form is used here, with readable units, so location, resolution and date still steer text-only
backbones and fine-tunes trained on such captions:

    "<prompt> at a resolution of 0.5. The longitude, latitude is -77.0365, 38.8977. The date is 2020, 6, 15"
"""

from __future__ import annotations

from engine.geo.metadata import SatMetadata


def metadata_caption(prompt: str, metadata: SatMetadata) -> str:
    """`prompt` followed by the known parts of `metadata` (unknown ones are left out)."""
    text = prompt.rstrip().rstrip(".")
    if metadata.gsd_m is not None:
        text += f" at a resolution of {round(metadata.gsd_m, 5):g}."
    elif metadata.lon is not None or metadata.date is not None:
        text += "."
    if metadata.lon is not None and metadata.lat is not None:
        text += f" The longitude, latitude is {metadata.lon:.4f}, {metadata.lat:.4f}."
    if metadata.date is not None:
        text += f" The date is {metadata.date.year}, {metadata.date.month}, {metadata.date.day}"
    return text
