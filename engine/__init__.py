"""GFM4D engine: diffusion models for satellite imagery, georeferenced in and out."""

__version__ = "0.1.0"
