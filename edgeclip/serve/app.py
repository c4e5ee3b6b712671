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

Every request is bounded before work is done for it (``ServeOptions``; docs/serve.md, "Limits"): bodies
against a shared memory budget, uploads decoded at the reduced DCT scale of ``edgeclip classify`` on at most
``decode_workers`` threads within ``request_timeout_s``, label updates sized from the document and embedded
one at a time on their own thread behind a bounded queue (429), never on the threads that serve requests.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator

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
from ..errors import EdgeclipError, ImageReadError, RequestError
from ..runtime import images
from ..extras import require
from ..runtime.classifier import Classifier
from ..runtime.labels import embed_labels
from ..runtime.process import configure_threads, usable_cpus
from ..sources import SourceOptions, SourceSpec, parse_source
from ..stream.options import StreamOptions
from ..stream.outputs import iso_time
from ..runtime.text import write_labels
from .batcher import MicroBatcher, QueueFull
from .guard import EXCEPTION_HANDLERS, LOOPBACK_HOSTS, Guard, is_loopback
from .labelset import LabelRequest, LabelSet, check_prompt_count, initial_label_set, parse_label_document
from .live import LiveSource
from .metrics import BATCH_BUCKETS, CONTENT_TYPE, LATENCY_BUCKETS, Registry
from .options import ServeOptions

if TYPE_CHECKING:
    from ..watch import Watcher

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
class _Job:
    pixels: np.ndarray
    top_k: int


