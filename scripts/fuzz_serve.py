#!/usr/bin/env python
"""The service-hardening campaign: ``edgeclip serve`` under hostile and heavy load; prints the figures.

    python scripts/fuzz_serve.py [--bundle B] [--only big,photos,labels,relabel,idle,stalled,protocol,
                                  aborts,viewers,shutdown] [--work DIR] [--idle N]

Each campaign starts ``python -m edgeclip serve`` in a subprocess on 127.0.0.1 and prints: tried / clean /
tracebacks (in the server's log) / down (``/healthz`` unanswered afterwards) / peak RSS of the server
(its VmHWM, reset before the campaign), with the campaign's own numbers:

* big: 8 concurrent 9400x9400 JPEG uploads (quality 10, made with Pillow): statuses, slowest answer;
* photos: a 4000x3000 photo alone (median of 5) and 8 at once (each one's time);
* labels: the 20,000-synonym PUT (RSS growth), the surrogate PUT then GET/classify, deep nesting;
* relabel: 45 concurrent label PUTs while a client classifies every 50 ms (its worst latency);
* idle: N idle connections (default 20,000, from helper processes) while a client keeps classifying;
* stalled: 40 uploads stalled after 18 MB of a declared 20 MB: RSS, closed after the body timeout, RSS after;
* protocol: malformed HTTP, Host tricks, Last-Event-ID, label documents, image bodies (tests/serve_fuzz.py);
* aborts: 100 clients hanging up mid-body (log lines per abort);
* viewers: 16 preview viewers that never read, then a 17th (how long until it is served);
* shutdown: SIGTERM during 8 big uploads and during a 50,000-prompt label update (seconds to exit).

Without --bundle it exports the built-in tiny ViT (needs the export extra) into the work folder. Run it
under the CPU lock on a shared machine (``flock /work/locks/cpu.lock python scripts/fuzz_serve.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import serve_fuzz as sf  # noqa: E402

MB = 2**20


def post(url: str, body: bytes, method: str = "POST", timeout: float = 300.0) -> tuple[int, float, dict, bytes]:
    """(status, seconds, headers with lower-case names, body); 599 for a connection error or a timeout."""
    t0 = time.perf_counter()
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, time.perf_counter() - t0, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, time.perf_counter() - t0, {k.lower(): v for k, v in exc.headers.items()}, exc.read()
    except OSError:
        return 599, time.perf_counter() - t0, {}, b""


def concurrent(n: int, fn, *args) -> list:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: fn(*args), range(n)))


class Campaign:
    """Figures of one campaign: tried / clean / tracebacks / down / peak RSS, and notes."""

    def __init__(self, name: str, server: sf.ServerProcess) -> None:
        self.name, self.server = name, server
        self.tried = self.clean = 0
        self.notes: dict[str, object] = {}
        self.tb0 = server.tracebacks()
        server.reset_peak()
        self.rss0 = server.rss()

    def count(self, ok: bool, what: str = "") -> None:
        self.tried += 1
        self.clean += bool(ok)
        if not ok and what:
            print(f"  not clean: {what}", flush=True)

    def report(self) -> dict:
        down = 0 if self.server.proc.poll() is None and self.server.healthy() else 1
        fig = {"tried": self.tried, "clean": self.clean, "tracebacks": self.server.tracebacks() - self.tb0,
               "down": down, "peak_rss_mb": round((self.server.peak() or 0) / MB),
               "rss_before_mb": round((self.rss0 or 0) / MB), **self.notes}
        print(f"{self.name}: {json.dumps(fig)}", flush=True)
        return fig


_HELP: list[str] = []


def start(bundle: Path, work: Path, name: str, *flags: str) -> sf.ServerProcess:
    """The server; flags its version does not know (an older edgeclip, for before/after figures) are dropped."""
    if not _HELP:
        _HELP.append(subprocess.run([sys.executable, "-m", "edgeclip", "serve", "--help"], capture_output=True,
                                    text=True, cwd=work).stdout)
    kept: list[str] = []
    for i, flag in enumerate(flags):
        if flag.startswith("--") and flag not in _HELP[0]:
            print(f"  (this edgeclip has no {flag}: run without it)", flush=True)
        elif not (i and flags[i - 1].startswith("--") and flags[i - 1] not in _HELP[0]):
            kept.append(flag)
    return sf.ServerProcess(bundle, *kept, log_path=work / f"{name}.log")


# ---------------------------------------------------------------------------------------------------------
# campaigns
# ---------------------------------------------------------------------------------------------------------
def big(bundle: Path, work: Path) -> dict:
    data = sf.big_jpeg(9400, 9400, 10, work / "images")
    with start(bundle, work, "big") as s:
        c = Campaign("big", s)
        t0 = time.perf_counter()
        results = concurrent(8, post, f"{s.url}/v1/classify", data)
        for status, seconds, _, body in results:
            c.count(status in (200, 413) and seconds <= 30, f"{status} after {seconds:.1f} s {body[:120]!r}")
        c.notes.update(upload_mb=round(len(data) / MB, 2), statuses=sorted(r[0] for r in results),
                       slowest_s=round(max(r[1] for r in results), 2), all_s=round(time.perf_counter() - t0, 2))
        return c.report()


def photos(bundle: Path, work: Path) -> dict:
    data = sf.big_jpeg(4000, 3000, 85, work / "images")
    with start(bundle, work, "photos") as s:
        c = Campaign("photos", s)
        url = f"{s.url}/v1/classify"
        post(url, data)  # warm
        alone = statistics.median(post(url, data)[1] for _ in range(5))
        rounds = [concurrent(8, post, url, data) for _ in range(3)]
        times = [r[1] for rnd in rounds for r in rnd]
        for rnd in rounds:
            for status, seconds, _, _ in rnd:
                c.count(status == 200, f"status {status}")
        cpus = len(os.sched_getaffinity(0))
        c.notes.update(upload_mb=round(len(data) / MB, 2), alone_s=round(alone, 3),
                       concurrent_mean_s=round(statistics.mean(times), 3), concurrent_max_s=round(max(times), 3),
                       ratio_max=round(max(times) / alone, 2),
                       ratio_max_per_core_share=round(max(times) / (alone * max(1.0, 8 / cpus)), 2))
        return c.report()


def labels(bundle: Path, work: Path) -> dict:
    with start(bundle, work, "labels") as s:
        c = Campaign("labels", s)
        docs = dict((n, b) for n, b, _ in sf.label_documents())
        before = s.rss()
        s.reset_peak()
        status, seconds, _, body = post(f"{s.url}/v1/labels", docs["20000-synonyms"], "PUT")
        grew = (s.peak() or 0) - (before or 0)
        c.count(status == 422 and grew < 50 * MB, f"20,000 synonyms: {status}, RSS +{grew / MB:.0f} MB")
        c.notes.update(synonyms_status=status, synonyms_s=round(seconds, 3), synonyms_rss_growth_mb=round(grew / MB, 1))
        status, _, _, body = post(f"{s.url}/v1/labels", docs["surrogate-name"], "PUT")
        get = post(f"{s.url}/v1/labels", None, "GET")[0]
        cls = post(f"{s.url}/v1/classify", sf.small_jpeg())[0]
        c.count(status == 422 and get == 200 and cls == 200, f"surrogate: PUT {status}, GET {get}, classify {cls}")
        c.notes.update(surrogate=[status, get, cls])
        for name in ("deep-1000", "deep-100000", "deep-objects", "deep-in-labels"):
            status = post(f"{s.url}/v1/labels", docs[name], "PUT")[0]
            c.count(status in (400, 413, 422), f"{name}: {status}")
            c.notes[name] = status
        return c.report()


def relabel(bundle: Path, work: Path) -> dict:
    doc = json.dumps({"labels": [f"object number {i}" for i in range(1000)], "templates": "short"}).encode()
    image = sf.small_jpeg(224)
    with start(bundle, work, "relabel") as s:
        c = Campaign("relabel", s)
        url = f"{s.url}/v1/classify"
        base = [post(url, image)[1] for _ in range(20)]
        lat: list[float] = []
        stop = threading.Event()

        def classify_loop() -> None:
            while not stop.is_set():
                status, seconds, _, _ = post(url, image, timeout=60)
                lat.append(seconds if status == 200 else 999.0)
                time.sleep(0.05)

        t = threading.Thread(target=classify_loop)
        t.start()
        t0 = time.perf_counter()
        results = concurrent(45, post, f"{s.url}/v1/labels", doc, "PUT")
        puts_s = time.perf_counter() - t0
        time.sleep(0.5)
        stop.set()
        t.join()
        statuses = [r[0] for r in results]
        for status, _, headers, _ in results:
            c.count(status == 200 or (status == 429 and "retry-after" in headers), f"PUT {status}")
        c.count(max(lat) - statistics.median(base) <= 1.0, f"classify delayed {max(lat):.2f} s")
        c.notes.update(put_200=statuses.count(200), put_429=statuses.count(429), puts_s=round(puts_s, 2),
                       classify_alone_p50_ms=round(statistics.median(base) * 1000, 1),
                       classify_during_max_ms=round(max(lat) * 1000, 1), classify_during_n=len(lat),
                       prompts_per_put=8000)
        return c.report()


def idle(bundle: Path, work: Path, n: int) -> dict:
    with start(bundle, work, "idle") as s:
        c = Campaign("idle", s)
        log0 = len(s.log())
        per = 9000
        helpers = []
        code = ("import sys, time; sys.path.insert(0, %r); import serve_fuzz as sf; sf.raise_file_limit(); "
                "socks = sf.open_idle(int(sys.argv[1]), int(sys.argv[2])); print(len(socks), flush=True); "
                "time.sleep(float(sys.argv[3])); print(sf.closed_by_server(socks), flush=True)")
        code = code % str(REPO / "tests")
        left = n
        while left > 0:
            k = min(per, left)
            helpers.append(subprocess.Popen([sys.executable, "-c", code, str(s.port), str(k), "40"],
                                            stdout=subprocess.PIPE, text=True))
            left -= k
        opened = sum(int(h.stdout.readline() or 0) for h in helpers)
        image = sf.small_jpeg(224)
        answered, lat = 0, []
        t_end = time.monotonic() + 25
        while time.monotonic() < t_end:
            status, seconds, _, _ = post(f"{s.url}/v1/classify", image, timeout=30)
            answered += status == 200
            lat.append(seconds)
            c.count(status == 200, f"classify during idle connections: {status}")
            time.sleep(0.2)
        files = s.open_files()
        closed = sum(int(h.stdout.readline() or 0) for h in helpers)
        for h in helpers:
            h.wait()
        log_bytes = len(s.log()) - log0
        c.notes.update(idle_opened=opened, idle_closed_by_server=closed, requests_answered=answered,
                       requests_max_s=round(max(lat), 3), server_open_files=files, log_bytes=log_bytes,
                       log_lines=s.log()[log0:].count("\n"))
        return c.report()


def stalled(bundle: Path, work: Path) -> dict:
    with start(bundle, work, "stalled", "--body-timeout-s", "10") as s:
        c = Campaign("stalled", s)
        socks = sf.stall_bodies(s.port, 40, 20_000_000, 18_000_000)
        time.sleep(1)
        during = s.peak()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30 and sf.closed_by_server(socks) < len(socks):
            time.sleep(0.5)
        closed_s = time.monotonic() - t0
        closed = sf.closed_by_server(socks)
        for sock in socks:
            sock.close()
        time.sleep(1.5)
        after = s.rss()
        c.count(closed == len(socks), f"{closed} of {len(socks)} closed")
        c.count((after or 0) - (c.rss0 or 0) < 50 * MB, f"RSS after {after / MB:.0f} MB")
        c.notes.update(stalled=len(socks), closed=closed, closed_within_s=round(closed_s + 1, 1),
                       peak_during_mb=round((during or 0) / MB), rss_after_mb=round((after or 0) / MB))
        return c.report()


def protocol(bundle: Path, work: Path) -> dict:
    with start(bundle, work, "protocol", "--source", "synthetic://160x120") as s:
        c = Campaign("protocol", s)
        by_kind: dict[str, list[int]] = {}
        for case in sf.protocol_cases(s.port):
            tb = s.tracebacks()
            status, _, closed = sf.raw(s.port, case.data, 10, read_all=case.kind != "event-id")
            ok = (status in case.ok or (status is None and None in case.ok)) and s.tracebacks() == tb
            if not ok:
                ok = False
            healthy = s.healthy()
            c.count(ok and healthy, f"{case.name}: {status} (expected {case.ok}); healthy {healthy}")
            k = by_kind.setdefault(case.kind, [0, 0])
            k[0] += 1
            k[1] += ok and healthy
        c.notes["by_kind"] = {k: f"{v[1]}/{v[0]}" for k, v in by_kind.items()}
        return c.report()


def aborts(bundle: Path, work: Path) -> dict:
    import socket

    with start(bundle, work, "aborts") as s:
        c = Campaign("aborts", s)
        log0 = s.log().count("\n")
        for i in range(100):
            sock = socket.create_connection(("127.0.0.1", s.port))
            line = "POST /v1/classify" if i % 2 else "PUT /v1/labels"
            sock.sendall(f"{line} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n".encode()
                         + b"x" * 5000)
            time.sleep(0.02)
            sock.close()
            c.count(True)
        time.sleep(1)
        lines = s.log().count("\n") - log0
        c.notes.update(log_lines=lines, lines_per_abort=round(lines / 100, 2))
        return c.report()


def viewers(bundle: Path, work: Path) -> dict:
    import socket

    with start(bundle, work, "viewers", "--source", "synthetic://1280x720", "--preview-fps", "30",
               "--send-timeout-s", "10") as s:
        c = Campaign("viewers", s)
        socks = []
        for _ in range(16):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", s.port))
            sock.sendall(b"GET /v1/preview.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            socks.append(sock)
        time.sleep(1)
        first = sf.raw(s.port, sf.request("GET", "/v1/preview.mjpg"), 5, read_all=False)[0]
        t0 = time.monotonic()
        status = first
        while status != 200 and time.monotonic() - t0 < 120:
            time.sleep(1)
            status = sf.raw(s.port, sf.request("GET", "/v1/preview.mjpg"), 5, read_all=False)[0]
        for sock in socks:
            sock.close()
        c.count(status == 200, f"17th viewer: {status}")
        c.notes.update(first_17th=first, served_after_s=round(time.monotonic() - t0 + 1, 1))
        return c.report()


def shutdown(bundle: Path, work: Path) -> dict:
    data = sf.big_jpeg(9400, 9400, 10, work / "images")
    notes: dict[str, object] = {}
    tried = clean = tracebacks = 0
    for what in ("uploads", "labels"):
        s = start(bundle, work, f"shutdown-{what}")
        if what == "uploads":  # 8 uploads at a time, again and again, so that SIGTERM finds them working
            end = time.monotonic() + 3.0

            def uploads() -> None:
                while time.monotonic() < end:
                    post(f"{s.url}/v1/classify", data, "POST", 60)

            threads = [threading.Thread(target=uploads) for _ in range(8)]
        else:
            doc = json.dumps({"labels": [f"thing {i}" for i in range(2000)],
                              "templates": [f"a photo {i} of a {{}}." for i in range(25)]}).encode()
            threads = [threading.Thread(target=post, args=(f"{s.url}/v1/labels", doc, "PUT", 300))]
        for t in threads:
            t.start()
        time.sleep(1.5)
        busy = s.rss()
        seconds, rc = s.stop(signal.SIGTERM, 60)
        for t in threads:
            t.join(60)
        tb = s.tracebacks()
        tried += 1
        clean += seconds <= 5 and rc == 0 and tb == 0
        tracebacks += tb
        notes[f"sigterm_{what}_s"] = round(seconds, 2)
        notes[f"sigterm_{what}_rc"] = rc
        notes[f"rss_at_sigterm_{what}_mb"] = round((busy or 0) / MB)
    fig = {"tried": tried, "clean": clean, "tracebacks": tracebacks, "down": 0, **notes}
    print(f"shutdown: {json.dumps(fig)}", flush=True)
    return fig


CAMPAIGNS = ("big", "photos", "labels", "relabel", "idle", "stalled", "protocol", "aborts", "viewers", "shutdown")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=None, help="bundle to serve (default: export the tiny ViT)")
    ap.add_argument("--only", default=",".join(CAMPAIGNS), help="campaigns to run, comma-separated")
    ap.add_argument("--idle", type=int, default=20_000, help="idle connections in the idle campaign")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="edgeclip-fuzz-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle
    if bundle is None:
        bundle = work / "bundle"
        if not bundle.exists():
            subprocess.run([sys.executable, "-m", "edgeclip", "-q", "export", "--model", "edgeclip-tiny-vit",
                            "--labels", "cat", "dog", "bird", "car", "--out", str(bundle)], check=True, cwd=REPO)
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}", flush=True)
    t0 = time.monotonic()
    results = {}
    for name in args.only.split(","):
        fn = globals()[name.strip()]
        results[name] = fn(bundle, work, args.idle) if name == "idle" else fn(bundle, work)
    print(f"done in {time.monotonic() - t0:.0f} s; logs in {work}", flush=True)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
