"""``edgeclip pack``: a bundle with only what one device runs (its image file(s), labels, tokenizer and an
INT8 text encoder for relabelling), verified; flags from ``edgeclip.quant.pack.PackOptions``."""
from __future__ import annotations

import argparse

from .options import add_options, options_from_args, say


def register(sub: argparse._SubParsersAction) -> None:
    from .. import PackOptions

    p = sub.add_parser("pack", help="write a bundle with only what one device runs (see `edgeclip inspect`)",
                       description="Copy a bundle with only what a device profile runs: the image encoder file its "
                                   "backends use, the labels, and for relabelling on the device the tokenizer and "
                                   "the text encoder (INT8 by default, its label embeddings checked against fp32). "
                                   "The result is a verified bundle; `edgeclip inspect` shows what was left out.")
    p.add_argument("bundle", help="bundle directory (a full one, as export and quantize write it)")
    p.add_argument("--out", "-o", required=True, help="packed bundle directory to write")
    add_options(p, PackOptions)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..extras import require, require_onnxruntime

    if args.text == "int8":
        require("export", ["onnx"], what="edgeclip pack --text int8 (quantizing the text encoder)")
        require_onnxruntime("edgeclip pack --text int8")
    from .. import PackOptions, pack

    opts = options_from_args(PackOptions, args)
    b = pack(args.bundle, args.out, opts, step=say(args, "pack"))
    rec = b.manifest["pack"]
    print(f"wrote {b.path} for {rec['profile']}: {', '.join(rec['image'])} ({rec['precision']}), text "
          f"{rec['text']}; {rec['bytes'] / 1e6:.1f} MB of {rec['source']['bytes'] / 1e6:.1f} MB")
    text = rec.get("text_int8")
    if text:
        lab = text["labels"]
        print(f"INT8 text encoder vs fp32 on the {lab['labels']} labels x {text['templates']} templates: min cosine "
              f"{lab['min_cosine']:.5f}, mean {lab['mean_cosine']:.5f}, own label nearest {lab['own_label_nearest']:.3f}")
    return 0
