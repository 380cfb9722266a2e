"""How CPU thread counts hold up when the machine is busy: one UNet forward at several thread counts.

    python benchmarks/cpu_threads.py                  # threads 1, 2, 4 and torch's default, as is and busy
    python benchmarks/cpu_threads.py --threads 1 2 --busy 2 --rounds 5

A small SD-style UNet (random weights, nothing downloaded) runs a batch of two 32 x 32-cell
windows, first on the machine as it is, then while `--busy` other processes spin one core each
(another job, a training run, a browser). torch's OpenMP threads wait for each other at every
kernel; when one of them is descheduled the others spin, so a thread count equal to the cores
collapses under load while fewer threads degrade gracefully. The thread counts take turns, round
after round, so that a load that comes and goes touches them alike. Prints the median seconds
per forward, the load average, and engine.runtime.threads.default_threads() for this machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def _unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(64, 128, 128), cross_attention_dim=128, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    ).eval()


def _time_forward(unet, threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    x, hidden = torch.randn(2, 4, 32, 32), torch.randn(2, 16, 128)
    with torch.no_grad():
        unet(x, 10, encoder_hidden_states=hidden)  # warm-up at this thread count
        start = time.perf_counter()
        unet(x, 10, encoder_hidden_states=hidden)
        return time.perf_counter() - start


def _medians(unet, counts: list[int], rounds: int) -> dict[int, float]:
    times: dict[int, list[float]] = {threads: [] for threads in counts}
    for _ in range(rounds):
        for threads in counts:
            times[threads].append(_time_forward(unet, threads))
    return {threads: statistics.median(values) for threads, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default: 1, 2, 4, torch's default)")
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="spinning processes in the busy run")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    import torch

    from engine.runtime.threads import default_threads

    torch_default = torch.get_num_threads()
    counts = args.threads or sorted({1, 2, 4, torch_default})
    unet = _unet()
    print(f"cores: {os.cpu_count()}, torch default threads: {torch_default}, GFM4D default: {default_threads()}")
    print(f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    as_is = _medians(unet, counts, args.rounds)
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=_spin, args=(stop,)) for _ in range(args.busy)]
    for process in spinners:
        process.start()
    try:
        time.sleep(0.5)
        busy = _medians(unet, counts, args.rounds)
    finally:
        stop.set()
        for process in spinners:
            process.join()
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(f"{'threads':>8} {'as is s':>9} {f'+{args.busy} busy s':>11} {'slowdown':>9}")
    for threads in counts:
        print(f"{threads:>8} {as_is[threads]:>9.3f} {busy[threads]:>11.3f} {busy[threads] / as_is[threads]:>8.1f}x")


if __name__ == "__main__":
    main()
