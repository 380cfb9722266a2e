"""Large generate jobs on Ray: regions of the latent canvas denoised in parallel, in dependency waves.

In one process, region i continues the latents of every earlier region it overlaps (they are
kept, re-noised, in the overlap), so region borders do not show. Here the same holds: region i is
scheduled in wave 1 + max(wave of the earlier regions it overlaps), so when it starts, exactly the
regions it would have seen in one process are finished; regions of one wave never overlap each
other. Each region's result depends only on its inputs (position-keyed noise, a per-region
generator), so the canvas, and the GeoTIFF decoded from it, equals the single-process one pixel for
pixel. Actors hold the model; the driver keeps the canvas and decodes it into the output.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from engine.geo.dates import parse_date
from engine.geo.tiling import Span
from engine.geo.writer import check_destination
from engine.pipelines.canvas import LatentStore
from engine.pipelines.generate import (
    GenerateRequest,
    GenerateResult,
    denoise_region,
    finished_cells,
    plan_regions,
    result_tags,
    window_metadata,
    write_canvas,
)
from engine.pipelines.sampling import Progress, check_cancel, encode_prompt

from .cluster import MAX_RESTARTS, MAX_TASK_RETRIES, actor_resources, connect, default_workers


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


class RegionWorker:
    """A Ray actor holding one loaded model; denoises regions of generate requests."""

    def __init__(self, models_dir: str, sd21_dir: str | None, model_name: str, device: str) -> None:
        from engine.tasks import DeviceRegistry

        self.model = DeviceRegistry(Path(models_dir), Path(sd21_dir) if sd21_dir else None, device=device).load(model_name)
        self._text = {}

    def denoise(self, request: GenerateRequest, index: int, known, known_mask) -> np.ndarray:
        key = (request.prompt, request.negative_prompt, request.guidance_scale)
        if key not in self._text:
            self._text[key] = encode_prompt(self.model, request.prompt, request.negative_prompt, request.guidance_scale)
        canvas, regions, per_region, overlap_cells = plan_regions(request, self.model)
        latents = denoise_region(
            self.model, request, canvas, regions[index], per_region[index], index, overlap_cells, self._text[key],
            known=torch.from_numpy(known) if known is not None else None, known_mask=known_mask,
        )
        return latents.float().cpu().numpy()


def generate_on_ray(registry, model_name: str, request: GenerateRequest, output: str | Path, *, address=None,
                    workers: int | None = None, progress=None, cancel=None) -> GenerateResult:
    """`engine.pipelines.generate.generate`, with the regions denoised by Ray actors (same pixels)."""
    started = time.perf_counter()
    output = check_destination(output)
    request = replace(request, date=parse_date(request.date) if request.date else None)
    model = registry.load(model_name)  # the driver plans and decodes
    canvas, regions, per_region, _ = plan_regions(request, model)
    waves = region_waves(regions)
    ray = connect(address)
    resources, device = actor_resources(ray)
    remote = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES, **resources)(RegionWorker)
    count = min(workers or default_workers(ray), max(len(w) for w in waves))
    actors = [remote.remote(str(registry.models_dir), str(registry.sd21_dir) if registry.sd21_dir else None,
                            model_name, device) for _ in range(count)]
    total, done = len(regions), 0
    store = LatentStore(canvas, scratch_dir=output.parent)
    try:
        request_ref = ray.put(request)
        for number, wave in enumerate(waves):
            check_cancel(cancel)
            futures = {}
            for k, index in enumerate(wave):
                mask = finished_cells(regions[index], regions[:index])
                known = store.read(regions[index])[0].numpy() if mask.any() else None
                known = known[None] if known is not None else None
                futures[index] = actors[k % count].denoise.remote(request_ref, index, known, mask if mask.any() else None)
            for index, future in futures.items():
                mask = finished_cells(regions[index], regions[:index])
                store.write(regions[index], torch.from_numpy(ray.get(future)), keep=mask if mask.any() else None)
                done += 1
                if progress is not None:
                    progress(Progress(done, total, f"wave {number + 1}/{len(waves)}: region {index + 1}/{total}"))
        write_canvas(model, request, canvas, store, output, result_tags(request, model), cancel=cancel)
    finally:
        store.close()
        for actor in actors:
            ray.kill(actor, no_restart=True)
    centre = window_metadata(canvas, [Span(0, 0, canvas.height, canvas.width)], Span(0, 0, 0, 0), request)[0]
    windows = sum(len(w) for w in per_region)
    return GenerateResult(output, request.grid, windows, len(regions), time.perf_counter() - started, centre,
                          result_tags(request, model))
