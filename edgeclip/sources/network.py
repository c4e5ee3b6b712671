"""Network streams (``rtsp://``, ``http(s)://``, ``rtmp://``, ``udp://``, ``tcp://``, ``srt://``) through OpenCV's
FFmpeg backend; HTTP streams fall back to edgeclip's own MJPEG reader where this OpenCV has no FFmpeg."""
from __future__ import annotations

import os
from typing import Any

from ..errors import SourceError
from .mjpeg import MjpegHttpReader, redact
from .opencv import CaptureReader, ffmpeg_params, opencv_has

URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


def match(kind: str, text: str, options: Any) -> dict[str, Any] | None:
    """A URL with one of :data:`URL_SCHEMES`; its text in events hides the password."""
    return {"target": text, "text": redact(text)} if text.lower().startswith(URL_SCHEMES) else None


def open_reader(spec: Any) -> Any:
    """Connect within ``read_timeout`` seconds (RTSP over TCP unless OPENCV_FFMPEG_CAPTURE_OPTIONS says otherwise)."""
    import cv2

    url, timeout = str(spec.target), spec.options.read_timeout
    if not opencv_has("FFMPEG"):
        if url.startswith(("http://", "https://")):
            return MjpegHttpReader(url, timeout, spec.options.max_part_size)
        raise SourceError(f"{url}: this OpenCV has no FFmpeg backend to read network streams; "
                          f"install an OpenCV with FFmpeg (the opencv-python wheels have it) or use a "
                          f"GStreamer pipeline (gst:rtspsrc location=... ! ... ! appsink)")
    if url.startswith(("rtsp://", "rtsps://")) and "OPENCV_FFMPEG_CAPTURE_OPTIONS" not in os.environ:
        os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "rtsp_transport;tcp"
    ms = int(timeout * 1000)
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms,
                                                 *ffmpeg_params(spec.options)])
    if not cap.isOpened():
        raise SourceError(f"{redact(url)}: cannot open the stream (unreachable, wrong path or "
                          f"credentials, or a format FFmpeg cannot read)")
    return CaptureReader(cap, redact(url))
