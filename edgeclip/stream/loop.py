"""The streaming loop behind ``edgeclip stream``: capture thread, latest-frame mailbox, inference, decisions.

Threads and data flow::

    capture thread                       mailbox (capacity = batch)             inference (calling thread)
    reader.read() -> Frame(t_capture) -> put: a full box drops its oldest  ->  take all -> preprocess once
    lost live source: reopen with           frame (counted); unpaced sources     -> encoder -> probabilities
    exponential backoff, JSON events        block instead (no drops)             -> EMA -> hysteresis -> events

* **Latest-frame policy.** A live camera is read continuously on its own thread (so OpenCV's internal
  buffer never fills with old frames) into a mailbox that holds at most ``batch`` frames and drops the
  oldest when full. A slow model therefore always classifies the newest frames: end-to-end latency
  (capture -> decision) stays near one inference time instead of growing without bound, and the drops are
  counted. With ``batch > 1`` the inference step takes every frame waiting in the box as one batch
  (micro-batching under load, no added wait when the model keeps up).
* **Unpaced sources** (a video file or folder read as fast as possible) use the same mailbox but the capture
  thread waits for room instead of dropping, so every frame is classified. ``fps``/``realtime`` make
  them paced like a camera.
* Everything is bounded: no list grows with the number of frames (latencies live in a fixed reservoir).

This module never imports torch.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import EdgeclipError, FrameError, ImageReadError, OptionError, SourceError
from ..runtime.classifier import Classifier
from ..runtime.cpu import lower_thread_priority
from .decisions import Decision, EmaSmoother, LabelDecider
from .options import StreamOptions
from .relabel import LabelReloader, Relabel
from ..sources import FrameReader, SourceOptions, SourceSpec
from .outputs import AnnotatedVideo, JsonLinesSink, LatencyStats, Window, annotate, rss_bytes

log = logging.getLogger("edgeclip.runtime")

#: Consecutive unexpected read failures of a file or folder source before its capture ends with an error.
MAX_READ_FAILURES = 100

#: End reasons after which ``edgeclip stream`` exits 0.
CLEAN_END = ("eof", "max_frames", "duration", "stopped", "SIGINT", "SIGTERM", "window_closed")


@dataclass
class Frame:
    """One captured frame: source frame number, monotonic capture time, source-clock time, wall time."""

    image: np.ndarray
    index: int
    t_capture: float
    t_media: float
    wall: float


class FrameMailbox:
    """A bounded mailbox of the newest frames: ``put`` drops the oldest when full (or waits, if blocking)."""

    def __init__(self, capacity: int = 1) -> None:
        if capacity < 1:
            raise OptionError(f"batch must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self.dropped = 0
        self.closed = False

    def put(self, item: Any, block: bool = False) -> bool:
        """Deliver an item; False once the mailbox is closed. Non-blocking puts evict the oldest item."""
        with self._cond:
            while block and len(self._items) >= self.capacity and not self.closed:
                self._cond.wait(0.1)
            if self.closed:
                return False
            if len(self._items) >= self.capacity:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify_all()
            return True

    def take(self, timeout: float | None = None) -> list[Any]:
        """Everything waiting (oldest first), after waiting up to ``timeout`` s for at least one item."""
        with self._cond:
            if not self._items and not self.closed:
                self._cond.wait(timeout)
            out = list(self._items)
            self._items.clear()
            self._cond.notify_all()
            return out

    def close(self) -> None:
        """No more puts; waiting producers and consumers wake up."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    @property
    def drained(self) -> bool:
        """Closed and empty: the consumer has seen every frame."""
        with self._cond:
            return self.closed and not self._items


def loop_end(stop: str | None, started: float, duration: float | None, now: float) -> str | None:
    """Why an inference loop ends now, or None: a requested stop (its reason), else ``"duration"`` once
    ``duration`` seconds (if set) have passed since ``started`` (both ``time.monotonic()``)."""
    if stop is not None:
        return stop
    if duration and now - started >= duration:
        return "duration"
    return None


