"""What the `gfm4d` command line calls for `serve` and for running a task on an engine (`--engine URL`).

Kept apart from engine/cli.py so that the CLI only adds the arguments and dispatches: every task
command builds the task's wire params and files, then runs them in-process or, with `--engine`,
through `run_on_engine`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable, NamedTuple

from engine.cli_args import add_threads_argument, engine_url, port, positive_int
from engine.errors import InputError

from .settings import DEFAULT_HOST, DEFAULT_MAX_UPLOAD_MB, DEFAULT_PORT, DEFAULT_RESULT_TTL_HOURS, default_token
from .settings import DEFAULT_MAX_OUTPUT_MPX, DEFAULT_MAX_QUEUED, DEFAULT_WORK_QUOTA_GB


class EngineProgress(NamedTuple):
    """A job's progress as the engine reports it (the fields of engine.pipelines.sampling.Progress,
    without importing torch into a thin client)."""

    done: int
    total: int
    message: str


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `gfm4d serve` (models dir, SD-2.1 dir and device come from the top-level parser)."""
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default 127.0.0.1; any other needs a token)")
    parser.add_argument("--port", type=port, default=DEFAULT_PORT, help="TCP port, 1 to 65535")
    parser.add_argument("--work-dir", default=None, help="folder of job folders (default: env GFM4D_WORK_DIR or $GFM4D_HOME/jobs)")
    parser.add_argument("--token", default=None, help="bearer token clients must send (prefer env GFM4D_TOKEN: arguments are visible to other users)")
    parser.add_argument("--allow-dir", action="append", default=[], metavar="FOLDER",
                        help="let jobs name files inside FOLDER on this machine instead of uploading them (repeatable)")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, help="largest request body accepted")
    parser.add_argument("--result-ttl-hours", type=float, default=DEFAULT_RESULT_TTL_HOURS, help="delete finished jobs this long after they end")
    parser.add_argument("--max-output-mpx", type=float, default=DEFAULT_MAX_OUTPUT_MPX,
                        help=f"largest output of one job in megapixels (default {DEFAULT_MAX_OUTPUT_MPX})")
    parser.add_argument("--max-queued", type=int, default=DEFAULT_MAX_QUEUED,
                        help=f"jobs the queue holds; more are refused with 503 (default {DEFAULT_MAX_QUEUED})")
    parser.add_argument("--work-quota-gb", type=float, default=DEFAULT_WORK_QUOTA_GB,
                        help=f"disk space all job folders together may use, 0 for no quota (default {DEFAULT_WORK_QUOTA_GB:g})")
    parser.add_argument("--concurrent-jobs", type=positive_int, default=None, metavar="N",
                        help="jobs run at once when they use the same model, their windows batched into shared "
                             "network calls (default: 2 on a GPU, 1 on a CPU)")
    add_threads_argument(parser)
    parser.add_argument("--no-requeue", action="store_true", help="on start, fail jobs left queued by a previous run instead of running them")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="run generate, inpaint and dataset jobs on Ray actors: no ADDRESS starts a local cluster, "
                             "'auto' joins a running one, or host:port (needs pip install 'gfm4d[ray]')")


def run_serve(args: argparse.Namespace) -> int:
    """`gfm4d serve`: run the engine until Ctrl-C (InsecureBind, a GFM4DError, when the address needs a token)."""
    from .main import serve

    _check_work_dir(args.work_dir)
    try:
        serve(
            host=args.host,
            port=args.port,
            models_dir=getattr(args, "models_dir", None),
            work_dir=args.work_dir,
            token=args.token or default_token(),
            allowed_dirs=args.allow_dir,
            sd21_dir=getattr(args, "sd21_dir", None) or None,
            device=getattr(args, "device", None),
            max_upload_mb=args.max_upload_mb,
            result_ttl_hours=args.result_ttl_hours,
            requeue_on_restart=not args.no_requeue,
            log_level=args.log_level,
            max_output_mpx=args.max_output_mpx,
            max_queued=args.max_queued,
            work_quota_gb=args.work_quota_gb,
            concurrent_jobs=args.concurrent_jobs,
            threads=args.threads,
            ray_address=getattr(args, "ray", None),
        )
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        pass
    return 0


def _check_work_dir(work_dir: str | None) -> None:
    """A work dir that is a file or cannot be made or written is refused in one line, before starting."""
    from .settings import default_work_dir

    folder = Path(work_dir) if work_dir else default_work_dir()
    if folder.exists() and not folder.is_dir():
        raise InputError(f"the work dir {folder} is a file; give a folder with --work-dir")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the work dir {folder}: {exc.strerror}; give another one with --work-dir") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"the work dir {folder} is not writable; give another one with --work-dir")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """`--engine URL` (and its token) for task commands: run on an engine instead of in-process."""
    parser.add_argument("--engine", metavar="URL", type=engine_url, default=os.environ.get("GFM4D_ENGINE_URL") or None,
                        help="run the task on a GFM4D engine at URL (e.g. http://127.0.0.1:8765; env GFM4D_ENGINE_URL)")
    parser.add_argument("--engine-token", default=None, help="the engine's token (prefer env GFM4D_TOKEN)")


def check_engine(client) -> dict:
    """The engine's /v1/health, or one line saying the URL is not a GFM4D engine (no HTML page dumped)."""
    from engine.client import EngineRefused

    try:
        health = client.health()
    except EngineRefused as exc:
        if exc.status in (401, 403):
            raise
        raise InputError(
            f"{client.url} is not a GFM4D engine (GET /v1/health answered {exc.status}); check the URL and port "
            "of `gfm4d serve`"
        ) from None
    except ValueError:  # a page that is not JSON: a web server, a proxy's login page, ...
        raise InputError(
            f"{client.url} is not a GFM4D engine (its /v1/health is not JSON); check the URL and port of `gfm4d serve`"
        ) from None
    if not isinstance(health, dict) or "version" not in health or "tasks" not in health:
        raise InputError(f"{client.url} is not a GFM4D engine (its /v1/health is not the engine's); check the URL")
    return health


def engine_device(url: str, token: str | None) -> str:
    """The device the engine at `url` runs on (and a check that it is one)."""
    from engine.client import EngineClient

    return str(check_engine(EngineClient(url, token=token or default_token())).get("device") or "device unknown")


def run_on_engine(
    url: str,
    token: str | None,
    task: str,
    params: dict,
    files: dict[str, Path],
    outputs: dict[str, Path],
    progress: Callable[[EngineProgress], None] | None = None,
) -> dict[str, Path]:
    """Submit a task to the engine at `url`, wait (Ctrl-C cancels it there), download the results named
    in `outputs` to their paths; result name -> path written."""
    from engine.client import EngineClient

    client = EngineClient(url, token=token)
    check_engine(client)
    job_id = client.submit(task, params, files)

    def report(job: dict) -> None:
        if progress is not None:
            progress(EngineProgress(job["done"], job["total"], job["message"] or job["state"]))

    job = client.wait(job_id, progress=report)
    available = {r["name"] for r in job["results"]}
    missing = sorted(set(outputs) - available)
    if missing:
        raise InputError(f"the {task} job has no result {', '.join(missing)}; it has: {', '.join(sorted(available))}")
    return {name: client.download(job_id, name, dest) for name, dest in outputs.items()}
