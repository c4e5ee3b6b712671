"""V4L2 cameras: ``0`` (an index) or ``/dev/video0``; width, height and fps are requested from the camera."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..errors import SourceError
from .opencv import CaptureReader, opencv_has


def match(kind: str, text: str, options: Any) -> dict[str, Any] | None:
    """A camera index (``0``) or a V4L2 device path (``/dev/video0``)."""
    if re.fullmatch(r"\d+", text):
        return {"target": int(text)}
    if re.fullmatch(r"/dev/video\d+", text):
        return {"target": text}
    return None


def open_reader(spec: Any) -> CaptureReader:
    """Open the camera with a one-frame buffer and the size and rate asked for."""
    import cv2

    dev = spec.target if isinstance(spec.target, int) else str(spec.target)
    if isinstance(dev, str) and not Path(dev).exists():
        raise SourceError(f"{dev}: no such camera device (list them with `ls /dev/video*`; "
                          f"check permissions with `groups`, the user needs the video group)")
    api = cv2.CAP_V4L2 if os.name == "posix" and opencv_has("V4L2") else cv2.CAP_ANY
    cap = cv2.VideoCapture(dev, api)
    if not cap.isOpened():
        raise SourceError(f"camera {dev}: cannot open it (missing, busy in another program, or no "
                          f"permission); list cameras with `ls /dev/video*`")
    cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, spec.width), (cv2.CAP_PROP_FRAME_HEIGHT, spec.height),
                        (cv2.CAP_PROP_FPS, spec.fps)):
        if value:
            cap.set(prop, float(value))
    return CaptureReader(cap, f"camera {dev}")