@dataclass(frozen=True)
class ReconnectPolicy:
    """Exponential backoff for lost live sources: ``initial`` doubling up to ``maximum`` seconds between
    attempts; ``give_up`` > 0 ends the stream after that many seconds without frames (0: never)."""

    initial: float = 0.5
    maximum: float = 30.0
    give_up: float = 0.0

    @classmethod
    def of(cls, options: SourceOptions) -> ReconnectPolicy:
        """The policy a source's options ask for (checked there)."""
        return cls(options.reconnect_min, options.reconnect_max, options.give_up_after)


class CaptureWorker:
    """Reads a source on its own thread into a mailbox; reconnects lost live sources; loops files."""

    def __init__(self, spec: SourceSpec, mailbox: FrameMailbox, emit: Callable[..., Any], *,
                 max_frames: int = 0, reader: FrameReader | None = None, name: str = "edgeclip-capture",
                 nice: int = 0) -> None:
        self.spec, self.mailbox, self.emit = spec, mailbox, emit
        self.lossless = not spec.paced  # unpaced sources wait for room in the mailbox instead of dropping
        self.loop, self.max_frames = spec.options.loop, max_frames
        self.policy = ReconnectPolicy.of(spec.options)
        # opened now, on the caller's thread (SourceError), unless a reader is given: a reader that reads as
        # lost (None) makes a live source that is down at start reconnect with backoff like a lost one
        self.reader: FrameReader = reader if reader is not None else spec.open()
        self.fps = spec.nominal_fps(self.reader)
        self.captured = self.reconnects = self.frame_errors = 0
        self._failures = 0
        self._last_error_event = 0.0
        self.end_reason: str | None = None
        self.error: str | None = None
        self.stop_event = threading.Event()
        self._lost_at: float | None = None
        self._attempts = 0
        self._delay = self.policy.initial
        self.nice = nice  # the capture thread runs this much nicer (lower priority) than the caller (Linux)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        if self.thread.is_alive():
            log.warning("the capture thread is still blocked in a read; leaving it behind")

    def _run(self) -> None:
        lower_thread_priority(self.nice)
        try:
            self._loop()
        except Exception as exc:  # report, do not die silently in a thread
            log.exception("capture failed")
            self.end_reason, self.error = "error", f"{type(exc).__name__}: {exc}"
        finally:
            if self.end_reason is None:
                self.end_reason = "stopped"
            self.reader.close()
            self.mailbox.close()

    def _loop(self) -> None:
        spec = self.spec
        pace = spec.paced and not spec.live  # files/folders/synthetic played in real time
        period = 1.0 / self.fps
        k, media_offset, t0 = 0, 0.0, time.monotonic()
        last_ok = t0
        while not self.stop_event.is_set():
            if self.max_frames and self.captured >= self.max_frames:
                self.end_reason = "max_frames"
                return
            reason = None
            try:
                image = self.reader.read()
            except FrameError as exc:  # one bad frame or file: an event, and the stream goes on
                self._frame_error(exc)
                continue
            except Exception as exc:  # never let one read kill the capture thread
                if not spec.live:
                    self._failures += 1
                    if self._failures > MAX_READ_FAILURES:
                        raise
                    self._frame_error(exc)
                    continue
                log.warning("%s: read failed", spec.text, exc_info=True)
                image, reason = None, f"{type(exc).__name__}: {exc}"
            self._failures = 0
            if self.stop_event.is_set():
                return
            if image is None:
                if spec.live:
                    if not self._recover(last_ok, reason):
                        return
                    continue
                if self.loop and k > 0:
                    self.reader.close()
                    self.reader = spec.open()
                    media_offset += k * period
                    k, t0 = 0, time.monotonic()
                    continue
                self.end_reason = "eof"
                return
            if pace:
                due = t0 + k * period
                now = time.monotonic()
                if due > now:
                    if self.stop_event.wait(due - now):
                        return
                elif now - due > 1.0:  # far behind (machine suspended, slow disk): resynchronise
                    t0 = now - k * period
            t = time.monotonic()
            if self._lost_at is not None:
                self._reconnected(t, last_ok)
            frame = Frame(image, self.captured, t, t if spec.live else media_offset + k * period, time.time())
            k += 1
            last_ok = t
            if not self.mailbox.put(frame, block=self.lossless):
                return  # closed while this frame was read: it never entered the pipeline, so it is not counted
            self.captured += 1

    def _frame_error(self, exc: Exception) -> None:
        """Report one unreadable frame as a ``frame_error`` event (live sources: rate-limited)."""
        self.frame_errors += 1
        message = str(exc) if isinstance(exc, EdgeclipError) else f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if self.spec.live and self.frame_errors > 20 and now - self._last_error_event < 10.0:
            return  # a camera sending garbage must not flood the events: the first 20, then one per 10 s
        self._last_error_event = now
        log.warning("%s: frame skipped: %s", self.spec.text, message)
        self.emit("frame_error", frame=self.captured, source=self.spec.text, file=getattr(exc, "file", None),
                  error=message, count=self.frame_errors)

    def _recover(self, last_ok: float, reason: str | None = None) -> bool:
        """Reopen a lost live source with exponential backoff; False when stopped or giving up."""
        policy = self.policy
        if self._lost_at is None:
            self._lost_at, self._attempts, self._delay = last_ok, 0, policy.initial
            reason = reason or getattr(self.reader, "lost_reason", None)
            log.warning("%s: lost (%s); reconnecting with backoff up to %.0f s", self.spec.text,
                        reason or "no frame", policy.maximum)
            self.emit("source_lost", frame=self.captured - 1, source=self.spec.text, reason=reason)
        self.reader.close()
        while not self.stop_event.is_set():
            down = time.monotonic() - self._lost_at
            if policy.give_up and down >= policy.give_up:
                self.end_reason = "source_lost"
                self.emit("source_gone", frame=self.captured - 1, source=self.spec.text, gap_s=down,
                          attempts=self._attempts)
                return False
            delay = self._delay
            if policy.give_up:
                delay = min(delay, max(0.0, policy.give_up - down) + 0.01)
            if self.stop_event.wait(delay):
                return False
            self._attempts += 1
            self._delay = min(self._delay * 2.0, policy.maximum)
            try:
                self.reader = self.spec.open()
                return True  # the next read says whether frames really flow again
            except SourceError as exc:
                log.info("reconnect attempt %d failed: %s", self._attempts, exc)
        return False

    def _reconnected(self, now: float, last_ok: float) -> None:
        self.reconnects += 1
        gap = now - last_ok
        log.warning("%s: back after %.2f s (%d attempts)", self.spec.text, gap, self._attempts)
        self.emit("reconnect", frame=self.captured, source=self.spec.text, gap_s=gap, attempts=self._attempts)
        self._lost_at = None


