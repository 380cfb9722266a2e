"""Connecting to Ray: an existing cluster (address) or a local one, with GFM4D importable on it."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from engine.errors import GFM4DError, InputError

# Actor options shared by every GFM4D actor: a dead worker is restarted and its running jobs are
# retried on the new one (Ray's own fault tolerance), a few times before the driver takes over.
MAX_RESTARTS = 4
MAX_TASK_RETRIES = 3
START_ATTEMPTS = 3  # a local node's agents may miss Ray's start-up deadline on a busy machine
PROBE_TIMEOUT_S = 5.0  # Ray itself retries an address that does not answer for minutes


def require_ray():
    try:
        import ray
    except ImportError:
        raise InputError('--ray needs Ray, an optional extra: pip install "gfm4d[ray]" (or pip install ray)') from None
    return ray


def check_reachable(address: str) -> None:
    """A host:port (or ray://host:port) that accepts no connection is one line now, not minutes of Ray retries."""
    if address in ("auto", "local", ""):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise InputError(f"{address!r} is not a Ray address; give host:port (e.g. 10.0.0.5:6379), ray://host:10001, or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise InputError(f"could not connect to the Ray cluster at {address!r} ({exc.strerror or exc}); "
                         "is `ray start --head` running there?") from None


def connect(address: str | None, init_options: dict | None = None):
    """Ray, initialised: `address` "local" (or empty) starts a local cluster, "auto" joins a running one."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    if address not in (None, "", "local"):
        check_reachable(address)
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
            raise InputError(f"could not connect to the Ray cluster at {address!r}: {first_line(exc)}") from None
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


@dataclass(frozen=True)
class WorkerModel:
    """What a Ray worker loads: the driver registry's folders and backend, a model name and its LoRAs.

    Plain strings and LoRA specs, so it travels to workers; each loads on its own device with that
    device's default dtype, as the driver's registry does.
    """

    models_dir: str
    sd21_dir: str | None
    backend: str | None
    name: str
    loras: tuple = ()

    @classmethod
    def of(cls, registry, name: str, loras=()) -> "WorkerModel":
        sd21 = registry.sd21_dir
        return cls(str(registry.models_dir), str(sd21) if sd21 else None, registry.backend, name, tuple(loras))

    def load(self, device: str):
        import torch

        from engine import config
        from engine.models.registry import ModelRegistry

        registry = ModelRegistry(Path(self.models_dir), Path(self.sd21_dir) if self.sd21_dir else None, self.backend)
        target = torch.device(device)
        return registry.load(self.name, target, config.dtype_for(target), loras=self.loras)


def user_error(ray, error: BaseException) -> GFM4DError | None:
    """The GFM4DError inside a Ray task error (bad input fails the run; it is not retried)."""
    cause = getattr(error, "cause", None)
    if isinstance(error, ray.exceptions.RayTaskError) and isinstance(cause, GFM4DError):
        return cause
    return None


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
