"""Raster writes on a thread of their own, so the producer (a GPU decoding blocks) never waits on the disk.

Writes go through a bounded queue to one thread that calls the wrapped writer in the order they
were made, so the file is the same bytes as when written directly. The bound keeps memory flat in
the raster's size: a producer that outruns the disk waits for room. A write that fails stops the
writing; the producer gets that same exception at its next write or when the queue closes, and the
exception then leaves the wrapped writer's own `with` block, which discards its scratch file.
"""

from __future__ import annotations

import queue
import threading

import numpy as np
from rasterio.windows import Window

DEFAULT_DEPTH = 2  # writes waiting in the queue; one more is being written, one more being produced

_STOP = object()


class QueuedWriter:
    """Forwards `write` and `write_mask` to `writer` from one background thread (a context manager).

    Leaving the block normally waits for every write and raises the first write error; leaving it
    with an exception (cancellation, a decoding error) drops the writes still queued.
    """

    def __init__(self, writer, depth: int = DEFAULT_DEPTH) -> None:
        self._writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._dropping = False
        self._thread = threading.Thread(target=self._drain, name="gfm4d-raster-writer", daemon=True)

    def __enter__(self) -> "QueuedWriter":
        self._thread.start()
        return self

    def write(self, data: np.ndarray, window: Window) -> None:
        self._put("write", data, window)

    def write_mask(self, valid: np.ndarray, window: Window) -> None:
        self._put("write_mask", valid, window)

    def _put(self, method: str, data: np.ndarray, window: Window) -> None:
        self._raise_error()
        self._queue.put((method, data, window))

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is not None or self._dropping:
                continue  # keep taking items so that a waiting producer is released
            method, data, window = item
            try:
                getattr(self._writer, method)(data, window)
            except BaseException as exc:  # handed to the producer's thread, which fails the job
                self._error = exc

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._dropping = True
        self._queue.put(_STOP)
        self._thread.join()
        if exc_type is None:
            self._raise_error()