@dataclass
class FrameResult:
    """What the pipeline decided for one frame (handed to observers)."""

    frame: Frame
    names: list[str]
    probs: np.ndarray
    smoothed: np.ndarray
    decision: Decision
    latency: float

    @property
    def raw_label(self) -> str:
        return self.names[int(np.argmax(self.probs))]


class StreamPipeline:
    """Runs a source through a classifier until the source ends, a limit is hit or ``request_stop``."""

    def __init__(self, classifier: Classifier, source: SourceSpec, options: StreamOptions | None = None,
                 sink: JsonLinesSink | None = None, video: AnnotatedVideo | None = None,
                 window: Window | None = None, reloader: LabelReloader | None = None,
                 observers: Sequence[Callable[[FrameResult], None]] = ()) -> None:
        self.clf, self.source = classifier, source
        self.opts = options or StreamOptions()
        self.sink, self.video, self.window, self.reloader = sink, video, window, reloader
        self.observers = list(observers)
        self.smoother = EmaSmoother(self.opts.half_life)
        self.decider = LabelDecider(classifier.label_names, self.opts.threshold, self.opts.hysteresis,
                                    self.opts.min_frames)
        self.latency = LatencyStats()
        self.mailbox = FrameMailbox(self.opts.batch)
        self.capture: CaptureWorker | None = None
        self.inferred = self.bad_frames = self.relabels = 0
        self.last: FrameResult | None = None
        self._stop_reason: str | None = None
        self._queued: Relabel | None = None  # a label set handed over by queue_relabel (another thread)
        self._queue_lock = threading.Lock()

    # -- control ---------------------------------------------------------------------------------------
    def request_stop(self, reason: str = "stopped") -> None:
        """Stop after the current batch (safe to call from a signal handler or another thread)."""
        if self._stop_reason is None:
            self._stop_reason = reason

    @property
    def stop_requested(self) -> bool:
        return self._stop_reason is not None

    def queue_relabel(self, names: Sequence[str], matrix: np.ndarray, reason: str = "api") -> None:
        """Swap in a new label set between two batches (safe to call from another thread)."""
        with self._queue_lock:
            self._queued = Relabel(reason, list(names), np.asarray(matrix, dtype=np.float32))

    def emit(self, event: str, **fields: Any) -> None:
        """Write one event to the sink, if there is one."""
        if self.sink is not None:
            self.sink.emit(event, **fields)

    # -- the loop --------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Stream until the end; returns the final ``end`` record (reason, totals, latency percentiles)."""
        opts, spec = self.opts, self.source
        if self.reloader is not None:
            first = self.reloader.load("start")
            self._apply(first)
        self.capture = cap = CaptureWorker(spec, self.mailbox, self.emit, max_frames=opts.max_frames)
        if self.video is not None:  # default rate: fps_limit for a paced source, else the source's own
            self.video.fps = self.video.fps or (opts.fps_limit if spec.paced else 0) or cap.fps
        self.emit("start", source=spec.text, kind=spec.kind, live=spec.live, paced=spec.paced,
                  source_fps=cap.fps, bundle=str(self.clf.bundle.path), model=self.clf.bundle.model.get("id"),
                  backend=self.clf.encoder.name, precision=self.clf.precision, labels=self.clf.label_names,
                  batch=opts.batch, half_life=str(opts.half_life), threshold=opts.threshold,
                  hysteresis={"margin": opts.hysteresis, "min_frames": opts.min_frames},
                  roi=None if opts.roi is None else [opts.roi.x, opts.roi.y, opts.roi.w, opts.roi.h])
        t_start = time.monotonic()
        self._t_start = self._t_summary = t_start
        self._prev = (0, 0, 0)  # captured, inferred, dropped at the last summary
        reason = "stopped"
        next_slot = t_start
        cap.start()
        try:
            while True:
                now = time.monotonic()
                ending = loop_end(self._stop_reason, t_start, opts.duration, now)
                if ending is not None:
                    reason = ending
                    break
                if self.reloader is not None:
                    result = self.reloader.poll()
                    if result is not None:
                        self._apply(result)
                if self._queued is not None:
                    with self._queue_lock:
                        queued, self._queued = self._queued, None
                    self._apply(queued)
                if opts.fps_limit and now < next_slot:
                    time.sleep(min(next_slot - now, 0.1))
                    continue
                frames = self.mailbox.take(timeout=0.1)
                if frames:
                    next_slot = max(next_slot + 1.0 / opts.fps_limit, time.monotonic()) if opts.fps_limit else 0
                    self._infer(frames)
                elif self.mailbox.drained:
                    reason = cap.end_reason or "eof"
                    break
                if opts.summary_every and time.monotonic() - self._t_summary >= opts.summary_every:
                    self._summary()
        finally:
            cap.stop()
            self.mailbox.close()
            cap.join(timeout=3.0)
        return self._end(reason)

    # -- inference -------------------------------------------------------------------------------------
    def _infer(self, frames: list[Frame]) -> None:
        clf, roi = self.clf, self.opts.roi
        th, tw = clf.preprocessor.config.size
        pixels = np.empty((len(frames), 3, th, tw), dtype=np.float32)
        good: list[Frame] = []
        for f in frames:
            box = None if roi is None else roi.pixels(f.image.shape[1], f.image.shape[0])
            try:
                pixels[len(good)] = clf.preprocessor(f.image, roi=box)  # preprocessing: once per frame
                good.append(f)
            except ImageReadError as exc:
                self.bad_frames += 1
                if self.bad_frames <= 5:
                    log.warning("frame %d skipped: %s", f.index, exc)
        if not good:
            return
        probs = clf.probabilities(clf.embed_pixels(pixels[:len(good)]))
        names = clf.label_names
        for f, p in zip(good, probs):
            smoothed = self.smoother.update(p, f.t_media)
            decision = self.decider.update(smoothed)
            latency = time.monotonic() - f.t_capture
            self.latency.add(latency)
            self.inferred += 1
            result = FrameResult(f, names, p, smoothed, decision, latency)
            self.last = result
            if decision.changed:
                self.emit("label", wall=f.wall, frame=f.index, label=decision.label, score=decision.score,
                          previous=decision.previous, latency_ms=latency * 1000.0, top=self._top(smoothed, names))
            if self.opts.every_frame:
                best = int(np.argmax(p))
                self.emit("frame", wall=f.wall, frame=f.index, label=decision.label, score=decision.score,
                          raw_label=names[best], raw_score=float(p[best]), latency_ms=latency * 1000.0)
            if self.video is not None or self.window is not None:
                self._draw(result)
            for observer in self.observers:
                observer(result)

    def _top(self, scores: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
        k = min(self.opts.top_k, len(names))
        order = np.argsort(-scores, kind="stable")[:k]
        return [{"label": names[i], "score": float(scores[i])} for i in order]

    def _draw(self, r: FrameResult) -> None:
        image, roi = r.frame.image, self.opts.roi
        box = None if roi is None else roi.pixels(image.shape[1], image.shape[0])
        fps = self.inferred / max(time.monotonic() - self._t_start, 1e-6)
        img = annotate(image, [f"{r.decision.label} {r.decision.score:.2f}",
                               f"#{r.frame.index}  {fps:.1f} fps  {r.latency * 1000:.0f} ms"], box)
        if self.video is not None:
            self.video.write(img)
        if self.window is not None and not self.window.show(img):
            self.request_stop("window_closed")

    def _apply(self, result: Relabel) -> None:
        if not result.ok:
            log.warning("relabel (%s) failed, keeping the current labels: %s", result.reason, result.error)
            self.emit("relabel_error", reason=result.reason, error=result.error,
                      file=str(self.reloader.path) if self.reloader else None)
            return
        old = list(self.clf.label_names)
        self.clf.set_label_matrix(result.names, result.matrix)
        self.decider.set_names(result.names)
        self.smoother.reset()
        self.relabels += 1
        log.info("relabelled (%s): %d labels in %.2f s", result.reason, len(result.names), result.seconds)
        self.emit("relabel", reason=result.reason, labels=result.names, count=len(result.names),
                  previous_count=len(old), seconds=result.seconds,
                  file=str(self.reloader.path) if self.reloader else None,
                  frame=self.last.frame.index if self.last else None)

    # -- metrics ---------------------------------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        """Totals so far (frames, drops, reconnects, memory)."""
        cap = self.capture
        rss = rss_bytes()
        return {"captured": cap.captured if cap else 0, "inferred": self.inferred, "dropped": self.mailbox.dropped,
                "bad_frames": self.bad_frames, "frame_errors": cap.frame_errors if cap else 0,
                "reconnects": cap.reconnects if cap else 0,
                "relabels": self.relabels, "rss_mb": None if rss is None else round(rss / 2**20, 2)}

    def _record(self, now: float, since: float, prev: tuple[int, int, int],
                latencies: Sequence[float]) -> dict[str, Any]:
        """Totals, the current decision, and rates and latency percentiles since ``since`` (counts then ``prev``)."""
        dt = max(now - since, 1e-9)
        m = self.metrics()
        d = self.last.decision if self.last else None
        return {"frame": self.last.frame.index if self.last else None, "elapsed_s": now - self._t_start,
                "label": d.label if d else None, "score": d.score if d else None,
                "capture_fps": (m["captured"] - prev[0]) / dt, "inference_fps": (m["inferred"] - prev[1]) / dt,
                "latency_ms": LatencyStats.summary_ms(latencies), **m}

    def _summary(self) -> None:
        now = time.monotonic()
        record = self._record(now, self._t_summary, self._prev, self.latency.take_recent())
        self.emit("summary", dropped_interval=record["dropped"] - self._prev[2], **record)
        self._prev = (record["captured"], record["inferred"], record["dropped"])
        self._t_summary = now

    def _end(self, reason: str) -> dict[str, Any]:
        record = {"reason": reason, **self._record(time.monotonic(), self._t_start, (0, 0, 0), self.latency.sample)}
        if self.capture is not None and self.capture.error:
            record["error"] = self.capture.error
        self.emit("end", **record)
        return record
