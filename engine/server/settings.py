"""How an engine server is set up; every field has a safe default for a single local user.

GFM4D_WORK_DIR  job folders (default: $GFM4D_HOME/jobs)
GFM4D_TOKEN     bearer token clients must send (required when listening beyond loopback)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_MAX_UPLOAD_MB = 2048
DEFAULT_RESULT_TTL_HOURS = 72.0
DEFAULT_MAX_OUTPUT_MPX = 1024  # 32768 x 32768 px: hours of GPU time per job
DEFAULT_MAX_QUEUED = 100
DEFAULT_WORK_QUOTA_GB = 50.0
MIN_FREE_DISK_BYTES = 256 * 1024 * 1024  # what a job's results need at least, beyond its uploads


def default_work_dir() -> Path:
    from engine import config  # imported late: it imports torch, which a refused start never needs

    value = os.environ.get("GFM4D_WORK_DIR")
    return Path(value).expanduser() if value else config.home() / "jobs"


def default_models_dir() -> Path:
    from engine import config

    return config.models_dir()


def default_sd21_dir() -> Path | None:
    from engine import config

    return config.sd21_dir()


def default_token() -> str | None:
    return os.environ.get("GFM4D_TOKEN") or None


@dataclass
class ServerSettings:
    models_dir: Path = field(default_factory=default_models_dir)
    work_dir: Path = field(default_factory=default_work_dir)
    sd21_dir: Path | None = field(default_factory=default_sd21_dir)
    device: str | None = None  # default: config.device()
    token: str | None = None
    allowed_dirs: tuple[Path, ...] = ()  # server-side folders params may name; none: uploads only
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 1024 * 1024
    result_ttl_s: float = DEFAULT_RESULT_TTL_HOURS * 3600
    cleanup_interval_s: float = 300.0
    requeue_on_restart: bool = True  # queued jobs of a previous run are run; running ones fail
    host: str = DEFAULT_HOST  # the address listened on: on loopback only loopback Host headers are answered
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_MPX * 1_000_000  # per job
    max_queued_jobs: int = DEFAULT_MAX_QUEUED
    work_dir_quota_bytes: int = int(DEFAULT_WORK_QUOTA_GB * 1e9)  # job folders together (uploads and results)
    concurrent_jobs: int | None = None  # jobs run at once on one model (batched); None: 2 on a GPU, 1 on a CPU
    threads: int | None = None  # torch's CPU threads; None: GFM4D_THREADS, else engine.runtime.threads.default_threads()
    ray_address: str | None = None  # generate, inpaint and dataset jobs run on this Ray cluster ("local": one of its own)

    def __post_init__(self) -> None:
        self.models_dir = Path(self.models_dir)
        self.work_dir = Path(self.work_dir)
        self.sd21_dir = Path(self.sd21_dir) if self.sd21_dir else None
        self.allowed_dirs = tuple(Path(p) for p in self.allowed_dirs)
