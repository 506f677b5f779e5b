"""What `dgl serve` checks and hides before a route runs: ASGI middleware for the token or the Host header, the
request limits, and the security headers of every answer; and the token redacted from the access log.

- `TokenGuard`: with a token, every request but the public paths (the page's static files, the API description)
  needs it, as `Authorization: Bearer TOKEN` or `?token=TOKEN` (for <video>/<img> sources); else 401.
- `HostGuard`: without a token, only requests whose Host header names the served address are answered (DNS
  rebinding): a loopback name, the address the connection came in on, or one of the allowed hosts; else 400.
- `RequestGuard`: in front of the search routes, Content-Length bounds (411/413, before the body is read), at most
  `max_pending` requests in progress (503 + Retry-After; a refused upload's body is read and dropped first, so
  the client sees the 503 rather than a connection reset), and a deadline for receiving the body (408).
- `AnswerHeaders`: `X-Content-Type-Options: nosniff` and a Content-Security-Policy on every answer (the page:
  its own files only, `PAGE_HEADERS`; anything else: nothing may run, `ANSWER_HEADERS`).

Every refusal is the app's own error answer (`ErrorResponse`: {"error": "..."}), passed in by the routes module.
Imports neither FastAPI nor the service: plain ASGI.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qs

from dgl_deploy.errors import DGLError

SEARCH_PATHS = "/search"  # the bounded routes (prefix); /health is never refused
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # the Host names a server without a token always answers
DOCS_CDN = "https://cdn.jsdelivr.net"  # where FastAPI's /docs page loads Swagger UI from
# the page: its own scripts, styles, images and media only; no inline code, no framing, no referrer (media URLs
# may carry the token)
PAGE_HEADERS = {"content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                "media-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
                "x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "cache-control": "no-cache"}
# every other answer (JSON, media): nothing in it may run, be framed or be sniffed as another type
ANSWER_HEADERS = {"content-security-policy": "default-src 'none'; base-uri 'none'; form-action 'none'; "
                  "frame-ancestors 'none'; sandbox", "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}

ErrorResponse = Callable[..., Any]  # (status, message, headers=None) -> an ASGI response
ASGIApp = Callable[..., Any]  # (scope, receive, send) -> awaitable


class RequestLimits(Protocol):
    """What `RequestGuard` reads of the service's settings (`serve_service.ServeSettings`)."""

    @property
    def max_upload_mb(self) -> float: ...

    @property
    def max_pending(self) -> int: ...

    @property
    def body_timeout(self) -> float: ...


def check_token(token: str | None) -> None:
    """Refuse an empty token or one that cannot travel in a header (DGLError)."""
    if token is not None and not re.fullmatch(r"[\x21-\x7e]{1,4096}", token):
        raise DGLError("the token must be 1-4096 printable ASCII characters without spaces")


def host_name(value: str) -> str:
    """The host of a Host header or an address: lower case, without port or trailing dot, IPv6 in brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[:value.index("]") + 1] if "]" in value else value
    if value.count(":") > 1:  # a bare IPv6 address
        return f"[{value}]"
    return value.partition(":")[0].rstrip(".")


def check_hosts(hosts: Sequence[str]) -> frozenset[str]:
    """The host names of `hosts` (names or addresses, optionally with a port); DGLError for one that is not."""
    names = {host_name(host) for host in hosts}
    bad = sorted(name for name in names if not re.fullmatch(r"[a-z0-9_.-]{1,253}|\[[0-9a-f:.]{2,45}\]", name))
    if bad:
        raise DGLError(f"not a host name or address: {bad[0]!r} (--allowed-host takes a name such as "
                       "search.example.org or an address)")
    return frozenset(names)


def _closing(scope: dict) -> dict[str, str]:
    """`connection: close` for a refused POST (its unread upload is not read any further), else nothing."""
    return {"connection": "close"} if scope["method"] == "POST" else {}


class HostGuard:
    """ASGI middleware of a server without a token: a request is answered only if its Host header names the served
    address (a loopback name, the address the connection came in on, or `hosts`); else 400. A page of another site
    whose name was made to resolve to this address (DNS rebinding) sends its own name, and is refused."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str], error: ErrorResponse) -> None:
        self.app, self.error = app, error
        self.hosts = hosts | set(LOOPBACK_HOSTS)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"host"), None)
        server = scope.get("server")
        served = self.hosts | ({host_name(str(server[0]))} if server else set())
        if given is not None and host_name(given) in served:
            return await self.app(scope, receive, send)
        shown = repr(given[:100]) if given is not None else "(none)"
        await self.error(400, f"Host {shown} is not an address of this server (a server without a token answers "
                              "only its own addresses: start it with --allowed-host NAME, or --token)",
                         _closing(scope) or None)(scope, receive, send)


