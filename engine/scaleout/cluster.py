"""Connecting to Ray: an existing cluster (address) or a local one, with GFM4D importable on it."""

from __future__ import annotations

import os
from pathlib import Path

from engine.errors import InputError

# Actor options shared by every GFM4D actor: a dead worker is restarted and its running jobs are
# retried on the new one (Ray's own fault tolerance), a few times before the driver takes over.
MAX_RESTARTS = 4
MAX_TASK_RETRIES = 3
START_ATTEMPTS = 3  # a local node's agents may miss Ray's start-up deadline on a busy machine


def require_ray():
    try:
        import ray
    except ImportError:
        raise InputError('--ray needs Ray, an optional extra: pip install "gfm4d[ray]" (or pip install ray)') from None
    return ray


def connect(address: str | None, init_options: dict | None = None):
    """Ray, initialised: `address` "local" (or empty) starts a local cluster, "auto" joins a running one."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    engine_root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (engine_root, os.environ.get("PYTHONPATH", "")) if p)
    import torch

    # Workers run torch with this process's thread count (Ray would give them one): CPU kernels sum in
    # an order that depends on it, and samples must be the same bytes wherever they are made.
    env = {"PYTHONPATH": path, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    local = address in (None, "", "local")
    for attempt in range(START_ATTEMPTS if local else 1):
        try:
            ray.init(address=None if local else address, include_dashboard=False,
                     runtime_env={"env_vars": env}, log_to_driver=False, **(init_options or {}))
            return ray
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise InputError(f"could not connect to the Ray cluster at {address!r}: {exc}") from None
        except Exception as exc:  # a local node that did not come up in time (an overloaded machine): try again
            ray.shutdown()
            if attempt == START_ATTEMPTS - 1:
                raise InputError(f"the local Ray cluster did not start ({exc}); try again, or start one with `ray start --head`") from None
    return ray


def actor_resources(ray) -> tuple[dict, str]:
    """Ray resources of one actor and the torch device it uses: one GPU each when the cluster has GPUs."""
    if ray.cluster_resources().get("GPU", 0) >= 1:
        return {"num_gpus": 1, "num_cpus": 1}, "cuda"
    return {"num_cpus": 1}, "cpu"


def default_workers(ray) -> int:
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    return gpus if gpus else max(1, int(resources.get("CPU", 1)))
