"""``edgeclip eval``: zero-shot accuracy of a bundle on an image-folder dataset (``edgeclip.evaluate``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import add_load_options, add_options, load_options, options_from_args, progress_bar


def register(sub: argparse._SubParsersAction) -> None:
    from ..evaluate import EvalOptions

    p = sub.add_parser("eval", help="zero-shot top-1/top-5 on an image-folder dataset (<root>/<class>/<img>)",
                       description="Zero-shot evaluation: class names (folder names, or --classes map) are embedded "
                                   "with the bundle's text encoder and prompt templates; images are classified "
                                   "with the bundle's image encoder. Bad files are reported and skipped.")
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("dataset", help="dataset folder: <root>/<class>/<image files>")
    add_options(p, EvalOptions, groups={"comparison": None})
    add_load_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluate import EvalOptions, confusion_png, evaluate, write_json
    from ..extras import require, require_onnxruntime

    opts = options_from_args(EvalOptions, args)
    if opts.engine == "torch":
        require("export", ["torch", "torchvision", "open_clip"], what="eval --engine torch")
    if opts.engine != "torch" or opts.against:
        require_onnxruntime("edgeclip eval")
    if opts.confusion:
        require("opencv", what="eval --confusion (drawing the PNG)")
    bars = []

    def progress(what: str, total: int):
        bars.append(progress_bar(args, total, what))
        return bars[-1].update

    try:
        report = evaluate(args.bundle, args.dataset, opts, load_options(args), progress)
    finally:
        for bar in bars:
            bar.close()
    extra = report.extra
    print(f"{args.bundle} on {args.dataset}: top-1 {report.top1:.2f}%  top-5 {report.top5:.2f}%  "
          f"({report.count} images, {len(report.failed)} failed; {extra['engine']}, {extra['precision']})")
    for name, acc in report.per_class.items():
        print(f"  {name:<28} {acc:6.2f}%")
    agree = extra.get("comparison")
    if agree:
        print(f"against {agree['against']} ({agree['against_precision']}): top-1 {agree['against_top1']:.2f}%, top-1 "
              f"agreement {agree['top1_agreement']:.2f}%, mean embedding cosine {agree['mean_cosine']:.5f}")
    if opts.json:
        write_json(report.to_json(), opts.json)
    if opts.confusion:
        confusion_png(report, opts.confusion, Path(args.bundle).name)
    if report.failed and not args.quiet:
        for f in report.failed[:10]:
            print(f"skipped {f['path']}: {f['error']}", file=sys.stderr)
    return 0
