"""Model registry, DiffusionSat-compatible models, loaders and demo models."""
