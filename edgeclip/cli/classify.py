"""``edgeclip classify``, ``edgeclip labels`` and ``edgeclip inspect``: the torch-free device commands."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator

from .options import (add_label_options, add_load_options, add_options, label_names, load_options,
                      options_from_args, progress_bar)


def register(sub: argparse._SubParsersAction) -> None:
    from ..batch import BatchOptions

    p = sub.add_parser("classify", help="classify image files, folders or globs with a bundle",
                       description="Classify images (files, folders searched recursively, glob patterns). "
                                   "Unreadable files become error rows; exit status 1 if any file failed.")
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("paths", nargs="+", help="image files, folders or glob patterns")
    add_options(p, BatchOptions)
    add_load_options(p)
    p.set_defaults(handler=run_classify, interrupted=_resume_hint)

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


@contextlib.contextmanager
def quiet_stderr(on: bool) -> Iterator[None]:
    """Standard error (the file descriptor, which Ray's C++ workers write to) sent to /dev/null while ``on``;
    errors are reported after it is back."""
    if not on:
        yield
        return
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _resume_hint(args: argparse.Namespace) -> str | None:
    """What to do after Ctrl-C: the rows so far are in the output file, and --resume goes on from them."""
    if not args.output:
        return None
    return f"the rows so far are in {args.output}; the same command with --resume classifies only the rest"


def run_classify(args: argparse.Namespace) -> int:
    from ..batch import BatchOptions, plan, run
    from ..extras import require_onnxruntime

    require_onnxruntime("edgeclip classify")
    opts = options_from_args(BatchOptions, args)
    job = plan(args.paths, opts, interactive=sys.stdout.isatty())
    quiet = args.quiet
    for note in [] if quiet else job.notes():
        print(note, file=sys.stderr)
    what = f"classify (Ray, {opts.workers or 2} worker{'s' if opts.workers != 1 else ''})" if opts.ray else "classify"
    with progress_bar(args, len(job.todo), what) as bar, quiet_stderr(quiet and opts.ray):
        rows, failed, engine = run(args.bundle, job, load_options(args), progress=bar.update,
                                   on_open=None if quiet else lambda line: bar.write(f"image encoder: {line}",
                                                                                     file=sys.stderr))
    if not quiet:
        print(f"classified {rows - failed} of {rows} files with {engine}"
              + (f"; {failed} failed (see the error rows)" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def run_labels(args: argparse.Namespace) -> int:
    from .. import relabel
    from ..extras import require_onnxruntime

    require_onnxruntime("edgeclip labels (the text encoder)")
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    b = relabel(args.bundle, label_names(args), labels_file=args.labels_file, templates=args.templates,
                providers=providers)
    info = b.info.labels
    names = b.label_names()
    print(f"{args.bundle}: {len(names)} labels embedded with {info.templates} templates ({info.template_set}); "
          f"matrix {len(names)}x{b.embed_dim}")
    return 0


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _num(v: object, fmt: str) -> str:
    """A number formatted, or the value as it is (inspect shows what the manifest holds, never fails on it)."""
    return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _obj(v: object) -> dict:
    return v if isinstance(v, dict) else {}


def _print_pack(b) -> None:
    """A packed bundle: for which device, what it kept, what it left out, and what it can still do."""
    pack = _obj(b.manifest.get("pack"))
    if not pack:
        return
    src = _obj(pack.get("source"))
    print(f"packed      for {pack.get('profile')}: {', '.join(pack.get('image') or [])} ({pack.get('precision')}), "
          f"text encoder {pack.get('text')}; {_fmt_bytes(int(pack.get('bytes') or 0))} of "
          f"{_fmt_bytes(int(src.get('bytes') or 0))} (from {src.get('path')})")
    for why in pack.get("reasons") or []:
        print(f"            {why}")
    text = _obj(pack.get("text_int8"))
    if text:
        lab = _obj(text.get("labels"))
        print(f"            INT8 text encoder vs fp32 on the labels: min cosine {_num(lab.get('min_cosine'), '.5f')}, "
              f"own label nearest {_num(lab.get('own_label_nearest'), '.3f')}")
    left = _obj(pack.get("left_out"))
    for name, e in sorted(left.items()):
        e = _obj(e)
        extra = " ".join(f"{k}={e[k]}" for k in ("precision", "target") if e.get(k))
        print(f"  left out  {name:<40} {e.get('role', ''):<17} {_fmt_bytes(int(e.get('bytes') or 0)):>9}  {extra}")
    from ..errors import EdgeclipError

    try:
        from .. import runs_on

        runs = runs_on(b, str(pack.get("profile")), str(pack.get("precision")))
        print("runs        " + "; ".join(f"{entry}: {name}" for entry, name in runs.items()))
    except EdgeclipError as exc:
        print(f"runs        (cannot tell: {exc})")
    can = ["classify with the labels it holds"]
    can.append("relabel on the device (edgeclip labels, set_labels)" if pack.get("text") != "none"
               else "no relabelling (packed without a text encoder)")
    roles = {e.role for e in b.info.files.values()}
    cannot = [] if "image_encoder" in roles and any((e.precision or "fp32") == "fp32" for e in b.info.files.values()
                                                     if e.role == "image_encoder") else ["fp32 image encoding"]
    cannot += ["edgeclip quantize (needs the fp32 image encoder and the source model)"] if cannot else []
    print(f"can         {'; '.join(can)}" + (f"; not: {'; '.join(cannot)}" if cannot else ""))


def run_inspect(args: argparse.Namespace) -> int:
    from .. import load_bundle

    b = load_bundle(args.bundle, verify=not args.no_verify)  # the same checks classify runs
    m, info = b.manifest, b.info
    if args.json:
        print(b.to_json(), end="")
        return 0
    model, pre = info.model, info.preprocess
    print(f"bundle      {b.path}  (schema {info.schema_version}, {'verified' if b.verified else 'NOT verified'})")
    family = model.extra.get("family")
    print(f"model       {model.id}  [{model.source}, {model.architecture}{f', family {family}' if family else ''}]  "
          f"embed_dim {model.embed_dim}  logit_scale {model.logit_scale:.2f}")
    print(f"scoring     {model.scoring}" + (f" (logit_scale * cos + logit_bias {model.logit_bias:g}, each label on "
                                             f"its own)" if model.scoring == "sigmoid" else " over the labels")
          + (f"; tokenizer {info.tokenizer.type}, context {info.tokenizer.context_length}" if info.tokenizer else ""))
    print(f"preprocess  {list(pre.size)} {pre.resize_mode} {pre.interpolation}  mean {list(pre.mean)}  "
          f"std {list(pre.std)}")
    if info.labels is not None:
        names = b.label_names()
        more = f", ... (+{len(names) - 8})" if len(names) > 8 else ""
        print(f"labels      {len(names)}: {', '.join(names[:8])}{more}  [templates: {info.labels.template_set}]")
    for tower, p in _obj(m.get("parity")).items():
        p = _obj(p)
        if tower == "tokenizer":
            print(f"parity      tokenizer: {p.get('kind')} ids equal open_clip's on {p.get('texts')} texts")
            continue
        print(f"parity      {tower}: max abs diff {_num(p.get('max_abs_diff'), '.2e')}, "
              f"min cosine {_num(p.get('min_cosine'), '.6f')}")
    rep = _obj(_obj(m.get("export")).get("reparameterized"))
    if rep:
        print(f"export      reparameterized: {rep.get('batchnorm_before')} BatchNorm layers folded; min cosine "
              f"{_num(rep.get('min_cosine'), '.7f')} to the training form on {rep.get('inputs')} inputs")
    for key, q in info.quantization.items():
        calib, agree = _obj(q.extra.get("calibration")), _obj(q.extra.get("agreement"))
        print(f"int8        {key}: recipe {q.recipe}, calib {calib.get('source')} "
              f"x{calib.get('images')} ({q.extra.get('seconds', '?')} s); "
              + ", ".join(f"{k} {_num(v, '.4f') if isinstance(v, float) else v}" for k, v in agree.items()))
        if calib.get("summary"):  # synthetic calibration: steps per batch, resolution schedule, plan cut or not
            print(f"            synthesis {calib['summary']}")
    _print_pack(b)
    print("files")
    for name, e in sorted(info.files.items()):
        extra = " ".join(f"{k}={getattr(e, k)}" for k in ("precision", "target") if getattr(e, k))
        print(f"  {name:<40} {e.role:<17} {_fmt_bytes(e.bytes or 0):>9}  {e.sha256[:12]}  {extra}")
    print("versions    " + ", ".join(f"{k} {v}" for k, v in _obj(m.get("versions")).items()))
    extra = _not_recorded(b.path, set(info.files))
    reports = [n for n, e in info.files.items() if e.role == "report"]
    if reports or extra:
        print("not needed on a device (`edgeclip pack` leaves them out)")
    for name in sorted(reports):
        print(f"  {name:<40} report: made by quantize for people to look at")
    for name, size in extra:
        what = "calibration cache of quantize (made again when missing)" if name == ".work/" else "not in the manifest"
        print(f"  {name:<40} {_fmt_bytes(size):>9}  {what}")
    return 0


def _not_recorded(root: Path, recorded: set[str]) -> list[tuple[str, int]]:
    """Top-level entries of a bundle folder that the manifest does not record (and their bytes)."""
    out = []
    for entry in sorted(root.iterdir()):
        if entry.name == "manifest.json" or entry.name in recorded:
            continue
        inside = [f for f in entry.rglob("*") if f.is_file()] if entry.is_dir() else [entry]
        names = {f.relative_to(root).as_posix() for f in inside}
        if names - recorded:
            out.append((entry.name + ("/" if entry.is_dir() else ""), sum(f.stat().st_size for f in inside)))
    return out
