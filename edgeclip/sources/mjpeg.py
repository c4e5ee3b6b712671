"""Multipart MJPEG over HTTP (``mjpeg+http(s)://``) with edgeclip's own bounded reader (no FFmpeg needed)."""
from __future__ import annotations

import functools
import http.client
import logging
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from ..errors import EdgeclipError, FrameError, SourceError
from ..runtime.images import decode_image

log = logging.getLogger("edgeclip.sources")

#: Largest MJPEG part (one frame) read from an HTTP stream; a bigger part ends the connection (source_lost).
MAX_PART_BYTES = 32 * 2**20
_MAX_HEADER_LINE = 8192
_MAX_PART_HEADERS = 64


def redact(url: str) -> str:
    """The URL without a password (``rtsp://user:***@host``) for logs and events."""
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", url)


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
            raise SourceError(f"{redact(url)}: cannot connect ({getattr(exc, 'reason', exc)})") from exc
        ctype = self.resp.headers.get("Content-Type", "")
        m = re.search(r'boundary="?([^";,]+)"?', ctype, re.IGNORECASE)
        if not ctype.lower().startswith("multipart/") or not m:
            self.resp.close()
            raise SourceError(f"{redact(url)}: not a multipart MJPEG stream (Content-Type {ctype!r}); "
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
                return decode_image(data, f"{redact(self.url)} (part of {len(data):,} bytes)")
            except EdgeclipError as exc:
                raise FrameError(str(exc)) from exc
            except Exception as exc:  # a decoder failure is one bad frame, not the end of the stream
                raise FrameError(f"{redact(self.url)}: {type(exc).__name__}: {exc}") from exc
        log.warning("%s: %s", redact(self.url), self.lost_reason)
        self._buf.clear()
        return None

    def close(self) -> None:
        try:
            self.resp.close()
        except Exception:
            pass
        self._buf = bytearray()



def match(kind: str, text: str, options: Any) -> dict[str, Any] | None:
    """``mjpeg+http://...`` / ``mjpeg+https://...``."""
    if not text.lower().startswith(("mjpeg+http://", "mjpeg+https://")):
        return None
    return {"target": text[len("mjpeg+"):]}


def open_reader(spec: Any) -> MjpegHttpReader:
    """Connect; SourceError when the server cannot be reached or sends no multipart stream."""
    return MjpegHttpReader(str(spec.target), spec.options.read_timeout, spec.options.max_part_size)
