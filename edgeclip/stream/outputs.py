"""What ``edgeclip stream`` writes: JSON-lines events, an annotated video, a window; and its metrics helpers.

Everything here is bounded in memory: events are written and flushed one line at a time, latencies are
kept in a fixed-size reservoir, and resident memory is read from ``/proc/self/statm`` (no psutil).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import random
import re
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Any, Sequence

import numpy as np

from ..errors import OptionError, SourceError


# ---------------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------------
def rss_bytes() -> int | None:
    """Resident memory of this process in bytes (Linux ``/proc/self/statm``), or None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as f:
            resident = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident * os.sysconf("SC_PAGE_SIZE")


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100, linear interpolation) of ``values``; None when empty."""
    if not len(values):
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


class LatencyStats:
    """Latency percentiles in bounded memory: a recent window and a uniform reservoir over the whole run."""

    def __init__(self, window: int = 2048, reservoir: int = 4096, seed: int = 0) -> None:
        self.recent: deque[float] = deque(maxlen=window)
        self.sample: list[float] = []
        self.capacity, self.count = reservoir, 0
        self._rng = random.Random(seed)

    def add(self, seconds: float) -> None:
        """Record one latency (Vitter's algorithm R keeps the reservoir a uniform sample)."""
        self.count += 1
        self.recent.append(seconds)
        if len(self.sample) < self.capacity:
            self.sample.append(seconds)
        else:
            j = self._rng.randrange(self.count)
            if j < self.capacity:
                self.sample[j] = seconds

    def take_recent(self) -> list[float]:
        """The latencies since the last call (at most ``window``), then forget them."""
        out = list(self.recent)
        self.recent.clear()
        return out

    @staticmethod
    def summary_ms(values: Sequence[float]) -> dict[str, float | None]:
        """``{"p50", "p95", "max"}`` in milliseconds (None when there are no values)."""
        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1000.0, 2)
        return {"p50": ms(percentile(values, 50)), "p95": ms(percentile(values, 95)),
                "max": ms(max(values) if len(values) else None)}


# ---------------------------------------------------------------------------------------------------------
# JSON lines
# ---------------------------------------------------------------------------------------------------------
def iso_time(wall: float) -> str:
    """UTC wall-clock time with milliseconds, ISO-8601."""
    return _dt.datetime.fromtimestamp(wall, _dt.timezone.utc).isoformat(timespec="milliseconds")


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return None if not math.isfinite(v) else round(v, 6)
    if isinstance(v, (np.floating, np.integer)):
        return _clean(v.item())
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


class JsonLinesSink:
    """Thread-safe JSON-lines writer: one event per line, flushed at once (``tail -f`` friendly)."""

    def __init__(self, target: str | os.PathLike[str] | IO[str] | None = None, append: bool = False) -> None:
        if target is None or target == "-":
            self.out, self._own = sys.stdout, False
        elif isinstance(target, (str, os.PathLike)):
            path = Path(target)
            if path.parent and not path.parent.exists():
                raise OptionError(f"`jsonl` {path}: the folder {path.parent} does not exist")
            self.out, self._own = open(path, "a" if append else "w", encoding="utf-8", buffering=1), True
        else:
            self.out, self._own = target, False
        self._lock = threading.Lock()
        self.closed = False

    def emit(self, event: str, wall: float | None = None, **fields: Any) -> dict[str, Any]:
        """Write ``{"event": event, "time": ..., **fields}`` as one line; returns the record."""
        import time

        wall = time.time() if wall is None else wall
        record = {"event": event, "time": iso_time(wall), **_clean(fields)}
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            if not self.closed:
                try:
                    self.out.write(line)
                    self.out.flush()
                except (BrokenPipeError, ValueError):  # reader went away (`| head`): stop writing, keep running
                    self.closed = True
        return record

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                try:
                    self.out.flush()
                except (BrokenPipeError, ValueError):
                    pass
            if self._own:
                self.out.close()
            self.closed = True


# ---------------------------------------------------------------------------------------------------------
# drawing, video file, window
# ---------------------------------------------------------------------------------------------------------
def annotate(image: np.ndarray, lines: Sequence[str], roi: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A copy of ``image`` with text lines (label and score first) and the ROI rectangle drawn on it."""
    import cv2

    out = np.ascontiguousarray(image.copy() if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    h, w = out.shape[:2]
    scale = max(0.35, min(w, h) / 640.0)
    thick = max(1, int(round(scale * 2)))
    if roi is not None:
        x, y, rw, rh = roi
        cv2.rectangle(out, (x, y), (x + rw - 1, y + rh - 1), (0, 255, 255), thick)
    y = int(24 * scale) + 4
    for i, text in enumerate(lines):
        s = scale if i == 0 else scale * 0.7
        cv2.putText(out, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, s, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(out, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, s, (255, 255, 255), thick, cv2.LINE_AA)
        y += int(26 * s) + 6
    return out


FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


class AnnotatedVideo:
    """An annotated video file, opened at the first frame (its size); later frames are resized to fit."""

    def __init__(self, path: str | os.PathLike[str], fps: float | None = None) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in FOURCC:
            raise OptionError(f"`video_out` {self.path}: use a .mp4, .avi, .mkv or .mov file name")
        if not self.path.parent.exists():
            raise OptionError(f"`video_out` {self.path}: the folder {self.path.parent} does not exist")
        if fps is not None and not fps > 0:
            raise OptionError(f"`video_fps` must be > 0, got {fps}")
        self.fps = float(fps) if fps else None  # None: the stream picks the rate before the first frame
        self.fourcc = FOURCC[suffix]
        self.writer = None
        self.size: tuple[int, int] | None = None

    def write(self, image: np.ndarray) -> None:
        import cv2

        if self.writer is None:
            h, w = image.shape[:2]
            self.size = (w, h)
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (w, h))
            if not self.writer.isOpened():
                raise SourceError(f"`video_out` {self.path}: OpenCV cannot write {self.fourcc} video here; "
                                  f"try an .avi file name (MJPG)")
        if (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(image)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None


def display_problem() -> str | None:
    """Why an on-screen window cannot be shown here, or None when it can."""
    import cv2

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return ("no display: DISPLAY is not set (headless machine or SSH without -X); drop `show` and use "
                "video_out='annotated.mp4' or jsonl='events.jsonl' instead")
    gui = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    if gui and gui.group(1).upper() == "NONE":
        return (f"this OpenCV ({cv2.__version__}) has no GUI support (opencv-python-headless?); install "
                f"opencv-python or use the system OpenCV to use `show`, or write `video_out` instead")
    return None


class Window:
    """An OpenCV window; ``show`` returns False when the user pressed q or Esc."""

    name = "edgeclip stream"

    def __init__(self) -> None:
        problem = display_problem()
        if problem:
            raise OptionError(f"`show`: {problem}")

    def show(self, image: np.ndarray) -> bool:
        import cv2

        cv2.imshow(self.name, image)
        key = cv2.waitKey(1) & 0xFF
        return key not in (ord("q"), 27)

    def close(self) -> None:
        import cv2

        try:
            cv2.destroyWindow(self.name)
        except cv2.error:
            pass


def rate(times: Sequence[float], stale: float = 10.0) -> float | None:
    """Events per second over the recent monotonic ``times`` (None: fewer than two; 0.0: none for ``stale``
    seconds)."""
    times = list(times)
    if len(times) < 2:
        return None
    if time.monotonic() - times[-1] > stale:
        return 0.0
    return (len(times) - 1) / max(times[-1] - times[0], 1e-9)
