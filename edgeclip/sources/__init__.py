"""Frame sources for ``edgeclip stream``: cameras, video files, network streams, image folders, GStreamer.

``parse_source(text)`` turns a ``--source`` string into a :class:`SourceSpec`; ``spec.open()`` returns a
:class:`FrameReader` whose ``read()`` gives BGR uint8 frames and ``None`` at the end of a file or when a
live source is lost (the stream loop then reconnects). Accepted sources:

=============================  =====================================================================
``0``, ``/dev/video0``         a camera (V4L2 on Linux); ``--width/--height/--fps`` are requested
``csi://0``                    a Jetson CSI camera: an ``nvarguscamerasrc`` GStreamer pipeline
``usb://0``                    a USB camera through a ``v4l2src`` GStreamer pipeline
``gst:PIPELINE`` or ``a ! b``  a raw GStreamer pipeline ending in ``appsink``
``rtsp://``, ``http(s)://``    network streams through OpenCV's FFmpeg backend (MJPEG over HTTP too)
``mjpeg+http(s)://``           multipart MJPEG over HTTP with edgeclip's own reader (no FFmpeg needed)
``synthetic://640x480``        generated moving frames, for tests and soak runs without a camera
a video file                   read frame by frame; ends at the end of the file (``--loop`` restarts)
a folder of images             played as a stream, in name order
=============================  =====================================================================

GStreamer sources need an OpenCV built with GStreamer. The ``opencv-python`` wheels from PyPI are built
without it, so on a Jetson use the system OpenCV from JetPack; :func:`require_gstreamer` says how.
This module never imports torch.
"""
from __future__ import annotations

import functools
import http.client
import logging
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import EdgeclipError, FrameError, SourceError
from ..runtime.images import IMAGE_EXTENSIONS, decode_image, expand_inputs, read_image

log = logging.getLogger("edgeclip.runtime")

URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
DEFAULT_FOLDER_FPS = 10.0
#: Largest MJPEG part (one frame) read from an HTTP stream; a bigger part ends the connection (source_lost).
MAX_PART_BYTES = 32 * 2**20
_MAX_HEADER_LINE = 8192
_MAX_PART_HEADERS = 64

GSTREAMER_HELP = (
    "this OpenCV ({version}) was built without GStreamer, which {what} needs. The opencv-python / "
    "opencv-python-headless wheels from PyPI never include it. Use the system OpenCV instead: on a Jetson "
    "(JetPack) run `sudo apt install python3-opencv` (usually already installed), create the virtual "
    "environment with `python3 -m venv --system-site-packages ...` so it can see the system cv2, and do not "
    "pip-install opencv-python into it (pip uninstall opencv-python opencv-python-headless if it is there). "
    "Check with: python3 -c \"import cv2; print(cv2.getBuildInformation())\" | grep -i gstreamer. "
    "Without GStreamer, a USB camera also works as source='/dev/video0' (V4L2)")


# ---------------------------------------------------------------------------------------------------------
# OpenCV capabilities
# ---------------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------------------
class FrameReader(Protocol):
    """An open source: ``read()`` returns the next BGR frame, or None at its end / when it is lost."""

    fps: float | None

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


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


class FolderReader:
    """Image files of a folder, in name order; a file that cannot be read raises FrameError and the next
    ``read`` goes on with the following file."""

    def __init__(self, files: list[Path], fps: float | None) -> None:
        self.files, self.fps, self.pos = files, fps, 0

    def read(self) -> np.ndarray | None:
        if self.pos >= len(self.files):
            return None
        path = self.files[self.pos]
        self.pos += 1
        try:
            return read_image(path)
        except EdgeclipError as exc:
            raise FrameError(str(exc), file=os.fspath(path)) from exc
        except Exception as exc:  # a decoder failure (MemoryError, cv2.error) is one bad frame too
            raise FrameError(f"{path}: {type(exc).__name__}: {exc}", file=os.fspath(path)) from exc

    def close(self) -> None:
        self.pos = len(self.files)


