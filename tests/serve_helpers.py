"""Helpers for the ``edgeclip serve`` tests: a real uvicorn server on 127.0.0.1 and a urllib client."""
from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Any, Iterator


@contextlib.contextmanager
def running_server(app: Any, plain: bool = False) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port, on a thread) with the server ``edgeclip serve`` runs (its
    connection limits); ``plain``: uvicorn as it comes (an app mounted inside another). Yields the base URL."""
    import uvicorn

    from edgeclip.serve.server import build_server

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY (asyncio)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    if plain:
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    else:
        server = build_server(app, log_level="warning", timeout_graceful_shutdown=1)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


class Reply:
    """Status, headers and body of one HTTP exchange."""

    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body[:200]!r})"


def call(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 60.0) -> Reply:
    """One request with urllib; 4xx/5xx answers are returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Reply(r.status, r.headers, r.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.headers, exc.read())


def multipart(field: str, filename: str, data: bytes, content_type: str = "image/jpeg",
              extra: dict[str, str] | None = None) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request with one file field (and text fields)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in (extra or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    if field:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
                     f"Content-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def read_events(url: str, headers: dict[str, str], want: Any, timeout: float = 30.0) -> list[tuple[str, dict]]:
    """Server-sent events from ``url`` until ``want(events)`` is true (or the timeout): [(event, data)]."""
    req = urllib.request.Request(url, headers=headers)
    events: list[tuple[str, dict]] = []
    deadline = time.monotonic() + timeout
    with urllib.request.urlopen(req, timeout=timeout) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        name, data = None, []
        while time.monotonic() < deadline:
            line = r.readline().decode().rstrip("\n")
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif line == "" and name is not None:
                events.append((name, json.loads("\n".join(data))))
                name, data = None, []
                if want(events):
                    return events
    raise AssertionError(f"the wanted events did not arrive within {timeout} s; got {[e[0] for e in events]}")


def read_mjpeg_parts(url: str, headers: dict[str, str], count: int, timeout: float = 30.0) -> list[bytes]:
    """The first ``count`` JPEG parts of a multipart/x-mixed-replace stream."""
    req = urllib.request.Request(url, headers=headers)
    parts: list[bytes] = []
    with urllib.request.urlopen(req, timeout=timeout) as r:
        assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        while len(parts) < count:
            line = r.readline()
            if line.lower().startswith(b"content-length:"):
                n = int(line.split(b":")[1])
                assert r.readline() == b"\r\n"
                parts.append(r.read(n))
    return parts
