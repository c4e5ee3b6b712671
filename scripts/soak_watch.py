"""Soak test for ``edgeclip watch``: many cameras for a long time; resident memory and thread count stay flat.

Runs ``--sources`` cameras (camera-like 640x480 videos made from real photos, looped and played in real time
at ``--fps``; or ``synthetic://`` frames with ``--synthetic``), two regions each, through the whole engine
(capture threads, motion gating or every frame, one encoder call per tick, decisions, a JSON-lines sink) for
``--seconds``. Resident memory (``/proc/self/statm``) and the number of threads are sampled every
``--every`` seconds after ``--warmup``; the script prints the samples and the growth from the first sample to
the last, and exits 1 when memory grew more than ``--max-growth`` percent or the thread count changed.

    python scripts/soak_watch.py /work/bundles/vitb32 --sources 16 --seconds 600 --json soak.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import edgeclip  # noqa: E402
from bench_watch import BOXES, STATES, make_videos  # noqa: E402
from edgeclip.stream.outputs import rss_bytes  # noqa: E402
from edgeclip.watch import Watcher, WatchOptions, parse_config, plan_threads  # noqa: E402
from edgeclip.watch.sinks import JsonLinesOutput  # noqa: E402


def config_text(sources: list[str], fps: float, on: str) -> str:
    lines = ["cameras:"]
    for i, src in enumerate(sources):
        lines += [f"  cam{i}:", f"    source: {src}", f"    fps: {fps}"]
        if not src.startswith("synthetic://"):
            lines.append("    loop: true")
        lines.append("    regions:")
        for r in range(2):
            lines += [f"      r{r}:", f"        rect: {list(BOXES[r])}", f"        states: {json.dumps(STATES[r])}",
                      f"        on: {on}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--sources", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--on", default="motion", choices=("motion", "always"))
    ap.add_argument("--synthetic", action="store_true", help="synthetic:// sources instead of videos")
    ap.add_argument("--warmup", type=float, default=60.0)
    ap.add_argument("--every", type=float, default=30.0)
    ap.add_argument("--max-growth", type=float, default=5.0)
    ap.add_argument("--videos", default=None, help="folder to keep the generated videos in")
    ap.add_argument("--events", default=os.devnull)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="edgeclip-soak-watch-")
    if args.synthetic:
        sources = ["synthetic://640x480"] * args.sources
    else:
        folder = Path(args.videos or tmp.name)
        folder.mkdir(parents=True, exist_ok=True)
        videos = [folder / f"cam{i}.avi" for i in range(args.sources)]
        if not all(v.is_file() for v in videos):
            videos = make_videos(folder, args.sources, int(args.fps * 10), args.fps, 2)
        sources = [str(v) for v in videos]
    config = parse_config(config_text(sources, args.fps, args.on), "soak")
    options = WatchOptions(summary_every=0, reload_poll=0, duration=args.seconds)
    budget = plan_threads(args.sources, options)
    clf = edgeclip.load(args.bundle, threads=budget.encoder)
    print(f"encoder: {clf.choice.describe()}; budget {budget.to_json()}; load average {os.getloadavg()[0]:.2f}",
          flush=True)
    watcher = Watcher(clf, config, options, sinks=[JsonLinesOutput(args.events)])
    samples: list[dict] = []
    done = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        next_t = args.warmup
        while not done.wait(1.0):
            t = time.monotonic() - t0
            if next_t <= t < args.seconds - 2:  # not while the run is ending
                rss = rss_bytes() or 0
                tot = watcher.totals()
                samples.append({"t": round(t), "rss_mb": round(rss / 2**20, 1), "threads": threading.active_count(),
                                "crops": tot["crops"], "motion_skipped": tot["motion_skipped"],
                                "dropped": tot["dropped"], "frames_dropped": tot["frames_dropped"],
                                "load": round(os.getloadavg()[0], 2)})
                print(json.dumps(samples[-1]), flush=True)
                next_t += args.every

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    end = watcher.run()
    done.set()
    sampler.join()
    first, last = samples[0], samples[-1]
    growth = 100.0 * (last["rss_mb"] - first["rss_mb"]) / first["rss_mb"]
    threads_flat = len({s["threads"] for s in samples}) == 1
    result = {"sources": args.sources, "regions": 2 * args.sources, "seconds": args.seconds, "on": args.on,
              "rss_mb_first": first["rss_mb"], "rss_mb_last": last["rss_mb"], "rss_growth_pct": round(growth, 2),
              "rss_mb_max": max(s["rss_mb"] for s in samples), "threads": sorted({s["threads"] for s in samples}),
              "threads_flat": threads_flat, "crops_per_s": round(end["crops"] / end["elapsed_s"], 1),
              "end": {k: end[k] for k in ("reason", "crops", "encoder_calls", "motion_skipped", "dropped",
                                          "frames_dropped", "reconnects")},
              "samples": samples, "encoder": clf.choice.describe()}
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    tmp.cleanup()
    return 0 if growth <= args.max_growth and threads_flat else 1


if __name__ == "__main__":
    sys.exit(main())
