"""Jobs that run at once on one model share its denoiser calls: their windows go through the network together.

Why: a small job (one 512 px window: a batch of 2 with guidance) leaves a GPU mostly idle, and
two such jobs in one call of 4 take about the time of one. Each job keeps its own noise,
generator and scheduler; only how its rows are grouped into network calls changes, so a job's
result equals its run alone within floating-point tolerance (a batched kernel may sum in another
order; per-row timesteps are exact, the UNet embeds each row's timestep on its own).

How: a thread runs its job inside `job_scope()`; the sampling loop's denoiser calls go through
`predict_denoiser`. Outside a scope (the CLI, a single-job engine) that is the plain backbone
call. Inside one, the call waits until every job on the model has a call waiting, or until
the oldest waiting call has waited as long as a recent network call took (at least MAX_WAIT_S):
a partner between two of its calls (blending, a scheduler step) comes back sooner than that,
while a job busy decoding or writing costs the others at most one call's time. Then one waiting
thread runs the network on the waiting calls that fit together (same window, shapes, dtypes and
condition names) and hands each its rows. ONNX stand-ins are called as before (their graphs may
take one timestep per call).

Fairness: calls are served oldest first. When the rows waiting exceed what one network call may
hold (`max_rows`; on a GPU the most the free memory holds, and never less than the largest single
call, which its job would have run anyway), every job in the call gets an equal share of it and
the rest of a big call waits at the front for the next one: a job with 16 windows per call
cannot keep a small job waiting, and every job in a combined call advances.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

MAX_WAIT_S = 0.005  # how long a call may wait for calls of other jobs, at least ...
WAIT_SHARE = 1.0  # ... and this share of a recent network call's time, when that is longer

_local = threading.local()
_attach_lock = threading.Lock()


class JobScope:
    """The denoiser calls of one job (one thread); leaving the scope stops other jobs from waiting for it."""

    def __init__(self, name: str = "") -> None:
        self.name = name  # the job's id, for logs and counts
        self.batchers: set[DenoiserBatcher] = set()


@contextlib.contextmanager
def job_scope(name: str = "") -> Iterator[JobScope]:
    """Mark this thread's work as one job whose denoiser calls may be batched with other jobs' calls."""
    scope = JobScope(name)
    previous = getattr(_local, "scope", None)
    _local.scope = scope
    try:
        yield scope
    finally:
        _local.scope = previous
        for batcher in list(scope.batchers):
            batcher.leave(scope)


def current_scope() -> JobScope | None:
    return getattr(_local, "scope", None)


def batcher_for(model) -> "DenoiserBatcher":
    """The model's batcher (made on first use; one per loaded model object)."""
    with _attach_lock:
        batcher = getattr(model, "denoiser_batcher", None)
        if batcher is None:
            batcher = DenoiserBatcher()
            model.denoiser_batcher = batcher
        return batcher


def predict_denoiser(backbone, model, x, timestep, hidden, pooled, guidance_scale, window, kwargs: dict) -> torch.Tensor:
    """`backbone.predict(...)`, batched with other jobs' calls on the same model when this thread is in a job scope."""
    scope = current_scope()
    if scope is None or not isinstance(getattr(model, "unet", None), torch.nn.Module):
        # No other jobs to batch with, or an ONNX stand-in whose graph may take one timestep only.
        return backbone.predict(model, x, timestep, hidden, pooled, guidance_scale, window, kwargs)
    return batcher_for(model).predict(scope, backbone, model, x, timestep, hidden, pooled, guidance_scale, window, kwargs)


@dataclass(eq=False)
class _Call:
    """One job's denoiser call, served in one or more network calls."""

    scope: JobScope
    backbone: Any
    model: Any
    args: tuple  # (x, timestep, hidden, pooled, guidance_scale, window, kwargs) as given
    key: tuple | None  # calls with equal keys can share a network call; None: runs alone and whole
    rows: int
    served: int = 0
    parts: list = field(default_factory=list)
    result: torch.Tensor | None = None
    error: BaseException | None = None

    @property
    def remaining(self) -> int:
        return self.rows - self.served

    @property
    def finished(self) -> bool:
        return self.result is not None or self.error is not None


