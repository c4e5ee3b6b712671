"""``ServeOptions``: how the service behaves, its limits and its connection limits. Importable without Starlette,
so the command's help and the options' validation work before the serve extra is installed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..options import Options, option, parse_size, positive_int

_LIMITS, _CONNECTIONS = "limits and batching", "connections"


@dataclass(frozen=True)
class ServeOptions(Options):
    """How the service behaves (``create_app``'s keyword arguments; ``edgeclip serve``'s flags).

    ``token``: required on every endpoint but /healthz (None: no token). ``allowed_hosts``: when set,
    requests whose Host header names another host are refused (DNS-rebinding protection for a service on
    loopback without a token; the CLI sets it). The limits bound every request in time, memory and CPU before
    work is done for it (docs/serve.md, "Limits"). The connection limits are applied by the server that
    ``edgeclip.serve.server.build_server`` makes (what ``edgeclip serve`` runs); under another ASGI server,
    that server's own limits apply.
    """

    WHAT: ClassVar[str] = "serve option"

    token: str | None = option(None, "token every request but /healthz must carry", cli=False)
    allowed_hosts: tuple[str, ...] | None = option(None, "Host header names accepted (None: any)", cli=False)
    watch: str | None = option(None, "also run this `edgeclip watch` configuration: its cameras, regions and states "
                                     "on the page, /v1/watch, per-camera and per-region /metrics (docs/watch.md)",
                               metavar="CONFIG")
    max_body_bytes: int = option(20 * 2**20, "largest request body, e.g. 20M (default 20M)", metavar="SIZE",
                                 parse=parse_size, group=_LIMITS)
    max_batch: int = option(8, "largest micro-batch of concurrent requests", group=_LIMITS)
    batch_wait_ms: float = option(2.0, "how long a batch waits for requests still being decoded, in ms",
                                  group=_LIMITS)
    max_queue: int = option(256, "requests waiting for the model; past it: 503", group=_LIMITS)
    top_k: int = option(5, "predictions per image unless ?top_k= says", group=_LIMITS)
    max_image_pixels: int | None = option(None, "width x height an uploaded image may state (default: the "
                                                "runtime's, docs/limits.md)", metavar="N", parse=positive_int,
                                          group=_LIMITS)
    preview_fps: float = option(5.0, "most preview frames per second sent to each viewer", group=_LIMITS)
    max_viewers: int = option(16, "concurrent preview and event streams", group=_LIMITS)
    event_rate: float = option(10.0, "most decision events per second on /v1/stream", group=_LIMITS)
    decode_workers: int = option(0, "uploads decoded at once (0: one per usable CPU); others wait", group=_LIMITS)
    request_timeout_s: float = option(
        30.0, "longest a classify may take from its last body byte to its answer (waiting for a decoder, "
              "decoding, queueing, inference); past it: 503 with Retry-After", metavar="S", group=_LIMITS)
    body_memory_bytes: int = option(
        256 * 2**20, "request bodies held in memory at once, all requests together; past it: 503 with Retry-After "
                     "(default 256M)", metavar="SIZE", parse=parse_size, group=_LIMITS)
    max_labels_bytes: int = option(2**20, "largest PUT /v1/labels body (default 1M)", metavar="SIZE",
                                   parse=parse_size, group=_LIMITS)
    max_prompts: int = option(
        50_000, "most prompts one label update may make: labels x (1 + synonyms) x templates + descriptions",
        group=_LIMITS)
    label_queue: int = option(4, "label updates waiting behind the one being embedded; past it: 429 with "
                                 "Retry-After", group=_LIMITS)
    max_connections: int = option(512, "open connections; past it the longest-idle one is closed (503 when none "
                                       "is idle)", group=_CONNECTIONS)
    header_timeout_s: float = option(10.0, "a request head must be complete this long after the connection "
                                           "opened or the last answer", metavar="S", group=_CONNECTIONS)
    body_timeout_s: float = option(60.0, "a request body must be complete this long after its head", metavar="S",
                                   group=_CONNECTIONS)
    keepalive_timeout_s: float = option(5.0, "an idle keep-alive connection is closed after this long",
                                        metavar="S", group=_CONNECTIONS)
    send_timeout_s: float = option(30.0, "a client that reads nothing of an answer (e.g. a stalled preview "
                                         "viewer) for this long is disconnected", metavar="S", group=_CONNECTIONS)

    def __post_init__(self) -> None:
        if self.allowed_hosts is not None and not isinstance(self.allowed_hosts, tuple):
            object.__setattr__(self, "allowed_hosts", tuple(self.allowed_hosts))

    def problems(self) -> list[str]:
        """Values out of range and contradictions, each naming the option."""
        out = []
        if self.token is not None and not self.token:
            out.append("an empty `token` would accept anything: pass a non-empty token or none")
        for name in ("max_body_bytes", "body_memory_bytes", "max_labels_bytes", "max_prompts", "label_queue",
                     "max_connections", "max_queue", "max_batch", "top_k", "max_viewers"):
            if getattr(self, name) < 1:
                out.append(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if self.decode_workers < 0:
            out.append(f"`decode_workers` must be >= 0 (0: one per usable CPU), got {self.decode_workers}")
        for name in ("request_timeout_s", "header_timeout_s", "body_timeout_s", "keepalive_timeout_s",
                     "send_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value <= 86400):
                out.append(f"`{name}` must be a number of seconds in (0, 86400], got {value!r}")
        if self.body_memory_bytes < self.max_body_bytes:
            out.append(f"`body_memory_bytes` ({self.body_memory_bytes:,}) must be at least `max_body_bytes` "
                       f"({self.max_body_bytes:,}), or no upload of the largest size could ever be received")
        if not self.preview_fps > 0 or not self.event_rate > 0:
            out.append(f"`preview_fps` and `event_rate` must be > 0, got {self.preview_fps}, {self.event_rate}")
        if not 0 <= self.batch_wait_ms <= 1000:
            out.append(f"`batch_wait_ms` must be between 0 and 1000, got {self.batch_wait_ms}")
        return out
