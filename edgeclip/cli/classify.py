"""``edgeclip classify``, ``edgeclip labels`` and ``edgeclip inspect``: the torch-free device commands."""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import IO, Iterable

from .options import (add_backend_options, add_label_options, check_backend_options, labels_from_args, progress_bar,
               providers_of)

FORMATS = ("table", "csv", "jsonl")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="classify image files, folders or globs with a bundle",
                       description="Classify images (files, folders searched recursively, glob patterns). "
                                   "Unreadable files become error rows; exit status 1 if any file failed.")
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("paths", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--top-k", type=int, default=1, help="labels per image (default 1)")
    p.add_argument("--batch-size", type=int, default=32, help="images per inference batch")
    p.add_argument("--workers", type=int, default=0, help="decoding threads (0 = number of CPUs)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format (default: table on a terminal, else by --output suffix, else csv)")
    p.add_argument("--output", "-o", default=None, help="write results to this file instead of stdout")
    add_backend_options(p)
    p.set_defaults(handler=run_classify)

    p = sub.add_parser("labels", help="re-embed a new label set inside a bundle, on the device (no torch)",
                       description="Replace a bundle's labels using its text encoder and torch-free tokenizer.")
    p.add_argument("bundle", help="bundle directory (changed in place, atomically)")
    p.add_argument("--providers", default="cpu", help="ONNX Runtime providers for the text encoder")
    add_label_options(p)
    p.set_defaults(handler=run_labels)

    p = sub.add_parser("inspect", help="show a bundle's manifest summary and verify its files")
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    p.add_argument("--no-verify", action="store_true", help="skip hash verification")
    p.set_defaults(handler=run_inspect)


def _format_for(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    if args.output:
        suffix = Path(args.output).suffix.lower().lstrip(".")
        return {"jsonl": "jsonl", "json": "jsonl", "csv": "csv", "txt": "table"}.get(suffix, "csv")
    return "table" if sys.stdout.isatty() else "csv"


class RowWriter:
    """Writes result rows as a table, CSV or JSON lines, one row at a time."""

    def __init__(self, out: IO[str], fmt: str, top_k: int, path_width: int = 40) -> None:
        self.out, self.fmt, self.top_k, self.width = out, fmt, top_k, max(8, min(path_width, 80))
        if fmt == "csv":
            self.csv = csv.writer(out)
            self.csv.writerow(["path", "label", "score", "top_labels", "top_scores", "error"])
        elif fmt == "table":
            out.write(f"{'path':<{self.width}}  {'label':<24} {'score':>6}  {'other labels' if top_k > 1 else ''}\n")

    def write(self, result) -> None:
        path, pred, err = str(result.path), result.prediction, result.error
        if self.fmt == "jsonl":
            row = {"path": path, "label": pred.label if pred else None, "score": round(pred.score, 6) if pred else None}
            if pred and self.top_k > 1:
                row["top"] = [{"label": l, "score": round(s, 6)} for l, s in zip(pred.labels, pred.scores)]
            if err:
                row["error"] = err
            self.out.write(json.dumps(row, ensure_ascii=False) + "\n")
        elif self.fmt == "csv":
            self.csv.writerow([path, pred.label if pred else "", f"{pred.score:.6f}" if pred else "",
                               "|".join(pred.labels) if pred else "",
                               "|".join(f"{s:.6f}" for s in pred.scores) if pred else "", err or ""])
        else:
            shown = path if len(path) <= self.width else "..." + path[-(self.width - 3):]
            if pred:
                rest = "  ".join(f"{l} {s:.3f}" for l, s in zip(pred.labels[1:], pred.scores[1:]))
                self.out.write(f"{shown:<{self.width}}  {pred.label:<24} {pred.score:6.3f}  {rest}\n")
            else:
                self.out.write(f"{shown:<{self.width}}  ERROR: {err}\n")


def write_results(results: Iterable, out: IO[str], fmt: str, top_k: int, path_width: int) -> tuple[int, int]:
    """Write every result; returns (rows, failures)."""
    writer = RowWriter(out, fmt, top_k, path_width)
    rows = failed = 0
    for r in results:
        writer.write(r)
        rows += 1
        failed += not r.ok
    out.flush()
    return rows, failed


def run_classify(args: argparse.Namespace) -> int:
    from ..errors import OptionError
    from ..runtime.classifier import Classifier
    from ..runtime.images import expand_inputs

    if args.top_k < 1:
        raise OptionError("--top-k must be >= 1")
    check_backend_options(args)
    paths = expand_inputs(args.paths)
    clf = Classifier(args.bundle, precision=args.precision, target=args.target, backend=args.backend,
                     providers=providers_of(args), threads=args.threads, top_k=args.top_k)
    fmt = _format_for(args)
    out = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout
    try:
        with progress_bar(args, len(paths), "classify") as bar:
            results = clf.classify_files(paths, batch_size=args.batch_size, workers=args.workers,
                                         top_k=args.top_k, progress=bar.update)
            rows, failed = write_results(results, out, fmt, args.top_k, max((len(str(p)) for p in paths), default=8))
    finally:
        if args.output:
            out.close()
    if not args.quiet:
        print(f"classified {rows - failed} of {rows} files with {clf.encoder.name} ({args.precision})"
              + (f"; {failed} failed (see the error rows)" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def run_labels(args: argparse.Namespace) -> int:
    from ..runtime.text import relabel_bundle

    labels, tname, templates = labels_from_args(args)
    names, matrix = relabel_bundle(args.bundle, labels, tname, templates, providers_of(args))
    print(f"{args.bundle}: {len(names)} labels embedded with {len(templates)} templates ({tname}); "
          f"matrix {matrix.shape[0]}x{matrix.shape[1]}")
    return 0


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run_inspect(args: argparse.Namespace) -> int:
    from ..bundle import load_bundle

    b = load_bundle(args.bundle, verify=not args.no_verify)
    m = b.manifest
    if args.json:
        print(json.dumps(m, indent=2, ensure_ascii=False))
        return 0
    model, pre = m["model"], m["preprocess"]
    print(f"bundle      {b.path}  (schema {m['schema_version']}, {'verified' if b.verified else 'NOT verified'})")
    print(f"model       {model.get('id')}  [{model.get('source')}, {model.get('architecture')}]  "
          f"embed_dim {model['embed_dim']}  logit_scale {model['logit_scale']:.2f}")
    print(f"preprocess  {pre['size']} {pre['resize_mode']} {pre['interpolation']}  mean {pre['mean']}  std {pre['std']}")
    if "labels" in m:
        names, _ = b.labels()
        more = f", ... (+{len(names) - 8})" if len(names) > 8 else ""
        print(f"labels      {len(names)}: {', '.join(names[:8])}{more}  [templates: {m['labels'].get('template_set')}]")
    for tower, p in m.get("parity", {}).items():
        print(f"parity      {tower}: max abs diff {p['max_abs_diff']:.2e}, min cosine {p['min_cosine']:.6f}")
    for key, q in m.get("quantization", {}).items():
        agree = q.get("agreement", {})
        print(f"int8        {key}: recipe {q.get('recipe')}, calib {q.get('calibration', {}).get('source')} "
              f"x{q.get('calibration', {}).get('images')} ({q.get('seconds', '?')} s); "
              + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in agree.items()))
    print("files")
    for name, e in sorted(m["files"].items()):
        extra = " ".join(f"{k}={e[k]}" for k in ("precision", "target") if k in e)
        print(f"  {name:<40} {e['role']:<17} {_fmt_bytes(e.get('bytes', 0)):>9}  {e['sha256'][:12]}  {extra}")
    print("versions    " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()))
    return 0
