"""Who may talk to the engine and which of its machine's files a request may name.

- The engine binds to loopback by default. Any other address exposes it to the network, so it
  refuses to start there without a token; with a token set every request must carry it
  (`Authorization: Bearer <token>`), health included, since health names the loaded models.
- A browser page must not drive an engine on loopback (CSRF, DNS rebinding): requests that say
  they come from another site (`Origin`, `Sec-Fetch-Site`) are refused, and an engine listening on
  loopback answers only requests addressed to a loopback name (`Host`). No CORS headers are sent.
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


MIN_TOKEN_LENGTH = 16
MAX_PATH_LENGTH = 4096


class InsecureBind(GFM4DError):
    """Listening beyond loopback without a token (or with one that is trivially guessed)."""


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
    if len(token.strip()) < MIN_TOKEN_LENGTH:
        raise InsecureBind(
            f"the token is too short to protect an engine reachable from other machines ({len(token.strip())} characters); "
            f"use at least {MIN_TOKEN_LENGTH} random characters, e.g. from `python -c \"import secrets; print(secrets.token_urlsafe(32))\"`"
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
        if not isinstance(value, str) or not value.strip() or "\x00" in value:
            raise InputError(f"a server path must be a non-empty string, not {value!r:.100}")
        if len(value) > MAX_PATH_LENGTH:
            raise InputError(f"a server path is at most {MAX_PATH_LENGTH} characters long, this one has {len(value)}")
        if not self.roots:
            raise Forbidden(
                "this engine does not read files on its own machine; upload the file instead, "
                "or start the engine with --allow-dir FOLDER to allow paths inside FOLDER"
            )
        path = Path(value)
        if not path.is_absolute():
            raise InputError(f"server path {value!r} is relative; give the absolute path on the engine's machine")
        try:
            real = Path(os.path.realpath(path))
            inside = any(real == root or real.is_relative_to(root) for root in self.roots)
            is_file = inside and real.is_file()
        except (OSError, ValueError) as exc:
            raise InputError(f"server path {value!r:.200} cannot be used ({type(exc).__name__}); check the path") from None
        if not inside:
            # Where a symlink points is not said: that would map the engine's disk for the caller.
            raise Forbidden(
                f"{value} lies outside the folders this engine may read (its real location, symlinks followed, "
                "must be inside an allowed folder); upload the file instead, or move it into an allowed folder"
            )
        if not is_file:
            raise InputError(f"{value} is not a file on the engine's machine; check the path")
        return real


_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
_SAFE_FETCH_SITES = (b"same-origin", b"none")


def _host_name(authority: str) -> str:
    """The host part of a Host header or an origin's authority ('[::1]:8765' -> '::1')."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1:].partition("]")[0]
    if authority.count(":") > 1:  # a bare IPv6 address
        return authority
    return authority.partition(":")[0]


def is_loopback_name(authority: str) -> bool:
    name = _host_name(authority)
    return name in _LOOPBACK_NAMES or is_loopback(name)


class BrowserGuardMiddleware:
    """ASGI middleware refusing (403) what a web page in the user's browser could send to the engine.

    - `Sec-Fetch-Site` other than same-origin/none: a request started by another site's page;
    - an `Origin` other than the engine's own address: a cross-site form post or fetch;
    - on a loopback bind, a `Host` that is not a loopback name: DNS rebinding, where an attacker's
      domain is made to resolve to 127.0.0.1 so that the page becomes "same-origin" with the engine.

    Scripts and command-line clients send none of these headers (or loopback Host), so they pass.
    Every answer also carries headers that stop browsers from sniffing or framing it.
    """

    def __init__(self, app, loopback_only: bool):
        self.app = app
        self.loopback_only = loopback_only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        detail = self._refusal(headers)
        if detail is not None:
            response = JSONResponse({"detail": detail}, status_code=403, headers={"Connection": "close"})
            await response(scope, receive, send)
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                         (b"referrer-policy", b"no-referrer"), (b"cross-origin-resource-policy", b"same-origin")]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, headers: dict[bytes, bytes]) -> str | None:
        host = headers.get(b"host", b"").decode("latin-1")
        if self.loopback_only and not is_loopback_name(host):
            return ("this engine listens on loopback and answers only requests addressed to localhost or 127.0.0.1, "
                    f"not to {host[:100]!r}; use http://127.0.0.1:<port>")
        site = headers.get(b"sec-fetch-site", b"").strip().lower()
        if site and site not in _SAFE_FETCH_SITES:
            return ("requests from web pages of other sites are refused (Sec-Fetch-Site: "
                    f"{site.decode('latin-1')[:40]}); use the engine from QGIS, the gfm4d command or a script")
        origin = headers.get(b"origin")
        if origin is not None:
            text = origin.decode("latin-1").strip()
            scheme, _, authority = text.partition("://")
            if scheme.lower() not in ("http", "https") or authority.lower().rstrip("/") != host.strip().lower():
                return (f"requests from web pages of other origins ({text[:100]!r}) are refused; "
                        "use the engine from QGIS, the gfm4d command or a script")
        return None
