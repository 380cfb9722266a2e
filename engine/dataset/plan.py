"""Which samples a recipe makes: chips of each scene that show damage, their split, seed and date.

The plan depends only on the recipe (and the files it names), never on where or in which order
samples are made, so every worker, every rerun and every resumed run agrees on sample ids,
seeds and splits. Splits are leak-free:
- by scene: every chip of a scene goes to that scene's split;
- by area: the ground is cut into square blocks of `area_size_m` on a fixed lon/lat grid, each
  block drawn into a split, and a chip is kept only when all the blocks it touches share one split,
  so no two chips of different splits overlap, even chips of different scenes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from dataclasses import asdict, dataclass, field

import numpy as np
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from engine.errors import InputError
from engine.geo.damage_classes import classify_polygons
from engine.geo.grid import OutputGrid
from engine.geo.masks import label_raster, place_on_grid
from engine.geo.raster import open_raster

from .damage import scene_damage
from .scenes import Scene, resolve_scenes

SPLITS = ("train", "val", "test")
MIN_VALID_FRACTION = 0.5  # chips with more nodata than this are not used
_METRES_PER_DEGREE = 111_320.0


@dataclass(frozen=True)
class SampleSpec:
    """One sample: a chip of a scene, painted with one seed."""

    sample_id: str
    number: int
    scene_index: int
    col: int
    row: int
    size: int
    variant: int
    split: str
    seed: int
    post_date: str
    disaster_type: str | None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SampleSpec":
        return cls(**data)

    @property
    def window(self) -> Window:
        return Window(self.col, self.row, self.size, self.size)


@dataclass
class ScenePlan:
    scene: Scene
    chips_total: int = 0
    chips_with_damage: int = 0
    chips_dropped_at_split_borders: int = 0
    chips_chosen: int = 0


@dataclass
class DatasetPlan:
    scenes: list[Scene]
    samples: list[SampleSpec]
    scene_plans: list[ScenePlan] = field(default_factory=list)


def _unit_hash(*parts) -> float:
    """A number in [0, 1) from the parts: the same everywhere (no Python hash randomisation)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _split_of(u: float, fractions: dict[str, float]) -> str:
    edge = 0.0
    for name in SPLITS:
        edge += fractions[name]
        if u < edge:
            return name
    return next(name for name in reversed(SPLITS) if fractions[name] > 0)


def scene_splits(recipe, scenes: list[Scene]) -> dict[int, str]:
    """Whole scenes into splits: scenes ranked by a seeded hash fill the fractions in order."""
    ranked = sorted(scenes, key=lambda s: _unit_hash(recipe.seed, "scene", s.scene_id))
    fractions = recipe.split.fractions
    return {s.index: _split_of((k + 0.5) / len(ranked), fractions) for k, s in enumerate(ranked)}


def _blocks(recipe, bounds_lonlat) -> set[tuple[int, int]]:
    """Blocks of the fixed lon/lat grid a lon/lat box touches (rows of equal latitude height)."""
    west, south, east, north = bounds_lonlat
    step_lat = recipe.split.area_size_m / _METRES_PER_DEGREE
    blocks = set()
    for row in range(math.floor(south / step_lat), math.floor(north / step_lat) + 1):
        centre = (row + 0.5) * step_lat
        step_lon = recipe.split.area_size_m / (_METRES_PER_DEGREE * max(math.cos(math.radians(centre)), 1e-3))
        for col in range(math.floor(west / step_lon), math.floor(east / step_lon) + 1):
            blocks.add((row, col))
    return blocks


def area_split(recipe, grid: OutputGrid, window: Window) -> str | None:
    """The split of a chip by area, or None when it touches blocks of two splits."""
    transform = grid.window_transform(window)
    left, top = transform.c, transform.f
    right, bottom = transform @ (window.width, window.height)
    lonlat = transform_bounds(grid.crs, "EPSG:4326", left, bottom, right, top, densify_pts=21)
    splits = {_split_of(_unit_hash(recipe.seed, "block", r, c), recipe.split.fractions) for r, c in _blocks(recipe, lonlat)}
    return splits.pop() if len(splits) == 1 else None


