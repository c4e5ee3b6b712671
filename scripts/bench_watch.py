"""``edgeclip watch`` throughput: N paced cameras with regions against the bare encoder at the same batch sizes.

Makes N camera-like 640x480 videos from real photos (``../shared/data``, OpenCV VideoWriter, in a temporary
folder), plays each in real time at ``--fps`` (looped) as one camera with ``--regions`` regions, and runs the
watcher (capture threads, motion gate or schedule, crop + preprocess, one encoder call per tick,
decisions, a JSON-lines sink) for ``--seconds``, in ``--rounds`` segments. After each segment the bare image
encoder is timed on already-preprocessed crops at exactly the batch sizes that segment used, so both sides
see the same machine load (interleaved). Printed and written (``--json``):

* ``crops_per_s``: crops classified per second; ``offered_per_s``: what the cameras offer (sources x
  regions x fps); ``every_frame``: whether every offered crop was classified (no frame or crop dropped);
* ``encoder_img_s``: the encoder alone at the same batch sizes (median of the rounds); ``ratio``: the median
  over rounds of (the round's crops per second / the encoder alone right after it), ``ratio_rounds`` each;
* ``p50_ms`` / ``p95_ms``: decision latency (frame captured -> state decided); ``batch_ms``: median encoder
  time of one batch in the run (the issue's bound is p50 <= 2 x batch_ms);
* ``dropped`` (stale or replaced crops), ``frames_dropped`` (frames a camera replaced before they were
  taken), ``motion_skipped``, ``cpu_cores_used`` (process CPU time / wall time), ``ceiling``: encoder CPU /
  (encoder + decode + preprocess CPU) per crop, the ratio the cores allow when the encoder is the bottleneck.

    python scripts/bench_watch.py /work/bundles/vitb32 --sources 4 --seconds 60 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import edgeclip  # noqa: E402
from edgeclip.watch import Watcher, WatchOptions, parse_config, plan_threads  # noqa: E402
from edgeclip.watch.watcher import camera_spec  # noqa: E402
from watch_scenes import Patch, photos, unpack_imagenette, write_scene  # noqa: E402

DATA = Path(os.environ.get("EDGECLIP_DATA", REPO.parent / "shared" / "data"))
#: region boxes on a 640x480 frame (x, y, w, h); the first ``--regions`` are used
BOXES = [(40, 60, 200, 300), (380, 240, 220, 200), (300, 20, 300, 180), (20, 380, 260, 90)]
STATES = [["an open door", "a closed door"], ["a full shelf", "an empty shelf"],
          ["an empty parking spot", "a parked car"], ["a person", "no one"]]


def make_videos(folder: Path, n: int, frames: int, fps: float, regions: int) -> list[Path]:
    root = unpack_imagenette(DATA, folder)
    pics = photos(root, n * (1 + 2 * regions), seed=1)
    out = []
    for i in range(n):
        own = pics[i * (1 + 2 * regions):(i + 1) * (1 + 2 * regions)]
        patches = [Patch(BOXES[r], [own[1 + 2 * r], own[2 + 2 * r]], [0, frames // 2]) for r in range(regions)]
        out.append(write_scene(folder / f"cam{i}.avi", own[0], patches, frames, fps, seed=i))
    return out


def config_text(videos: list[Path], regions: int, fps: float | None, on: str) -> str:
    """The bench's watch configuration; ``fps=None`` reads the files as fast as they decode."""
    lines = ["cameras:"]
    for i, v in enumerate(videos):
        lines += [f"  cam{i}:", f"    source: {v}"] + ([f"    fps: {fps}"] if fps else [])
        lines += ["    loop: true", "    regions:"]
        for r in range(regions):
            lines += [f"      r{r}:", f"        rect: {list(BOXES[r])}", f"        states: {json.dumps(STATES[r])}",
                      f"        on: {on}"]
    return "\n".join(lines) + "\n"


def encoder_rate(clf, pixels: np.ndarray, sizes: list[int]) -> tuple[float, float]:
    """(img/s, process CPU seconds per image) of the bare encoder on ``sizes`` batches."""
    t, c = time.perf_counter(), time.process_time()
    n = 0
    for b in sizes:
        clf.encoder.run(np.ascontiguousarray(pixels[:b]))
        n += b
    return n / (time.perf_counter() - t), (time.process_time() - c) / max(n, 1)