class DenoiserBatcher:
    """Coalesces concurrent denoiser calls on one model (see the module docstring)."""

    def __init__(self, max_rows: int | None = None, max_wait_s: float = MAX_WAIT_S):
        self.max_rows = max_rows  # None: on a GPU what free memory holds, elsewhere no limit
        self.max_wait_s = max_wait_s
        self._cond = threading.Condition()
        self._pending: list[_Call] = []  # oldest first
        self._arrived: dict[_Call, float] = {}
        self._participants: set[JobScope] = set()
        self._busy = False
        self._call_s = 0.0  # a running average of network calls' wall time
        self.network_calls: list[tuple[tuple[str, int], ...]] = []  # (job, rows) per network call (the last 1000)

    def join(self, scope: JobScope) -> None:
        """Count the job in: from now on calls wait for its calls (a job joins with its first call anyway)."""
        with self._cond:
            self._participants.add(scope)
            scope.batchers.add(self)

    def leave(self, scope: JobScope) -> None:
        with self._cond:
            self._participants.discard(scope)
            scope.batchers.discard(self)
            self._cond.notify_all()

    def predict(self, scope, backbone, model, x, timestep, hidden, pooled, guidance_scale, window, kwargs) -> torch.Tensor:
        call = _Call(scope, backbone, model, (x, timestep, hidden, pooled, guidance_scale, window, kwargs),
                     _key(backbone, x, timestep, hidden, pooled, guidance_scale, window, kwargs), x.shape[0])
        with self._cond:
            self._participants.add(scope)
            scope.batchers.add(self)
            self._pending.append(call)
            self._arrived[call] = time.monotonic()
            self._cond.notify_all()
            try:
                while not call.finished:
                    if self._busy:
                        self._cond.wait()
                        continue
                    wait = self._wait_left()
                    if wait > 0:
                        self._cond.wait(wait)
                        continue
                    group = self._take_group()
                    self._busy = True
                    self._cond.release()
                    try:
                        self._run(group)
                    finally:
                        self._cond.acquire()
                        self._busy = False
                        self._cond.notify_all()
            finally:
                if not call.finished and call in self._arrived:  # interrupted (KeyboardInterrupt): nobody waits for it
                    self._drop(call)
        if call.error is not None:
            raise call.error
        return call.result

    # --- under the lock ------------------------------------------------------------------------

    def _wait_left(self) -> float:
        """Seconds to wait for more calls: 0 when every job taking part has one waiting."""
        waiting = {call.scope for call in self._pending}
        if self._participants <= waiting:
            return 0.0
        patience = max(self.max_wait_s, WAIT_SHARE * self._call_s)
        return self._arrived[self._pending[0]] + patience - time.monotonic()

    def _take_group(self) -> list[tuple[_Call, int]]:
        """(call, rows) for the next network call: the oldest call and the waiting calls that fit with it."""
        first = self._pending[0]
        if first.key is None:
            return [(first, first.remaining)]
        group = [call for call in self._pending if call.key == first.key]
        cap = self._cap(first, group)
        take = {call: 0 for call in group}
        left, hungry = cap, list(group)
        while left > 0 and hungry:  # equal shares; what a small call leaves goes to the others
            share = max(1, left // len(hungry))
            for call in list(hungry):
                n = min(share, call.remaining - take[call], left)
                take[call] += n
                left -= n
                if take[call] == call.remaining:
                    hungry.remove(call)
                if left == 0:
                    break
        return [(call, take[call]) for call in group if take[call]]

    def _cap(self, first: _Call, group: list[_Call]) -> int:
        largest = max(call.remaining for call in group)
        if self.max_rows is not None:
            return max(self.max_rows, 1)
        model = first.model
        if getattr(model, "device", None) is None or torch.device(model.device).type != "cuda":
            return sum(call.remaining for call in group)
        from .device import batch_size_for

        window = first.args[5]
        return max(largest, batch_size_for(model, None, window[0], window[1], 1))

    # --- outside the lock ----------------------------------------------------------------------

    def _run(self, group: list[tuple[_Call, int]]) -> None:
        """One network call for `group`; each call gets its rows (or, alone, the error)."""
        started = time.monotonic()
        try:
            if len(group) == 1 and group[0][0].served == 0 and group[0][1] == group[0][0].rows:
                call = group[0][0]
                out = call.backbone.predict(call.model, *call.args)  # whole and alone: exactly the plain call
            else:
                out = self._combined(group)
        except Exception as exc:
            with self._cond:
                if len(group) == 1:
                    group[0][0].error = exc
                    self._drop(group[0][0])
                else:  # run each alone instead, so that an error (out of memory, ...) reaches the job it is due to
                    for call, _ in group:
                        call.key = None
            if len(group) > 1 and torch.cuda.is_available():
                torch.cuda.empty_cache()
            return
        with self._cond:
            self._call_s = 0.8 * self._call_s + 0.2 * (time.monotonic() - started) if self._call_s else time.monotonic() - started
            start = 0
            for call, n in group:
                # A copy: a compiled network replaying CUDA graphs reuses its output memory at its next
                # replay, which another job may start before this one has read its rows.
                call.parts.append(out[start:start + n].clone())
                call.served += n
                start += n
                if call.remaining == 0:
                    call.result = call.parts[0] if len(call.parts) == 1 else torch.cat(call.parts)
                    self._drop(call)
            self.network_calls.append(tuple((call.scope.name, n) for call, n in group))
            del self.network_calls[:-1000]

    def _drop(self, call: _Call) -> None:
        self._pending.remove(call)
        self._arrived.pop(call, None)

    @staticmethod
    def _combined(group: list[tuple[_Call, int]]) -> torch.Tensor:
        first = group[0][0]
        rows = [(call, slice(call.served, call.served + n)) for call, n in group]
        x = torch.cat([call.args[0][s] for call, s in rows])
        hidden = torch.cat([call.args[2][s] for call, s in rows])
        pooled = None if first.args[3] is None else torch.cat([call.args[3][s] for call, s in rows])
        # One timestep per row, even where the jobs' are equal: finding out would read the device.
        timestep = torch.cat([_row_timesteps(call.args[1], call.rows)[s] for call, s in rows])
        kwargs = {}
        for name, value in first.args[6].items():
            if isinstance(value, torch.Tensor):
                kwargs[name] = torch.cat([call.args[6][name][s] for call, s in rows])
            else:  # a sequence of per-row tensors (ControlNet residuals)
                kwargs[name] = type(value)(torch.cat([call.args[6][name][i][s] for call, s in rows]) for i in range(len(value)))
        _, _, _, _, guidance_scale, window, _ = first.args
        return first.backbone.predict(first.model, x, timestep, hidden, pooled, guidance_scale, window, kwargs)


def _row_timesteps(timestep, rows: int) -> torch.Tensor:
    t = torch.as_tensor(timestep).reshape(-1)
    return t.expand(rows) if t.numel() == 1 else t


def _key(backbone, x, timestep, hidden, pooled, guidance_scale, window, kwargs) -> tuple | None:
    """What calls must share to go through the network together; None when this call's rows cannot be split."""
    rows = x.shape[0]
    t = torch.as_tensor(timestep)
    if t.numel() not in (1, rows) or hidden.shape[0] != rows or (pooled is not None and pooled.shape[0] != rows):
        return None
    parts: list = [id(backbone), tuple(window), tuple(x.shape[1:]), x.dtype, str(x.device), t.dtype,
                   tuple(hidden.shape[1:]), hidden.dtype, None if pooled is None else (tuple(pooled.shape[1:]), pooled.dtype)]
    if not getattr(backbone, "classifier_free_guidance", True):
        parts.append(float(guidance_scale))  # the guidance scale goes into the denoiser itself
    for name in sorted(kwargs):
        value = kwargs[name]
        tensors = [value] if isinstance(value, torch.Tensor) else list(value) if isinstance(value, (tuple, list)) else None
        if not tensors or not all(isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == rows for v in tensors):
            return None
        parts.append((name, type(value).__name__, tuple((tuple(v.shape[1:]), v.dtype) for v in tensors)))
    return tuple(parts)
