"""Build a dataset from a recipe: plan, make the missing samples (here or on Ray), then catalogue them.

Re-running the same recipe into the same folder makes only the samples the manifest does not
list, so an interrupted run is finished by running it again, and a finished one is a no-op
apart from rewriting the catalog, card and preview (which are made from the manifest).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from engine.errors import InputError
from engine.pipelines.sampling import CancelCheck, Progress, check_cancel

from .manifest import Manifest
from .plan import DatasetPlan, SampleSpec, plan_dataset
from .sample import SCRATCH


@dataclass
class BuildSummary:
    root: Path
    planned: int
    made: int
    already_done: int
    seconds: float
    per_split: dict[str, int] = field(default_factory=dict)
    class_pixels: dict[str, dict[str, int]] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)

    def lines(self) -> list[str]:
        rate = self.made / self.seconds * 3600 if self.seconds > 0 and self.made else 0.0
        out = [f"dataset {self.root}: {self.planned} samples ({', '.join(f'{k} {v}' for k, v in self.per_split.items())}); "
               f"made {self.made} now, {self.already_done} were already done; {self.seconds:.1f} s"
               + (f" ({rate:.0f} samples/hour)" if rate else "")]
        out += [f"wrote {name}: {path}" for name, path in self.outputs.items()]
        return out


class SampleMaker:
    """Makes samples of one recipe with one loaded model; caches each scene's damage layer."""

    def __init__(self, model, recipe, plan_scenes, root: Path) -> None:
        self.model, self.recipe, self.scenes, self.root = model, recipe, plan_scenes, Path(root)
        self._damage: dict[int, object] = {}

    def damage(self, scene):
        if scene.index not in self._damage:
            from engine.geo.grid import OutputGrid
            from engine.geo.raster import open_raster

            from .damage import scene_damage

            with open_raster(scene.path) as source:
                info = source.info
                grid = OutputGrid(info.crs, info.transform, info.width, info.height)
            self._damage[scene.index] = scene_damage(self.recipe, scene, grid)
        return self._damage[scene.index]

    def make(self, spec: SampleSpec, cancel: CancelCheck | None = None) -> dict:
        from .sample import make_sample

        scene = self.scenes[spec.scene_index]
        return make_sample(self.model, self.recipe, spec, scene, self.damage(scene), self.root, cancel=cancel)


def prepare_output(root: Path) -> Path:
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise InputError(f"the dataset output {root} is a file; give a folder")
    if not root.parent.is_dir():
        raise InputError(f"the folder {root.parent} for the dataset does not exist; create it first")
    root.mkdir(exist_ok=True)
    shutil.rmtree(root / SCRATCH, ignore_errors=True)  # leftovers of an interrupted run
    return root


def build_dataset(
    recipe,
    root: str | Path,
    *,
    registry=None,
    model=None,
    ray_address: str | None = None,
    ray_workers: int | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: CancelCheck | None = None,
    on_record: Callable[[dict], None] | None = None,
    ray_options: dict | None = None,
) -> BuildSummary:
    """Make every sample of `recipe` under `root` that is not made yet; write catalog, card and preview.

    Locally, `model` (or `registry.load(recipe.model)`) makes the samples one after another. With
    `ray_address` ("auto", "local", or ray://host:port) they are made by Ray actors that each hold
    the model; the bytes are the same. `on_record` sees each finished sample's manifest record.
    """
    started = time.perf_counter()
    root = prepare_output(Path(root))
    plan: DatasetPlan = plan_dataset(recipe)
    manifest = Manifest(root, recipe.fingerprint())
    todo = [s for s in plan.samples if s.sample_id not in manifest]
    already = len(plan.samples) - len(todo)
    done = already

    def report(message: str) -> None:
        if progress is not None:
            progress(Progress(done, len(plan.samples), message))

    def finished(record: dict) -> None:
        nonlocal done
        if manifest.add(record):
            done += 1
        if on_record is not None:
            on_record(record)
        report(f"{record['id']} ({record['split']})")

    report(f"{already} of {len(plan.samples)} samples already made" if already else "starting")
    if todo and ray_address is not None:
        from engine.scaleout.samples import run_samples_on_ray

        run_samples_on_ray(recipe, root, todo, registry, finished, cancel=cancel, address=ray_address,
                           workers=ray_workers, options=ray_options)
    elif todo:
        if model is None:
            if registry is None:
                raise InputError("building a dataset needs a model registry or a loaded model")
            model = registry.load(recipe.model)
        maker = SampleMaker(model, recipe, plan.scenes, root)
        for spec in todo:
            check_cancel(cancel)
            finished(maker.make(spec, cancel=cancel))
    try:
        (root / SCRATCH).rmdir()  # empty once every sample is in place
    except OSError:
        pass
    from .catalog import write_catalog_and_card

    outputs = write_catalog_and_card(recipe, root, plan, manifest)
    per_split = {}
    for spec in plan.samples:
        per_split[spec.split] = per_split.get(spec.split, 0) + 1
    return BuildSummary(root, len(plan.samples), len(todo), already, time.perf_counter() - started,
                        per_split=per_split, outputs=outputs)
