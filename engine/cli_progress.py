"""The `gfm4d` progress bar: shown from the job's first second, ticking while a model loads.

The bar is created when the job starts (not at the first report, which comes only after a whole
denoising step), so its clock and its rate count from the start: a rate measured from the first
report on would divide a step's work by a few milliseconds. A small thread redraws it every
second so the elapsed time moves while nothing is reported.
"""

from __future__ import annotations

import sys
import threading


class ProgressBar:
    """A tqdm bar fed by engine Progress reports (`done` of `total` steps and decoded blocks)."""

    def __init__(self, description: str, status: str = "starting the engine", interval: float = 1.0) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=None, desc=description, unit="step", dynamic_ncols=True, file=sys.stderr,
                        bar_format=None, mininterval=0.2)
        self.bar.set_postfix_str(status, refresh=True)
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, args=(interval,), daemon=True)
        self._ticker.start()

    def _tick(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.bar.refresh()

    def __call__(self, progress) -> None:
        if progress.total and self.bar.total != progress.total:
            self.bar.total = progress.total
        if progress.done > self.bar.n:
            self.bar.update(progress.done - self.bar.n)
        self.bar.set_postfix_str(progress.message, refresh=False)
        self.bar.refresh()

    def status(self, text: str) -> None:
        """What happens before the first report (loading a model, uploading)."""
        self.bar.set_postfix_str(text, refresh=True)

    def say(self, line: str) -> None:
        """A line of its own above the bar (the bar is redrawn below it)."""
        self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        """Stop the bar; one that never moved (the job failed before its first step) is wiped, so an
        error stays the only line."""
        self._stop.set()
        self._ticker.join(timeout=2)
        if not self.bar.n:
            self.bar.leave = False
        self.bar.close()
