#!/usr/bin/env python3
"""Soak test for ``edgeclip stream``: many frames through the stream loop, resident memory must stay flat.

Runs ``--frames`` frames (default 20,000) from a synthetic or real-image source through the full pipeline
(capture thread, mailbox, preprocessing, encoder, smoothing, hysteresis, JSON-lines events for every frame,
periodic summaries) as fast as possible, with no display. Resident memory (``/proc/self/statm``) is sampled
after ``--warmup`` frames and then every ``--every`` frames up to the end; the script prints the growth from
the warm-up sample to the last one and exits 1 when it is above ``--max-growth`` percent (default 5).

    python scripts/soak_stream.py                       # exports the tiny ViT to a temporary bundle first
    python scripts/soak_stream.py BUNDLE --source ../shared/imgs/ --loop --frames 50000

Torch is only needed (in a subprocess) when no bundle is given.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeclip.export.defaults import PROXY_LABELS  # noqa: E402
from edgeclip.runtime.classifier import Classifier  # noqa: E402
from edgeclip.stream.decisions import HalfLife  # noqa: E402
from edgeclip.sources import parse_source  # noqa: E402
from edgeclip.options import LoadOptions  # noqa: E402
from edgeclip.stream.loop import FrameResult, StreamPipeline  # noqa: E402
from edgeclip.stream.options import StreamOptions  # noqa: E402
from edgeclip.stream.outputs import JsonLinesSink, rss_bytes  # noqa: E402


def export_tiny(out: Path) -> Path:
    """Export the built-in tiny ViT with the CIFAR-10 labels (in a subprocess: torch stays out of this one)."""
    subprocess.run([sys.executable, "-m", "edgeclip.cli", "-q", "export", "--model", "edgeclip-tiny-vit",
                    "--labels", *PROXY_LABELS, "--out", str(out)], check=True, cwd=REPO)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", nargs="?", help="bundle directory (default: export edgeclip-tiny-vit to a temp dir)")
    ap.add_argument("--source", default="synthetic://320x240", help="any --source of edgeclip stream")
    ap.add_argument("--loop", action="store_true", help="loop a file or folder source")
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--warmup", type=int, default=2000, help="frames before the first memory sample")
    ap.add_argument("--every", type=int, default=2000, help="frames between memory samples")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads")
    ap.add_argument("--events", default=os.devnull, help="JSON-lines output (every frame is written)")
    ap.add_argument("--max-growth", type=float, default=5.0, help="fail above this RSS growth in percent")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgeclip-soak-") as tmp:
        bundle = Path(args.bundle) if args.bundle else export_tiny(Path(tmp) / "tiny")
        clf = Classifier(bundle, LoadOptions(threads=args.threads))
        samples: list[tuple[int, int]] = []

        def sample(r: FrameResult) -> None:
            n = r.frame.index + 1
            if n == args.frames or (n >= args.warmup and (n - args.warmup) % args.every == 0):
                samples.append((n, rss_bytes() or 0))

        opts = StreamOptions(max_frames=args.frames, batch=args.batch, every_frame=True, summary_every=1.0,
                             half_life=HalfLife(0.5))
        sink = JsonLinesSink(args.events)
        t0 = time.monotonic()
        try:
            end = StreamPipeline(clf, parse_source(args.source, loop=args.loop), opts, sink=sink,
                                 observers=[sample]).run()
        finally:
            sink.close()
        seconds = time.monotonic() - t0

    if len(samples) < 2:
        print(f"too few memory samples ({samples}); run more --frames than --warmup", file=sys.stderr)
        return 2
    (n0, rss0), (n1, rss1) = samples[0], samples[-1]
    growth = 100.0 * (rss1 - rss0) / rss0
    peak = max(r for _, r in samples)
    report = {"frames": end["inferred"], "captured": end["captured"], "dropped": end["dropped"],
              "seconds": round(seconds, 1), "fps": round(end["inferred"] / seconds, 1),
              "latency_ms": end["latency_ms"], "rss_start_mb": round(rss0 / 2**20, 2), "rss_start_frame": n0,
              "rss_end_mb": round(rss1 / 2**20, 2), "rss_end_frame": n1, "rss_peak_mb": round(peak / 2**20, 2),
              "growth_percent": round(growth, 2),
              "samples_mb": [[n, round(r / 2**20, 2)] for n, r in samples]}
    print(json.dumps(report))
    print(f"soak: {end['inferred']} frames in {seconds:.1f} s ({report['fps']} fps); RSS {report['rss_start_mb']} MB "
          f"after {n0} frames -> {report['rss_end_mb']} MB after {n1} frames: {growth:+.2f}% "
          f"({'OK' if growth < args.max_growth else 'FAIL'}, limit {args.max_growth}%)")
    return 0 if growth < args.max_growth else 1


if __name__ == "__main__":
    sys.exit(main())
