"""Run the engine's HTTP API with uvicorn (what `gfm4d serve` calls)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

from .security import check_bind
from .settings import (
    DEFAULT_HOST,
    DEFAULT_MAX_OUTPUT_MPX,
    DEFAULT_MAX_QUEUED,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_PORT,
    DEFAULT_RESULT_TTL_HOURS,
    DEFAULT_WORK_QUOTA_GB,
    ServerSettings,
)

log = logging.getLogger(__name__)


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    models_dir: str | os.PathLike | None = None,
    work_dir: str | os.PathLike | None = None,
    token: str | None = None,
    allowed_dirs: Iterable[str | os.PathLike] = (),
    *,
    sd21_dir: str | os.PathLike | None = None,
    device: str | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    result_ttl_hours: float = DEFAULT_RESULT_TTL_HOURS,
    cleanup_interval_s: float = 300.0,
    requeue_on_restart: bool = True,
    log_level: str = "info",
    access_log: bool = True,
    max_output_mpx: float = DEFAULT_MAX_OUTPUT_MPX,
    max_queued: int = DEFAULT_MAX_QUEUED,
    work_quota_gb: float = DEFAULT_WORK_QUOTA_GB,
    concurrent_jobs: int | None = None,
    threads: int | None = None,
    ray_address: str | None = None,
) -> None:
    """Serve API v1 until interrupted. Refuses (InsecureBind) to listen beyond loopback without a token.

    The bind check runs before anything heavy is imported, so a refused start is immediate.
    """
    check_bind(host, token)
    for folder in allowed_dirs:
        if not Path(folder).is_dir():
            from engine.errors import InputError

            raise InputError(f"allowed folder {folder} does not exist or is not a folder")
    if ray_address is not None:  # connect now: a missing Ray or an unreachable cluster is one line at start
        from engine.runtime.threads import apply_threads
        from engine.scaleout.cluster import connect

        apply_threads(threads)  # before connecting: Ray's workers take the engine's thread count
        connect(ray_address)
    import uvicorn

    from .app import create_app

    settings = ServerSettings(
        token=token,
        allowed_dirs=tuple(Path(p) for p in allowed_dirs),
        device=device,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        result_ttl_s=result_ttl_hours * 3600,
        cleanup_interval_s=cleanup_interval_s,
        requeue_on_restart=requeue_on_restart,
        host=host,
        max_output_pixels=int(max_output_mpx * 1_000_000),
        max_queued_jobs=max_queued,
        work_dir_quota_bytes=int(work_quota_gb * 1e9),
        concurrent_jobs=concurrent_jobs,
        threads=threads,
        ray_address=ray_address,
    )
    if models_dir is not None:
        settings.models_dir = Path(models_dir)
    if work_dir is not None:
        settings.work_dir = Path(work_dir)
    if sd21_dir:
        settings.sd21_dir = Path(sd21_dir)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    log.info("GFM4D engine: models %s, jobs %s, listening on %s:%d", settings.models_dir, settings.work_dir, host, port)
    if ray_address is not None:
        log.info("generate, inpaint and dataset jobs run on the Ray cluster at %s", ray_address)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                            timeout_graceful_shutdown=10)
    uvicorn.Server(config).run()