def _post_date(recipe, scene: Scene, key: str) -> dt.date:
    low, high = recipe.post_date_offset_days
    return scene.date + dt.timedelta(days=low + int(_unit_hash(key, "date") * (high - low + 1)))


def _seed(key: str) -> int:
    return int(_unit_hash(key, "seed") * 2**32)


def _scene_chips(recipe, scene: Scene, plan: ScenePlan, split_by_scene: dict[int, str]) -> list[tuple[int, int, str]]:
    size = recipe.chip_size
    with open_raster(scene.path) as source:
        info = source.info
        if info.source_orientation != "north-up":
            raise InputError(f"the scene {scene.path} is {info.source_orientation}; warp it to a north-up grid first")
        if info.width < size or info.height < size:
            raise InputError(
                f"the scene {scene.path} ({info.width} x {info.height} px) is smaller than one chip ({size} px); "
                "lower chip_size"
            )
        grid = OutputGrid(info.crs, info.transform, info.width, info.height)
        damage = scene_damage(recipe, scene, grid)
        try:
            placed = place_on_grid(damage, grid)
        except InputError as exc:
            raise InputError(f"scene {scene.path}: {exc}") from None
        classes = classify_polygons(damage, "subtype", disaster_type=scene.disaster_type)
        painted = np.array(classes.inpainted_codes, dtype=np.uint8)
        chips = []
        for row in range(0, info.height - size + 1, size):
            for col in range(0, info.width - size + 1, size):
                plan.chips_total += 1
                window = Window(col, row, size, size)
                labels = label_raster(placed, classes, grid, window)
                if np.isin(labels, painted).mean() < max(recipe.min_damage_fraction, 1e-9):
                    continue
                if source.valid_mask(window).mean() < MIN_VALID_FRACTION:
                    continue
                plan.chips_with_damage += 1
                split = split_by_scene.get(scene.index) if recipe.split.by == "scene" else area_split(recipe, grid, window)
                if split is None:
                    plan.chips_dropped_at_split_borders += 1
                    continue
                chips.append((row, col, split))
    rng = np.random.default_rng([recipe.seed, scene.index, 0x6368])
    chosen = sorted(chips[i] for i in rng.permutation(len(chips))[: recipe.chips_per_scene])
    plan.chips_chosen = len(chosen)
    return chosen


def plan_dataset(recipe) -> DatasetPlan:
    """Every sample of the recipe, numbered in scene, chip (row, col) and variant order."""
    scenes = resolve_scenes(recipe)
    split_by_scene = scene_splits(recipe, scenes)
    samples, scene_plans = [], []
    for scene in scenes:
        plan = ScenePlan(scene)
        scene_plans.append(plan)
        for row, col, split in _scene_chips(recipe, scene, plan, split_by_scene):
            for variant in range(recipe.variants):
                key = f"{recipe.seed}/{scene.scene_id}/{row}/{col}/{variant}"
                number = len(samples)
                samples.append(SampleSpec(
                    sample_id=f"{scene.disaster}_{number:08d}", number=number, scene_index=scene.index,
                    col=col, row=row, size=recipe.chip_size, variant=variant, split=split, seed=_seed(key),
                    post_date=_post_date(recipe, scene, key).isoformat(), disaster_type=scene.disaster_type,
                ))
    if not samples:
        raise InputError(
            "no chip of any scene has enough damage to paint (min_damage_fraction "
            f"{recipe.min_damage_fraction:g} of a {recipe.chip_size} px chip): lower min_damage_fraction or "
            "chip_size, or check that the damage sources cover the scenes"
        )
    return DatasetPlan(scenes, samples, scene_plans)
