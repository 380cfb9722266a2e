"""Dataset samples on Ray actors: each actor loads the model once and makes samples straight into the folder.

The driver keeps every actor busy (two jobs in flight each, so an actor never waits for the
driver), records each returned sample in the manifest exactly once, and redoes the samples of a
worker that is lost for good. Samples are idempotent (a redone sample writes the same bytes with
atomic renames), so a job that Ray retries after its worker died cannot leave a duplicate.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

from engine.errors import Cancelled, GFM4DError

from .cluster import MAX_RESTARTS, MAX_TASK_RETRIES, WorkerModel, actor_resources, connect, default_workers, user_error

IN_FLIGHT_PER_ACTOR = 2
MAX_ATTEMPTS = 3  # driver-side redos of a sample after Ray's own retries are spent


class SampleWorker:
    """A Ray actor holding one loaded model and the recipe's scenes."""

    def __init__(self, model: WorkerModel, recipe_data: dict, root: str, device: str) -> None:
        from engine.dataset.build import SampleMaker
        from engine.dataset.recipe import Recipe
        from engine.dataset.scenes import resolve_scenes

        recipe = Recipe.model_validate(recipe_data)
        self.maker = SampleMaker(model.load(device), recipe, resolve_scenes(recipe), Path(root))

    def pid(self) -> int:
        return os.getpid()

    def make(self, spec_data: dict) -> dict:
        from engine.dataset.plan import SampleSpec

        return self.maker.make(SampleSpec.from_dict(spec_data))


class SamplePool:
    """Actors for one dataset run; `actors` is exposed so that callers (and tests) can see the workers."""

    def __init__(self, ray, recipe, root: Path, registry, workers: int | None) -> None:
        self.ray = ray
        resources, device = actor_resources(ray)
        remote = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES, **resources)(SampleWorker)
        count = workers or default_workers(ray)
        args = (WorkerModel.of(registry, recipe.model), recipe.model_dump(mode="json"), str(root), device)
        self.actors = [remote.remote(*args) for _ in range(count)]

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)


def run_samples_on_ray(recipe, root: Path, todo, registry, finished, *, cancel=None, address=None, workers=None,
                       options: dict | None = None) -> None:
    """Make the `todo` samples on Ray actors; call `finished(record)` in the driver for each, once.

    `options` may hold `on_pool` (called with the SamplePool once its actors exist).
    """
    ray = connect(address)
    pool = SamplePool(ray, recipe, root, registry, workers)
    if options and options.get("on_pool"):
        options["on_pool"](pool)
    queue = collections.deque(todo)
    attempts: collections.Counter = collections.Counter()
    pending: dict = {}
    recorded: set[str] = set()

    def submit(actor_index: int) -> None:
        if queue:
            spec = queue.popleft()
            pending[pool.actors[actor_index].make.remote(spec.to_dict())] = (spec, actor_index)

    try:
        for index in range(len(pool.actors)):
            for _ in range(IN_FLIGHT_PER_ACTOR):
                submit(index)
        while pending:
            if cancel is not None and cancel():
                raise Cancelled("the dataset run was cancelled; finished samples are kept and the rest is made on the next run")
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for future in ready:
                spec, actor_index = pending.pop(future)
                try:
                    record = ray.get(future)
                except ray.exceptions.RayError as error:
                    cause = user_error(ray, error)
                    if cause is not None:
                        raise cause from None
                    attempts[spec.sample_id] += 1
                    if attempts[spec.sample_id] > MAX_ATTEMPTS:
                        raise GFM4DError(f"sample {spec.sample_id} failed {MAX_ATTEMPTS} times on Ray workers: {error}") from None
                    queue.appendleft(spec)  # a lost worker's sample: made again (same bytes)
                else:
                    if record["id"] not in recorded:
                        recorded.add(record["id"])
                        finished(record)
                submit(actor_index)
    finally:
        pool.close()
