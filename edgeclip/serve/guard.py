"""Access control for ``edgeclip serve``: Host and token checks, body limits, JSON errors, request metrics.

:class:`Guard` is plain ASGI middleware (no buffering, so event streams and MJPEG pass through): it refuses
foreign Host names (when ``allowed_hosts`` is set) and missing or wrong tokens (constant-time comparison)
before the app sees a request, answers 413 for a declared body over the limit (reading and dropping up to
four times the limit first, so the client sees the answer rather than a reset connection), stops a body
without a declared length when it passes the limit, adds security headers, and counts every answer.
"""
from __future__ import annotations

import hmac
import time
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import BackendError, BundleBusyError, BundleError, EdgeclipError, LabelsError, RequestError

COOKIE = "edgeclip_token"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: Route templates for metrics (anything else is counted as "other").
ROUTES = ("/", "/healthz", "/metrics", "/v1/classify", "/v1/labels", "/v1/status", "/v1/stream",
          "/v1/preview.mjpg", "/v1/preview.jpg")


# ---------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------
def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": message, "status": status}``."""
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


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
    headers = {"Connection": "close"} if isinstance(exc, BodyTooLarge) else None
    return error_response(status, str(exc), headers)


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    import logging

    logging.getLogger("edgeclip.serve").exception("unexpected error in %s %s", request.method, request.url.path)
    return error_response(500, f"internal error ({type(exc).__name__}); see the server log")


# ---------------------------------------------------------------------------------------------------------
# the guard: host, token, body size, metrics
# ---------------------------------------------------------------------------------------------------------
def _route_of(path: str) -> str:
    if path in ROUTES:
        return path
    if path.startswith("/static/"):
        return "/static/*"
    return "other"


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8080
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    """Pure ASGI middleware: Host check, token check, body limit, security headers and request metrics."""

    def __init__(self, app: Any, service: Any) -> None:
        self.app, self.service = app, service
        opts = service.options
        self.token = opts.token.encode() if opts.token else None
        self.hosts = {h.lower().strip("[]") for h in opts.allowed_hosts} if opts.allowed_hosts else None
        self.limit = opts.max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        service = self.service
        service.start()  # also when mounted inside another app, whose lifespan does not reach this one
        root = scope.get("root_path", "")
        path = scope["path"][len(root):] if root and scope["path"].startswith(root) else scope["path"]
        route, method, t0 = _route_of(path or "/"), scope["method"], time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        state = {"code": 500}
        set_cookie: str | None = None

        async def send_wrapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["code"] = message["status"]
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
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.limit:
                await self._drain(receive, int(length))
                await error_response(413, f"the request body is {int(length):,} bytes, over the limit of "
                                          f"{self.limit:,}; send a smaller image", {"Connection": "close"})(
                    scope, receive, send_wrapped)
                return
            await self.app(scope, self._limited(receive), send_wrapped)
        finally:
            service.m_duration.observe(time.perf_counter() - t0, route)

    def _refuse(self, path: str, headers: dict[str, str], query: dict[str, list[str]]) -> Response | None:
        if self.hosts is not None and _host_name(headers.get("host", "")) not in self.hosts:
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

    async def _drain(self, receive: Any, length: int) -> None:
        """Read (and drop) a refused body up to 4x the limit, so the client gets the 413 rather than a reset
        connection; beyond that the connection is closed unread."""
        if length > 4 * self.limit + (1 << 20):
            return
        seen = 0
        while seen < length:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    def _limited(self, receive: Any) -> Any:
        limit, seen = self.limit, [0]

        async def receive_limited() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit:
                    if message.get("more_body", False):  # a body without Content-Length: drop the rest too
                        await self._drain(receive, 4 * limit)
                    raise BodyTooLarge(f"the request body is over the limit of {limit:,} bytes; send a smaller "
                                       f"image", 413)
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
EXCEPTION_HANDLERS = {EdgeclipError: _on_edgeclip_error, HTTPException: _on_http_exception, Exception: _on_unexpected}
