"""Time edgeclip's Pillow-exact preprocessing of one 1920x1080 frame to 224x224 against plain OpenCV.

    python scripts/bench_preprocess.py [--size 224] [--mode shortest] [--interpolation bicubic] [--repeat 50]

Prints the first call (weights computed) and the cached calls (matrix products only) of
``edgeclip.runtime.preprocess.Preprocessor`` next to ``cv2.resize(INTER_CUBIC)`` + centre crop + normalise,
which is fast but not what open_clip does (no antialiasing). No assertions: a report, not a test.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edgeclip.runtime.preprocess import PreprocessConfig, Preprocessor  # noqa: E402


def frame(h: int = 1080, w: int = 1920) -> np.ndarray:
    """A deterministic camera-like frame: smooth gradients, edges and noise (BGR uint8)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(x / 97 + c) * np.cos(y / 61 - c) for c in range(3)], axis=-1)
    base[(x // 160 + y // 120) % 2 == 0] *= 0.6
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def opencv_path(img: np.ndarray, size: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    s = size / min(h, w)
    rh, rw = max(size, int(h * s)), max(size, int(w * s))
    r = cv2.resize(img, (rw, rh), interpolation=cv2.INTER_CUBIC)
    y0, x0 = (rh - size) // 2, (rw - size) // 2
    rgb = cv2.cvtColor(r[y0:y0 + size, x0:x0 + size], cv2.COLOR_BGR2RGB)
    return ((rgb.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)


def timed(fn, repeat: int) -> tuple[float, float]:
    """(median, min) seconds over ``repeat`` calls; the min is the least disturbed by other processes."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--mode", default="shortest", choices=("shortest", "longest", "squash"))
    ap.add_argument("--interpolation", default="bicubic", choices=("bicubic", "bilinear", "nearest"))
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()

    img = frame()
    cfg = PreprocessConfig(size=(args.size, args.size), resize_mode=args.mode, interpolation=args.interpolation)
    pre = Preprocessor(cfg)
    t = time.perf_counter()
    ours = pre(img)
    first = time.perf_counter() - t
    cached = timed(lambda: pre(img), args.repeat)
    mean, std = np.asarray(cfg.mean, np.float32), np.asarray(cfg.std, np.float32)
    opencv_path(img, args.size, mean, std)
    cv = timed(lambda: opencv_path(img, args.size, mean, std), args.repeat)
    diff = np.abs(ours - opencv_path(img, args.size, mean, std)) * float(std.mean()) * 255

    print(f"1920x1080 BGR frame -> {args.size}x{args.size} ({args.mode}, {args.interpolation}); "
          f"numpy {np.__version__}, OpenCV {cv2.__version__}, {os.cpu_count()} CPUs")
    print(f"  edgeclip (Pillow-exact) first call : {first * 1e3:8.2f} ms  (computes and caches the weights)")
    print(f"  edgeclip (Pillow-exact) cached call: {cached[0] * 1e3:8.2f} ms  median of {args.repeat} "
          f"(min {cached[1] * 1e3:.2f} ms)")
    print(f"  cv2.resize INTER_CUBIC + crop      : {cv[0] * 1e3:8.2f} ms  median of {args.repeat} "
          f"(min {cv[1] * 1e3:.2f} ms)")
    print(f"  ratio cached / OpenCV              : {cached[0] / cv[0]:8.2f}x  (of the minima: "
          f"{cached[1] / cv[1]:.2f}x)")
    if args.mode == "shortest":
        print(f"  (OpenCV's output is not open_clip's: mean |diff| {diff.mean():.2f}, "
              f"max {diff.max():.0f} uint8 levels, no antialiasing)")


if __name__ == "__main__":
    main()
