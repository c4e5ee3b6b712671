"""GStreamer sources: Jetson CSI cameras (``csi://N``), USB cameras through ``v4l2src`` (``usb://N``) and raw
pipelines ending in ``appsink`` (``gst:PIPELINE`` or ``a ! b ! appsink``).

They need an OpenCV built with GStreamer. The ``opencv-python`` wheels from PyPI are built without it, so
on a Jetson use the system OpenCV from JetPack; :func:`require_gstreamer` says how.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import SourceError
from .opencv import CaptureReader, opencv_has

GSTREAMER_HELP = (
    "this OpenCV ({version}) was built without GStreamer, which {what} needs. The opencv-python / "
    "opencv-python-headless wheels from PyPI never include it. Use the system OpenCV instead: on a Jetson "
    "(JetPack) run `sudo apt install python3-opencv` (usually already installed), create the virtual "
    "environment with `python3 -m venv --system-site-packages ...` so it can see the system cv2, and do not "
    "pip-install opencv-python into it (pip uninstall opencv-python opencv-python-headless if it is there). "
    "Check with: python3 -c \"import cv2; print(cv2.getBuildInformation())\" | grep -i gstreamer. "
    "Without GStreamer, a USB camera also works as source='/dev/video0' (V4L2)")



def require_gstreamer(what: str) -> None:
    """Raise SourceError explaining how to get a GStreamer-enabled OpenCV when this one lacks it."""
    import cv2

    if not opencv_has("GSTREAMER"):
        raise SourceError(GSTREAMER_HELP.format(version=cv2.__version__, what=what))


def csi_pipeline(sensor_id: int = 0, width: int = 1280, height: int = 720, fps: float = 30,
                 flip: int = 0) -> str:
    """The Jetson CSI camera pipeline (nvarguscamerasrc -> BGR appsink that keeps only the newest frame)."""
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! "
            f"video/x-raw(memory:NVMM),width={width},height={height},framerate={_fraction(fps)} ! "
            f"nvvidconv flip-method={flip} ! video/x-raw,format=BGRx ! videoconvert ! "
            f"video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false")


def usb_pipeline(device: int = 0, width: int = 640, height: int = 480, fps: float = 30) -> str:
    """A USB (V4L2) camera pipeline through GStreamer -> BGR appsink that keeps only the newest frame."""
    return (f"v4l2src device=/dev/video{device} ! "
            f"video/x-raw,width={width},height={height},framerate={_fraction(fps)} ! "
            f"videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false")


def _fraction(fps: float) -> str:
    return f"{int(fps)}/1" if float(fps).is_integer() else f"{int(round(fps * 1000))}/1000"



def match(kind: str, text: str, options: Any) -> dict[str, Any] | None:
    """``csi://N`` / ``usb://N`` (presets: width, height and fps requested) or a pipeline ending in appsink."""
    low = text.lower()
    m = re.fullmatch(r"(csi|usb)://(\d+)", low)
    if kind in ("csi", "usb"):
        if not m or m.group(1) != kind:
            return None
        require_gstreamer(f"the {kind}:// camera preset")
        n, fps = int(m.group(2)), options.fps or 30
        if kind == "csi":
            return {"target": csi_pipeline(n, options.width or 1280, options.height or 720, fps)}
        return {"target": usb_pipeline(n, options.width or 640, options.height or 480, fps)}
    if not (low.startswith("gst:") or ("!" in text and not Path(text).exists())):
        return None
    pipe = text[4:].strip() if low.startswith("gst:") else text
    if "appsink" not in pipe:
        raise SourceError(f"the GStreamer pipeline {pipe!r} must end in appsink (e.g. '... ! videoconvert ! "
                          f"video/x-raw,format=BGR ! appsink drop=true max-buffers=1')")
    require_gstreamer("a GStreamer pipeline source")
    return {"target": pipe}


def open_reader(spec: Any) -> CaptureReader:
    """Start the pipeline."""
    import cv2

    require_gstreamer("a GStreamer pipeline source")
    cap = cv2.VideoCapture(str(spec.target), cv2.CAP_GSTREAMER)
    if not cap.isOpened():
        raise SourceError(f"GStreamer could not start the pipeline {spec.target!r}; test it with "
                          f"`gst-launch-1.0 {str(spec.target).replace('appsink', 'fakesink')}`")
    return CaptureReader(cap, "gstreamer")
