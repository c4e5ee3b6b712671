#!/usr/bin/env python3
"""edgeclip's INT8 files on OpenVINO and ONNX Runtime against OpenVINO with NNCF's own INT8, in one interleaved run.

For each bundle: ONNX Runtime fp32 (the reference) and every INT8 file on ONNX Runtime; OpenVINO fp32, bf16
(where the CPU has it) and every INT8 file (``edgeclip.bench.openvino_variants``); and the peer,
the fp32 model quantized by NNCF (``nncf.quantize`` on OpenVINO's model, ``ModelType.TRANSFORMER`` for ViTs,
its default CPU preset) calibrated on the same kind of noise images as ``edgeclip quantize --calib noise``,
run by the same backend class with the same hint, threads and precision of the layers left in float (bf16 on
CPUs with AVX512_BF16 or AMX, OpenVINO's default there; f32 elsewhere), as edgeclip's files.
Everything is timed at each batch size in interleaved rounds (``edgeclip.bench.measure``);
the table gives paired speed-ups vs ONNX Runtime fp32 and vs the NNCF peer, and each variant's embedding
cosine with fp32 on 8 noise images. The NNCF model is cached in --work (keyed by the fp32 file's sha256).

    python scripts/bench_openvino.py vitb32-bundle rn50-bundle --rounds 8 --json out.json --png out.png

Needs the openvino extra and nncf (``pip install nncf``), plus the export extra (noise images).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

PEER = "openvino nncf int8"
REFERENCE = "onnxruntime fp32"


def nncf_model(bundle: Any, work: Path, images: int) -> Path:
    """NNCF's INT8 of the bundle's fp32 image encoder as OpenVINO IR (made once, then reused from ``work``)."""
    import openvino as ov

    from edgeclip.quant.synthesis import noise_images

    sha = bundle.manifest["files"][bundle.encoder("image", "fp32").name]["sha256"][:16]
    xml = work / f"nncf-{sha}-{images}.xml"
    if not xml.is_file():
        import nncf

        pre = bundle.preprocess
        calib = noise_images(images, tuple(pre["size"]), pre["mean"], pre["std"], seed=0)
        model = ov.Core().read_model(str(bundle.encoder("image", "fp32")))
        kind = nncf.ModelType.TRANSFORMER if bundle.model.get("architecture") == "vit" else None
        start = time.perf_counter()
        quantized = nncf.quantize(model, nncf.Dataset([calib[i:i + 1] for i in range(len(calib))]),
                                  model_type=kind, subset_size=images)
        print(f"[nncf] quantized {bundle.path.name} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        work.mkdir(parents=True, exist_ok=True)
        ov.save_model(quantized, str(xml))
    return xml


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).mean())


def bench_bundle(path: str, args: argparse.Namespace) -> dict[str, Any]:
    from edgeclip.bundle import load_bundle
    from edgeclip.runtime.backends.openvino import OpenVinoBackend
    from edgeclip.bench import (Variant, format_table, measure, onnxruntime_variants, openvino_variants,
                                            report)
    from edgeclip.quant.synthesis import noise_images

    bundle = load_bundle(path)
    variants = onnxruntime_variants(bundle, ["cpu"], args.threads)
    ov_variants, skipped = openvino_variants(bundle, args.threads, args.hint, args.cache_dir)
    variants += ov_variants
    xml = nncf_model(bundle, Path(args.work), args.calib_images)
    note = f"NNCF INT8 of the fp32 ONNX ({args.calib_images} noise images), {args.hint} hint"
    # the peer runs exactly as edgeclip's INT8 files do (same hint, threads, precision of the float layers)
    peer = OpenVinoBackend(xml, "CPU", "int8", args.hint, args.threads, args.cache_dir)
    variants.append(Variant(PEER, "openvino", "int8", peer.run, "nncf", f"{note}, other layers {peer.rest_precision}"))
    h, w = bundle.preprocess["size"]
    probe = noise_images(8, (h, w), bundle.preprocess["mean"], bundle.preprocess["std"], seed=1)
    ref = variants[0].run(probe)
    cosines = {v.name: cosine(np.asarray(v.run(probe)), ref) for v in variants}
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, 3, h, w), dtype=np.float32) for b in sorted(set(args.batch_sizes))}
    print(f"[bench] {bundle.model.get('id')}: {len(variants)} variants x batch {', '.join(map(str, inputs))}, "
          f"{args.rounds} interleaved rounds; {'; '.join(skipped) or 'nothing skipped'}", file=sys.stderr)
    results = measure(variants, inputs, args.rounds, args.warmup, args.round_seconds)
    rep = report(variants, results, REFERENCE, PEER, {"bundle": str(bundle.path), "model": bundle.model.get("id"),
                                                      "rounds": args.rounds, "threads": args.threads,
                                                      "hint": args.hint, "skipped": skipped})
    for row in rep["results"]:
        row["cosine_vs_fp32"] = cosines[row["variant"]]
    print(f"\n{bundle.model.get('id')} image encoder, {rep['machine'].get('cpu', '?')} "
          f"({rep['machine'].get('cpus')} CPUs, load {rep['machine'].get('loadavg', ['?'])})")
    print(format_table(rep))
    print("cosine with fp32: " + ", ".join(f"{k} {v:.5f}" for k, v in cosines.items()))
    for b in inputs:
        rows = [r for r in rep["results"] if r["batch"] == b and r["precision"] == "int8" and r["target"] != "nncf"]
        best = max(rows, key=lambda r: r["vs_reference"])
        print(f"batch {b}: best edgeclip INT8 path {best['variant']}: {best['vs_reference']:.2f}x {REFERENCE}, "
              f"{best['vs_peer']:.2f}x {PEER}")
    return rep


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--round-seconds", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=0, help="threads for every backend (0 = all cores)")
    ap.add_argument("--hint", choices=("auto", "latency", "throughput"), default="auto",
                    help="OpenVINO hint for every OpenVINO variant, the peer included (default auto)")
    ap.add_argument("--calib-images", type=int, default=64, help="NNCF calibration images (noise; default 64)")
    ap.add_argument("--work", default=".work/bench_openvino", help="where the NNCF models are kept")
    ap.add_argument("--cache-dir", default=None, help="OpenVINO compiled-model cache (default the user's)")
    ap.add_argument("--json", default=None, help="write the reports as JSON")
    ap.add_argument("--png", default=None, help="write one chart per bundle (the name gets the model appended)")
    args = ap.parse_args()

    from edgeclip.bench import write_png

    reports = []
    for path in args.bundles:
        rep = bench_bundle(path, args)
        reports.append(rep)
        if args.png:
            out = Path(args.png)
            name = str(rep["model"]).split(" ")[0]
            write_png(rep, out.with_name(f"{out.stem}-{name}{out.suffix}"), f"{rep['model']}: image encoder throughput")
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2, default=float) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
