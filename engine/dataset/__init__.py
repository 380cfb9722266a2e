"""Labelled synthetic disaster datasets from a recipe: scenes, damage sources, chips, splits, catalogue.

`load_recipe` reads and validates a recipe; `build_dataset` makes (or finishes) the dataset it
describes, in this process or on Ray actors (engine.scaleout), with the same bytes either way.
"""

from .build import BuildSummary, build_dataset
from .recipe import Recipe, load_recipe, parse_recipe

__all__ = ["BuildSummary", "Recipe", "build_dataset", "load_recipe", "parse_recipe"]
