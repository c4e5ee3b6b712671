"""Access control for ``edgeclip serve``: Host and token checks, body limits, JSON errors, request metrics.

:class:`Guard` is plain ASGI middleware (no buffering, so event streams and MJPEG pass through): it refuses
foreign or malformed Host headers (when ``allowed_hosts`` is set) and missing or wrong tokens
(constant-time comparison) before the app sees a request, answers 413 for a declared body over the limit
(``max_labels_bytes`` for ``/v1/labels``, ``max_body_bytes`` elsewhere; reading and dropping up to four
times the limit first, so the client sees the answer rather than a reset connection), stops a body without
a declared length when it passes the limit, and reserves each body's size from ``body_memory_bytes``
before reading it (503 with ``Retry-After`` when the bodies being received already hold it all). It adds
security headers and counts every answer. A client that hangs up is logged as one line, never as a
traceback.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from http.cookies import SimpleCookie
from typing import Any, Sequence
from urllib.parse import parse_qs

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount

from ..errors import BackendError, BundleBusyError, BundleError, EdgeclipError, LabelsError, RequestError

COOKIE = "edgeclip_token"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


# ---------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------
log = logging.getLogger("edgeclip.serve")
#: Lines of one kind logged per 10 s at most (closings, refusals, uvicorn's warnings); the rest are counted.
LOG_BURST = 5


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": message, "status": status}``."""
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


class LogLimiter:
    """Logs at most ``burst`` lines per key every ``period`` seconds; the rest are counted and summed up (by
    ``logger``, where there is one, when the key's next window opens)."""

    def __init__(self, logger: logging.Logger | None = None, burst: int = LOG_BURST, period: float = 10.0) -> None:
        self.logger, self.burst, self.period = logger, burst, period
        self._windows: dict[str, list[float]] = {}  # key -> [window start, shown, suppressed]

    def allow(self, key: str, level: int = logging.INFO) -> bool:
        """Whether one more line of ``key`` may be shown now."""
        now = time.monotonic()
        w = self._windows.setdefault(key, [now, 0, 0])
        if now - w[0] >= self.period:
            if w[2] and self.logger is not None:
                self.logger.log(level, "%d more like '%s' in the last %.0f s", int(w[2]), key, now - w[0])
            w[:] = [now, 0, 0]
        if w[1] < self.burst:
            w[1] += 1
            return True
        w[2] += 1
        return False

    def __call__(self, level: int, key: str, message: str, *args: Any) -> None:
        if self.allow(key, level) and self.logger is not None:
            self.logger.log(level, message, *args)


_LIMITER = LogLimiter(log)


def _log_limited(kind: str, message: str, *args: Any) -> None:
    _LIMITER(logging.INFO, kind, message, *args)


class BodyTooLarge(RequestError):
    """The request body went over the limit while it was being read."""


def _status_of(exc: EdgeclipError) -> int:
    if isinstance(exc, RequestError):
        return exc.status
    if isinstance(exc, LabelsError):
        return 422
    if isinstance(exc, BundleBusyError):
        return 503
    if isinstance(exc, BundleError):
        return 409
    if isinstance(exc, BackendError):  # the encoder failed: the server's problem, not the request's
        return 500
    return 400


async def _on_edgeclip_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EdgeclipError)
    status = _status_of(exc)
    headers = {"Connection": "close"} if isinstance(exc, BodyTooLarge) else {}
    retry = getattr(exc, "retry_after", None)
    if retry is not None:
        headers["Retry-After"] = str(max(1, int(retry + 0.999)))
    return error_response(status, str(exc), headers or None)


async def _on_disconnect(request: Request, exc: Exception) -> Response:
    """A client that hung up (mid-body, or while its answer was being made): one line, no traceback."""
    if "edgeclip.closed" not in request.scope:  # the server closed it and said why already
        client = request.scope.get("client")
        peer = "%s:%d" % tuple(client) if client else "a client"
        _log_limited("client went away", "client went away: %s %s from %s before its request was complete",
                     request.method, request.url.path, peer)
    return Response(status_code=499)  # never reaches the client; counted in the metrics


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    # the server logs the traceback (Starlette raises the exception on after this answer): once, not twice
    return error_response(500, f"internal error ({type(exc).__name__}); see the server log")


# ---------------------------------------------------------------------------------------------------------
# the guard: host, token, body size, metrics
# ---------------------------------------------------------------------------------------------------------
def route_table(routes: Sequence[Any]) -> list[tuple[re.Pattern[str], str]]:
    """(pattern, metrics name) of each of the app's routes: its path template (``/v1/watch/{camera}``), a
    mount's with ``/*`` (``/static/*``). Anything else is counted as ``other``."""
    return [(r.path_regex, r.path + "/*" if isinstance(r, Mount) else r.path) for r in routes]


def _route_of(path: str, table: Sequence[tuple[re.Pattern[str], str]]) -> str:
    return next((name for pattern, name in table if pattern.match(path)), "other")


_HOST = re.compile(r"(?:\[(?P<ip6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?\.?))(?::(?P<port>[0-9]{1,5}))?",
                   re.ASCII)


def parse_host(value: str) -> str | None:
    """The host name of a ``Host`` header (lower case, IPv6 without brackets), or None when the header is
    not exactly ``host[:port]`` (RFC 9110/3986: a DNS name, an IPv4 address or a bracketed IPv6 address,
    and a port of digits). ``localhost:8080@evil.example``, ``127.0.0.1:evil`` and ``a b`` are None."""
    m = _HOST.fullmatch(value.strip().lower())
    if m is None or (m.group("port") is not None and int(m.group("port")) > 65535):
        return None
    return m.group("ip6") if m.group("ip6") is not None else m.group("name").rstrip(".")


