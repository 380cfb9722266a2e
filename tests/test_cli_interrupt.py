"""Ctrl-C / SIGTERM during a job run in the gfm4d process: the job stops at its own check, cleans up,
and only then is the interrupt raised (engine.cli_interrupt)."""

import os
import signal
import threading
import time

import pytest

from engine.cli_interrupt import interrupt_outcome, run_interruptible
from engine.errors import Cancelled


@pytest.fixture
def interrupt_main_thread():
    """A function that, from any thread, sends this process SIGTERM, raised as KeyboardInterrupt in the main
    thread (as `gfm4d` does)."""
    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    yield lambda: os.kill(os.getpid(), signal.SIGTERM)
    signal.signal(signal.SIGTERM, previous)


def test_an_interrupt_cancels_the_job_and_is_raised_after_its_cleanup(interrupt_main_thread):
    events = []

    def job(cancelled):
        events.append(threading.current_thread() is threading.main_thread())
        interrupt_main_thread()
        deadline = time.monotonic() + 10
        while not cancelled() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # cleanup that takes a while: the interrupt must wait for it
        events.append("cleaned up" if cancelled() else "never cancelled")
        raise Cancelled("the job was cancelled; nothing was written")

    with pytest.raises(KeyboardInterrupt):
        run_interruptible(job)
    assert events == [False, "cleaned up"]


def test_a_job_that_finished_despite_the_interrupt_keeps_its_outputs_and_still_stops_the_command(interrupt_main_thread):
    def job(cancelled):
        interrupt_main_thread()
        time.sleep(0.3)  # the interrupt arrives while the job writes its last output
        return {"image": "written.tif"}

    with pytest.raises(KeyboardInterrupt) as raised:  # a loop over jobs (gfm4d sequence) must stop too
        run_interruptible(job)
    assert raised.value.finished_outputs == {"image": "written.tif"}
    assert interrupt_outcome(raised.value) == "the job had already finished; its outputs are complete and kept: written.tif"


def test_a_second_interrupt_leaves_at_once_and_says_what_may_remain(interrupt_main_thread):
    release = threading.Event()

    def stubborn(cancelled):
        interrupt_main_thread()
        while not cancelled():
            time.sleep(0.01)
        interrupt_main_thread()  # the user presses Ctrl-C again while the job is still stopping
        release.wait(10)
        raise Cancelled("stopped")

    with pytest.raises(KeyboardInterrupt) as raised:
        run_interruptible(stubborn)
    release.set()
    assert "scratch folder" in interrupt_outcome(raised.value) and "may remain" in interrupt_outcome(raised.value)


def test_an_error_while_stopping_is_raised_not_lost(interrupt_main_thread):
    def breaking(cancelled):
        interrupt_main_thread()
        while not cancelled():
            time.sleep(0.01)
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left") as raised:
        run_interruptible(breaking)
    assert isinstance(raised.value.__cause__, KeyboardInterrupt)


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_the_job_and_the_processes_it_starts_take_signals_as_the_caller_does():
    caller = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    in_job = run_interruptible(lambda cancelled: signal.pthread_sigmask(signal.SIG_BLOCK, set()))
    assert signal.SIGTERM not in in_job and signal.SIGINT not in in_job
    assert in_job == caller


def test_an_interrupt_with_nothing_finished_says_nothing_was_written():
    assert interrupt_outcome(KeyboardInterrupt()) == "no output was written"


def test_the_jobs_own_error_and_result_reach_the_caller():
    def failing(cancelled):
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        run_interruptible(failing)
    assert run_interruptible(lambda cancelled: cancelled()) is False
