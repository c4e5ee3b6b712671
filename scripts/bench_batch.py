"""Offline batch throughput: ``classify_files`` end to end against the bare image encoder, interleaved.

For each photo set, every round measures, one after the other on the same files:

* encoder only: the bundle's image encoder on already-preprocessed batches (the ceiling);
* classify: ``Classifier.classify_files`` (read, decode, preprocess on threads, overlapped with inference),
  with reduced DCT decoding (the default) and, with ``--exact``, with full-size decoding.

It prints img/s and the ratio classify / encoder per round and the median ratio; rounds alternate, so load
from other processes hits both sides alike. ``--mad`` prints the mean absolute difference between the
preprocessed model inputs of reduced and exact decoding; ``--ray N`` times ``edgeclip.batch.classify_ray``
on N photos of the last set with 1 and 2 workers. Each set's summary also gives the CPU time per photo of
decoding + preprocessing and of the encoder, and the ratio they allow at most (``ceiling``): where the
encoder alone keeps every core busy, classify cannot beat encoder CPU / (encoder CPU + preprocessing CPU).

    python scripts/bench_batch.py BUNDLE --set 12mp=/tmp/phone/imagenette --set 224=/tmp/imagenette/train \\
        --n 96 --rounds 3 --exact
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import edgeclip
from edgeclip.runtime.images import IMAGE_EXTENSIONS, read_image


def photos(folder: Path, n: int) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if len(files) < n:
        sys.exit(f"{folder}: only {len(files)} images, {n} wanted")
    return files[:: max(1, len(files) // n)][:n]


def encoder_rate(clf, pixels: np.ndarray, batch: int) -> float:
    t = time.perf_counter()
    for i in range(0, len(pixels), batch):
        clf.encoder.run(np.ascontiguousarray(pixels[i:i + batch]))
    return len(pixels) / (time.perf_counter() - t)


def cpu_ceiling(clf, files: list[Path], pixels: np.ndarray, batch: int) -> dict:
    """CPU milliseconds per photo to read + decode + preprocess (one thread) and to encode (all threads),
    and the ratio classify / encoder they allow when the encoder alone keeps every core busy: the encoder's
    CPU time over the sum of both. No pipelining can beat it."""
    t = time.process_time()
    for f in files:
        clf.preprocessor(read_image(f, min_size=clf.decode_min_size()))
    prep = (time.process_time() - t) / len(files) * 1000
    t = time.process_time()
    encoder_rate(clf, pixels, batch)
    enc = (time.process_time() - t) / len(pixels) * 1000
    return {"prep_cpu_ms": round(prep, 2), "encoder_cpu_ms": round(enc, 2), "ceiling": round(enc / (enc + prep), 3)}


PREFETCH = 0


def classify_rate(clf, files: list[Path], batch: int, workers: int, exact: bool) -> float:
    t = time.perf_counter()
    n = sum(1 for r in clf.classify_files(files, batch, workers, exact_decode=exact, prefetch=PREFETCH) if r.ok)
    if n != len(files):
        sys.exit("some photos failed to classify")
    return len(files) / (time.perf_counter() - t)


def mad(pre, files: list[Path]) -> dict:
    """Mean absolute difference of reduced vs exact decoding (twice the input size kept): model input
    (normalised) and pixels (0-255), for a preprocessor."""
    size = 2 * max(pre.config.size)
    norm, pix, scales = [], [], {}
    for f in files:
        exact, reduced = read_image(f), read_image(f, min_size=size)
        scale = round(exact.shape[0] / reduced.shape[0])
        scales[scale] = scales.get(scale, 0) + 1
        norm.append(float(np.abs(pre(exact) - pre(reduced)).mean()))
        pix.append(float(np.abs(pre.pixels(exact).astype(np.float32) - pre.pixels(reduced)).mean()))
    return {"images": len(files), "decode_scales": {f"1/{k}": v for k, v in sorted(scales.items())},
            "mad_input": statistics.mean(norm), "mad_input_max": max(norm),
            "mad_pixels": statistics.mean(pix), "mad_pixels_max": max(pix)}


def ray_rates(bundle: str, files: list[Path], batch: int, args) -> dict:
    from edgeclip.batch import classify_ray
    from edgeclip.batch.ray import init_ray

    init_ray(None, num_cpus=os.cpu_count())
    out = {}
    for workers in (1, 2):
        t = time.perf_counter()
        rows = list(classify_ray(bundle, files, workers=workers, batch_size=batch, precision=args.precision,
                                 target=args.target, backend=args.backend))
        out[f"{workers} workers"] = round(len(rows) / (time.perf_counter() - t), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--set", action="append", required=True, metavar="NAME=DIR", help="a photo set (repeatable)")
    ap.add_argument("--n", type=int, default=96, help="photos per set")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0, help="decoding threads (0: classify_files' default)")
    ap.add_argument("--threads", type=int, default=0, help="encoder threads (0: all cores)")
    ap.add_argument("--nice", default=None,
                    help="decode threads' niceness (default: the Classifier's); a list (0,10) times each in every round")
    ap.add_argument("--prefetch", type=int, default=0, help="files decoded ahead (0: one batch)")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--target", default="cpu")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--exact", action="store_true", help="also time full-size decoding")
    ap.add_argument("--mad", action="store_true", help="mean absolute difference of reduced vs exact inputs")
    ap.add_argument("--mad-sizes", default="", help="also for these model input sizes, e.g. 32,64 (with --mad)")
    ap.add_argument("--ray", type=int, default=0, metavar="N", help="time classify_ray on N photos, 1 and 2 workers")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    global PREFETCH
    PREFETCH = args.prefetch

    clf = edgeclip.load(args.bundle, precision=args.precision, target=args.target, backend=args.backend,
                        threads=args.threads)
    nices = [int(v) for v in args.nice.split(",")] if args.nice else [clf.decode_nice]
    clf.decode_nice = nices[0]
    print(f"encoder: {clf.choice.describe()}; cpus {os.cpu_count()}; load average at start "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    sets = {}
    for spec in args.set:
        name, folder = spec.split("=", 1)
        files = photos(Path(folder), args.n)
        pixels = clf.preprocessor.batch([read_image(f, min_size=clf.decode_min_size()) for f in files])
        sets[name] = (files, pixels)
    clf.classify_files(sets[next(iter(sets))][0][:args.batch_size], args.batch_size)  # warm up
    encoder_rate(clf, sets[next(iter(sets))][1][:args.batch_size], args.batch_size)
    results: dict = {name: {"encoder": [], "classify": [], "exact": [], "ratio": [], "exact_ratio": []}
                     for name in sets}
    for r in range(args.rounds):
        for name, (files, pixels) in sets.items():
            res = results[name]
            enc = encoder_rate(clf, pixels, args.batch_size)
            line = f"round {r + 1} {name:>6}: encoder {enc:6.1f} img/s"
            res["encoder"].append(enc)
            for k, nice in enumerate(nices):
                clf.decode_nice = nice
                e2e = classify_rate(clf, files, args.batch_size, args.workers, False)
                suffix = "" if k == 0 else f"_nice{nice}"
                res.setdefault("classify" + suffix, []).append(e2e)
                res.setdefault("ratio" + suffix, []).append(e2e / enc)
                line += f"  classify{' (nice %d)' % nice if len(nices) > 1 else ''} {e2e:6.1f} img/s  ratio {e2e / enc:.2f}"
            clf.decode_nice = nices[0]
            if args.exact:
                ex = classify_rate(clf, files, args.batch_size, args.workers, True)
                res["exact"].append(ex)
                res["exact_ratio"].append(ex / enc)
                line += f"  | exact decoding {ex:6.1f} img/s  ratio {ex / enc:.2f}"
            print(line, flush=True)
    summary = {"load_average_end": round(os.getloadavg()[0], 1), "n": args.n, "batch_size": args.batch_size}
    for name, res in results.items():
        summary[name] = {k: round(statistics.median(v), 3) for k, v in res.items() if v}
        summary[name].update(cpu_ceiling(clf, *sets[name], args.batch_size))
        for key in [k for k in summary[name] if k.startswith("ratio")]:
            summary[name]["of_ceiling" + key[5:]] = round(summary[name][key] / summary[name]["ceiling"], 3)
        print(f"median {name:>6}: " + ", ".join(f"{k} {v}" for k, v in summary[name].items()), flush=True)
    if args.mad:
        from edgeclip.runtime.preprocess import PreprocessConfig, Preprocessor

        pres = {max(clf.preprocessor.config.size): clf.preprocessor}
        for s in filter(None, args.mad_sizes.split(",")):
            pres[int(s)] = Preprocessor(PreprocessConfig(size=int(s)))
        for name, (files, _) in sets.items():
            for size, pre in pres.items():
                summary[name][f"mad_{size}px"] = m = mad(pre, files)
                print(f"reduced vs exact decoding, {name}, {size} px input: {m}", flush=True)
    if args.ray:
        files = sets[list(sets)[-1]][0]
        files = (files * (args.ray // len(files) + 1))[:args.ray]
        summary["ray"] = ray_rates(args.bundle, files, args.batch_size, args)
        print(f"Ray Data on {len(files)} photos of {list(sets)[-1]}: {summary['ray']} img/s", flush=True)
    print(f"load average at end {summary['load_average_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