def decode_prep_cpu(videos: list[Path], clf, regions: int, frames: int = 60) -> tuple[float, float]:
    """CPU seconds to decode one frame, and to crop + preprocess one region (one thread). The file is read
    unpaced, so that the process's CPU time over the reads is the decoding's alone."""
    reader = camera_spec(parse_config(config_text(videos[:1], regions, None, "always")).cameras[0], 1).open()
    imgs, c = [], time.process_time()
    for _ in range(frames):
        imgs.append(reader.read())
    decode = (time.process_time() - c) / frames
    reader.close()
    c = time.process_time()
    for img in imgs:
        for r in range(regions):
            clf.preprocessor(img, roi=BOXES[r])
    return decode, (time.process_time() - c) / (frames * regions)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--sources", type=int, default=4)
    ap.add_argument("--regions", type=int, default=2, help="regions per camera (at most 4)")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=6, help="watch segments, each followed by the encoder alone")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds watched first and not counted")
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--on", default="always", choices=("always", "motion"))
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--frame-buffer", type=int, default=None, help="frames a camera keeps (default: the option's)")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--target", default=None)
    ap.add_argument("--videos", default=None, help="folder to keep the generated videos in (default: temporary)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="edgeclip-bench-watch-")
    folder = Path(args.videos or tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    frames = int(args.fps * 10)
    videos = [folder / f"cam{i}.avi" for i in range(args.sources)]
    if not all(v.is_file() for v in videos):
        videos = make_videos(folder, args.sources, frames, args.fps, args.regions)
    config = parse_config(config_text(videos, args.regions, args.fps, args.on), "bench")
    extra = {} if args.frame_buffer is None else {"frame_buffer": args.frame_buffer}
    options = WatchOptions(max_batch=args.max_batch, summary_every=0, reload_poll=0, **extra)
    budget = plan_threads(args.sources, options)
    clf = edgeclip.load(args.bundle, precision=args.precision, backend=args.backend, target=args.target,
                        threads=budget.encoder)
    load0 = os.getloadavg()
    print(f"encoder: {clf.choice.describe()}; budget {budget.to_json()}; load average {load0[0]:.2f}", flush=True)
    decode_cpu, prep_cpu = decode_prep_cpu(videos, clf, args.regions)  # before the encoder's threads ever run
    th, tw = clf.preprocessor.config.size
    pixels = np.random.default_rng(0).standard_normal((args.max_batch, 3, th, tw)).astype(np.float32)
    for b in range(1, args.max_batch + 1):  # every batch size compiled and allocated once
        clf.encoder.run(pixels[:b])

    if args.warmup:
        Watcher(clf, config, WatchOptions(**{**options.__dict__, "duration": args.warmup}), sinks=[]).run()
    crops = wall = cpu = 0.0
    enc_rates, enc_cpu, sizes_all, batch_times, ratios = [], [], [], [], []
    lat: list[float] = []
    totals: dict = {}
    for r in range(args.rounds):
        opts = WatchOptions(**{**options.__dict__, "duration": args.seconds / args.rounds})
        watcher = Watcher(clf, config, opts, sinks=[])
        c0 = time.process_time()
        end = watcher.run()
        seg_cpu = time.process_time() - c0
        sizes = list(watcher.batch_sizes)
        crops += sum(sizes)
        wall += end["elapsed_s"]
        cpu += seg_cpu
        sizes_all += sizes
        batch_times += list(watcher.infer_times)
        lat += [x for cam in watcher.cameras.values() for reg in cam.regions for x in reg.latency.sample]
        for k in ("dropped", "frames_dropped", "motion_skipped", "stale", "encoder_calls"):
            totals[k] = totals.get(k, 0) + end[k]
        rate, ecpu = encoder_rate(clf, pixels, sizes)
        enc_rates.append(rate)
        ratios.append(sum(sizes) / end["elapsed_s"] / rate)
        enc_cpu.append(ecpu)
        print(f"round {r + 1}: watch {sum(sizes) / end['elapsed_s']:.1f} crops/s (mean batch "
              f"{np.mean(sizes):.1f}, {end['dropped']} dropped, {end['frames_dropped']} frames dropped) | encoder "
              f"alone at the same batch sizes {rate:.1f} img/s", flush=True)
    crops_per_s = crops / wall
    encoder_img_s = statistics.median(enc_rates)
    offered = args.sources * args.regions * args.fps
    ecpu = statistics.median(enc_cpu)
    per_crop_other = prep_cpu + decode_cpu / args.regions
    result = {
        "sources": args.sources, "regions": args.sources * args.regions, "fps": args.fps, "on": args.on,
        "seconds": round(wall, 2), "crops_per_s": round(crops_per_s, 2), "offered_per_s": offered,
        "every_frame": bool(crops_per_s >= 0.98 * offered and totals["dropped"] == 0 and totals["frames_dropped"] == 0),
        "encoder_img_s": round(encoder_img_s, 2), "ratio": round(statistics.median(ratios), 3),
        "ratio_rounds": [round(r, 3) for r in ratios],
        "p50_ms": round(float(np.percentile(lat, 50)) * 1000, 2), "p95_ms": round(float(np.percentile(lat, 95)) * 1000, 2),
        "batch_ms": round(statistics.median(batch_times) * 1000, 2), "mean_batch": round(float(np.mean(sizes_all)), 2),
        "dropped": totals["dropped"], "stale": totals["stale"], "frames_dropped": totals["frames_dropped"],
        "motion_skipped": totals["motion_skipped"], "encoder_calls": totals["encoder_calls"],
        "cpu_cores_used": round(cpu / wall, 2),
        "cpu_ms": {"decode_per_frame": round(decode_cpu * 1000, 2), "preprocess_per_crop": round(prep_cpu * 1000, 2),
                   "encoder_per_crop": round(ecpu * 1000, 2)},
        "ceiling": round(ecpu / (ecpu + per_crop_other), 3),
        "budget": budget.to_json(), "encoder": clf.choice.describe(),
        "load_average": {"start": round(load0[0], 2), "end": round(os.getloadavg()[0], 2)},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
