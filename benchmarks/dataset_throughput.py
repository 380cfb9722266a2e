"""Dataset throughput: samples per hour with 1 and 2 Ray workers on the same recipe, in one run.

Each worker count makes the same samples into a fresh folder; the steady-state rate is measured
from the first finished sample to the last (actor start-up and model loading excluded, reported
apart), so the ratio shows how well workers add up. The recipe is the test recipe (Joplin tile
with xView2 damage polygons + NAIP with procedural flood blobs) with more chips per scene.

    .venv/bin/python benchmarks/dataset_throughput.py --chips 6 --steps 4 --work /tmp/gfm4d-bench

On N GPUs each actor holds its own model on its own GPU and samples are independent, so the
rate is about N x the one-worker rate times the measured 2-worker efficiency (shared disk and the
driver's bookkeeping are the only shared parts).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def run(workers: int, recipe, registry, root: Path) -> dict:
    from engine.dataset import build_dataset

    started = time.perf_counter()
    stamps = []
    summary = build_dataset(recipe, root, registry=registry, ray_address="auto", ray_workers=workers,
                            on_record=lambda record: stamps.append(time.perf_counter()))
    total = time.perf_counter() - started
    steady = stamps[-1] - stamps[0] if len(stamps) > 1 else float("nan")
    per_hour = (len(stamps) - 1) / steady * 3600 if len(stamps) > 1 else float("nan")
    return {"workers": workers, "samples": summary.made, "seconds_total": round(total, 1),
            "seconds_to_first_sample": round(stamps[0] - started, 1), "samples_per_hour": round(per_hour, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=6, help="chips per scene (2 scenes)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--work", default="/tmp/gfm4d-dataset-bench")
    parser.add_argument("--address", default="local", help="Ray address; 'local' starts a 2-CPU cluster")
    args = parser.parse_args()

    from test_dataset import recipe_data

    from engine.dataset import parse_recipe
    from engine.models.demo import build_demo_models
    from engine.scaleout.cluster import connect
    from engine.tasks import DeviceRegistry

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    build_demo_models(work / "models")
    registry = DeviceRegistry(work / "models")
    connect(args.address, init_options={"num_cpus": 2} if args.address == "local" else None)
    recipe = parse_recipe(recipe_data(chips_per_scene=args.chips, steps=args.steps))
    results = []
    for workers in (1, 2):
        root = work / f"ds-{workers}-{time.time_ns()}"
        results.append(run(workers, recipe, registry, root))
        print(json.dumps(results[-1]))
    ratio = results[1]["samples_per_hour"] / results[0]["samples_per_hour"]
    print(json.dumps({"ratio_2_over_1": round(ratio, 2), "machine": platform.processor() or platform.machine(),
                      "cpus": __import__("os").cpu_count(), "steps": args.steps}))


if __name__ == "__main__":
    main()
