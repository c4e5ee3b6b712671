#!/usr/bin/env python
"""Load benchmark of ``edgeclip serve``: 1 vs N concurrent clients posting real photos to /v1/classify.

For each bundle, starts ``edgeclip serve BUNDLE --port 0`` as a subprocess on 127.0.0.1, warms it up, then
runs the client counts interleaved (1, 8, 1, 8, ... ``--rounds`` times, ``--duration`` seconds in all per
client count) so that a machine's drift hits both alike. Each client is a thread with its own keep-alive
HTTP connection, posting JPEGs (Imagenette photos from ../shared/data, or ``--images DIR``) in a loop.

Reports per bundle and client count: requests/s, latency p50/p95/p99 (client side), errors, mean
micro-batch size (from /metrics), and the server's resident memory growth between the end of the warm-up
and the end of the run (``--max-rss-growth``, default 5 %). Exit status 1 when any request failed or the
memory grew more than allowed. Not a timed test: run it by hand, e.g.

    .venv/bin/python scripts/bench_serve.py out/bundle out/vitb32 --duration 60 --json bench_serve.json
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EDGECLIP_DATA", REPO.parent / "shared" / "data"))


def load_photos(folder: str | None, count: int) -> list[bytes]:
    """Up to ``count`` JPEGs from ``folder``, else from the Imagenette (or CIFAR-10) archive in the shared data."""
    if folder:
        files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[:count]
        if not files:
            sys.exit(f"{folder}: no .jpg files")
        return [p.read_bytes() for p in files]
    for archive in ("imagenette-train.tar", "cifar10-test.tar"):
        path = DATA / archive
        if not path.is_file():
            continue
        out = []
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile() and member.name.lower().endswith((".jpg", ".jpeg")):
                    out.append(tar.extractfile(member).read())
                    if len(out) >= count:
                        break
        return out
    sys.exit(f"no photos: pass --images DIR (the shared data folder {DATA} has no archive)")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Server:
    """``edgeclip serve`` in a subprocess on a free port."""

    def __init__(self, bundle: str, extra: list[str]) -> None:
        cmd = [sys.executable, "-m", "edgeclip", "serve", bundle, "--port", "0", *extra]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.describe = ""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise SystemExit(f"edgeclip serve {bundle} exited: {self.proc.wait()}")
            if "image encoder" in line:
                self.describe = line.split("image encoder", 1)[1].strip()
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
            if m:
                self.port = int(m.group(1))
                break
        else:
            raise SystemExit("edgeclip serve did not start within 180 s")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # keep the pipe drained

    def metrics(self) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        return text

    def batch_totals(self) -> tuple[float, float]:
        text = self.metrics()
        total = float(re.search(r"^edgeclip_batch_size_sum (\S+)$", text, re.M).group(1))
        count = float(re.search(r"^edgeclip_batch_size_count (\S+)$", text, re.M).group(1))
        return total, count

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def run_clients(port: int, photos: list[bytes], clients: int, seconds: float) -> tuple[list[float], int, int]:
    """(latencies in s, requests, errors) of ``clients`` threads posting photos for ``seconds``."""
    latencies: list[float] = []
    counts = {"n": 0, "errors": 0}
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = k
        mine, errors = [], 0
        while time.monotonic() < stop_at:
            body = photos[i % len(photos)]
            i += clients
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/classify?top_k=1", body=body, headers={"Content-Type": "image/jpeg"})
                r = conn.getresponse()
                data = r.read()
                ok = r.status == 200 and b'"predictions"' in data
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            mine.append(time.perf_counter() - t0)
            errors += not ok
        conn.close()
        with lock:
            latencies.extend(mine)
            counts["n"] += len(mine)
            counts["errors"] += errors

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, counts["n"], counts["errors"]


def bench_bundle(bundle: str, args: argparse.Namespace, photos: list[bytes]) -> dict:
    extra = ["--precision", args.precision, "--max-batch", str(args.max_batch),
             "--batch-wait-ms", str(args.batch_wait_ms)]
    server = Server(bundle, extra)
    try:
        for c in args.clients:  # warm-up at every client count: sessions, allocator, per-batch-size buffers
            run_clients(server.port, photos, c, args.warmup)
        rss0 = rss_bytes(server.proc.pid)
        per = {c: {"latencies": [], "requests": 0, "errors": 0, "seconds": 0.0, "batch": [0.0, 0.0]}
               for c in args.clients}
        slice_s = args.duration / args.rounds
        for r in range(args.rounds):
            for c in args.clients:
                b0 = server.batch_totals()
                t0 = time.perf_counter()
                lat, n, err = run_clients(server.port, photos, c, slice_s)
                per[c]["seconds"] += time.perf_counter() - t0
                b1 = server.batch_totals()
                per[c]["latencies"] += lat
                per[c]["requests"] += n
                per[c]["errors"] += err
                per[c]["batch"][0] += b1[0] - b0[0]
                per[c]["batch"][1] += b1[1] - b0[1]
                print(f"  round {r + 1}/{args.rounds}, {c} client(s): {n / slice_s:.1f} req/s", file=sys.stderr)
        rss1 = rss_bytes(server.proc.pid)
    finally:
        server.stop()
    rows = {}
    for c, d in per.items():
        lat = np.asarray(d["latencies"]) * 1000.0
        rows[c] = {"clients": c, "requests": d["requests"], "errors": d["errors"],
                   "requests_per_s": round(d["requests"] / d["seconds"], 2),
                   "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
                   "p95_ms": round(float(np.percentile(lat, 95)), 2) if len(lat) else None,
                   "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
                   "mean_batch": round(d["batch"][0] / d["batch"][1], 2) if d["batch"][1] else None}
    lo, hi = min(args.clients), max(args.clients)
    return {"bundle": bundle, "encoder": server.describe, "rows": list(rows.values()),
            "speedup": round(rows[hi]["requests_per_s"] / rows[lo]["requests_per_s"], 2),
            "rss_start_mb": round(rss0 / 2**20, 1), "rss_end_mb": round(rss1 / 2**20, 1),
            "rss_growth_pct": round(100.0 * (rss1 - rss0) / rss0, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundles", nargs="+", help="bundle directories")
    p.add_argument("--duration", type=float, default=60.0, help="seconds per client count, all rounds (default 60)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    p.add_argument("--warmup", type=float, default=10.0, help="warm-up seconds per client count (10)")
    p.add_argument("--clients", default="1,8", help="client counts, comma-separated (default 1,8)")
    p.add_argument("--images", default=None, help="folder of JPEGs (default: Imagenette from the shared data)")
    p.add_argument("--photos", type=int, default=64, help="distinct photos cycled through (default 64)")
    p.add_argument("--precision", default="auto", help="--precision for edgeclip serve (default auto)")
    p.add_argument("--max-batch", type=int, default=8, help="serve --max-batch (default 8)")
    p.add_argument("--batch-wait-ms", type=float, default=2.0, help="serve --batch-wait-ms (default 2)")
    p.add_argument("--max-rss-growth", type=float, default=5.0, help="allowed memory growth in %% (default 5)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    args.clients = sorted({int(c) for c in args.clients.split(",")})
    photos = load_photos(args.images, args.photos)
    print(f"{len(photos)} photos, {args.duration:.0f} s per client count in {args.rounds} interleaved rounds, "
          f"{os.cpu_count()} CPUs", file=sys.stderr)
    results = []
    for bundle in args.bundles:
        print(f"{bundle}:", file=sys.stderr)
        results.append(bench_bundle(bundle, args, photos))
    failed = False
    print(f"\n{'bundle':<28} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'batch':>6} "
          f"{'errors':>6}")
    for res in results:
        for row in res["rows"]:
            print(f"{Path(res['bundle']).name[:28]:<28} {row['clients']:>7} {row['requests_per_s']:>8.1f} "
                  f"{row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} {row['p99_ms']:>8.1f} {row['mean_batch'] or 0:>6.2f} "
                  f"{row['errors']:>6}")
            failed |= row["errors"] > 0
        print(f"{'':<28} {max(args.clients)} vs {min(args.clients)} clients: x{res['speedup']}; server RSS "
              f"{res['rss_start_mb']} -> {res['rss_end_mb']} MB ({res['rss_growth_pct']:+.2f} %); {res['encoder']}")
        failed |= res["rss_growth_pct"] > args.max_rss_growth
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items()}, "results": results},
                                              indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
