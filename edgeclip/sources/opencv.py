"""OpenCV's video I/O for the source kinds that need it: which backends this OpenCV has, and a reader over
``cv2.VideoCapture``. OpenCV is imported inside the functions, so image folders, MJPEG and synthetic sources
work without it."""
from __future__ import annotations

import functools
import logging
import re
from typing import Any

import numpy as np

log = logging.getLogger("edgeclip.sources")


def _build_flag(name: str) -> bool | None:
    import cv2

    m = re.search(rf"^\s*{name}:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE | re.IGNORECASE)
    return None if m is None else m.group(1).upper().startswith("YES")


@functools.lru_cache(maxsize=None)
def opencv_has(backend: str) -> bool:
    """Whether this OpenCV can use a video I/O backend (``GSTREAMER``, ``FFMPEG``, ``V4L2``); asked once each."""
    import cv2

    flag = _build_flag({"GSTREAMER": "GStreamer", "FFMPEG": "FFMPEG", "V4L2": "v4l/v4l2"}.get(backend, backend))
    try:
        registered = bool(cv2.videoio_registry.hasBackend(getattr(cv2, f"CAP_{backend}")))
    except (AttributeError, cv2.error):
        registered = bool(flag)
    return registered if flag is None else (registered and flag)

def ffmpeg_params(options: Any) -> list[int]:
    """The ``cv2.VideoCapture`` parameters that hold FFmpeg's decoder to ``options.decode_threads`` threads
    ([] when unset: OpenCV's default, one per core)."""
    import cv2

    return [cv2.CAP_PROP_N_THREADS, int(options.decode_threads)] if options.decode_threads else []


class CaptureReader:
    """A ``cv2.VideoCapture`` (camera, file, URL or GStreamer pipeline)."""

    def __init__(self, cap, what: str) -> None:
        import cv2

        self.cap, self.what = cap, what
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0 < fps < 1000 else None

    def read(self) -> np.ndarray | None:
        try:
            ok, frame = self.cap.read()
        except Exception as exc:  # cv2.error from a broken decoder: treat as lost
            log.warning("%s: read failed (%s)", self.what, exc)
            return None
        return frame if ok and frame is not None and frame.size else None

    def close(self) -> None:
        try:
            self.cap.release()
        except Exception:  # releasing a broken capture must not hide the original problem
            pass