class Guard:
    """Pure ASGI middleware: Host and token checks, body limits and budget, security headers, metrics."""

    def __init__(self, app: Any, service: Any, routes: Sequence[Any] = ()) -> None:
        self.app, self.service = app, service
        self.routes = route_table(routes)
        opts = service.options
        self.token = opts.token.encode() if opts.token else None
        self.hosts = {h.lower().strip("[]") for h in opts.allowed_hosts} if opts.allowed_hosts else None
        self.limit = opts.max_body_bytes
        self.budget = opts.body_memory_bytes
        self.reserved = 0  # bytes of request bodies being received (event loop only: no lock)

    def limit_for(self, route: str) -> tuple[int, str]:
        """(body limit, its parameter name) for a route."""
        if route == "/v1/labels":
            return self.service.options.max_labels_bytes, "max_labels_bytes"
        return self.limit, "max_body_bytes"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        service = self.service
        service.start()  # also when mounted inside another app, whose lifespan does not reach this one
        root = scope.get("root_path", "")
        path = scope["path"][len(root):] if root and scope["path"].startswith(root) else scope["path"]
        route, method, t0 = _route_of(path or "/", self.routes), scope["method"], time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        state = {"code": 500, "started": False}
        set_cookie: str | None = None
        reserved = 0

        async def send_wrapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["code"], state["started"] = message["status"], True
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
                if set_cookie:
                    extra.append((b"set-cookie", set_cookie.encode("latin-1")))
                message = {**message, "headers": list(message.get("headers", [])) + extra}
                service.m_requests.inc(route, method, str(state["code"]))
            await send(message)

        try:
            refusal = self._refuse(path or "/", headers, query)
            if refusal is not None:
                await refusal(scope, receive, send_wrapped)
                return
            if self.token is not None and path == "/" and query.get("token"):
                cookie = SimpleCookie()
                cookie[COOKIE] = query["token"][-1]
                cookie[COOKIE].update({"path": root or "/", "httponly": True, "samesite": "Strict"})
                set_cookie = cookie.output(header="").strip()
            limit, name = self.limit_for(route)
            length = headers.get("content-length")
            declared = int(length) if length is not None and length.isdigit() else None
            if declared is not None and declared > limit:
                await self._drain(receive, declared, limit)
                await error_response(413, f"the request body is {declared:,} bytes, over the limit of "
                                          f"{limit:,} (`{name}`); send a smaller "
                                          f"{'label document' if route == '/v1/labels' else 'image'}",
                                     {"Connection": "close"})(scope, receive, send_wrapped)
                return
            chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            want = limit if chunked else (declared or 0)
            if want:
                if self.reserved + want > self.budget:
                    await self._drain(receive, want, limit)
                    await error_response(503, f"busy: {self.reserved:,} bytes of request bodies are being received "
                                              f"(`body_memory_bytes` is {self.budget:,}); retry in a moment",
                                         {"Retry-After": "1", "Connection": "close"})(scope, receive, send_wrapped)
                    return
                self.reserved += want
                reserved = want
            await self.app(scope, self._limited(receive, limit, name), send_wrapped)
        except asyncio.CancelledError:  # the server gave up on this request (shutdown): one line, no traceback
            log.info("%s %s: cancelled while the service stopped", method, path)
            if not state["started"]:
                try:
                    await error_response(503, "the service is stopping; retry later")(scope, receive, send_wrapped)
                except Exception:  # noqa: BLE001 - the connection is going away anyway
                    pass
        finally:
            self.reserved -= reserved
            service.m_duration.observe(time.perf_counter() - t0, route)

    def _refuse(self, path: str, headers: dict[str, str], query: dict[str, list[str]]) -> Response | None:
        if self.hosts is not None and parse_host(headers.get("host", "")) not in self.hosts:
            return error_response(421, f"this service answers requests for {', '.join(sorted(self.hosts))} only "
                                       f"(Host header {headers.get('host', '')!r}); to serve other names, start it "
                                       f"with a token")
        if self.token is None or path == "/healthz":
            return None
        candidates = []
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            candidates.append(auth[7:].strip())
        candidates += query.get("token", [])
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is no token
            pass
        if COOKIE in cookie:
            candidates.append(cookie[COOKIE].value)
        if any(hmac.compare_digest(c.encode("utf-8", "replace"), self.token) for c in candidates):
            return None
        what = "a wrong token" if candidates else "no token"
        return error_response(401, f"{what}: send 'Authorization: Bearer TOKEN', or open the page as "
                                   f"/?token=TOKEN", {"WWW-Authenticate": 'Bearer realm="edgeclip"'})

    async def _drain(self, receive: Any, length: int, limit: int) -> None:
        """Read (and drop) a refused body up to 4x the limit, so the client gets the answer rather than a reset
        connection; beyond that the connection is closed unread."""
        if length > 4 * limit + (1 << 20):
            return
        seen = 0
        while seen < length:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    def _limited(self, receive: Any, limit: int, name: str) -> Any:
        seen = [0]

        async def receive_limited() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit:
                    if message.get("more_body", False):  # a body without Content-Length: drop the rest too
                        await self._drain(receive, 4 * limit, limit)
                    raise BodyTooLarge(f"the request body is over the limit of {limit:,} bytes (`{name}`); send a "
                                       f"smaller one", 413)
            return message

        return receive_limited


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the service on this machine."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


#: Exception handlers for the app: every error is ``{"error", "status"}`` JSON.
EXCEPTION_HANDLERS = {EdgeclipError: _on_edgeclip_error, HTTPException: _on_http_exception,
                      ClientDisconnect: _on_disconnect, Exception: _on_unexpected}
