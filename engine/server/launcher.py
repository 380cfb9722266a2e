"""Start an engine in its own process on a free loopback port and wait until it answers.

For tests, benchmarks and front ends that run a private local engine. The token travels in the
environment (GFM4D_TOKEN), never on the command line where other users could read it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import requests

from engine.errors import GFM4DError

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass
class EngineProcess:
    url: str
    port: int
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        """Shut down as Ctrl-C would (the running job is interrupted, queued ones stay queued)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """Die at once, as a crash would: nothing is cleaned up."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "EngineProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_engine(
    models_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    *,
    token: str | None = None,
    allowed_dirs: Iterable[str | os.PathLike] = (),
    extra_args: Iterable[str] = (),
    env: dict[str, str] | None = None,
    log_path: str | os.PathLike | None = None,
    startup_timeout: float = 600.0,
    python: str = sys.executable,
) -> EngineProcess:
    """An engine process listening on 127.0.0.1, answering /v1/health (GFM4DError if it does not start)."""
    environment = {**os.environ, **(env or {})}
    environment.pop("GFM4D_TOKEN", None)
    if token:
        environment["GFM4D_TOKEN"] = token
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), environment.get("PYTHONPATH")]))
    log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="gfm4d-engine-", suffix=".log")[1])
    for _ in range(3):  # another process may take the free port between the probe and the bind
        port = free_port()
        command = [python, "-m", "engine.server", "--host", "127.0.0.1", "--port", str(port),
                   "--models-dir", str(models_dir), "--work-dir", str(work_dir), "--log-level", "warning",
                   *[arg for folder in allowed_dirs for arg in ("--allow-dir", str(folder))], *extra_args]
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=_PACKAGE_ROOT)
        engine = EngineProcess(f"http://127.0.0.1:{port}", port, process, log_path)
        if _wait_until_answering(engine, token, startup_timeout):
            return engine
        if "address already in use" not in engine.log().lower():
            break
    engine.kill()
    raise GFM4DError(f"the engine did not start (exit status {process.returncode}); its log:\n{engine.log()[-4000:]}")


def _wait_until_answering(engine: EngineProcess, token: str | None, timeout: float) -> bool:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if engine.process.poll() is not None:
            return False
        try:
            if requests.get(f"{engine.url}/v1/health", headers=headers, timeout=2).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.1)
    engine.kill()
    return False
