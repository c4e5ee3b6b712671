#!/usr/bin/env python3
"""Photo decoding without OpenCV: Pillow (the base install's decoder) against OpenCV, side by side.

Decodes the same JPEG bytes with both decoders, interleaved round by round, and prints ms per image and
the ratio Pillow / OpenCV for each group of files; also checks that both give the same pixels (as
``edgeclip.runtime.images.decode_image`` returns them: BGR, EXIF orientation applied).

    python scripts/bench_decode.py --group photos=DIR_OR_GLOB --group 12mp='big*.jpg' --rounds 5
"""
from __future__ import annotations

import argparse
import glob
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def _files(spec: str, limit: int) -> list[Path]:
    p = Path(spec)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else sorted(Path(m) for m in glob.glob(spec))
    return files[:limit]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", action="append", required=True, metavar="NAME=FILES",
                    help="a named group of images: a folder (recursive) or a glob pattern")
    ap.add_argument("--limit", type=int, default=300, help="at most this many files per group")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median reported)")
    args = ap.parse_args()

    import cv2

    from edgeclip.runtime.decode_pillow import decode_pillow

    def opencv(data: bytes) -> np.ndarray:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)

    decoders = {"opencv": opencv, "pillow": decode_pillow}
    print(f"OpenCV {cv2.__version__}, Pillow {__import__('PIL').__version__}, numpy {np.__version__}")
    for spec in args.group:
        name, _, where = spec.partition("=")
        blobs = [f.read_bytes() for f in _files(where, args.limit)]
        if not blobs:
            print(f"{name}: no files in {where}", file=sys.stderr)
            return 2
        same = exact = 0
        worst = 0
        for b in blobs:
            a, p = opencv(b), decode_pillow(b)
            if a.shape == p.shape:
                same += 1
                d = int(np.abs(a.astype(np.int16) - p).max())
                worst = max(worst, d)
                exact += d == 0
        times: dict[str, list[float]] = {k: [] for k in decoders}
        for _ in range(args.rounds):
            for k, fn in decoders.items():  # interleaved: both see the same machine load
                t = time.perf_counter()
                for b in blobs:
                    fn(b)
                times[k].append((time.perf_counter() - t) * 1000 / len(blobs))
        cv_ms, pil_ms = statistics.median(times["opencv"]), statistics.median(times["pillow"])
        print(f"{name}: {len(blobs)} files; opencv {cv_ms:.2f} ms/img, pillow {pil_ms:.2f} ms/img, "
              f"pillow/opencv {pil_ms / cv_ms:.2f}; same shape {same}/{len(blobs)}, identical {exact}, "
              f"max |diff| {worst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
