"""Malformed multipart-MJPEG servers on 127.0.0.1 for the stream hardening tests.

:class:`BadMjpegServer` answers its first connection with one kind of misbehaviour and every later one with
a well-formed stream of real JPEG frames, so a client must notice the fault, report it and reconnect.
Everything is written byte by byte on a plain socket, so each fault is exactly what is named.
"""
from __future__ import annotations

import socket
import socketserver
import threading
import time

import cv2
import numpy as np

BOUNDARY = b"frame"
HEADER = (b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=" + BOUNDARY
          + b"\r\nCache-Control: no-cache\r\n\r\n")

#: What the first connection does.
FAULTS = (
    "huge_length",    # a part announcing Content-Length 999999999999, then a trickle of bytes
    "oversized",      # a real part larger than the client's limit (honest Content-Length)
    "endless",        # a part without Content-Length whose body never reaches a boundary
    "trickle",        # a part whose bytes come one at a time, slowly
    "slow_header",    # a dropped connection, then a reconnection whose HTTP response header trickles
    "long_line",      # a part header line with no end
    "corrupt",        # a few undecodable parts between good ones (no reconnect needed)
    "stall",          # good frames, then silence with the connection open
)


def jpeg_frames(n: int = 4, size: int = 64) -> list[bytes]:
    """``n`` distinct small JPEG frames."""
    out = []
    for i in range(n):
        img = np.full((size, size, 3), (40 * i) % 256, np.uint8)
        img[: size // 2, : size // 2] = (255 - 40 * i) % 256
        out.append(cv2.imencode(".jpg", img)[1].tobytes())
    return out


def part(jpg: bytes, length: bool = True) -> bytes:
    head = b"--" + BOUNDARY + b"\r\nContent-Type: image/jpeg\r\n"
    if length:
        head += b"Content-Length: %d\r\n" % len(jpg)
    return head + b"\r\n" + jpg + b"\r\n"


class BadMjpegServer:
    """A threaded TCP server; ``sent[i]`` counts the bytes written on connection ``i`` (0-based)."""

    def __init__(self, fault: str, fps: float = 50.0, good_before: int = 3, part_bytes: int = 2 * 2**20) -> None:
        assert fault in FAULTS, fault
        self.fault, self.fps, self.good_before, self.part_bytes = fault, fps, good_before, part_bytes
        self.frames = jpeg_frames()
        self.sent: list[int] = []
        self.stopping = threading.Event()
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn = len(owner.sent)
                owner.sent.append(0)
                sock: socket.socket = self.request
                sock.settimeout(5.0)
                try:
                    request = b""
                    while b"\r\n\r\n" not in request:
                        got = sock.recv(4096)
                        if not got:
                            return
                        request += got
                    if owner.fault == "slow_header" and conn == 0:  # a drop, so that the reconnection is slow
                        owner._good(sock, conn, count=owner.good_before)
                    elif conn == (1 if owner.fault == "slow_header" else 0):
                        owner._misbehave(sock, conn)
                    else:
                        owner._good(sock, conn, forever=True)
                except OSError:  # the client left
                    pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def connections(self) -> int:
        return len(self.sent)

    def _send(self, sock: socket.socket, conn: int, data: bytes) -> None:
        sock.sendall(data)
        self.sent[conn] += len(data)

    def _good(self, sock: socket.socket, conn: int, forever: bool = False, count: int = 0,
              header: bool = True) -> None:
        if header:
            self._send(sock, conn, HEADER)
        i = 0
        while not self.stopping.is_set() and (forever or i < count):
            self._send(sock, conn, part(self.frames[i % len(self.frames)]))
            i += 1
            time.sleep(1.0 / self.fps)

    def _slowly(self, sock: socket.socket, conn: int, data: bytes, every: float = 0.05) -> None:
        for k in range(len(data)):
            if self.stopping.is_set():
                return
            self._send(sock, conn, data[k:k + 1])
            time.sleep(every)

    def _misbehave(self, sock: socket.socket, conn: int) -> None:
        fault = self.fault
        if fault == "slow_header":
            self._slowly(sock, conn, HEADER * 50)
            return
        self._good(sock, conn, count=self.good_before)
        if fault == "huge_length":
            self._send(sock, conn, b"--" + BOUNDARY + b"\r\nContent-Type: image/jpeg\r\nContent-Length: 999999999999\r\n\r\n")
            self._slowly(sock, conn, b"\xff" * 10_000, every=0.01)
        elif fault == "oversized":
            body = self.frames[0][:-2] + b"\x00" * self.part_bytes + b"\xff\xd9"
            self._send(sock, conn, part(body))
            self._good(sock, conn, forever=True, header=False)
        elif fault == "endless":
            self._send(sock, conn, b"--" + BOUNDARY + b"\r\nContent-Type: image/jpeg\r\n\r\n")
            chunk = (b"\xab" * 1023 + b"\n") * 64  # 64 KB of lines, none of them a boundary
            while not self.stopping.is_set():
                self._send(sock, conn, chunk)
        elif fault == "trickle":
            self._send(sock, conn, b"--" + BOUNDARY + b"\r\nContent-Type: image/jpeg\r\n"
                                   b"Content-Length: %d\r\n\r\n" % len(self.frames[0]))
            self._slowly(sock, conn, self.frames[0], every=0.05)
        elif fault == "long_line":
            self._send(sock, conn, b"--" + BOUNDARY + b"\r\nX-Note: ")
            while not self.stopping.is_set():
                self._send(sock, conn, b"a" * 65536)
        elif fault == "corrupt":
            for k in range(3):
                self._send(sock, conn, part(b"\xff\xd8 not really a jpeg %d \xff\xd9" % k))
                self._send(sock, conn, part(self.frames[k % len(self.frames)]))
            self._good(sock, conn, forever=True, header=False)
        elif fault == "stall":
            self.stopping.wait(30)

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
