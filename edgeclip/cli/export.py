"""``edgeclip export``: a CLIP checkpoint to a bundle."""
from __future__ import annotations

import argparse

from .options import add_label_options, add_options, label_names, options_from_args, say


def register(sub: argparse._SubParsersAction) -> None:
    from .. import ExportOptions

    p = sub.add_parser("export", help="export a CLIP checkpoint to a bundle (ONNX towers + label embeddings)",
                       description="Export both CLIP towers to ONNX, check them against torch, embed the labels "
                                   "and write a bundle directory.")
    p.add_argument("--out", "-o", required=True, help="bundle directory to write")
    add_options(p, ExportOptions)
    add_label_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from .. import ExportOptions
    from ..api import export
    from ..extras import require, require_onnxruntime

    require("export", what="edgeclip export")
    require_onnxruntime("edgeclip export (parity check)")
    opts = options_from_args(ExportOptions, args)
    b = export(args.out, opts, label_names(args), labels_file=args.labels_file, templates=args.templates,
               step=say(args, "export"))
    par, model = b.manifest["parity"], b.manifest["model"]
    print(f"wrote {b.path}: {model.get('id')} ({model.get('architecture')}), {len(b.label_names())} labels; parity "
          f"max abs diff image {par['image_encoder']['max_abs_diff']:.2e}, text {par['text_encoder']['max_abs_diff']:.2e}")
    return 0
