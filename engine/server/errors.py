"""Refusals that carry their HTTP status; every GFM4DError becomes a 4xx answer with its message."""

from __future__ import annotations

from engine.errors import Cancelled, GFM4DError


class RequestRefused(GFM4DError):
    """A request the engine will not carry out as sent (400 unless a subclass says otherwise)."""

    status_code = 400


class Unauthorized(RequestRefused):
    status_code = 401


class Forbidden(RequestRefused):
    status_code = 403


class NotFound(RequestRefused):
    status_code = 404


class Conflict(RequestRefused):
    status_code = 409


class PayloadTooLarge(RequestRefused):
    status_code = 413


class UnsupportedMediaType(RequestRefused):
    status_code = 415


class ServiceUnavailable(RequestRefused):
    """The engine cannot take the job now (queue full, work folder not writable); try again later."""

    status_code = 503


class InsufficientStorage(RequestRefused):
    """The work folder's disk or quota has no room for the job."""

    status_code = 507


def status_for(exc: GFM4DError) -> int:
    """The HTTP status of a user-caused error: its own for refusals, 422 for unusable input."""
    if isinstance(exc, RequestRefused):
        return exc.status_code
    if isinstance(exc, Cancelled):
        return 409
    return 422  # InputError, ModelError and any other GFM4DError: the request's content is unusable
