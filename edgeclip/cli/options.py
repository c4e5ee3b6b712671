"""Options and helpers shared by the CLI's command modules."""
from __future__ import annotations

import argparse
import sys
from typing import Any


def progress_bar(args: argparse.Namespace, total: int, desc: str, unit: str = "img") -> Any:
    """A tqdm progress bar on stderr, silent with --quiet or when stderr is not a terminal and CI is set."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=bool(getattr(args, "quiet", False)), file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5)


def add_backend_options(p: argparse.ArgumentParser) -> None:
    """--precision, --target, --backend, --providers, --threads: how the image encoder runs."""
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32", help="image encoder precision")
    p.add_argument("--target", choices=("cpu", "tensorrt"), default=None,
                   help="which INT8 recipe to use when the bundle has several (default: the only one)")
    p.add_argument("--backend", choices=("auto", "onnxruntime", "tensorrt"), default="auto",
                   help="inference backend (tensorrt needs an engine from `edgeclip build`)")
    p.add_argument("--providers", default="cpu",
                   help="ONNX Runtime providers in fallback order, comma-separated: tensorrt,cuda,cpu (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = all cores)")


def check_backend_options(args: argparse.Namespace) -> None:
    """Reject option combinations of add_backend_options that cannot mean anything (--target with fp32)."""
    from ..errors import OptionError

    if args.precision == "fp32" and args.target:
        raise OptionError("--target picks an INT8 recipe: use it with --precision int8, or drop it")


def providers_of(args: argparse.Namespace) -> list[str]:
    """The --providers list."""
    return [p.strip() for p in args.providers.split(",") if p.strip()]


def add_label_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--labels / --labels-file and --templates."""
    g = p.add_argument_group("labels")
    g.add_argument("--labels", nargs="+", metavar="NAME",
                   help="label names (a single argument with commas is split: 'cat,dog,bird')")
    g.add_argument("--labels-file", metavar="FILE",
                   help="labels file: .txt (one per line), .csv (name[,synonyms][,descriptions]) or .json")
    g.add_argument("--templates", default=None, metavar="SET|FILE",
                   help="prompt templates: short (default), imagenet80, photo, none, or a file with one per line")
    p.set_defaults(_labels_required=required)


def labels_from_args(args: argparse.Namespace, default: list[str] | None = None) -> tuple[list, str, list[str]]:
    """(labels, template set name, templates) from the label options; rejects contradictions."""
    from ..errors import OptionError
    from ..runtime.labels import Label, check_labels, read_labels_file, resolve_templates

    if args.labels and args.labels_file:
        raise OptionError("give labels either with --labels or with --labels-file, not both")
    if args.labels_file:
        labels = read_labels_file(args.labels_file)
    elif args.labels:
        names = [n.strip() for a in args.labels for n in (a.split(",") if len(args.labels) == 1 else [a])]
        labels = check_labels([Label(n) for n in names if n], "--labels")
    elif default:
        labels = [Label(n) for n in default]
    else:
        raise OptionError("no labels: pass --labels cat dog ... or --labels-file labels.txt")
    name, templates = resolve_templates(args.templates)
    return labels, name, templates
