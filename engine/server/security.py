"""Who may talk to the engine and which of its machine's files a request may name.

- The engine binds to loopback by default. Any other address exposes it to the network, so it
  refuses to start there without a token; with a token set every request must carry it
  (`Authorization: Bearer <token>`), health included, since health names the loaded models.
- Requests normally upload their files. Naming a path on the engine's machine instead is off
  unless the operator allows folders; a named path is resolved (symlinks and `..` included)
  and must lie inside one of them.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path
from typing import Iterable

from starlette.responses import JSONResponse

from engine.errors import GFM4DError, InputError

from .errors import Forbidden


class InsecureBind(GFM4DError):
    """Listening beyond loopback without a token."""


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (127.0.0.0/8, ::1) or `localhost`."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token (raises InsecureBind)."""
    if is_loopback(host):
        return
    if not token or not token.strip():
        raise InsecureBind(
            f"listening on {host!r} makes the engine reachable from other machines, so it needs a token: "
            "set GFM4D_TOKEN (or --token) to a long random string and give the same token to clients, "
            "or listen on 127.0.0.1"
        )


class BearerTokenMiddleware:
    """ASGI middleware answering 401 to every HTTP request without the engine's token."""

    def __init__(self, app, token: str):
        self.app = app
        self._token = token.encode("utf-8")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, value = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), self._token):
            await self.app(scope, receive, send)
            return
        if header:
            detail = "the token sent is not this engine's token; use the token the engine was started with (GFM4D_TOKEN)"
        else:
            detail = "this engine needs a token: send the header 'Authorization: Bearer <token>' with the engine's token (GFM4D_TOKEN)"
        response = JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


class PathPolicy:
    """Which server-side paths requests may read: none, or files inside the allowed folders."""

    def __init__(self, allowed_dirs: Iterable[str | os.PathLike] = ()):
        self.roots = tuple(Path(os.path.realpath(d)) for d in allowed_dirs)

    @property
    def enabled(self) -> bool:
        return bool(self.roots)

    def resolve(self, value: object) -> Path:
        """The real path of an allowed file; Forbidden outside the allowed folders, InputError if unusable."""
        if not self.roots:
            raise Forbidden(
                "this engine does not read files on its own machine; upload the file instead, "
                "or start the engine with --allow-dir FOLDER to allow paths inside FOLDER"
            )
        if not isinstance(value, str) or not value.strip() or "\x00" in value:
            raise InputError(f"a server path must be a non-empty string, not {value!r}")
        path = Path(value)
        if not path.is_absolute():
            raise InputError(f"server path {value!r} is relative; give the absolute path on the engine's machine")
        real = Path(os.path.realpath(path))
        if not any(real == root or real.is_relative_to(root) for root in self.roots):
            allowed = ", ".join(str(r) for r in self.roots)
            raise Forbidden(
                f"{value} resolves to {real}, outside the folders this engine may read ({allowed}); "
                "upload the file instead, or move it into an allowed folder"
            )
        if not real.is_file():
            raise InputError(f"{value} is not a file on the engine's machine; check the path")
        return real
