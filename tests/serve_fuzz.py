"""Hostile and heavy load for ``edgeclip serve``: the service half of the hardening fuzz suite.

Used by tests/test_serve_hardening.py and by scripts/fuzz_serve.py (the campaign with its figures):

* :class:`ServerProcess`: ``python -m edgeclip serve`` in a subprocess on 127.0.0.1, its log, RSS (current
  and peak, the peak resettable through ``/proc/PID/clear_refs``), open files, and how long SIGTERM takes;
* :func:`raw`: one request as raw bytes over a socket, the answer's status (or that the server closed);
* :func:`protocol_cases`: malformed HTTP, Host tricks, event ids, label documents (surrogates, deep nesting,
  oversized prompt counts, wrong types), image bodies, with the statuses each may get;
* :func:`open_idle` / :func:`stall_bodies`: many connections that send nothing, or a body that stops;
* :func:`big_jpeg`: large JPEGs made on the fly with Pillow (nothing large is committed).
"""
from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------
# the server under test
# ---------------------------------------------------------------------------------------------------------
class ServerProcess:
    """``edgeclip serve BUNDLE --port 0 FLAGS`` in a subprocess; its stderr goes to ``log_path``."""

    def __init__(self, bundle: Path, *flags: str, log_path: Path, env: dict[str, str] | None = None,
                 timeout: float = 120.0) -> None:
        self.log_path = log_path
        self.log_file = open(log_path, "wb")
        cmd = [sys.executable, "-m", "edgeclip", "serve", str(bundle), "--port", "0", *flags]
        self.proc = subprocess.Popen(cmd, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, cwd=log_path.parent)
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", self.log())
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"edgeclip serve did not start:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tracebacks(self) -> int:
        return self.log().count("Traceback (most recent call last)")

    def _status(self, key: str) -> int | None:
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        return int(m.group(1)) * 1024 if m else None

    def rss(self) -> int | None:
        """Resident memory now, bytes."""
        return self._status("VmRSS")

    def peak(self) -> int | None:
        """Peak resident memory since start or the last :meth:`reset_peak`, bytes."""
        return self._status("VmHWM")

    def reset_peak(self) -> None:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            pass

    def open_files(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return -1

    def healthy(self, timeout: float = 5.0) -> bool:
        status, _, _ = raw(self.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                           timeout)
        return status == 200

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> tuple[float, int | None]:
        """Send ``sig``; (seconds until the process ended, exit status) (None: killed after ``timeout``)."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = None
        self.log_file.close()
        return time.monotonic() - t0, rc

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.stop(signal.SIGKILL, 10)


# ---------------------------------------------------------------------------------------------------------
# raw HTTP
# ---------------------------------------------------------------------------------------------------------
def raw(port: int, data: bytes, timeout: float = 10.0, read_all: bool = True) -> tuple[int | None, bytes, bool]:
    """Send ``data`` and read the answer: (status or None, bytes read, whether the server closed)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    got = b""
    closed = False
    try:
        if data:
            s.sendall(data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except (ConnectionResetError, BrokenPipeError):
                closed = True
                break
            if not chunk:
                closed = True
                break
            got += chunk
            if not read_all and b"\r\n\r\n" in got:
                break
            if _complete(got):
                break
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    finally:
        s.close()
    m = re.match(rb"HTTP/1\.[01] (\d{3})", got)
    return (int(m.group(1)) if m else None), got, closed


def _complete(got: bytes) -> bool:
    head, sep, body = got.partition(b"\r\n\r\n")
    if not sep:
        return False
    m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    return m is not None and len(body) >= int(m.group(1))


def request(method: str, path: str, body: bytes = b"", host: str = "127.0.0.1", headers: dict[str, str] | None = None,
            close: bool = True) -> bytes:
    """A well-formed HTTP/1.1 request as bytes."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# ---------------------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One hostile request: its bytes and the statuses a clean answer may have (None: the server closes)."""

    name: str
    kind: str
    data: bytes
    ok: tuple[int | None, ...]


def label_documents() -> Iterator[tuple[str, bytes, tuple[int, ...]]]:
    """(name, PUT /v1/labels body, acceptable statuses)."""
    yield "surrogate-name", b'["\\ud800","dog"]', (422,)
    yield "surrogate-low", b'["cat","\\udfff"]', (422,)
    yield "surrogate-synonym", b'{"labels":[{"name":"cat","synonyms":["\\udbff"]}]}', (422,)
    yield "surrogate-description", b'{"labels":[{"name":"cat","descriptions":["a \\ud83d cat"]}]}', (422,)
    yield "surrogate-template", b'{"labels":["cat","dog"],"templates":["a {} \\ud800"]}', (422,)
    yield "surrogate-key", b'{"labels":[{"name":"cat","\\ud800":1}]}', (422,)
    yield "pair-ok", b'["cat \\ud83d\\ude00","dog"]', (200,)
    yield "deep-1000", b"[" * 1000 + b"]" * 1000, (400, 422)
    yield "deep-100000", b"[" * 100000, (400, 413)
    yield "deep-objects", b'{"a":' * 5000 + b"1" + b"}" * 5000, (400, 422)
    yield "deep-in-labels", b'{"labels":' + b"[" * 3000 + b"]" * 3000 + b"}", (400, 422)
    synonyms = {"labels": [{"name": "x", "synonyms": [f"s{i}" for i in range(20000)]}],
                "templates": [f"a photo {i} of a {{}}." for i in range(100)]}
    yield "20000-synonyms", json.dumps(synonyms).encode(), (422,)
    yield "2001-labels", json.dumps([f"l{i}" for i in range(2001)]).encode(), (422,)
    yield "101-templates", json.dumps({"labels": ["a", "b"], "templates": [f"{i} {{}}" for i in range(101)]}).encode(), \
        (422,)
    yield "not-json", b"{labels: [cat]}", (400,)
    yield "not-utf8", b'["caf\xe9"]', (400,)
    yield "empty", b"", (400,)
    yield "nan", b'{"labels": NaN}', (400, 422)
    yield "number", b"12", (422,)
    yield "huge-number", b"[" + b"9" * 5000 + b"]", (400, 422)
    yield "null-name", b'[{"name": null}]', (422,)
    yield "dup", b'["cat","cat"]', (422,)
    yield "bad-template", b'{"labels":["a","b"],"templates":["{0} {1}"]}', (422,)
    yield "template-file", b'{"labels":["a","b"],"templates":"/etc/passwd"}', (422,)
    yield "long-text", json.dumps(["x" * 5000]).encode(), (422,)
    yield "unknown-key", b'{"labels":["a"],"extra":1}', (422,)
    yield "nul", b'["a\\u0000b","c"]', (200, 422)


def protocol_cases(port: int) -> list[Case]:
    """Malformed HTTP, Host and event-id tricks, label documents and image bodies."""
    ok_host = f"127.0.0.1:{port}"
    cases: list[Case] = []
    for host, statuses in [(f"localhost:{port}@evil.example", (421,)), ("127.0.0.1:evil", (421,)),
                           ("evil.example", (421,)), (f"localhost:{port}", (200,)), ("LOCALHOST", (200,)),
                           (f"[::1]:{port}", (200,)), ("localhost:99999", (421,)), ("127.0.0.1:80:80", (421,)),
                           (f"127.0.0.1:{port}/x", (421,)), ("", (421, 400)), ("localhost.", (200,)),
                           ("localhost\tx", (421, 400)), ("user@localhost", (421,)), ("[::1", (421,)),
                           ("127.0.0.1.evil.example", (421,)), ("0x7f.1", (421,)), ("%6cocalhost", (421,))]:
        cases.append(Case(f"host {host!r}", "host", request("GET", "/v1/labels", host=host), statuses))
    for value in ["²", "9" * 5000, "-1", "1e3", "١٢", "12abc", " 7", "0x10", "999999999999999999999"]:
        enc = value.encode("utf-8")
        data = (b"GET /v1/stream HTTP/1.1\r\nHost: " + ok_host.encode() + b"\r\nLast-Event-ID: " + enc +
                b"\r\nConnection: close\r\n\r\n")
        cases.append(Case(f"last-event-id {value[:12]!r}", "event-id", data, (400,) if value != " 7" else (200,)))
        from urllib.parse import quote

        cases.append(Case(f"?last_event_id={value[:12]!r}", "event-id",
                          request("GET", f"/v1/stream?last_event_id={quote(value)}", host=ok_host),
                          (400,) if value != " 7" else (200,)))
    for name, body, statuses in label_documents():
        cases.append(Case(f"labels {name}", "labels", request("PUT", "/v1/labels", body, host=ok_host), statuses))
    garbage = [b"\x00\x01\x02\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"G\xffT / HTTP/1.1\r\n\r\n",
               b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
               b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 2000 + b"\r\n",
               b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n",
               b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef",
               b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
               b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
               b"GET /%00 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"GET /../../etc/passwd HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
               b"GET /static/../../../etc/passwd HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
               b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil\r\nConnection: close\r\n\r\n",
               b"BREW / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
               b"GET /v1/classify?top_k=\xff HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
               b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
               b"\r\n" * 5000, b"GET / HTTP/1.1\nHost: 127.0.0.1\nConnection: close\n\n"]
    for i, data in enumerate(garbage):
        cases.append(Case(f"garbage #{i}", "http", data, (None, 400, 404, 405, 413, 421, 431, 200, 501)))
    for name, body in [("random", bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8))),
                       ("jpeg-head", b"\xff\xd8\xff\xe0" + b"\x00" * 100), ("png-bomb", png_header(30000, 30000)),
                       ("truncated-jpeg", small_jpeg()[:200]), ("text", b"hello")]:
        cases.append(Case(f"classify {name}", "image", request("POST", "/v1/classify", body, host=ok_host),
                          (400, 413, 415)))
    for q in ["top_k=0", "top_k=-1", "top_k=abc", "top_k=99999999999999999999", "top_k=%C2%B2"]:
        cases.append(Case(f"classify ?{q}", "image", request("POST", f"/v1/classify?{q}", small_jpeg(), host=ok_host),
                          (200, 400)))
    for q in ["persist=maybe", "persist=%ff"]:
        cases.append(Case(f"labels ?{q}", "labels", request("PUT", f"/v1/labels?{q}", b'["a","b"]', host=ok_host),
                          (400,)))
    return cases


