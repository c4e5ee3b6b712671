"""The live source behind ``edgeclip serve`` with a source: the streaming pipeline on a thread, its decisions as
events for ``GET /v1/stream`` and its newest annotated frame for ``GET /v1/preview.mjpg``.

The pipeline (``edgeclip.stream``) runs unchanged: this module is its sink (pipeline events) and
an observer (one call per classified frame). Everything is bounded: the event log keeps the last
:data:`EVENT_LOG` events with increasing ids (a client resumes from its last id), and only the newest frame
is kept; it is annotated and JPEG-encoded at most once per frame, however many viewers there are.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from ..runtime.classifier import Classifier
from ..runtime.images import encode_jpeg
from ..stream.outputs import annotate, iso_time, rate
from ..stream.loop import FrameResult, StreamPipeline
from ..stream.options import StreamOptions
from ..sources import SourceSpec

log = logging.getLogger("edgeclip.serve")

#: Events kept for clients that reconnect (``Last-Event-ID``).
EVENT_LOG = 512
#: Longest side of preview frames (larger frames are scaled down before JPEG encoding).
PREVIEW_MAX_SIDE = 1280


def _plain(v: Any) -> Any:
    """JSON-ready copy: numpy scalars to Python, non-finite floats to None."""
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float):
        return None if not math.isfinite(v) else round(v, 6)
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


class LiveSource:
    """Runs ``StreamPipeline(classifier, spec, options)`` on a thread and publishes what it decides.

    ``event_rate``: most ``decision`` events per second (a label change is always sent);
    ``top_k``: labels with their smoothed probabilities in each decision.
    """

    def __init__(self, classifier: Classifier, spec: SourceSpec, options: StreamOptions | None = None,
                 event_rate: float = 10.0, top_k: int = 5) -> None:
        self.clf, self.spec = classifier, spec
        self.options = options or StreamOptions()
        self.pipeline = StreamPipeline(classifier, spec, self.options, sink=self, observers=[self._observe])
        self.event_period = 1.0 / event_rate if event_rate > 0 else 0.0
        self.top_k = top_k
        self._events: deque[tuple[int, str, dict[str, Any]]] = deque(maxlen=EVENT_LOG)
        self._seq = 0
        self._lock = threading.Lock()
        self._latest: FrameResult | None = None
        self._latest_seq = 0
        self._jpeg: tuple[int, bytes] | None = None  # (frame seq, encoded) cache shared by viewers
        self._jpeg_lock = threading.Lock()
        self._last_decision_event = 0.0
        self._times: deque[float] = deque(maxlen=64)  # monotonic times of recent classified frames
        self._captures: deque[tuple[float, int]] = deque(maxlen=64)
        self._latencies: deque[float] = deque(maxlen=256)  # seconds, capture -> decision, recent frames
        self.thread: threading.Thread | None = None
        self.end: dict[str, Any] | None = None
        self.error: str | None = None
        self.started_at: float | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the source and start streaming on a thread (idempotent)."""
        if self.thread is not None:
            return
        self.started_at = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="edgeclip-serve-stream", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.end = self.pipeline.run()
        except Exception as exc:  # a source that cannot be opened, or a crash: reported by /v1/status
            log.exception("the stream stopped")
            self.error = f"{type(exc).__name__}: {exc}"
            self.emit("error", error=self.error)

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        self.pipeline.request_stop("stopped")
        if self.thread is not None:
            self.thread.join(timeout)

    def relabel(self, names: list[str], matrix: np.ndarray) -> None:
        """Hand a new label set to the stream (applied before its next batch, or when it starts); an ended
        stream's classifier is relabelled at once."""
        if self.thread is None or self.running:
            self.pipeline.queue_relabel(names, matrix, reason="api")
        else:
            self.clf.set_label_matrix(names, matrix)

    # -- the pipeline's sink and observer --------------------------------------------------------------
    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Record one event (the pipeline's sink interface); returns it."""
        record = {"event": event, "time": iso_time(time.time()), **_plain(fields)}
        with self._lock:
            self._seq += 1
            self._events.append((self._seq, event, record))
        return record

    def _observe(self, r: FrameResult) -> None:
        now = time.monotonic()
        with self._lock:
            self._latest = r
            self._latest_seq += 1
            self._times.append(now)
            self._latencies.append(r.latency)
        if self.pipeline.capture is not None:
            self._captures.append((now, self.pipeline.capture.captured))
        changed = r.decision.changed
        if changed or now - self._last_decision_event >= self.event_period:
            self._last_decision_event = now
            self.emit("decision", **self.decision_record(r))

    def decision_record(self, r: FrameResult) -> dict[str, Any]:
        """What one classified frame decided: label, score, top smoothed probabilities, latency."""
        k = min(self.top_k, len(r.names))
        order = np.argsort(-r.smoothed, kind="stable")[:k]
        return {"frame": r.frame.index, "label": r.decision.label, "score": float(r.decision.score),
                "changed": bool(r.decision.changed), "previous": r.decision.previous,
                "top": [{"label": r.names[i], "score": float(r.smoothed[i])} for i in order],
                "latency_ms": r.latency * 1000.0, "fps": self.inference_fps()}

    # -- readers (any thread) --------------------------------------------------------------------------
    def events_after(self, seq: int) -> list[tuple[int, str, dict[str, Any]]]:
        """Events with an id above ``seq``, oldest first (the log keeps the last :data:`EVENT_LOG`)."""
        with self._lock:
            return [e for e in self._events if e[0] > seq]

    @property
    def last_event_id(self) -> int:
        with self._lock:
            return self._seq

    def latest_decision(self) -> dict[str, Any] | None:
        with self._lock:
            r = self._latest
        return None if r is None else _plain(self.decision_record(r))

    @property
    def frame_seq(self) -> int:
        """Increases with every classified frame (viewers poll it to see whether a new frame is there)."""
        with self._lock:
            return self._latest_seq

    def preview_jpeg(self) -> tuple[int, bytes] | None:
        """(frame seq, JPEG of the newest classified frame with its label drawn on it), or None before one."""
        with self._lock:
            r, seq = self._latest, self._latest_seq
        if r is None:
            return None
        with self._jpeg_lock:
            if self._jpeg is not None and self._jpeg[0] == seq:
                return self._jpeg
            image, roi = r.frame.image, self.options.roi
            box = None if roi is None else roi.pixels(image.shape[1], image.shape[0])
            lines = [f"{r.decision.label} {r.decision.score:.2f}",
                     f"#{r.frame.index}  {self.inference_fps() or 0:.1f} fps  {r.latency * 1000:.0f} ms"]
            try:
                image = annotate(image, lines, box)
            except ImportError:  # no OpenCV: the plain frame (the page shows the label beside it)
                pass
            self._jpeg = (seq, encode_jpeg(image, max_side=PREVIEW_MAX_SIDE))
            return self._jpeg

    def inference_fps(self) -> float | None:
        """Classified frames per second over the recent frames (None before two, or after 5 s of none)."""
        with self._lock:
            times = list(self._times)
        return rate(times, stale=5.0)

    def capture_fps(self) -> float | None:
        caps = list(self._captures)
        if len(caps) < 2 or caps[-1][0] <= caps[0][0]:
            return None
        return (caps[-1][1] - caps[0][1]) / (caps[-1][0] - caps[0][0])

    def status(self) -> dict[str, Any]:
        """Source, state, current decision, counters, rates and latency percentiles."""
        from ..stream.outputs import LatencyStats

        m = self.pipeline.metrics()
        with self._lock:
            latencies = list(self._latencies)
        lat = LatencyStats.summary_ms(latencies)
        state = "running" if self.running else ("error" if self.error else ("ended" if self.end else "starting"))
        if self.thread is None:
            state = "idle"
        return _plain({"source": self.spec.text, "kind": self.spec.kind, "live": self.spec.live, "state": state,
                       "end_reason": (self.end or {}).get("reason"),
                       "error": self.error or (self.end or {}).get("error"),
                       "decision": self.latest_decision(), "capture_fps": self.capture_fps(),
                       "inference_fps": self.inference_fps(), "latency_ms": lat, **m})
