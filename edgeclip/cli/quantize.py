"""``edgeclip quantize``: an INT8 image encoder calibrated on synthetic images (no real image needed)."""
from __future__ import annotations

import argparse
import sys

#: ``edgeclip.quant.budget.MODES`` and ``PRECISIONS`` (not imported: the CLI starts without the export extra)
RESOLUTIONS = ("auto", "full", "coarse-to-fine", "coarser")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize", help="write an INT8 image encoder (image_encoder.int8.<target>.onnx) into a bundle",
        description="Calibrate on synthetic (or real) images and write an INT8 image encoder for one target "
                    "into the bundle, atomically; records recipe, calibration and INT8-vs-fp32 agreement in "
                    "the manifest. See docs/quantization.md.")
    p.add_argument("bundle", help="bundle directory (changed in place, atomically)")
    p.add_argument("--calib", default="text-guided", metavar="SOURCE",
                   help="calibration images: noise (noise:uniform), bn-stats or bn-stats:priors (ResNet "
                        "towers), text-guided (default), or real:DIR")
    p.add_argument("--target", choices=("cpu", "tensorrt", "openvino"), default="cpu",
                   help="INT8 recipe: cpu (ONNX Runtime CPU kernels, U8S8), tensorrt (symmetric S8S8 Q/DQ) or "
                        "openvino (U8S8 per-channel, residual adds and pools in INT8 too)")
    p.add_argument("--images", type=int, default=64, metavar="N", help="calibration images (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration images (default 0)")
    p.add_argument("--calib-method", choices=("minmax", "percentile", "entropy"), default=None,
                   help="how activation ranges are chosen (default: the recipe's measured choice)")
    p.add_argument("--max-drop", type=float, default=None, metavar="POINTS",
                   help="keep the most sensitive layers in fp32 until at most POINTS %% of the calibration "
                        "images change zero-shot label vs fp32 (default: quantize every weighted layer)")
    p.add_argument("--time-budget", type=float, default=180.0, metavar="SEC",
                   help="seconds allowed for synthesising the calibration images (default 180)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimisation steps per synthetic batch (default 200; fewer is faster, rougher)")
    p.add_argument("--device", default="cpu", help="torch device for synthesis: cpu (default) or cuda")
    p.add_argument("--synthesis-resolution", choices=RESOLUTIONS, default="auto",
                   help="resolution plan of synthesis: auto (default: every step at full size if that fits "
                        "--time-budget, else coarse-to-fine, else coarser, else cut), full, coarse-to-fine "
                        "(most steps at a reduced size, the last at full size) or coarser (an extra first "
                        "phase at the smallest size the tower supports); a forced plan is still cut to fit")
    p.add_argument("--synthesis-precision", choices=PRECISIONS, default="auto",
                   help="autocast precision of synthesis (default auto: bf16 on CUDA GPUs that support it and "
                        "on CPUs with AMX, else fp32)")
    p.add_argument("--synthesis-threads", type=int, default=0, metavar="N",
                   help="torch CPU threads for synthesis (default 0: the usable cores less those other "
                        "processes keep busy, re-checked before every batch; 1 for small models)")
    p.add_argument("--no-cache", action="store_true",
                   help="do not read or write the calibration cache in <bundle>/.work")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..extras import ONNXRUNTIME_FOR_QUANTIZE, require, require_onnxruntime

    require("export", what="edgeclip quantize")
    require_onnxruntime("edgeclip quantize", minimum=ONNXRUNTIME_FOR_QUANTIZE)
    from ..api import quantize

    say = (lambda m: None) if args.quiet else (lambda m: print(f"[quantize] {m}", file=sys.stderr))
    rec = quantize(args.bundle, args.target, args.calib, images=args.images, seed=args.seed,
                   calib_method=args.calib_method, max_drop=args.max_drop, time_budget=args.time_budget,
                   cache=not args.no_cache, steps=args.steps, device=args.device,
                   synthesis_resolution=args.synthesis_resolution, synthesis_precision=args.synthesis_precision,
                   synthesis_threads=args.synthesis_threads, progress=not args.quiet, step=say)
    a, c = rec["agreement"], rec["calibration"]
    excluded = f", {len(rec['excluded_nodes'])} layers kept in fp32" if rec["excluded_nodes"] else ""
    synthesis = f" (synthesis: {c['summary']}{', cached' if c.get('cached') else ''})" if c.get("summary") else ""
    print(f"wrote {args.bundle}/{rec['file']} ({rec['recipe']}): calibrated on {c['images']} {c['source']} images "
          f"({c['method']}){synthesis} in {rec['seconds']:.0f} s; vs fp32 on them: top-1 agreement {a['top1_agreement']:.4f}, "
          f"mean cosine {a['mean_cosine']:.4f}{excluded}; contact sheet {args.bundle}/{rec['contact_sheet']}")
    return 0
