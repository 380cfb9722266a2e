"""Load the engine's HTTP API with the demo models: what a job costs beyond its own compute.

    python benchmarks/load_engine.py                       # starts a private engine on loopback
    python benchmarks/load_engine.py --url http://127.0.0.1:8765 --clients 16 --jobs 5

Reports, for tiny generate jobs (64 x 64 px, 2 steps by default):
- request latency of GET /v1/health and of POST /v1/jobs (validation + queueing);
- overhead per job: wall time seen by one client (submit -> succeeded -> result downloaded)
  minus the run time the engine recorded for the job itself;
- sustained throughput: C clients submitting and waiting concurrently, jobs per second, and how
  busy the single worker was (sum of run times / wall time).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.client import EngineClient  # noqa: E402


def job_params(seed: int, size_px: int, steps: int) -> dict:
    x0, y0 = 600000.0, 5100000.0
    return {"extent": [x0, y0, x0 + 2 * size_px, y0 + 2 * size_px], "crs": "EPSG:32632", "resolution_m": 2.0,
            "prompt": "a fmow satellite image of a farm in italy", "steps": steps, "guidance_scale": 3.0, "seed": seed}


def run_seconds(job: dict) -> float:
    return (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])).total_seconds()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def one_job(client: EngineClient, seed: int, args, scratch: Path) -> tuple[float, float]:
    """(wall seconds seen by the client, run seconds recorded by the engine)."""
    started = time.perf_counter()
    job_id = client.submit("generate", job_params(seed, args.size, args.steps))
    job = client.wait(job_id, poll_interval=args.poll)
    client.download(job_id, "image", scratch / f"{job_id}.tif")
    wall = time.perf_counter() - started
    if not args.keep:
        client.cancel(job_id)  # deletes the finished job and its files
    return wall, run_seconds(job)


def measure(url: str, token: str | None, args) -> list[tuple[str, str]]:
    client = EngineClient(url, token=token)
    scratch = Path(tempfile.mkdtemp(prefix="gfm4d-load-"))
    one_job(client, 0, args, scratch)  # load the model and warm up its shapes

    health = []
    for _ in range(args.requests):
        started = time.perf_counter()
        client.health()
        health.append(time.perf_counter() - started)

    submit = []
    for i in range(args.requests):
        started = time.perf_counter()
        job_id = client.submit("generate", job_params(10_000 + i, args.size, args.steps))
        submit.append(time.perf_counter() - started)
        client.cancel(job_id)  # cancelled while queued (or within a step)
    time.sleep(0.5)

    sequential = [one_job(client, 20_000 + i, args, scratch) for i in range(args.jobs)]
    overhead = [wall - run for wall, run in sequential]

    results: list[tuple[float, float]] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        own = EngineClient(url, token=token)
        for k in range(args.jobs):
            outcome = one_job(own, 30_000 + index * args.jobs + k, args, scratch)
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    busy = sum(run for _, run in results) / wall

    ms = lambda seconds: f"{seconds * 1000:8.1f} ms"  # noqa: E731
    return [
        ("GET /v1/health latency (median / p95)", f"{ms(statistics.median(health))} / {ms(percentile(health, 0.95))}"),
        ("POST /v1/jobs latency (median / p95)", f"{ms(statistics.median(submit))} / {ms(percentile(submit, 0.95))}"),
        (f"job run time on the engine ({args.size} px, {args.steps} steps, median)", ms(statistics.median(r for _, r in sequential))),
        (f"overhead per job, one client (median / p95 of {args.jobs}; poll {args.poll * 1000:.0f} ms)",
         f"{ms(statistics.median(overhead))} / {ms(percentile(overhead, 0.95))}"),
        (f"sustained throughput, {args.clients} clients x {args.jobs} jobs", f"{len(results) / wall:8.2f} jobs/s"),
        ("worker busy during the sustained run", f"{busy * 100:8.1f} %"),
        ("client wall time per job under load (median / p95)",
         f"{ms(statistics.median(w for w, _ in results))} / {ms(percentile([w for w, _ in results], 0.95))}"),
    ]


def print_table(rows: list[tuple[str, str]], device: str) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"\nGFM4D engine load test ({device})")
    print(f"{'measure':<{width}}  value")
    print(f"{'-' * width}  {'-' * 24}")
    for name, value in rows:
        print(f"{name:<{width}}  {value.strip()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an engine already running (default: start a private one with the demo models)")
    parser.add_argument("--token")
    parser.add_argument("--models-dir", help="models for the private engine (default: demo models in a temp folder)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=5, help="jobs per client")
    parser.add_argument("--requests", type=int, default=50, help="requests for the latency rows")
    parser.add_argument("--size", type=int, default=64, help="output side in pixels")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--poll", type=float, default=0.02, help="status poll interval in seconds")
    parser.add_argument("--keep", action="store_true", help="keep finished jobs instead of deleting them")
    args = parser.parse_args()

    if args.url:
        rows = measure(args.url, args.token, args)
        device = EngineClient(args.url, token=args.token).health()["device"]
        print_table(rows, device)
        return 0

    from engine.models.demo import build_demo_models
    from engine.server.launcher import start_engine

    root = Path(tempfile.mkdtemp(prefix="gfm4d-load-engine-"))
    models_dir = Path(args.models_dir) if args.models_dir else root / "models"
    if not args.models_dir:
        build_demo_models(models_dir)
    with start_engine(models_dir, root / "work", log_path=root / "engine.log") as engine:
        rows = measure(engine.url, None, args)
        device = EngineClient(engine.url).health()["device"]
    print_table(rows, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
