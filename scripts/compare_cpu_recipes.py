#!/usr/bin/env python3
"""Measure the candidate CPU INT8 recipes side by side on a bundle's image encoder (docs/quantization.md).

Candidates: static QDQ U8S8 (per-tensor, per-channel, Conv-per-channel with 7-bit weights = edgeclip's
``cpu`` recipe), static QDQ S8S8, static QOperator U8S8, dynamic INT8 MatMul (``quantize_dynamic``), and
mixed (static Conv + dynamic MatMul). Each is calibrated on the same noise images (speed does not depend on
the calibration) and timed at batch 1 and 8 in interleaved rounds with ``edgeclip.bench``;
the table shows median ms per image, the paired speed-up over ONNX Runtime fp32 and the embedding cosine
with fp32.

    python scripts/compare_cpu_recipes.py /path/to/vitb32-bundle --rounds 8 --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def build(bundle_path: str, work: Path, n: int) -> tuple[dict[str, Path], np.ndarray]:
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    from edgeclip.bundle import load_bundle
    from edgeclip.quant.recipes import CPU_CANDIDATES, prepare_fp32, quantize_onnx, quiet_onnxruntime, weighted_nodes
    from edgeclip.quant.recipes import _data_reader
    from edgeclip.quant.synthesis import noise_images

    b = load_bundle(bundle_path)
    pre = b.preprocess
    images = noise_images(n, tuple(pre["size"]), pre["mean"], pre["std"], seed=0)
    fp32 = prepare_fp32(b.encoder("image", "fp32"), work / "fp32.onnx")
    model = onnx.load(str(fp32), load_external_data=False)
    nodes = weighted_nodes(model)
    kinds = {node.name: node.op_type for node in model.graph.node}
    conv = [x for x in nodes if kinds[x] == "Conv"]
    gemm = [x for x in nodes if kinds[x] != "Conv"]
    out = {"fp32": fp32}
    for name, recipe in CPU_CANDIDATES.items():
        print(f"building {name}", file=sys.stderr)
        out[name] = quantize_onnx(recipe, fp32, work / f"{name}.onnx", images, "minmax", nodes=nodes)
    with quiet_onnxruntime():
        print("building qoperator-u8s8, dynamic-matmul, mixed", file=sys.stderr)
        quantize_static(str(fp32), str(work / "qop.onnx"), _data_reader(images, model.graph.input[0].name, 8),
                        quant_format=QuantFormat.QOperator, op_types_to_quantize=["Conv", "MatMul", "Gemm"],
                        nodes_to_quantize=nodes, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        out["qoperator-u8s8"] = work / "qop.onnx"
        quantize_dynamic(str(fp32), str(work / "dyn.onnx"), op_types_to_quantize=["MatMul", "Gemm"],
                         nodes_to_quantize=gemm, weight_type=QuantType.QInt8)
        out["dynamic-matmul"] = work / "dyn.onnx"
        if conv:
            quantize_static(str(fp32), str(work / "conv.onnx"), _data_reader(images, model.graph.input[0].name, 8),
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"], nodes_to_quantize=conv,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
            quantize_dynamic(str(work / "conv.onnx"), str(work / "mixed.onnx"), op_types_to_quantize=["MatMul", "Gemm"],
                             nodes_to_quantize=gemm, weight_type=QuantType.QInt8)
            out["mixed-static-conv-dynamic-matmul"] = work / "mixed.onnx"
    return out, images


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from edgeclip.runtime.backends.onnxruntime import OrtBackend
    from edgeclip.bench import Variant, format_table, measure, report

    with tempfile.TemporaryDirectory(prefix="cpu-recipes-") as tmp:
        models, images = build(args.bundle, Path(tmp), args.images)
        backends = {k: OrtBackend(p, ["cpu"], args.threads) for k, p in models.items()}
        ref = backends["fp32"].run(images[:8])
        cosines = {}
        for k, be in backends.items():
            y = be.run(images[:8])
            cosines[k] = float(((y * ref).sum(1) / np.linalg.norm(y, axis=1) / np.linalg.norm(ref, axis=1)).mean())
        variants = [Variant(k, "onnxruntime", "fp32" if k == "fp32" else "int8", be.run) for k, be in backends.items()]
        inputs = {1: images[:1], 8: images[:8]}
        results = measure(variants, inputs, rounds=args.rounds, warmup=1, min_round_seconds=0.0)
        rep = report(variants, results, "fp32", None, {"cosine_vs_fp32": cosines, "bundle": args.bundle})
    print(format_table(rep))
    print("cosine with fp32 (8 noise images): " + ", ".join(f"{k} {v:.5f}" for k, v in cosines.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=2, default=float) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
