"""The HTTP server under ``edgeclip serve``: uvicorn's h11 protocol with connection-level limits.

uvicorn has a keep-alive timeout, h11's header size limit and ``limit_concurrency`` (which answers 503
once N connections exist, idle ones included, so idle connections lock everyone out), but no deadline for
a request head or body and no bound on a client that stops reading an answer. :class:`GuardedProtocol`
adds them, per connection, from the service's ``ServeOptions``:

* **head**: a request head must be complete ``header_timeout_s`` after the connection opened or the
  previous answer ended (a connection that sends nothing, or trickles a head byte by byte, is closed);
  a head is at most :data:`MAX_HEAD_BYTES` (h11's limit, set explicitly);
* **body**: the whole body must have arrived ``body_timeout_s`` after the head; an unfinished body is
  dropped with its connection, and once such bodies are gone the freed heap is handed back to the system
  (``runtime.process.release_memory``);
* **send**: a client that takes nothing of an answer for ``send_timeout_s`` (the socket buffers full, e.g.
  a preview viewer that stopped reading) is disconnected, which frees its viewer slot;
* **connections**: at most ``max_connections``; for a new one past the cap the longest-idle connection
  (no request in progress) is closed, and only when every connection is busy is the new one answered 503.
  The process's open-file limit is raised to fit the cap at start (an OptionError when it cannot).

Each closing is logged as one line, at most ``guard.LOG_BURST`` lines per kind every 10 s (then one line saying
how many were not shown), and so are the event loop's own errors (e.g. ``accept()`` failing):
no tracebacks, no flood. :func:`build_server` returns the uvicorn server the CLI runs (and the tests);
on SIGTERM/SIGINT it first tells the service to stop (queued work answers 503 at once, label work stops
between batches) so that the process exits promptly.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import OptionError
from ..runtime.process import release_memory
from .guard import LogLimiter

log = logging.getLogger("edgeclip.serve")

#: Largest request head (request line and headers) in bytes; h11 answers 400 past it.
MAX_HEAD_BYTES = 16 * 1024
#: A connection that received more than this many bytes triggers a heap trim when it closes.
_TRIM_AFTER = 1 << 20
#: File descriptors kept free beside the connection cap (the listening socket, bundle files, logs...).
_FD_HEADROOM = 64


class _Registry:
    """Shared state of one server's connections: the idle ones by age, the limits, heap trims."""

    def __init__(self, options: Any) -> None:
        self.options = options
        self.idle: dict[GuardedProtocol, None] = {}  # insertion order = idle since
        self.limit = LogLimiter(log)
        self.trim_pending = False

    def trim_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.trim_pending:
            self.trim_pending = True
            loop.call_later(0.2, self._trim)

    def _trim(self) -> None:
        self.trim_pending = False
        release_memory()


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with head, body and send deadlines and a connection cap (see the module doc).

    Built per server by :func:`protocol_for` (the class carries the server's registry).
    """

    registry: _Registry

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._phase: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._received = 0
        reg = self.registry
        if len(self.connections) > reg.options.max_connections:
            victim = next(iter(reg.idle), None)
            if victim is None:
                self._refuse()
                return
            victim._close("evicted", "closed an idle connection from %s to make room for a new one "
                                     "(`max_connections` is %d)", victim._peer(), reg.options.max_connections)
        self._update()

    # -- phases --------------------------------------------------------------------------------------
    def _update(self) -> None:
        """Re-arm the deadline of the phase the connection is in: head, body, or app (no deadline)."""
        if self.transport is None or self.transport.is_closing():
            return
        busy = self.cycle is not None and not self.cycle.response_complete
        phase = ("body" if self.conn.their_state is h11.SEND_BODY else "app") if busy else "head"
        if phase == self._phase:
            return
        self._phase = phase
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        reg = self.registry
        if phase == "head":
            reg.idle.pop(self, None)
            reg.idle[self] = None  # newest idle last
            self._timer = self.loop.call_later(reg.options.header_timeout_s, self._expired, "head")
        else:
            reg.idle.pop(self, None)
            if phase == "body":
                self._timer = self.loop.call_later(reg.options.body_timeout_s, self._expired, "body")

    def _expired(self, phase: str) -> None:
        self._timer = None
        opts = self.registry.options
        if phase == "head":
            self._close("head timeout", "closed a connection from %s: no complete request head within %g s "
                                        "(`header_timeout_s`)", self._peer(), opts.header_timeout_s)
        else:
            self._close("body timeout", "closed a connection from %s: the body of %s %s was not complete within "
                                        "%g s (`body_timeout_s`; %s bytes received)", self._peer(),
                        self.scope["method"], self.scope["path"], opts.body_timeout_s, f"{self._received:,}")

    def _close(self, kind: str, message: str, *args: Any) -> None:
        """Close this connection for ``kind``, logged as one line (rate-limited)."""
        self.registry.limit(logging.INFO, kind, message, *args)
        if self.scope is not None and self.cycle is not None and not self.cycle.response_complete:
            self.scope["edgeclip.closed"] = kind  # the app then does not log the disconnect again
        self.registry.idle.pop(self, None)
        if kind == "send timeout":
            self.transport.abort()  # nothing more can be written: do not wait for the buffer
        else:
            self.transport.close()

    def _refuse(self) -> None:
        reg = self.registry
        reg.limit(logging.WARNING, "refused", "refused a connection from %s: all %d connections are busy "
                                              "(`max_connections`)", self._peer(), reg.options.max_connections)
        body = (b'{"error": "the service is at its connection limit; retry in a moment", "status": 503}')
        self.transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                             b"retry-after: 1\r\nconnection: close\r\ncontent-length: " + str(len(body)).encode() +
                             b"\r\n\r\n" + body)
        self._phase = "refused"
        self.transport.close()

    def _peer(self) -> str:
        return "%s:%d" % self.client if self.client else "a client"

    # -- uvicorn's hooks ------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._phase == "refused":
            return
        self._received += len(data)
        super().data_received(data)
        self._update()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._update()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            timeout = self.registry.options.send_timeout_s
            self._send_timer = self.loop.call_later(timeout, self._send_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_stalled(self) -> None:
        self._send_timer = None
        what = f"{self.scope['method']} {self.scope['path']}" if self.scope else "an answer"
        self._close("send timeout", "disconnected %s: it read nothing of %s for %g s (`send_timeout_s`)",
                    self._peer(), what, self.registry.options.send_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._timer, self._send_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._send_timer = None
        self.registry.idle.pop(self, None)
        if self._received > _TRIM_AFTER:
            self.registry.trim_soon(self.loop)
        super().connection_lost(exc)

    def close_if_waiting(self) -> None:
        """At shutdown: close a connection that is waiting for a request head or body."""
        if self._phase in ("head", "body") and not self.transport.is_closing():
            self.transport.close()


def protocol_for(options: Any) -> type[GuardedProtocol]:
    """A :class:`GuardedProtocol` subclass bound to one server's limits (``ServeOptions``)."""
    return type("GuardedProtocol", (GuardedProtocol,), {"registry": _Registry(options)})


def ensure_file_limit(max_connections: int) -> int:
    """Raise this process's open-file limit to fit ``max_connections`` (OptionError when the hard limit
    cannot); returns the soft limit now in force (unchanged where the system has no such limit)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return max_connections + _FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max_connections + _FD_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise OptionError(f"`max_connections` ({max_connections}) needs {need} open files, but this process "
                              f"may open at most {hard} (ulimit -Hn): lower `max_connections` to "
                              f"{hard - _FD_HEADROOM} or less, or raise the limit")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        soft = need
    return soft


class Server(uvicorn.Server):
    """uvicorn's server, telling the service to stop before it waits for requests to finish."""

    service: Any = None

    async def startup(self, sockets: Any = None) -> None:
        loop = asyncio.get_running_loop()
        limiter = LogLimiter(log)

        def on_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            exc = context.get("exception")
            text = context.get("message", "event loop error") + (f": {type(exc).__name__}: {exc}" if exc else "")
            limiter(logging.WARNING, context.get("message", "loop"), "%s", text)

        loop.set_exception_handler(on_loop_error)
        await super().startup(sockets=sockets)

    async def shutdown(self, sockets: Any = None) -> None:
        if self.service is not None:
            self.service.begin_shutdown()
        for connection in list(self.server_state.connections):
            if isinstance(connection, GuardedProtocol):
                connection.close_if_waiting()
        await super().shutdown(sockets=sockets)


def build_server(app: Any, **config: Any) -> Server:
    """The uvicorn server for ``app`` (from ``create_app``) with the connection limits of its ``ServeOptions``.

    ``config``: more ``uvicorn.Config`` arguments (``log_level``, ``access_log``...). Serve with
    ``server.run(sockets=[sock])`` or ``await server.serve(...)``.
    """
    service = app.state.service
    opts = service.options
    ensure_file_limit(opts.max_connections)
    uvicorn_log = logging.getLogger("uvicorn.error")
    if _FILTER not in uvicorn_log.filters:
        uvicorn_log.addFilter(_FILTER)
    cfg = uvicorn.Config(app, http=protocol_for(opts), timeout_keep_alive=opts.keepalive_timeout_s,
                         h11_max_incomplete_event_size=MAX_HEAD_BYTES, limit_concurrency=None,
                         **{"timeout_graceful_shutdown": 2, **config})
    server = Server(cfg)
    server.service = service
    return server


class _RateLimitFilter(logging.Filter):
    """uvicorn's own one-line warnings (e.g. 'Invalid HTTP request received.'), at most LOG_BURST per
    message every 10 s."""

    def __init__(self) -> None:
        super().__init__()
        self._limiter = LogLimiter()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info or record.levelno >= logging.ERROR:
            return True  # errors with tracebacks are bugs: always shown
        return self._limiter.allow(str(record.msg))


_FILTER = _RateLimitFilter()