class TokenGuard:
    """ASGI middleware: every request but `public` paths needs `token`, as `Authorization: Bearer TOKEN` or a `token`
    query parameter (for <video>/<img> sources); else 401."""

    def __init__(self, app: ASGIApp, token: str, public: frozenset[str], error: ErrorResponse) -> None:
        self.app, self.error = app, error
        self.token = token.encode()
        self.public = public  # paths answered without the token (they hold no index data)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] in self.public:
            return await self.app(scope, receive, send)
        given = self._given(scope)
        if given is not None and hmac.compare_digest(given.encode("utf-8", "replace"), self.token):
            return await self.app(scope, receive, send)
        message = "wrong token" if given is not None else \
            "this server needs a token: send 'Authorization: Bearer TOKEN' (or ?token=TOKEN)"
        await self.error(401, message, {"www-authenticate": "Bearer", **_closing(scope)})(scope, receive, send)

    @staticmethod
    def _given(scope: dict) -> str | None:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    return credentials.strip()
        values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
        return values[-1] if values else None


class AnswerHeaders:
    """ASGI middleware: every answer carries ANSWER_HEADERS, except those a route set itself (the page's policy)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(name.encode(), value.encode()) for name, value in ANSWER_HEADERS.items()]

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                message = {**message, "headers": headers + [h for h in self.headers if h[0] not in present]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def docs_headers(html: bytes) -> dict[str, str]:
    """The /docs page's headers: PAGE_HEADERS with a policy allowing Swagger UI from DOCS_CDN and the page's own
    inline scripts (by hash), nothing else."""
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
                      for script in re.findall(rb"<script>(.*?)</script>", html, re.S))
    return {**PAGE_HEADERS, "content-security-policy": f"default-src 'none'; script-src {DOCS_CDN} {hashes}; "
            f"style-src {DOCS_CDN}; img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"}


class BodyTimeout(Exception):
    """The request body did not arrive within `body_timeout`."""


class RequestGuard:
    """ASGI middleware in front of the search routes: Content-Length bounds (411/413), at most `max_pending`
    requests in progress (503 + Retry-After), and a deadline for receiving the request body (408)."""

    def __init__(self, app: ASGIApp, limits: RequestLimits, error: ErrorResponse) -> None:
        self.app, self.limits, self.error = app, limits, error
        self.pending = 0  # touched only on the event loop: no lock

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(SEARCH_PATHS):
            return await self.app(scope, receive, send)
        refusal = self._refusal(scope)
        if refusal is not None:
            if refusal.status_code == 503 and scope["method"] == "POST":
                await self._discard_body(scope, receive)
            return await refusal(scope, receive, send)
        self.pending += 1
        try:
            await self._with_body_deadline(scope, receive, send)
        finally:
            self.pending -= 1

    def _refusal(self, scope: dict) -> Any:
        """The response refusing this request before its body is read, or None to admit it."""
        limits, close = self.limits, _closing(scope)
        if scope["method"] == "POST":
            length = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1")
            if not length.isdigit():
                return self.error(411, "a Content-Length header is required", close)
            if int(length) > limits.max_upload_mb * 2**20:
                return self.error(413, f"upload of {int(length) / 2**20:.1f} MB exceeds {limits.max_upload_mb:g} MB",
                                  close)
        if self.pending >= limits.max_pending:
            return self.error(503, f"busy: {limits.max_pending} requests in progress, retry later",
                              {"retry-after": "1", **close})
        return None

    async def _discard_body(self, scope: dict, receive: Callable) -> None:
        """Read and drop a shed upload's body (its size is already checked; at most `body_timeout` seconds), so the
        connection closes after the 503 without unread data: else the client, still sending, sees a reset."""
        if b"100-continue" in dict(scope["headers"]).get(b"expect", b"").lower():
            return  # the client waits for a go-ahead before sending: nothing to drop

        async def drop() -> None:
            while (message := await receive())["type"] == "http.request" and message.get("more_body", False):
                pass

        try:
            await asyncio.wait_for(drop(), self.limits.body_timeout)
        except asyncio.TimeoutError:
            pass

    async def _with_body_deadline(self, scope: dict, receive: Callable, send: Callable) -> None:
        """Run the app; if the body is not complete `body_timeout` seconds after the headers, answer 408 instead."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout
        received = expired = False

        async def timed_receive() -> dict:
            nonlocal received, expired
            if received:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - loop.time())
            except asyncio.TimeoutError:
                expired = True
                raise BodyTimeout from None
            received = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def send_unless_expired(message: dict) -> None:
            if not expired:
                await send(message)

        try:
            await self.app(scope, timed_receive, send_unless_expired)
        except BodyTimeout:
            pass
        if expired:
            response = self.error(408, f"request body not received within {self.limits.body_timeout:g} s",
                                  {"connection": "close"})
            await response(scope, receive, send)


class RedactTokens(logging.Filter):
    """Hide `token=...` query values in uvicorn's access log lines."""

    PATTERN = re.compile(r"([?&]token=)[^&\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.PATTERN.sub(r"\1***", arg) if isinstance(arg, str) else arg
                                for arg in record.args)
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's logging configuration, with tokens redacted from the access log and dgl_deploy's own lines shown
    (the index switches)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_tokens"] = {"()": RedactTokens}
    config["handlers"]["access"]["filters"] = ["redact_tokens"]
    config["loggers"]["dgl_deploy"] = {"handlers": ["default"], "level": "INFO", "propagate": False}  # e.g. switches
    return config


__all__ = ["check_token", "check_hosts", "host_name", "HostGuard", "TokenGuard", "RequestGuard", "AnswerHeaders",
           "docs_headers", "PAGE_HEADERS", "ANSWER_HEADERS", "RedactTokens", "log_config"]