# ---------------------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------------------
def png_header(width: int, height: int) -> bytes:
    """A PNG whose header states width x height (no pixel data)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def small_jpeg(size: int = 64, seed: int = 0) -> bytes:
    """A small real-looking JPEG (smooth colours and noise)."""
    return encode_jpeg(_picture(size, size, seed), 85)


def _picture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """RGB uint8 [height, width, 3]: gradients, blobs and noise (compresses like a photo), built in row bands."""
    rng = np.random.default_rng(seed)
    out = np.empty((height, width, 3), np.uint8)
    x = np.linspace(0, 6 * np.pi, width, dtype=np.float32)
    phase = rng.uniform(0, 2 * np.pi, 3).astype(np.float32)
    for y0 in range(0, height, 512):
        y = np.linspace(y0 / height, min(height, y0 + 512) / height, min(512, height - y0), dtype=np.float32)
        for c in range(3):
            band = 127 + 60 * np.sin(x[None, :] + phase[c] + 9 * y[:, None]) + 40 * np.cos(7 * y[:, None] * (c + 1))
            band += rng.normal(0, 12, band.shape).astype(np.float32)
            out[y0:y0 + len(y), :, c] = np.clip(band, 0, 255)
    return out


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def big_jpeg(width: int, height: int, quality: int, cache: Path | None = None) -> bytes:
    """A ``width`` x ``height`` JPEG made with Pillow (kept in ``cache`` when given, never in the repo)."""
    path = cache / f"{width}x{height}-q{quality}.jpg" if cache is not None else None
    if path is not None and path.is_file():
        return path.read_bytes()
    data = encode_jpeg(_picture(width, height, seed=width ^ height), quality)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return data


# ---------------------------------------------------------------------------------------------------------
# connections that do nothing
# ---------------------------------------------------------------------------------------------------------
def raise_file_limit() -> int:
    """This process's soft open-file limit raised to its hard limit; returns it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def open_idle(port: int, n: int) -> list[socket.socket]:
    """``n`` connections that send nothing (non-blocking connects; fewer if this process runs out of files)."""
    socks = []
    for _ in range(n):
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            break
        s.setblocking(False)
        try:
            s.connect_ex(("127.0.0.1", port))
        except OSError:
            s.close()
            break
        socks.append(s)
    return socks


def closed_by_server(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has closed (EOF or reset seen without blocking)."""
    n = 0
    for s in socks:
        try:
            if s.recv(1, socket.MSG_DONTWAIT) == b"":
                n += 1
        except BlockingIOError:
            pass
        except OSError:
            n += 1
    return n


def stall_bodies(port: int, n: int, declared: int, sent: int, path: str = "/v1/classify") -> list[socket.socket]:
    """``n`` uploads that declare ``declared`` bytes, send ``sent`` of them and then stop."""
    socks = []
    chunk = b"\xff\xd8\xff" + b"\x00" * (1 << 16)
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {declared}\r\n\r\n".encode())
        left = sent
        s.settimeout(2)
        try:
            while left > 0:
                k = s.send(chunk[:min(left, len(chunk))])
                left -= k
        except (socket.timeout, OSError):
            pass
        socks.append(s)
    return socks
