"""``edgeclip eval``: zero-shot accuracy of a bundle on an image-folder dataset."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import add_backend_options, open_classifier, progress_bar


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="zero-shot top-1/top-5 on an image-folder dataset (<root>/<class>/<img>)",
                       description="Zero-shot evaluation: class names (folder names, or --classes map) are embedded "
                                   "with the bundle's text encoder and prompt templates; images are classified "
                                   "with the bundle's image encoder. Bad files are reported and skipped.")
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("dataset", help="dataset folder: <root>/<class>/<image files>")
    p.add_argument("--classes", help="TSV/CSV mapping folder names to class names (e.g. imagenette-classes.tsv)")
    p.add_argument("--templates", default="imagenet80", help="prompt templates: imagenet80 (default), short, photo, "
                                                             "none or a file")
    p.add_argument("--files-from", help="only evaluate the files listed (paths relative to DATASET), e.g. a "
                                        "held-out split")
    p.add_argument("--limit", type=int, default=0, help="evaluate a class-stratified random subset of N images")
    p.add_argument("--seed", type=int, default=0, help="seed for --limit sampling")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="decoding threads (0 = number of CPUs)")
    p.add_argument("--exact-decode", action="store_true",
                   help="decode every JPEG at full size (default: photos at least twice the model input decode at "
                        "a reduced DCT scale, as edgeclip classify does)")
    p.add_argument("--engine", choices=("runtime", "torch"), default="runtime",
                   help="runtime: the bundle's ONNX files (default); torch: the source PyTorch model with "
                        "open_clip's own preprocessing (needs the export extra), as a reference")
    p.add_argument("--against", metavar="BUNDLE", help="also run this bundle (may be the same one) and report "
                                                       "top-1 agreement and mean image-embedding cosine")
    p.add_argument("--against-precision", choices=("auto", "fp32", "int8", "bf16"), default=None,
                   help="precision for --against (default: same as --precision)")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    p.add_argument("--confusion", metavar="PNG", help="write the confusion matrix as a PNG image")
    add_backend_options(p)
    p.set_defaults(handler=run)


def _runtime_embedder(args, bundle_path: str, precision: str, names: list[str], templates: list[str],
                      target: str | None | bool = True):
    from ..evaluate import embed_files_with

    clf = open_classifier(args, bundle_path, precision, target=target)
    if getattr(args, "exact_decode", False):
        clf.decode_ratio = 0
    matrix = clf.embed_labels(names, templates)

    def embed(files: list[Path]):
        with progress_bar(args, len(files), f"eval {clf.precision}") as bar:
            return embed_files_with(clf, files, args.batch_size, args.workers, bar.update)

    return embed, matrix, (clf.logit_scale, clf.logit_bias, clf.scoring), clf.encoder.name, clf.precision


def _torch_embedder(args, bundle_path: str, names: list[str], templates: list[str]):
    from ..bundle import load_bundle
    from ..export.reference import TorchReference
    from ..runtime.labels import Label

    bundle = load_bundle(bundle_path)
    ref = TorchReference(bundle, args.threads)
    matrix = ref.label_matrix([Label(n) for n in names], templates)
    model = bundle.info.model

    def embed(files: list[Path]):
        with progress_bar(args, len(files), "eval torch") as bar:
            return ref.embed_files(files, args.batch_size, bar.update)

    return embed, matrix, (ref.loaded.logit_scale, model.logit_bias, model.scoring), "torch-eager", "fp32"


def run(args: argparse.Namespace) -> int:
    from ..errors import OptionError
    from ..extras import require, require_onnxruntime

    if args.engine == "torch":
        require("export", ["torch", "torchvision", "open_clip"], what="eval --engine torch")
    if args.engine != "torch" or args.against:
        require_onnxruntime("edgeclip eval")
    if args.confusion:
        require("opencv", what="eval --confusion (drawing the PNG)")
    from ..evaluate import (agreement, confusion_png, evaluate_embeddings, load_dataset, read_class_map,
                                    write_json)
    from ..runtime.labels import resolve_templates

    if args.engine == "torch" and args.precision != "fp32":
        raise OptionError("--engine torch evaluates the fp32 source model; drop --precision or use --engine runtime")
    if args.against_precision and not args.against:
        raise OptionError("--against-precision needs --against BUNDLE")
    cmap = read_class_map(args.classes) if args.classes else None
    ds = load_dataset(args.dataset, cmap, args.files_from, args.limit, args.seed)
    tname, templates = resolve_templates(args.templates)
    if args.engine == "torch":
        embed, matrix, scale, engine, precision = _torch_embedder(args, args.bundle, ds.names, templates)
    else:
        embed, matrix, scale, engine, precision = _runtime_embedder(args, args.bundle, args.precision, ds.names,
                                                                    templates)
    report, emb, ok = evaluate_embeddings(embed, ds, matrix, *scale)
    report.extra.update({"bundle": str(args.bundle), "dataset": str(args.dataset), "engine": engine,
                         "precision": precision, "templates": tname, "files_from": args.files_from,
                         "limit": args.limit})
    print(f"{args.bundle} on {args.dataset}: top-1 {report.top1:.2f}%  top-5 {report.top5:.2f}%  "
          f"({report.count} images, {len(report.failed)} failed; {engine}, {precision})")
    for name, acc in report.per_class.items():
        print(f"  {name:<28} {acc:6.2f}%")
    if args.against:
        prec = args.against_precision or args.precision
        embed2, matrix2, scale2, _, prec2 = _runtime_embedder(args, args.against, prec, ds.names, templates,
                                                               args.target if prec != "fp32" else None)
        other, emb2, ok2 = evaluate_embeddings(embed2, ds, matrix2, *scale2)
        agree = {"against": str(args.against), "against_precision": prec2, "against_top1": other.top1,
                 **agreement(emb, ok, matrix, emb2, ok2, matrix2)}
        report.extra["comparison"] = agree
        print(f"against {args.against} ({prec2}): top-1 {other.top1:.2f}%, top-1 agreement "
              f"{agree['top1_agreement']:.2f}%, mean embedding cosine {agree['mean_cosine']:.5f}")
    if args.json:
        write_json(report.to_json(), args.json)
    if args.confusion:
        confusion_png(report, args.confusion, Path(args.bundle).name)
    if report.failed and not args.quiet:
        for f in report.failed[:10]:
            print(f"skipped {f['path']}: {f['error']}", file=sys.stderr)
    return 0
