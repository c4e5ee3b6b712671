"""Options and helpers shared by the CLI's command modules."""
from __future__ import annotations

import argparse
import re
import sys
from typing import Any


def progress_bar(args: argparse.Namespace, total: int, desc: str, unit: str = "img") -> Any:
    """A tqdm progress bar on stderr, silent with --quiet or when stderr is not a terminal and CI is set."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=bool(getattr(args, "quiet", False)), file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5)


def add_backend_options(p: argparse.ArgumentParser, precision_default: str = "fp32") -> None:
    """--device, --precision, --target, --backend, --providers, --threads: how the image encoder runs."""
    g = p.add_argument_group("device and backend (see `edgeclip devices`)")
    g.add_argument("--device", default="auto", metavar="PROFILE",
                   help="device profile (default auto: detect this machine); it picks the INT8 recipe and the "
                        "backend order")
    g.add_argument("--precision", choices=("auto", "fp32", "int8", "bf16"), default=precision_default,
                   help=f"image encoder precision (default {precision_default}; auto: the device profile's; bf16: "
                        f"OpenVINO on CPUs with AVX512_BF16/AMX)")
    g.add_argument("--target", choices=("cpu", "tensorrt", "openvino"), default=None,
                   help="INT8 recipe to use (default: the one made for the chosen backend)")
    g.add_argument("--backend", choices=("auto", "onnxruntime", "tensorrt", "openvino"), default="auto",
                   help="inference backend (default auto: the profile's order; tensorrt needs `edgeclip build`; "
                        "openvino needs the openvino extra)")
    g.add_argument("--providers", default=None,
                   help="ONNX Runtime providers in fallback order, comma-separated: tensorrt,cuda,cpu "
                        "(default: the profile's)")
    g.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = all cores)")
    g.add_argument("--hint", choices=("auto", "latency", "throughput"), default=None,
                   help="OpenVINO performance hint (default: the profile's): latency runs a batch as one request "
                        "on every core, throughput splits it over parallel streams, auto: latency for one image, "
                        "throughput for batches")
    g.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="OpenVINO compiled-model cache (default $XDG_CACHE_HOME/edgeclip/openvino or "
                        "~/.cache/edgeclip/openvino)")


def providers_of(args: argparse.Namespace) -> list[str] | None:
    """The --providers list, or None for the profile's."""
    if not getattr(args, "providers", None):
        return None
    return [p.strip() for p in args.providers.split(",") if p.strip()]


def flag_wording(message: str) -> str:
    """A library message in command-line terms: `name` -> --name, name='value' -> --name value."""
    message = re.sub(r"`([a-z_]+)`", lambda m: "--" + m.group(1).replace("_", "-"), message)
    return re.sub(r"\b([a-z_]+)='([^']*)'", lambda m: f"--{m.group(1).replace('_', '-')} {m.group(2)}", message)


def open_classifier(args: argparse.Namespace, bundle: str | None = None, precision: str | None = None,
                    top_k: int = 5, target: str | None | bool = True) -> Any:
    """``edgeclip.load`` with the backend options (``target=True``: --target's)."""
    from ..api import load

    return load(bundle or args.bundle, device=args.device, precision=precision or args.precision,
                backend=args.backend, target=args.target if target is True else target,
                providers=providers_of(args), threads=args.threads, top_k=top_k, hint=getattr(args, "hint", None),
                cache_dir=getattr(args, "cache_dir", None))


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
