"""``edgeclip stream`` on a 640x480 video: paced at 30 fps (idle, and beside a busy-looping process), and unpaced.

Makes a 10-second 640x480 camera-like video from real photos (OpenCV VideoWriter, temporary folder) and runs
the real command line, ``edgeclip stream BUNDLE --source VIDEO --loop --duration S`` with default options:

* paced: ``--fps 30`` (frames come at 30 fps, a slow model drops them) on an idle machine, then again while
  another process busy-loops (one core's worth of competition);
* unpaced: read as fast as the model takes frames.

Beside them: the bare encoder's batch-1 throughput (``encoder_img_s_batch1``; the unpaced ratio divides by the
mean of two more measurements, right before and right after that run), and the CPU ceiling of the unpaced
run, encoder CPU / (encoder + decode + preprocess CPU) per frame: where the encoder alone keeps every core
busy, no pipeline beats it.

    python scripts/bench_stream.py /work/bundles/vitb32 --seconds 30 --json stream.json
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import edgeclip  # noqa: E402
from bench_watch import encoder_rate, make_videos  # noqa: E402
from edgeclip.sources import parse_source  # noqa: E402


def stream(bundle: str, video: Path, seconds: float, precision: str, fps: float | None, out: Path) -> dict:
    cmd = [sys.executable, "-m", "edgeclip", "-q", "stream", bundle, "--source", str(video), "--loop",
           "--duration", str(seconds), "--precision", precision, "--jsonl", str(out)]
    if fps:
        cmd += ["--fps", str(fps)]
    subprocess.run(cmd, check=True, cwd=REPO)
    end = [json.loads(line) for line in out.read_text().splitlines() if '"event":"end"' in line][-1]
    return {"inference_fps": round(end["inference_fps"], 2), "capture_fps": round(end["capture_fps"], 2),
            "dropped": end["dropped"], "p50_ms": end["latency_ms"]["p50"], "p95_ms": end["latency_ms"]["p95"]}


def encoder_batch1(clf, one: np.ndarray) -> tuple[float, float]:
    """(img/s, process CPU seconds per image) of the bare encoder on 200 calls at batch 1."""
    return encoder_rate(clf, one, [1] * 200)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edgeclip-bench-stream-"))
    video = make_videos(tmp, 1, 300, 30.0, 2)[0]
    reader = parse_source(str(video)).open()  # decoding and preprocessing timed before the encoder ever runs,
    frames = [reader.read() for _ in range(100)]  # so that no idle encoder thread's CPU is counted with them
    c = time.process_time()
    reader = parse_source(str(video)).open()
    for _ in range(100):
        reader.read()
    decode = (time.process_time() - c) / 100
    clf = edgeclip.load(args.bundle, precision=args.precision)
    c = time.process_time()
    for f in frames:
        clf.preprocessor(f)
    prep = (time.process_time() - c) / 100
    th, tw = clf.preprocessor.config.size
    one = np.random.default_rng(0).standard_normal((1, 3, th, tw)).astype(np.float32)
    for _ in range(20):
        clf.encoder.run(one)
    enc_rate, enc_cpu = encoder_batch1(clf, one)
    result = {"video": "640x480, 30 fps", "encoder": clf.choice.describe(),
              "load_average_start": round(os.getloadavg()[0], 2), "encoder_img_s_batch1": round(enc_rate, 1),
              "cpu_ms": {"decode": round(decode * 1000, 2), "preprocess": round(prep * 1000, 2),
                         "encoder": round(enc_cpu * 1000, 2)},
              "ceiling": round(enc_cpu / (enc_cpu + decode + prep), 3)}
    result["paced_30fps_idle"] = stream(args.bundle, video, args.seconds, args.precision, 30, tmp / "a.jsonl")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        result["paced_30fps_one_core_busy"] = stream(args.bundle, video, args.seconds, args.precision, 30,
                                                     tmp / "b.jsonl")
    finally:
        busy.kill()
        busy.wait()
    # the unpaced run against the encoder measured right before and right after it (the machine's pace drifts)
    around = [encoder_batch1(clf, one)[0]]
    result["unpaced"] = stream(args.bundle, video, args.seconds, args.precision, None, tmp / "c.jsonl")
    around.append(encoder_batch1(clf, one)[0])
    result["encoder_img_s_batch1_around_unpaced"] = [round(r, 1) for r in around]
    result["unpaced_ratio"] = round(result["unpaced"]["inference_fps"] / float(np.mean(around)), 3)
    result["load_average_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
