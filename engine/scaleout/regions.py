"""Large generate and inpaint jobs on Ray: regions processed in parallel by actors, in dependency waves.

In one process, generate's region i continues the latents of every earlier region it overlaps
(they are kept, re-noised, in the overlap), so region borders do not show. Here the same holds:
region i is scheduled in wave 1 + max(wave of the earlier regions it overlaps), so when it
starts, exactly the regions it would have seen in one process are finished; regions of one wave
never overlap each other. Inpaint's regions are disjoint, so they form a single wave. Each
region's result depends only on its inputs (position-keyed noise, a per-region generator), so
the output equals the single-process one pixel for pixel. Actors hold the model; the driver
plans, keeps the canvas (or the inpainted regions) and writes the outputs.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from engine.errors import GFM4DError
from engine.geo.dates import parse_date
from engine.geo.tiling import Span
from engine.geo.writer import check_destination
from engine.pipelines.canvas import LatentStore
from engine.pipelines.generate import (
    GenerateRequest,
    GenerateResult,
    count_decode_blocks,
    denoise_region,
    finished_cells,
    plan_regions,
    result_tags,
    window_metadata,
    write_canvas,
)
from engine.pipelines.sampling import Progress, check_cancel, encode_prompt

from .cluster import (
    MAX_RESTARTS,
    MAX_TASK_RETRIES,
    WorkerModel,
    actor_resources,
    connect,
    default_workers,
    first_line,
    user_error,
)

POLL_S = 0.5  # how often the driver looks at the cancel flag while regions are in flight


def region_waves(regions: list[Span]) -> list[list[int]]:
    """Region indices grouped into waves: a region runs after every earlier region it overlaps."""
    wave_of: list[int] = []
    for index, region in enumerate(regions):
        before = [wave_of[j] for j in range(index) if region.intersection(regions[j]) is not None]
        wave_of.append(1 + max(before) if before else 0)
    waves: list[list[int]] = [[] for _ in range(max(wave_of) + 1)] if wave_of else []
    for index, wave in enumerate(wave_of):
        waves[wave].append(index)
    return waves


def run_in_waves(ray, actors: list, regions: list[Span], submit: Callable, collect: Callable, *,
                 progress=None, cancel=None, done: int = 0, total: int | None = None) -> int:
    """Process `regions` on `actors` in dependency waves; the number of progress units done after them.

    `submit(actor, index)` starts region `index` and returns its Ray reference; `collect(index,
    value)` takes its result in the driver. A wave is submitted only once the one before it is
    collected. Cancelling stops scheduling and cancels the regions in flight (the caller kills the
    actors, which stops a region that is already running). Progress counts finished regions,
    after `done` units of a job of `total`.
    """
    waves = region_waves(regions)
    total = total if total is not None else done + len(regions)
    finished = 0
    for number, wave in enumerate(waves):
        check_cancel(cancel)
        pending = {submit(actors[k % len(actors)], index): index for k, index in enumerate(wave)}
        try:
            while pending:
                check_cancel(cancel)
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                for ref in ready:
                    index = pending.pop(ref)
                    collect(index, _result(ray, ref, index))
                    finished += 1
                    if progress is not None:
                        progress(Progress(done + finished, total,
                                          f"wave {number + 1}/{len(waves)}: {finished}/{len(regions)} regions done"))
        finally:
            for ref in pending:
                ray.cancel(ref)
    return done + finished


def _result(ray, ref, index: int):
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as error:
        cause = user_error(ray, error)
        if cause is not None:
            raise cause from None
        raise GFM4DError(f"region {index + 1} failed on the Ray workers: {first_line(error)}") from None


class RegionWorker:
    """A Ray actor holding one loaded model; denoises generate regions and inpaints inpaint regions."""

    def __init__(self, model: WorkerModel, device: str) -> None:
        self.model = model.load(device)
        self._text = {}
        self._inpaint = None  # (job key, open raster, plan, text) of the inpaint job being worked on

    def denoise(self, request: GenerateRequest, index: int, known, known_mask) -> np.ndarray:
        key = (request.prompt, request.negative_prompt, request.guidance(self.model))
        if key not in self._text and not self.model.info.metadata_caption:
            self._text[key] = encode_prompt(self.model, *key)
        canvas, regions, per_region, overlap_cells = plan_regions(request, self.model)
        latents = denoise_region(
            self.model, request, canvas, regions[index], per_region[index], index, overlap_cells, self._text.get(key),
            known=torch.from_numpy(np.array(known)) if known is not None else None, known_mask=known_mask,
        )
        return latents.float().cpu().numpy()

    def inpaint(self, key: str, request, index: int):
        from engine.geo.raster import open_raster
        from engine.pipelines.inpaint import inpaint_region, plan_inpaint, prompt_text

        if self._inpaint is None or self._inpaint[0] != key:
            self.close()
            source = open_raster(request.image, rgb_bands=request.rgb_bands)
            job = plan_inpaint(self.model, request, source)
            self._inpaint = (key, source, job, prompt_text(self.model, request, job))
        _, source, job, text = self._inpaint
        return inpaint_region(self.model, request, job, source, index, text)

    def close(self) -> None:
        if self._inpaint is not None:
            self._inpaint[1].close()
            self._inpaint = None


class RegionPool:
    """Region actors for one job, at most one per region of its widest wave; killed when the job ends."""

    def __init__(self, ray, registry, model_name: str, loras, workers: int | None, regions: list[Span]) -> None:
        self.ray = ray
        resources, device = actor_resources(ray)
        remote = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES, **resources)(RegionWorker)
        widest = max((len(w) for w in region_waves(regions)), default=1)
        count = max(1, min(workers or default_workers(ray), widest))
        model = WorkerModel.of(registry, model_name, loras)
        self.actors = [remote.remote(model, device) for _ in range(count)]

    def __enter__(self) -> "RegionPool":
        return self

    def __exit__(self, *exc) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)


def generate_on_ray(registry, model_name: str, request: GenerateRequest, output: str | Path, *, address=None,
                    workers: int | None = None, loras=(), progress=None, cancel=None) -> GenerateResult:
    """`engine.pipelines.generate.generate`, with the regions denoised by Ray actors (same pixels)."""
    started = time.perf_counter()
    output = check_destination(output)
    request = replace(request, date=parse_date(request.date) if request.date else None)
    model = registry.load(model_name, loras=tuple(loras))  # the driver plans and decodes
    canvas, regions, per_region, _ = plan_regions(request, model)
    total = len(regions) + count_decode_blocks(model, request, canvas)
    if progress is not None:
        progress(Progress(0, total, "starting Ray workers"))
    ray = connect(address)
    store = LatentStore(canvas, scratch_dir=output.parent)
    try:
        with RegionPool(ray, registry, model_name, loras, workers, regions) as pool:
            request_ref = ray.put(request)
            keep = [finished_cells(region, regions[:index]) for index, region in enumerate(regions)]

            def submit(actor, index: int):
                known = store.read(regions[index]).numpy() if keep[index].any() else None
                return actor.denoise.remote(request_ref, index, known, keep[index] if keep[index].any() else None)

            def collect(index: int, latents: np.ndarray) -> None:
                store.write(regions[index], torch.from_numpy(np.array(latents)), keep=keep[index] if keep[index].any() else None)

            done = run_in_waves(ray, pool.actors, regions, submit, collect, progress=progress, cancel=cancel, total=total)

        def on_block() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(Progress(done, total, "decoding"))

        tags = result_tags(request, model)
        write_canvas(model, request, canvas, store, output, tags, on_block=on_block, cancel=cancel)
    finally:
        store.close()
    centre = window_metadata(canvas, [Span(0, 0, canvas.height, canvas.width)], Span(0, 0, 0, 0), request)[0]
    windows = sum(len(w) for w in per_region)
    return GenerateResult(output, request.grid, windows, len(regions), time.perf_counter() - started, centre, tags)


def inpaint_on_ray(registry, model_name: str, request, outputs, *, address=None, workers: int | None = None, loras=(),
                   progress=None, cancel=None):
    """`engine.pipelines.inpaint.inpaint`, with the regions inpainted by Ray actors (same pixels).

    The actors read the raster and polygons themselves, so their paths must be readable where the
    actors run (any local cluster; a shared filesystem for a cluster of several machines).
    """
    from engine.geo.raster import open_raster
    from engine.pipelines.inpaint import plan_inpaint, prepare_request, write_inpaint

    started = time.perf_counter()
    request = prepare_request(request, outputs)
    model = registry.load(model_name, loras=tuple(loras))  # the driver plans and writes
    with open_raster(request.image, rgb_bands=request.rgb_bands) as source:
        job = plan_inpaint(model, request, source)
        spans = [region for region, _ in job.regions]
        total = len(spans) + 1
        if progress is not None:
            progress(Progress(0, total, "starting Ray workers"))
        planned = time.perf_counter()
        ray = connect(address)
        results: list = [None] * len(spans)
        with RegionPool(ray, registry, model_name, loras, workers, spans) as pool:
            request_ref, key = ray.put(request), uuid.uuid4().hex  # the key lets an actor reuse its plan of this job
            run_in_waves(ray, pool.actors, spans, lambda actor, index: actor.inpaint.remote(key, request_ref, index),
                         results.__setitem__, progress=progress, cancel=cancel, total=total)
        result = write_inpaint(model, request, job, source, results, outputs, cancel, started,
                               {"plan": planned - started, "model": time.perf_counter() - planned})
    if progress is not None:
        progress(Progress(total, total, "written"))
    return result
