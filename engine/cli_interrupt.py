"""Ctrl-C and SIGTERM for a job run in the `gfm4d` process: the job stops at a safe point.

Python raises an interrupt wherever the main thread happens to be: inside torch's model loading,
a GDAL call or a library's own `try` block, where it can surface as an unrelated error (a
ValueError from a half-built tensor) instead of a cancellation. So the job runs on a thread of
its own and the main thread only waits; an interrupt lands in that wait, asks the job to stop
(the same cancel check the engine's workers use, between denoising steps), waits for it to remove
its scratch files, and is then raised as usual.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Callable, Iterator, TypeVar

from engine.errors import Cancelled

T = TypeVar("T")

POLL_S = 0.1  # how often the waiting thread wakes, so that a signal's handler runs promptly
_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _say_on_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_interruptible(work: Callable[[Callable[[], bool]], T], say: Callable[[str], None] = _say_on_stderr) -> T:
    """`work(cancelled)` on a job thread; its result or its exception here.

    On Ctrl-C or SIGTERM the job is told to stop and awaited, then the interrupt is raised again,
    carrying what `interrupt_outcome` reports: nothing written, the outputs of a job that finished
    anyway (kept, and in `finished_outputs` for a caller that removes a partial series), or, after a
    second interrupt, a job left at once. A job that fails for another reason while stopping raises
    that error instead, so that it is not lost. `say` shows the user that the job is stopping.
    """
    stop, finished = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}
    caller_mask: set | None = None

    def job() -> None:
        try:
            if caller_mask is not None:  # the job and the processes it starts (Ray's) take signals as the caller did
                signal.pthread_sigmask(signal.SIG_SETMASK, caller_mask)
            outcome["result"] = work(stop.is_set)
        except BaseException as exc:  # handed to the waiting thread, which raises it
            outcome["error"] = exc
        finally:
            finished.set()

    # Waits on an Event, not Thread.join: an interrupt inside join() marks a running thread as
    # stopped (CPython's bpo-45274 handling), and the interpreter would then exit under the job.
    thread = threading.Thread(target=job, name="gfm4d-job", daemon=True)
    try:
        with _interrupts_held() as caller_mask:  # one arriving before the job runs would leave nothing to wait for
            thread.start()
        _wait(finished)
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM raised as one (engine.cli.Terminated)
        _stop_and_wait(stop, finished, interrupt, say)
        error = outcome.get("error")
        if error is not None and not isinstance(error, Cancelled):
            raise error from interrupt  # type: ignore[misc]
        if "result" in outcome:
            interrupt.finished_outputs = outcome["result"]  # type: ignore[attr-defined]
        raise
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]  # type: ignore[return-value]


def interrupt_outcome(interrupt: KeyboardInterrupt) -> str:
    """What an interrupted job left, for the user's last line (`outcome`: a command's own words)."""
    if getattr(interrupt, "outcome", None):
        return interrupt.outcome  # type: ignore[attr-defined]
    if getattr(interrupt, "left_at_once", False):
        return "left at once; the job's scratch folder (.gfm4d-*) beside the output may remain"
    finished = getattr(interrupt, "finished_outputs", None)
    if isinstance(finished, dict) and finished:
        kept = ", ".join(str(path) for path in finished.values())
        return f"the job had already finished; its outputs are complete and kept: {kept}"
    return "no output was written"


def _stop_and_wait(stop: threading.Event, finished: threading.Event, interrupt: KeyboardInterrupt,
                   say: Callable[[str], None]) -> None:
    """Ask the job to stop and wait for its cleanup; a second interrupt leaves without waiting."""
    stop.set()
    say("gfm4d: stopping the job at its next step (press Ctrl-C again to leave at once)")
    try:
        _wait(finished)
    except KeyboardInterrupt:
        interrupt.left_at_once = True  # type: ignore[attr-defined]


def _wait(finished: threading.Event) -> None:
    """Wait in short slices: a wait without a timeout is not interruptible everywhere (Windows)."""
    while not finished.wait(POLL_S):
        pass


@contextlib.contextmanager
def _interrupts_held() -> Iterator[set | None]:
    """Ctrl-C and SIGTERM are delivered after the block (POSIX; elsewhere at once); yields the
    caller's signal mask (None where there is none)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield None
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        yield previous
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
