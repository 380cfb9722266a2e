"""How many CPU threads torch uses: one setting for the engine, the CLI and training.

torch's own default is one thread per core. Its OpenMP threads meet at a barrier after every
kernel, so when anything else runs on the machine (another job, a training run, a browser) the
threads that still hold a core spin while the descheduled one waits its turn, and a forward pass
can take many times longer (docs/performance.md, "CPU threads", has the figures). Half the cores,
at most 4, leaves room for the rest of the machine and barely slows an idle one.

GFM4D_THREADS (engine.config) or --threads overrides the default.
"""

from __future__ import annotations

import os

from engine.errors import InputError

MAX_DEFAULT_THREADS = 4


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads(cores: int | None = None) -> int:
    """Half the available cores, at least 1 and at most MAX_DEFAULT_THREADS."""
    cores = available_cores() if cores is None else cores
    return max(1, min(MAX_DEFAULT_THREADS, cores // 2))


def check_threads(value, where: str = "--threads") -> int:
    """`value` as a thread count (InputError naming `where` when it is not a positive whole number)."""
    try:
        threads = int(str(value).strip())
    except ValueError:
        threads = 0
    if threads < 1:
        raise InputError(f"{where} must be a whole number of CPU threads, 1 or more (not {value!r})")
    return threads


def apply_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to `threads`, else GFM4D_THREADS, else default_threads(); the count set.

    Inter-op threads (the pool that runs independent operators side by side) are set once, as
    torch allows only before its first parallel work; later calls leave them as they are.
    """
    import torch

    from engine import config

    if threads is not None:
        count = check_threads(threads)
    else:
        count = default_threads() if config.threads() is None else check_threads(config.threads(), "GFM4D_THREADS")
    torch.set_num_threads(count)
    try:
        torch.set_num_interop_threads(count)
    except RuntimeError:  # already set, or parallel work has started: keep it
        pass
    return count