class Slots:
    """``n`` slots taken in arrival order by coroutines of one event loop, each waiting at most a given time."""

    def __init__(self, n: int) -> None:
        self.free = n
        self.waiters: collections.deque[asyncio.Future] = collections.deque()

    async def acquire(self, timeout: float) -> bool:
        """Take a slot within ``timeout`` seconds (True), or give up (False)."""
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return True
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await asyncio.wait_for(fut, max(timeout, 0.0))
            return True
        except asyncio.TimeoutError:
            return False
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed a slot just as the waiter went away: pass it on
                self.release()
            raise
        finally:
            with contextlib.suppress(ValueError):
                self.waiters.remove(fut)

    def release(self) -> None:
        """Hand the slot to the first waiter still waiting, or free it."""
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(True)
                return
        self.free += 1


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
        self.decode_workers = options.decode_workers or usable_cpus()
        self._decode_slots = Slots(self.decode_workers)
        self._decode_pool = ThreadPoolExecutor(self.decode_workers, thread_name_prefix="edgeclip-serve-decode")
        self._label_pool = ThreadPoolExecutor(1, thread_name_prefix="edgeclip-serve-labels")
        self.label_jobs = 0  # label updates queued or running (event loop only)
        self.label_seconds = 1.0  # how long the last label update took (Retry-After)
        self._stop = threading.Event()
        m.gauge("edgeclip_label_updates_pending", "label updates queued or being embedded", lambda: self.label_jobs)

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the batcher and the live source (idempotent)."""
        self.batcher.start()
        if self.live is not None:
            self.live.start()

    def warm_up(self) -> float:
        """The encoder run once at every batch size up to ``max_batch`` (``Classifier.warm_up``), so the first
        requests do not pay for it; seconds."""
        return self.clf.warm_up(self.options.max_batch)

    def begin_shutdown(self) -> None:
        """Stop taking work: waiting requests answer 503 at once, a label update stops before its next batch
        of prompts, event and preview streams end. Requests already decoding or in a batch finish."""
        self.closing = True
        self._stop.set()

    def close(self) -> None:
        """Stop the live source and the batcher (queued requests finish first) and the worker threads."""
        self.begin_shutdown()
        if self.live is not None:
            self.live.stop()
        self.batcher.close()
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self._label_pool.shutdown(wait=False, cancel_futures=True)

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
            # the reduced-DCT decode of `edgeclip classify`: a 9400x9400 JPEG decodes at 1/8 (1175x1175)
            image = images.decode_image(data, "the uploaded image", limit, min_size=self.clf.decode_min_size())
            return self.clf.preprocessor(image)
        except ImageReadError as exc:
            self.m_errors.inc("undecodable")
            raise RequestError(f"{exc}", 400) from None

    def _prepare_job(self, data: bytes) -> np.ndarray:
        if self.closing:
            raise RequestError("the service is stopping; retry later", 503, retry_after=1)
        return self.prepare(data)

    async def classify_bytes(self, data: bytes, top_k: int) -> tuple[list[dict[str, Any]], int]:
        """(predictions, labels version) for one uploaded image, within ``request_timeout_s``.

        The decode waits for one of ``decode_workers`` slots, runs on the decode threads (never more at once,
        so CPU and decode memory are bounded), then joins the micro-batcher's queue. Past the deadline, or
        with the queue full, it is a 503 with Retry-After; nothing is decoded for a request that cannot wait.
        """
        loop = asyncio.get_running_loop()
        timeout = self.options.request_timeout_s
        deadline = loop.time() + timeout
        self.incoming += 1
        try:
            if self.closing:
                raise RequestError("the service is stopping; retry later", 503, retry_after=1)
            if not await self._decode_slots.acquire(timeout):
                self._overloaded("waiting for a decoder")
            try:
                job = self._decode_pool.submit(self._prepare_job, data)
            except RuntimeError:  # the pool was shut down
                self._decode_slots.release()
                raise RequestError("the service is stopping; retry later", 503, retry_after=1) from None
            job.add_done_callback(lambda _: loop.call_soon_threadsafe(self._decode_slots.release))
            pixels = await self._until(job, deadline, "decoding")
            future = self.batcher.submit(_Job(pixels, top_k))
        except QueueFull as exc:
            self.m_errors.inc("overloaded")
            raise RequestError(f"busy: {exc}", 503, retry_after=1) from None
        finally:
            self.incoming -= 1
        return await self._until(future, deadline, "waiting for the encoder")

    async def _until(self, job: Future, deadline: float, what: str) -> Any:
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job), max(remaining, 0.001))
        except asyncio.TimeoutError:
            self._overloaded(what)

    def _overloaded(self, what: str) -> None:
        self.m_errors.inc("timeout")
        raise RequestError(f"busy: no answer within `request_timeout_s` ({self.options.request_timeout_s:g} s; "
                           f"{what}); retry in a moment", 503, retry_after=1)

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
    def parse_labels(self, doc: Any) -> LabelRequest:
        """Validate a label document and size its work (422 past ``max_prompts``) before anything is built."""
        return parse_label_document(doc, len(self.labels.templates), self.options.max_prompts)

    def set_labels(self, doc: Any, persist: bool = False) -> dict[str, Any]:
        """Validate, embed on the device, optionally write into the bundle, then swap (on this thread; the
        HTTP endpoint runs :meth:`update_labels` instead, one update at a time off the request threads)."""
        return self._apply_labels(self.parse_labels(doc), persist)

    async def update_labels(self, doc: Any, persist: bool = False) -> dict[str, Any]:
        """``PUT /v1/labels``: validated and sized here, embedded on the one label thread; 429 with Retry-After
        when ``label_queue`` updates already wait behind the running one."""
        request = self.parse_labels(doc)
        if self.closing:
            raise RequestError("the service is stopping; retry later", 503, retry_after=1)
        waiting = max(0, self.label_jobs - 1)
        if self.label_jobs and waiting >= self.options.label_queue:
            self.m_relabels.inc("busy")
            raise RequestError(f"{waiting} label updates are already waiting (`label_queue` is "
                               f"{self.options.label_queue}); retry in a moment", 429,
                               retry_after=self.label_seconds * (waiting + 1))
        loop = asyncio.get_running_loop()
        self.label_jobs += 1
        try:
            job = self._label_pool.submit(self._label_job, request, persist)
        except RuntimeError:
            self.label_jobs -= 1
            raise RequestError("the service is stopping; retry later", 503, retry_after=1) from None
        job.add_done_callback(lambda _: loop.call_soon_threadsafe(self._label_done))
        return await asyncio.wrap_future(job)

    def _label_done(self) -> None:
        self.label_jobs -= 1

    def _label_job(self, request: LabelRequest, persist: bool) -> dict[str, Any]:
        if self._stop.is_set():
            raise RequestError("the service is stopping; the label update was not applied", 503, retry_after=1)
        t0 = time.perf_counter()
        try:
            return self._apply_labels(request, persist)
        finally:
            self.label_seconds = max(0.1, time.perf_counter() - t0)

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        if self._stop.is_set():  # between batches of prompts: a shutdown does not wait for a long update
            raise RequestError("the service is stopping; the label update was not applied", 503, retry_after=1)
        return self.clf.text_encoder(texts)

    def _apply_labels(self, request: LabelRequest, persist: bool) -> dict[str, Any]:
        with self._labels_lock:
            current = self.labels
            template_set = request.template_set or current.template_set
            templates = request.templates or list(current.templates)
            check_prompt_count(request.labels, templates, self.options.max_prompts)
            t0 = time.perf_counter()
            matrix = embed_labels(request.labels, templates, self._encode_texts)
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
            "labels": {"count": len(self.labels.labels), "version": self.labels.version,
                       "updates_pending": self.label_jobs},
            "uptime_s": round(time.monotonic() - self.started, 3),
            "batching": {"max_batch": self.options.max_batch, "max_wait_ms": self.options.batch_wait_ms,
                         "queue": self.batcher.depth, "batches": self.batcher.batches,
                         "images": self.batcher.items},
            "token_required": self.options.token is not None,
            "stream": self.live.status() if self.live is not None else None,
            "watch": self.options.watch is not None,  # GET /v1/watch answers (a watch configuration runs)
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
        predictions, version = await service.classify_bytes(data, top_k)
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
        example = '{"labels": ["cat", {"name": "dog", "synonyms": ["puppy"]}]}'
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            service.m_relabels.inc("invalid")
            raise RequestError(f"the body is not valid JSON ({exc}); send {example}", 400) from None
        except RecursionError:
            service.m_relabels.inc("invalid")
            raise RequestError(f"the body's JSON is nested too deeply; send {example}", 400) from None
        try:
            result = await service.update_labels(doc, persist)
        except EdgeclipError as exc:
            if getattr(exc, "status", None) != 429:
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
        if last is not None and last.strip() and not _EVENT_ID.fullmatch(last.strip()):
            raise RequestError(f"Last-Event-ID / ?last_event_id= must be an event id (decimal digits, at most 18), "
                               f"got {last[:40]!r}", 400)
        since = int(last) if last and last.strip() else None
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


_EVENT_ID = re.compile(r"[0-9]{1,18}", re.ASCII)


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
        yield _sse(None, "state", {"time": iso_time(time.time()), "decision": live.latest_decision(),
                                   "labels": service.labels.names,
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
    spec.require_extra()
    if not spec.live and not spec.fps:  # a copy: the caller's spec is left as it was
        spec = dataclasses.replace(spec, options=dataclasses.replace(spec.options, realtime=True))
    return spec


def create_app(classifier: Classifier, source: str | SourceSpec | None = None, *,
               options: ServeOptions | None = None, stream_options: StreamOptions | None = None,
               source_options: SourceOptions | None = None, **overrides: Any) -> Starlette:
    """The ASGI app serving ``classifier`` (and ``source``, a source string or a SourceSpec, live).

    Keyword arguments override fields of ``options`` (see :class:`ServeOptions`): e.g.
    ``create_app(clf, token="s3cret", max_batch=16)``. A source string is parsed with ``source_options`` as
    ``edgeclip.stream`` parses it (the same kinds, the same rules); files, folders and synthetic frames play
    in real time. The returned app is a Starlette app: run it with any ASGI server, or mount it inside another
    app. ``app.state.service`` is the state. With ``watch`` (a configuration file), an ``edgeclip.watch.Watcher``
    runs with the service (``app.state.watcher``): its cameras, regions and states on the page, ``/v1/watch``,
    per-camera and per-region metrics (``edgeclip.serve.watchview``).
    """
    configure_threads()  # BLAS and OpenCV pools at one thread (runtime/process.py): decodes run in parallel
    opts = ServeOptions.build(options, **overrides)
    live = None
    if source is not None:
        spec = prepare_source(source, source_options)
        live = LiveSource(classifier, spec, stream_options, event_rate=opts.event_rate, top_k=opts.top_k)
    watch = _watcher(classifier, opts.watch) if opts.watch else None
    service = Service(classifier, live, opts)

    routes = build_routes(service)
    if watch is not None:
        from .watchview import register_watch_metrics, watch_routes

        register_watch_metrics(service.metrics, watch)
        routes[-1:-1] = watch_routes(watch)  # before the static files' mount

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.start()
        if watch is not None:
            watch.start()
        try:
            yield
        finally:
            if watch is not None:
                await run_in_threadpool(watch.stop)
            await run_in_threadpool(service.close)

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS)
    app.state.service, app.state.watcher = service, watch
    app.add_middleware(Guard, service=service, routes=routes)  # one route table: the app's, named in metrics
    return app


def _watcher(classifier: Classifier, config: str) -> Watcher:
    """The ``edgeclip watch`` run of the configuration file ``config``, on the service's classifier."""
    require("watch", ["yaml"], what="`watch`")
    from ..watch import Watcher, load_config

    return Watcher(classifier, load_config(config))


__all__ = ["ServeOptions", "Service", "create_app", "is_loopback", "prepare_source", "ACCEPTED_FORMATS", "LOOPBACK_HOSTS"]