class SyntheticReader:
    """Deterministic generated frames: a moving gradient with a bright square and a little noise."""

    def __init__(self, width: int, height: int, fps: float | None, seed: int = 0) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:height, 0:width]
        self._base = ((xx * 255 // max(width - 1, 1)) ^ (yy * 255 // max(height - 1, 1))).astype(np.uint8)
        self.n = 0

    def read(self) -> np.ndarray | None:
        shift = (self.n * 4) % self.width
        g = np.roll(self._base, shift, axis=1)
        img = np.stack([g, np.roll(g, self.height // 3, axis=0), 255 - g], axis=2)
        s = max(4, min(self.width, self.height) // 4)
        x0 = (self.n * 7) % max(self.width - s, 1)
        y0 = (self.n * 3) % max(self.height - s, 1)
        img[y0:y0 + s, x0:x0 + s] = (40 * (self.n // 50)) % 256
        img ^= self.rng.integers(0, 8, size=(self.height, self.width, 1), dtype=np.uint8)
        self.n += 1
        return img

    def close(self) -> None:
        pass


class _Broken(Exception):
    """The MJPEG stream cannot go on (oversized or endless part, stalled server, malformed headers)."""


class _HeaderDeadline:
    """An HTTP connection whose whole response header must arrive within ``deadline`` seconds."""

    deadline: float

    def getresponse(self):  # noqa: D102  (http.client's)
        sock = self.sock
        expired = threading.Event()

        def cut() -> None:
            expired.set()
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        timer = threading.Timer(self.deadline, cut)
        timer.daemon = True
        timer.start()
        try:
            return super().getresponse()
        except (OSError, http.client.HTTPException) as exc:
            if expired.is_set():
                raise TimeoutError(f"no complete response header within {self.deadline:g} s") from exc
            raise
        finally:
            timer.cancel()


class _DeadlineHTTPConnection(_HeaderDeadline, http.client.HTTPConnection):
    def __init__(self, *args, deadline: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline


class _DeadlineHTTPSConnection(_HeaderDeadline, http.client.HTTPSConnection):
    def __init__(self, *args, deadline: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req):  # noqa: D102
        return self.do_open(functools.partial(_DeadlineHTTPConnection, deadline=self.deadline), req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req):  # noqa: D102
        return self.do_open(functools.partial(_DeadlineHTTPSConnection, deadline=self.deadline), req,
                            context=self._context)


class MjpegHttpReader:
    """Multipart MJPEG over HTTP (``multipart/x-mixed-replace``), read with urllib and ``decode_image``.

    Used for ``mjpeg+http(s)://`` sources and for ``http(s)://`` when OpenCV has no FFmpeg backend.
    Bounded in memory and time: the response header must arrive within ``timeout`` seconds, each part
    (boundary, headers and body) within ``timeout`` seconds of the previous one however slowly the bytes
    trickle, and no part may exceed ``max_part_bytes`` (default :data:`MAX_PART_BYTES`, whatever its
    Content-Length says). Breaking a bound ends the connection: ``read`` returns None (the stream loop
    reports ``source_lost`` and reconnects) and ``lost_reason`` says why. A part that does not decode
    raises FrameError; the next ``read`` goes on with the next part.
    """

    def __init__(self, url: str, timeout: float = 10.0, max_part_bytes: int | None = None) -> None:
        self.url, self.fps, self.timeout = url, None, float(timeout)
        self.max_part = int(max_part_bytes or MAX_PART_BYTES)
        self.lost_reason: str | None = None
        opener = urllib.request.build_opener(_DeadlineHTTPHandler(self.timeout), _DeadlineHTTPSHandler(self.timeout))
        try:
            self.resp = opener.open(urllib.request.Request(url, headers={"User-Agent": "edgeclip"}),
                                    timeout=self.timeout)
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            raise SourceError(f"{_redact(url)}: cannot connect ({getattr(exc, 'reason', exc)})") from exc
        ctype = self.resp.headers.get("Content-Type", "")
        m = re.search(r'boundary="?([^";,]+)"?', ctype, re.IGNORECASE)
        if not ctype.lower().startswith("multipart/") or not m:
            self.resp.close()
            raise SourceError(f"{_redact(url)}: not a multipart MJPEG stream (Content-Type {ctype!r}); "
                              f"use http://... to read it with OpenCV/FFmpeg instead")
        b = m.group(1).encode("latin-1")
        self.boundary = b if b.startswith(b"--") else b"--" + b
        self._buf = bytearray()
        self._deadline = 0.0

    # -- a bounded buffer over the response: one socket read at a time, deadline checked between reads --
    def _fill(self) -> bool:
        """Append what the connection has now to the buffer; False at the end of the stream."""
        if time.monotonic() > self._deadline:
            raise _Broken(f"no complete part within {self.timeout:g} s (server stalled or trickling)")
        chunk = self.resp.read1(1 << 16)
        if not chunk:
            return False
        self._buf += chunk
        return True

    def _readline(self) -> bytes:
        """The next line (with its end), or what is left at the end of the stream; lines are bounded."""
        start = 0
        while True:
            at = self._buf.find(b"\n", start)
            if at >= 0:
                line = bytes(self._buf[:at + 1])
                del self._buf[:at + 1]
                return line
            if len(self._buf) > _MAX_HEADER_LINE:
                raise _Broken(f"a header line longer than {_MAX_HEADER_LINE} bytes")
            start = len(self._buf)
            if not self._fill():
                line = bytes(self._buf)
                self._buf.clear()
                return line

    def _read_exact(self, n: int) -> bytes | None:
        while len(self._buf) < n:
            if not self._fill():
                return None
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def _read_to_boundary(self) -> bytes | None:
        """A body without Content-Length: everything up to the line break before the next boundary."""
        mark = b"\n" + self.boundary
        start = 0
        while True:
            at = self._buf.find(mark, start)
            if at >= 0:
                data = bytes(self._buf[:at])
                del self._buf[:at + 1]  # the boundary line stays for the next part
                return data[:-1] if data.endswith(b"\r") else data
            if len(self._buf) > self.max_part:
                raise _Broken(f"a part without an end: over {self.max_part:,} bytes and no boundary")
            start = max(0, len(self._buf) - len(mark))
            if not self._fill():
                return None

    def _next_part(self) -> bytes | None:
        """The body of the next part, or None when the stream ended; _Broken when it broke a bound."""
        self._deadline = time.monotonic() + self.timeout
        skipped = 0
        line = self._readline()
        while line and not line.startswith(self.boundary):  # the preamble, the line break after a body
            skipped += len(line)
            if skipped > self.max_part:
                raise _Broken(f"over {self.max_part:,} bytes without a part boundary")
            line = self._readline()
        if not line or line.rstrip() == self.boundary + b"--":  # closed, or the closing boundary
            return None
        length = None
        for _ in range(_MAX_PART_HEADERS + 1):  # part headers, up to an empty line
            line = self._readline()
            if not line:
                return None
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length" and value.strip().isdigit():  # else: read to the boundary
                length = int(value.strip())
                if length > self.max_part:
                    raise _Broken(f"a part of {length:,} bytes (Content-Length) is over the limit of "
                                  f"{self.max_part:,} bytes")
        else:
            raise _Broken(f"more than {_MAX_PART_HEADERS} part header lines")
        return self._read_exact(length) if length is not None else self._read_to_boundary()

    def read(self) -> np.ndarray | None:
        """The next frame; None when the stream ended or broke (``lost_reason``); FrameError for a bad part."""
        try:
            data = self._next_part()
        except _Broken as exc:
            self.lost_reason = str(exc)
        except (OSError, ValueError, http.client.HTTPException) as exc:  # timeout, reset, closed response
            self.lost_reason = f"read failed ({exc})"
        else:
            if data is None:
                self.lost_reason = "the server ended the stream"
                return None
            try:
                return decode_image(data, f"{_redact(self.url)} (part of {len(data):,} bytes)")
            except EdgeclipError as exc:
                raise FrameError(str(exc)) from exc
            except Exception as exc:  # a decoder failure is one bad frame, not the end of the stream
                raise FrameError(f"{_redact(self.url)}: {type(exc).__name__}: {exc}") from exc
        log.warning("%s: %s", _redact(self.url), self.lost_reason)
        self._buf.clear()
        return None

    def close(self) -> None:
        try:
            self.resp.close()
        except Exception:
            pass
        self._buf = bytearray()


# ---------------------------------------------------------------------------------------------------------
# spec
# ---------------------------------------------------------------------------------------------------------
@dataclass
class SourceSpec:
    """What ``--source`` names.

    ``live`` sources (cameras, streams, pipelines) are reconnected when lost; files and folders end.
    ``fps``: for cameras the rate to request; for files, folders and synthetic frames the playback rate,
    which (like ``realtime``) makes them *paced*: frames come at that rate and a slow model drops frames as
    it would with a camera. Unpaced sources are read as fast as the model takes frames, none dropped.
    """

    text: str
    kind: str
    target: str | int
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    timeout: float = 10.0
    files: list[Path] = field(default_factory=list, repr=False)
    realtime: bool = False
    max_part_bytes: int | None = None
    #: threads OpenCV's FFmpeg decoder may use for files and network streams (None: OpenCV's default, one per
    #: core); a process reading many sources sets 1 so that decoders do not outnumber the cores
    decode_threads: int | None = None

    def _ffmpeg_params(self) -> list[int]:
        import cv2

        return [cv2.CAP_PROP_N_THREADS, int(self.decode_threads)] if self.decode_threads else []

    @property
    def live(self) -> bool:
        return self.kind in ("camera", "url", "mjpeg", "gstreamer")

    @property
    def paced(self) -> bool:
        """Whether frames arrive at a real-time rate (so stale ones are dropped rather than queued)."""
        return self.live or self.realtime or bool(self.fps)

    def nominal_fps(self, reader: FrameReader | None = None) -> float:
        """Frames per second of the source's own clock (timestamps of unpaced sources come from it)."""
        if self.fps:
            return float(self.fps)
        if reader is not None and reader.fps:
            return float(reader.fps)
        return DEFAULT_FOLDER_FPS if self.kind == "folder" else 30.0

    def open(self) -> FrameReader:
        """Open the source; raises SourceError saying what failed and what to try."""
        if self.kind == "synthetic":
            return SyntheticReader(int(self.width or 640), int(self.height or 480), self.nominal_fps())
        if self.kind == "folder":
            return FolderReader(self.files, self.nominal_fps())
        if self.kind == "mjpeg":
            return MjpegHttpReader(str(self.target), self.timeout, self.max_part_bytes)
        import cv2  # cameras, files and network streams need OpenCV; the kinds above do not

        if self.kind == "gstreamer":
            require_gstreamer("a GStreamer pipeline source")
            cap = cv2.VideoCapture(str(self.target), cv2.CAP_GSTREAMER)
            if not cap.isOpened():
                raise SourceError(f"GStreamer could not start the pipeline {self.target!r}; test it with "
                                  f"`gst-launch-1.0 {str(self.target).replace('appsink', 'fakesink')}`")
            return CaptureReader(cap, "gstreamer")
        if self.kind == "camera":
            dev = self.target if isinstance(self.target, int) else str(self.target)
            if isinstance(dev, str) and not Path(dev).exists():
                raise SourceError(f"{dev}: no such camera device (list them with `ls /dev/video*`; "
                                  f"check permissions with `groups`, the user needs the video group)")
            api = cv2.CAP_V4L2 if os.name == "posix" and opencv_has("V4L2") else cv2.CAP_ANY
            cap = cv2.VideoCapture(dev, api)
            if not cap.isOpened():
                raise SourceError(f"camera {dev}: cannot open it (missing, busy in another program, or no "
                                  f"permission); list cameras with `ls /dev/video*`")
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
            for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, self.width), (cv2.CAP_PROP_FRAME_HEIGHT, self.height),
                                (cv2.CAP_PROP_FPS, self.fps)):
                if value:
                    cap.set(prop, float(value))
            return CaptureReader(cap, f"camera {dev}")
        if self.kind == "url":
            url = str(self.target)
            if not opencv_has("FFMPEG"):
                if url.startswith(("http://", "https://")):
                    return MjpegHttpReader(url, self.timeout, self.max_part_bytes)
                raise SourceError(f"{url}: this OpenCV has no FFmpeg backend to read network streams; "
                                  f"install an OpenCV with FFmpeg (the opencv-python wheels have it) or use a "
                                  f"GStreamer pipeline (gst:rtspsrc location=... ! ... ! appsink)")
            if url.startswith(("rtsp://", "rtsps://")) and "OPENCV_FFMPEG_CAPTURE_OPTIONS" not in os.environ:
                os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "rtsp_transport;tcp"
            ms = int(self.timeout * 1000)
            cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms,
                                                         cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms, *self._ffmpeg_params()])
            if not cap.isOpened():
                raise SourceError(f"{_redact(url)}: cannot open the stream (unreachable, wrong path or "
                                  f"credentials, or a format FFmpeg cannot read)")
            return CaptureReader(cap, _redact(url))
        # file
        if opencv_has("FFMPEG"):
            cap = cv2.VideoCapture(str(self.target), cv2.CAP_FFMPEG, self._ffmpeg_params())
        else:
            cap = cv2.VideoCapture(str(self.target), cv2.CAP_ANY)
        if not cap.isOpened():
            raise SourceError(f"{self.target}: OpenCV cannot open this video file (unknown container or codec); "
                              f"convert it, e.g. `ffmpeg -i IN -c:v libx264 out.mp4`")
        return CaptureReader(cap, str(self.target))


def _redact(url: str) -> str:
    """The URL without a password (``rtsp://user:***@host``) for logs and events."""
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", url)


def parse_source(text: str | int, width: int | None = None, height: int | None = None, fps: float | None = None,
                 timeout: float = 10.0, realtime: bool = False, max_part_bytes: int | None = None) -> SourceSpec:
    """Interpret a ``--source`` value (see the module doc); raises SourceError when it names nothing usable.

    ``timeout`` bounds connecting and each frame of network streams; ``max_part_bytes`` the size of one
    MJPEG part (default :data:`MAX_PART_BYTES`).
    """
    s = str(text).strip()
    if not s:
        raise SourceError("empty `source`; pass a camera (0, /dev/video0, csi://0), a file, a folder or a URL")
    if fps is not None and not fps > 0:
        raise SourceError(f"`fps` must be > 0, got {fps}")
    if max_part_bytes is not None and max_part_bytes < 1:
        raise SourceError(f"the MJPEG part size limit must be >= 1 byte, got {max_part_bytes}")
    spec = dict(width=width, height=height, fps=fps, timeout=timeout, realtime=realtime, max_part_bytes=max_part_bytes)
    low = s.lower()
    if re.fullmatch(r"\d+", s):
        return SourceSpec(s, "camera", int(s), **spec)
    if re.fullmatch(r"/dev/video\d+", s):
        return SourceSpec(s, "camera", s, **spec)
    m = re.fullmatch(r"(csi|usb)://(\d+)", low)
    if m:
        kind, n = m.group(1), int(m.group(2))
        require_gstreamer(f"the {kind}:// camera preset")
        if kind == "csi":
            pipe = csi_pipeline(n, width or 1280, height or 720, fps or 30)
        else:
            pipe = usb_pipeline(n, width or 640, height or 480, fps or 30)
        return SourceSpec(s, "gstreamer", pipe, **spec)
    if low.startswith("gst:") or ("!" in s and not Path(s).exists()):
        pipe = s[4:].strip() if low.startswith("gst:") else s
        if "appsink" not in pipe:
            raise SourceError(f"the GStreamer pipeline {pipe!r} must end in appsink (e.g. '... ! videoconvert ! "
                              f"video/x-raw,format=BGR ! appsink drop=true max-buffers=1')")
        require_gstreamer("a GStreamer pipeline source")
        return SourceSpec(s, "gstreamer", pipe, **spec)
    if low.startswith(("mjpeg+http://", "mjpeg+https://")):
        return SourceSpec(s, "mjpeg", s[len("mjpeg+"):], **spec)
    if low.startswith(URL_SCHEMES):
        return SourceSpec(_redact(s), "url", s, **spec)
    m = re.fullmatch(r"synthetic://(?:(\d+)x(\d+))?", low)
    if m:
        w, h = (int(m.group(1)), int(m.group(2))) if m.group(1) else (width or 640, height or 480)
        return SourceSpec(s, "synthetic", f"{w}x{h}", **{**spec, "width": w, "height": h})
    p = Path(s)
    if p.is_dir():
        files = [f for f in expand_inputs([p]) if f.suffix.lower() in IMAGE_EXTENSIONS]
        if not files:
            raise SourceError(f"{p}: the folder holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return SourceSpec(s, "folder", str(p), files=files, **spec)
    if p.is_file():
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            return SourceSpec(s, "folder", str(p), files=[p], **spec)
        return SourceSpec(s, "file", str(p), **spec)
    raise SourceError(f"{s}: not a camera, URL, file or folder; examples: --source 0, /dev/video0, csi://0, "
                      f"rtsp://host/stream, video.mp4, frames/")

