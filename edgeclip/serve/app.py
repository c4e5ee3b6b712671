"""The ASGI app behind ``edgeclip serve``: a versioned JSON API, a live source and a browser page.

Endpoints (JSON unless said; every one but ``/healthz`` needs the token when one is set)::

    GET  /                  the page (static files under /static/, no build step, no CDN)
    POST /v1/classify       an image (raw body or multipart field) -> top-k predictions; micro-batched
    GET  /v1/labels         the label set in use;  PUT /v1/labels  replaces it (?persist=1: into the bundle)
    GET  /v1/status         model, batching, labels and the live source's state
    GET  /v1/stream         server-sent events of the live source's decisions   (with a source)
    GET  /v1/preview.mjpg   annotated frames, newest only, at most preview_fps  (with a source)
    GET  /v1/preview.jpg    the newest annotated frame                          (with a source)
    GET  /healthz           liveness, no token;  GET /metrics  Prometheus text

Token: ``Authorization: Bearer TOKEN``, or ``?token=TOKEN`` (opening ``/?token=TOKEN`` also sets an
HttpOnly, SameSite=Strict cookie, which the page's requests, EventSource and ``<img>`` then carry).
Compared in constant time. Request bodies are limited (``max_body_bytes``, 413 before reading when the
Content-Length says so); a bad image or label document is a 4xx JSON error ``{"error", "status"}`` and the
service keeps serving.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._version import __version__
from ..bundle import update_bundle
from ..errors import EdgeclipError, ImageReadError, OptionError, RequestError
from ..runtime import images
from ..runtime.classifier import Classifier
from ..stream.options import StreamOptions
from ..extras import require
from ..sources import SourceOptions, SourceSpec, parse_source
from ..runtime.text import write_labels
from .batcher import MicroBatcher, QueueFull
from .guard import EXCEPTION_HANDLERS, LOOPBACK_HOSTS, Guard, is_loopback
from .labelset import LabelSet, check_prompt_count, initial_label_set, parse_label_document
from .live import LiveSource
from .metrics import BATCH_BUCKETS, CONTENT_TYPE, LATENCY_BUCKETS, Registry

log = logging.getLogger("edgeclip.serve")

STATIC = Path(__file__).with_name("static")
#: Formats ``POST /v1/classify`` accepts, by their first bytes.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WebP")
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "Cache-Control": "no-cache",
}


@dataclass
class ServeOptions:
    """How the service behaves (``create_app``'s keyword arguments).

    ``token``: required on every endpoint but /healthz (None: no token). ``allowed_hosts``: when set,
    requests whose Host header names another host are refused (DNS-rebinding protection for a service on
    loopback without a token; the CLI sets it). ``max_body_bytes``: request body limit. ``max_image_pixels``:
    width x height an uploaded image may state (None: the runtime's default). ``max_batch`` / ``batch_wait_ms``:
    the micro-batcher's largest batch and queue delay; ``max_queue``: waiting requests before 503.
    ``top_k``: default predictions per image. ``preview_fps``: most frames per second per preview viewer;
    ``max_viewers``: concurrent preview and event streams. ``event_rate``: most decision events per second.
    """

    token: str | None = None
    allowed_hosts: Sequence[str] | None = None
    max_body_bytes: int = 20 * 2**20
    max_image_pixels: int | None = None
    max_batch: int = 8
    batch_wait_ms: float = 2.0
    max_queue: int = 256
    top_k: int = 5
    preview_fps: float = 5.0
    max_viewers: int = 16
    event_rate: float = 10.0

    def __post_init__(self) -> None:
        if self.token is not None and not self.token:
            raise OptionError("an empty `token` would accept anything: pass a non-empty token or none")
        if self.max_body_bytes < 1:
            raise OptionError(f"`max_body_bytes` must be >= 1, got {self.max_body_bytes}")
        if self.top_k < 1:
            raise OptionError(f"`top_k` must be >= 1, got {self.top_k}")
        if not self.preview_fps > 0:
            raise OptionError(f"`preview_fps` must be > 0, got {self.preview_fps}")
        if self.max_viewers < 1:
            raise OptionError(f"`max_viewers` must be >= 1, got {self.max_viewers}")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise OptionError(f"`batch_wait_ms` must be between 0 and 1000, got {self.batch_wait_ms}")


@dataclass
class _Job:
    pixels: np.ndarray
    top_k: int


def sniff_format(data: bytes) -> str | None:
    """JPEG, PNG or WebP from the first bytes; None for anything else."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


class Service:
    """The state behind the app: classifier, label set, batcher, live source and metrics."""

    def __init__(self, classifier: Classifier, live: LiveSource | None, options: ServeOptions) -> None:
        self.clf, self.live, self.options = classifier, live, options
        self.labels: LabelSet = initial_label_set(classifier.bundle, classifier.labels, classifier.label_matrix)
        self._labels_lock = threading.Lock()
        self.started = time.monotonic()
        self.closing = False
        self.viewers = 0
        self.incoming = 0  # classify requests between their body and the batcher (the batcher waits for them)
        self.metrics = m = Registry()
        self.m_requests = m.counter("edgeclip_http_requests_total", "HTTP requests by route, method and status code",
                                    ("route", "method", "code"))
        self.m_duration = m.histogram("edgeclip_http_request_duration_seconds",
                                      "time to answer a request (streams: until the client leaves)",
                                      LATENCY_BUCKETS, ("route",))
        self.m_errors = m.counter("edgeclip_classify_errors_total", "classify requests refused, by reason",
                                  ("reason",))
        self.m_latency = m.histogram("edgeclip_classify_latency_seconds",
                                     "classify: body received to predictions (decode, queue, inference)",
                                     LATENCY_BUCKETS)
        self.m_batch = m.histogram("edgeclip_batch_size", "images per encoder call of the micro-batcher",
                                   BATCH_BUCKETS)
        self.m_infer = m.histogram("edgeclip_batch_inference_seconds", "encoder time per micro-batch",
                                   LATENCY_BUCKETS)
        m.gauge("edgeclip_batch_queue_depth", "classify requests waiting for the encoder", lambda: self.batcher.depth)
        m.gauge("edgeclip_labels", "labels in use", lambda: len(self.labels.labels))
        m.gauge("edgeclip_labels_version", "label set version (increases with every PUT /v1/labels)",
                lambda: self.labels.version)
        self.m_relabels = m.counter("edgeclip_relabels_total", "PUT /v1/labels outcomes", ("result",))
        m.gauge("edgeclip_uptime_seconds", "seconds since the service started", lambda: time.monotonic() - self.started)
        m.gauge("process_resident_memory_bytes", "resident memory of this process", _rss)
        if live is not None:
            pm = live.pipeline.metrics
            m.gauge("edgeclip_stream_frames_captured_total", "frames read from the source",
                    lambda: pm()["captured"])
            m.gauge("edgeclip_stream_frames_inferred_total", "frames classified", lambda: pm()["inferred"])
            m.gauge("edgeclip_stream_frames_dropped_total", "stale frames dropped (latest-frame policy)",
                    lambda: pm()["dropped"])
            m.gauge("edgeclip_stream_reconnects_total", "reconnections of a lost live source",
                    lambda: pm()["reconnects"])
            m.gauge("edgeclip_stream_inference_fps", "frames classified per second (recent)", live.inference_fps)
            m.gauge("edgeclip_stream_capture_fps", "frames read per second (recent)", live.capture_fps)
            m.gauge("edgeclip_stream_up", "1 while the source is streaming", lambda: float(live.running))
        self.batcher = MicroBatcher(self._run_batch, options.max_batch, options.batch_wait_ms / 1000.0,
                                    options.max_queue, on_batch=self._on_batch, pending=lambda: self.incoming)

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the batcher and the live source (idempotent)."""
        self.batcher.start()
        if self.live is not None:
            self.live.start()

    def warm_up(self) -> float:
        """Run the encoder once at every batch size up to ``max_batch`` (backends compile and allocate per
        shape), so the first requests do not pay for it and memory is at its plateau; returns seconds."""
        t0 = time.perf_counter()
        th, tw = self.clf.preprocessor.config.size
        pixels = np.zeros((self.options.max_batch, 3, th, tw), np.float32)
        for n in range(1, self.options.max_batch + 1):
            self.clf.embed_pixels(pixels[:n])
        return time.perf_counter() - t0

    def close(self) -> None:
        """Stop the live source and the batcher (queued requests finish first)."""
        self.closing = True
        if self.live is not None:
            self.live.stop()
        self.batcher.close()

    # -- classify --------------------------------------------------------------------------------------
    def prepare(self, data: bytes) -> np.ndarray:
        """Decoded and preprocessed model input [3, H, W] for one uploaded image (RequestError: 4xx)."""
        fmt = sniff_format(data)
        if fmt is None:
            self.m_errors.inc("unsupported_type")
            raise RequestError("the body is not a JPEG, PNG or WebP image; send the image bytes "
                               "(or a multipart form with a 'file' field)", 415)
        limit = self.options.max_image_pixels or images.MAX_IMAGE_PIXELS
        try:
            header = images.check_header(data, "the uploaded image", 2**62)
            if header.pixels > limit:
                self.m_errors.inc("too_many_pixels")
                raise RequestError(f"the uploaded {fmt} states {header.width}x{header.height} pixels, over the "
                                   f"limit of {limit:,}; send a smaller image", 413)
            return self.clf.preprocessor(images.decode_image(data, "the uploaded image", limit))
        except ImageReadError as exc:
            self.m_errors.inc("undecodable")
            raise RequestError(f"{exc}", 400) from None

    def _run_batch(self, jobs: list[_Job]) -> list[tuple[list[dict[str, Any]], int]]:
        labels = self.labels  # one snapshot per batch: a label swap never splits a batch
        emb = self.clf.embed_pixels(np.stack([j.pixels for j in jobs]))
        probs = self.clf.probabilities(emb, labels.matrix)
        out = []
        for job, p in zip(jobs, probs):
            order = np.argsort(-p, kind="stable")[:min(job.top_k, len(p))]
            out.append(([{"label": labels.labels[i].name, "score": float(p[i])} for i in order], labels.version))
        return out

    def _on_batch(self, size: int, seconds: float) -> None:
        self.m_batch.observe(size)
        self.m_infer.observe(seconds)

    # -- labels ----------------------------------------------------------------------------------------
    def set_labels(self, doc: Any, persist: bool = False) -> dict[str, Any]:
        """Validate, embed on the device, optionally write into the bundle, then swap (one at a time)."""
        request = parse_label_document(doc)
        with self._labels_lock:
            current = self.labels
            template_set = request.template_set or current.template_set
            templates = request.templates or list(current.templates)
            check_prompt_count(request.labels, templates)
            t0 = time.perf_counter()
            matrix = self.clf.embed_labels(request.labels, templates)
            seconds = time.perf_counter() - t0
            if persist:
                with update_bundle(self.clf.bundle) as draft:
                    write_labels(draft, request.labels, template_set, templates, matrix)
            new = LabelSet(tuple(request.labels), template_set, tuple(templates), matrix, current.version + 1)
            self.labels = new  # the next batch classifies against the new set
            if self.live is not None:
                self.live.relabel(new.names, matrix)
            else:
                self.clf.set_label_matrix(new.names, matrix)
        log.info("labels replaced: %d labels in %.2f s%s", len(new.labels), seconds, " (saved)" if persist else "")
        return {**new.to_json(), "seconds": round(seconds, 4), "persisted": persist}

    def status(self) -> dict[str, Any]:
        clf = self.clf
        return {
            "version": __version__, "model": clf.bundle.model.get("id"), "bundle": str(clf.bundle.path),
            "precision": clf.precision, "backend": clf.encoder.name,
            "encoder": clf.choice.describe() if getattr(clf, "choice", None) is not None else None,
            "labels": {"count": len(self.labels.labels), "version": self.labels.version},
            "uptime_s": round(time.monotonic() - self.started, 3),
            "batching": {"max_batch": self.options.max_batch, "max_wait_ms": self.options.batch_wait_ms,
                         "queue": self.batcher.depth, "batches": self.batcher.batches,
                         "images": self.batcher.items},
            "token_required": self.options.token is not None,
            "stream": self.live.status() if self.live is not None else None,
        }


def _rss() -> float | None:
    from ..stream.outputs import rss_bytes

    return rss_bytes()


# ---------------------------------------------------------------------------------------------------------
# endpoints
# ---------------------------------------------------------------------------------------------------------
def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "0").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise RequestError(f"?{name}= must be 1 or 0, got {value!r}", 400)


def _top_k(request: Request, default: int) -> int:
    text = request.query_params.get("top_k")
    if text is None:
        return default
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        raise RequestError(f"?top_k= must be an integer >= 1, got {text!r}", 400)
    return k


async def _upload_bytes(request: Request, limit: int) -> bytes:
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        async with request.form(max_files=1, max_fields=16, max_part_size=limit) as form:
            uploads = [v for v in form.values() if isinstance(v, UploadFile)]
            if not uploads:
                raise RequestError("the multipart form holds no file; send the image as a file field "
                                   "(e.g. curl -F file=@photo.jpg)", 400)
            chosen = form.get("file") if isinstance(form.get("file"), UploadFile) else uploads[0]
            return await chosen.read()  # type: ignore[union-attr]
    return await request.body()


def _need_live(service: Service) -> LiveSource:
    if service.live is None:
        raise RequestError("this service has no live source; start it with one (the source of edgeclip serve, or create_app(clf, source))",
                           404)
    return service.live


def build_routes(service: Service) -> list[Any]:
    opts = service.options
    clf = service.clf

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    async def classify(request: Request) -> Response:
        t0 = time.perf_counter()
        top_k = _top_k(request, opts.top_k)
        data = await _upload_bytes(request, opts.max_body_bytes)
        if not data:
            service.m_errors.inc("empty")
            raise RequestError("empty request body; send the image bytes (curl --data-binary @photo.jpg)", 400)
        service.incoming += 1
        try:
            pixels = await run_in_threadpool(service.prepare, data)
            future = service.batcher.submit(_Job(pixels, top_k))
        except QueueFull as exc:
            service.m_errors.inc("overloaded")
            raise RequestError(f"busy: {exc}", 503) from None
        finally:
            service.incoming -= 1
        predictions, version = await asyncio.wrap_future(future)
        seconds = time.perf_counter() - t0
        service.m_latency.observe(seconds)
        return JSONResponse({"predictions": predictions, "model": clf.bundle.model.get("id"),
                             "precision": clf.precision, "backend": clf.encoder.name,
                             "labels_version": version, "latency_ms": round(seconds * 1000.0, 3)})

    async def labels(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(service.labels.to_json())
        persist = _flag(request, "persist")
        body = await request.body()
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            service.m_relabels.inc("invalid")
            raise RequestError(f"the body is not valid JSON ({exc}); send "
                               f'{{"labels": ["cat", {{"name": "dog", "synonyms": ["puppy"]}}]}}', 400) from None
        try:
            result = await run_in_threadpool(service.set_labels, doc, persist)
        except EdgeclipError:
            service.m_relabels.inc("error")
            raise
        service.m_relabels.inc("ok")
        return JSONResponse(result)

    async def status(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(service.status))

    async def events(request: Request) -> Response:
        live = _need_live(service)
        _check_viewers(service)
        last = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        since = int(last) if last and last.isdigit() else None
        return StreamingResponse(_viewer(service, _event_stream(service, live, since)),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def preview(request: Request) -> Response:
        live = _need_live(service)
        try:
            fps = min(float(request.query_params.get("fps", opts.preview_fps)), opts.preview_fps)
        except ValueError:
            raise RequestError("?fps= must be a number", 400) from None
        if not fps > 0:
            raise RequestError("?fps= must be > 0", 400)
        _check_viewers(service)
        return StreamingResponse(_viewer(service, _mjpeg_stream(service, live, fps)),
                                 media_type="multipart/x-mixed-replace; boundary=frame",
                                 headers={"Cache-Control": "no-cache, no-store", "X-Accel-Buffering": "no"})

    async def preview_jpg(request: Request) -> Response:
        live = _need_live(service)
        got = await run_in_threadpool(live.preview_jpeg)
        if got is None:
            raise RequestError("no frame classified yet; retry in a moment", 503)
        return Response(got[1], media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    return [
        Route("/", page, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/classify", classify, methods=["POST"]),
        Route("/v1/labels", labels, methods=["GET", "PUT"]),
        Route("/v1/status", status, methods=["GET"]),
        Route("/v1/stream", events, methods=["GET"]),
        Route("/v1/preview.mjpg", preview, methods=["GET"]),
        Route("/v1/preview.jpg", preview_jpg, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]


def _check_viewers(service: Service) -> None:
    if service.viewers >= service.options.max_viewers:
        raise RequestError(f"{service.viewers} preview and event streams are open; the limit is "
                           f"{service.options.max_viewers} (close one, or raise max_viewers)", 503)


async def _viewer(service: Service, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Count a preview or event viewer while its stream runs."""
    service.viewers += 1
    try:
        async for chunk in stream:
            yield chunk
    finally:
        service.viewers -= 1


def _sse(seq: int | None, event: str, data: Any) -> bytes:
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _event_stream(service: Service, live: LiveSource, since: int | None) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n\n"
    if since is None:  # a new client: the current state first, then what happens from now on
        since = live.last_event_id
        yield _sse(None, "state", {"decision": live.latest_decision(), "labels": service.labels.names,
                                   "labels_version": service.labels.version})
    quiet = 0.0
    while not service.closing:
        events = live.events_after(since)
        for seq, name, record in events:
            since = seq
            yield _sse(seq, name, record)
        if events:
            quiet = 0.0
        else:
            quiet += 0.05
            if quiet >= 15.0:  # a comment keeps proxies and the browser from timing the stream out
                quiet = 0.0
                yield b": ping\n\n"
        await asyncio.sleep(0.05)


async def _mjpeg_stream(service: Service, live: LiveSource, fps: float) -> AsyncIterator[bytes]:
    period, last = 1.0 / fps, -1
    while not service.closing:
        t0 = time.monotonic()
        if live.frame_seq != last:
            got = await run_in_threadpool(live.preview_jpeg)
            if got is not None:
                last, jpeg = got
                yield (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: " + str(len(jpeg)).encode() +
                       b"\r\n\r\n" + jpeg + b"\r\n")
        await asyncio.sleep(max(0.01, period - (time.monotonic() - t0)))


# ---------------------------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------------------------
def prepare_source(source: str | SourceSpec, options: SourceOptions | None = None) -> SourceSpec:
    """The service's live source, parsed and checked as ``edgeclip.stream`` does (kind, options, extra);
    a file, folder or synthetic source that sets no rate plays in real time, as a preview should."""
    spec = source if isinstance(source, SourceSpec) else parse_source(source, options)
    if spec.row.extra:
        require(spec.row.extra, what=f"a {spec.kind} source")
    if not spec.live and not spec.fps:
        spec.options = dataclasses.replace(spec.options, realtime=True)
    return spec


def create_app(classifier: Classifier, source: str | SourceSpec | None = None, *,
               options: ServeOptions | None = None, stream_options: StreamOptions | None = None,
               source_options: SourceOptions | None = None, **overrides: Any) -> Starlette:
    """The ASGI app serving ``classifier`` (and ``source``, a source string or a SourceSpec, live).

    Keyword arguments override fields of ``options`` (see :class:`ServeOptions`): e.g.
    ``create_app(clf, token="s3cret", max_batch=16)``. A source string is parsed with ``source_options`` as
    ``edgeclip.stream`` parses it (the same kinds, the same rules); files, folders and synthetic frames play
    in real time. The returned app is a Starlette app: run it with any ASGI server, or mount it inside another
    app. ``app.state.service`` is the state.
    """
    names = {f.name for f in fields(ServeOptions)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise OptionError(f"unknown serve options {unknown}; use {', '.join(sorted(names))}")
    opts = ServeOptions(**{**(options.__dict__ if options else {}), **overrides})
    live = None
    if source is not None:
        spec = prepare_source(source, source_options)
        live = LiveSource(classifier, spec, stream_options, event_rate=opts.event_rate, top_k=opts.top_k)
    service = Service(classifier, live, opts)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.close)

    app = Starlette(routes=build_routes(service), lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS)
    app.state.service = service
    app.add_middleware(Guard, service=service)
    return app


__all__ = ["ServeOptions", "Service", "create_app", "is_loopback", "prepare_source", "ACCEPTED_FORMATS", "LOOPBACK_HOSTS"]
