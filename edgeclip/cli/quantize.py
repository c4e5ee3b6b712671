"""``edgeclip quantize``: an INT8 image encoder calibrated on synthetic images (no real image needed)."""
from __future__ import annotations

import argparse

from .options import add_options, options_from_args, say


def register(sub: argparse._SubParsersAction) -> None:
    from .. import QuantizeOptions

    p = sub.add_parser(
        "quantize", help="write an INT8 image encoder (image_encoder.int8.<target>.onnx) into a bundle",
        description="Calibrate on synthetic (or real) images and write an INT8 image encoder for one target "
                    "into the bundle, atomically; records recipe, calibration and INT8-vs-fp32 agreement in "
                    "the manifest. See docs/quantization.md.")
    p.add_argument("bundle", help="bundle directory (changed in place, atomically)")
    add_options(p, QuantizeOptions)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from .. import QuantizeOptions, quantize
    from ..extras import ONNXRUNTIME_FOR_QUANTIZE, require, require_onnxruntime

    opts = options_from_args(QuantizeOptions, args)
    require("export", what="edgeclip quantize")
    require_onnxruntime("edgeclip quantize", minimum=ONNXRUNTIME_FOR_QUANTIZE)
    rec = quantize(args.bundle, opts, progress=not args.quiet, step=say(args, "quantize"))
    a, c = rec["agreement"], rec["calibration"]
    excluded = f", {len(rec['excluded_nodes'])} layers kept in fp32" if rec["excluded_nodes"] else ""
    synthesis = f" (synthesis: {c['summary']}{', cached' if c.get('cached') else ''})" if c.get("summary") else ""
    print(f"wrote {args.bundle}/{rec['file']} ({rec['recipe']}): calibrated on {c['images']} {c['source']} images "
          f"({c['method']}){synthesis} in {rec['seconds']:.0f} s; vs fp32 on them: top-1 agreement "
          f"{a['top1_agreement']:.4f}, mean cosine {a['mean_cosine']:.4f}{excluded}; contact sheet "
          f"{args.bundle}/{rec['contact_sheet']}")
    return 0
