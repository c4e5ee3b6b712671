"""``edgeclip classify``, ``edgeclip labels`` and ``edgeclip inspect``: the torch-free device commands."""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import IO, Iterable, Iterator

from .options import (add_backend_options, add_label_options, labels_from_args, open_classifier, progress_bar,
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
    p.add_argument("--workers", type=int, default=0,
                   help="decoding threads (0 = number of CPUs); with --ray: Ray workers, one classifier each "
                        "(default 2)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format (default: table on a terminal, else by --output suffix, else csv)")
    p.add_argument("--output", "-o", default=None, help="write results to this file instead of stdout")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows already in --output (csv or jsonl), classify only the inputs without a "
                        "row and append them (a partial last row is cut off first)")
    p.add_argument("--exact-decode", action="store_true",
                   help="decode every JPEG at full size (default: a photo at least twice the model input decodes "
                        "at a reduced DCT scale, 1/2 to 1/8, several times faster)")
    g = p.add_argument_group("Ray Data (the 'ray' extra; see the README's batch section)")
    g.add_argument("--ray", action="store_true", help="run on Ray Data: --workers actors, one classifier each")
    g.add_argument("--ray-address", metavar="ADDR", default=None,
                   help="join this Ray cluster (e.g. 10.0.0.5:6379 or auto; default: start a local Ray on "
                        "127.0.0.1)")
    g.add_argument("--parquet", metavar="DIR", default=None,
                   help="with --ray: also write the rows as Parquet shards into DIR")
    add_image_limit_options(p)
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


def parse_size(text: str) -> int:
    """A byte count such as ``268435456``, ``512M``, ``512MB``, ``2G`` or ``64k`` (powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)i?b?\s*", str(text), re.IGNORECASE)
    if not m or int(m.group(1)) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive size such as 268435456, 512M or 2G, got {text!r}")
    return int(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " ")


def _positive_int(text: str) -> int:
    try:
        value = int(str(text).replace(",", "").replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def add_image_limit_options(p: argparse.ArgumentParser) -> None:
    """--max-image-pixels and --max-file-size (see docs/limits.md)."""
    from ..runtime import images

    g = p.add_argument_group("input limits (docs/limits.md)")
    g.add_argument("--max-image-pixels", type=_positive_int, default=None, metavar="N",
                   help=f"refuse images whose header states more pixels (default {images.MAX_IMAGE_PIXELS:,})")
    g.add_argument("--max-file-size", type=parse_size, default=None, metavar="SIZE",
                   help=f"refuse files larger than this (default {images.MAX_FILE_BYTES // 2**20}M)")


@contextlib.contextmanager
def image_limits(args: argparse.Namespace) -> Iterator[None]:
    """Apply --max-image-pixels / --max-file-size for the duration of a command."""
    from ..runtime.images import set_limits

    previous = set_limits(getattr(args, "max_image_pixels", None), getattr(args, "max_file_size", None))
    try:
        yield
    finally:
        set_limits(*previous)


def _format_for(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    if args.output:
        suffix = Path(args.output).suffix.lower().lstrip(".")
        return {"jsonl": "jsonl", "json": "jsonl", "csv": "csv", "txt": "table"}.get(suffix, "csv")
    return "table" if sys.stdout.isatty() else "csv"


_SURROGATE = re.compile("[\ud800-\udfff]")


def json_line(row: dict) -> str:
    """One strict-JSON line (no NaN/Infinity) that is valid UTF-8 whatever the file names hold.

    A file name that is not valid UTF-8 reaches Python as surrogate escapes (PEP 383); they are written as
    ``\\udcXX`` JSON escapes, so ``os.fsencode(json.loads(line)["path"])`` gives the name's bytes back.
    """
    text = json.dumps(row, ensure_ascii=False, allow_nan=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


class RowWriter:
    """Writes result rows as a table, CSV or JSON lines, one complete row per ``write``.

    Every row is formatted in full before it is written, so a row is never cut in half. JSON lines are
    strict JSON in UTF-8 (see :func:`json_line`). CSV and table rows carry file names as the OS gives them:
    on a stream opened with ``errors="surrogateescape"`` (what ``edgeclip classify -o`` uses) a name that
    is not valid UTF-8 is written as its original bytes; a stream that cannot take them gets ``\\udcXX``
    escapes instead of an error. A prediction with a non-finite score becomes an error row.
    """

    def __init__(self, out: IO[str], fmt: str, top_k: int, path_width: int = 40, header: bool = True) -> None:
        self.out, self.fmt, self.top_k, self.width = out, fmt, top_k, max(8, min(path_width, 80))
        self._buf = io.StringIO()
        self.csv = csv.writer(self._buf)
        if fmt == "csv" and header:
            self._put(self._csv_row(["path", "label", "score", "top_labels", "top_scores", "error"]))
        elif fmt == "table" and header:
            self._put(f"{'path':<{self.width}}  {'label':<24} {'score':>6}  {'other labels' if top_k > 1 else ''}\n")

    def _csv_row(self, fields: list[str]) -> str:
        self._buf.seek(0)
        self._buf.truncate()
        self.csv.writerow(fields)
        return self._buf.getvalue()

    def _put(self, text: str) -> None:
        try:
            self.out.write(text)
        except UnicodeEncodeError:  # nothing of the row was written: write it with escapes instead
            enc = getattr(self.out, "encoding", None) or "utf-8"
            self.out.write(text.encode(enc, "backslashreplace").decode(enc))

    def write(self, result) -> bool:
        """Write one row for a FileResult; returns True when it is an error row."""
        path, pred, err = os.fspath(result.path), result.prediction, result.error
        if pred is not None and not all(math.isfinite(s) for s in pred.scores):
            pred, err = None, (f"{path}: the model gave a non-finite score (NaN or infinity); check the bundle "
                               f"with `edgeclip inspect`")
        if self.fmt == "jsonl":
            row = {"path": path, "label": pred.label if pred else None, "score": round(pred.score, 6) if pred else None}
            if pred and self.top_k > 1:
                row["top"] = [{"label": l, "score": round(s, 6)} for l, s in zip(pred.labels, pred.scores)]
            if err is not None:
                row["error"] = err
            self._put(json_line(row))
        elif self.fmt == "csv":
            self._put(self._csv_row([path, pred.label if pred else "", f"{pred.score:.6f}" if pred else "",
                                     "|".join(pred.labels) if pred else "",
                                     "|".join(f"{s:.6f}" for s in pred.scores) if pred else "", err or ""]))
        else:
            shown = path if len(path) <= self.width else "..." + path[-(self.width - 3):]
            if pred:
                rest = "  ".join(f"{l} {s:.3f}" for l, s in zip(pred.labels[1:], pred.scores[1:]))
                self._put(f"{shown:<{self.width}}  {pred.label:<24} {pred.score:6.3f}  {rest}\n")
            else:
                self._put(f"{shown:<{self.width}}  ERROR: {err}\n")
        return err is not None


def write_results(results: Iterable, out: IO[str], fmt: str, top_k: int, path_width: int,
                  header: bool = True) -> tuple[int, int]:
    """Write every result; returns (rows, failures)."""
    writer = RowWriter(out, fmt, top_k, path_width, header)
    rows = failed = 0
    for r in results:
        failed += writer.write(r)
        rows += 1
    out.flush()
    return rows, failed


@contextlib.contextmanager
def _output(path: str | None, append: bool = False) -> Iterator[IO[str]]:
    """The results stream: the -o file, or stdout switched to pass file names' bytes through unchanged."""
    if path:
        with open(path, "a" if append else "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
            yield f
        return
    out = sys.stdout
    errors = getattr(out, "errors", None)
    switch = errors == "strict" and hasattr(out, "reconfigure")
    if switch:
        out.reconfigure(errors="surrogateescape")
    try:
        yield out
    finally:
        if switch:
            with contextlib.suppress(ValueError, OSError):
                out.reconfigure(errors=errors)


def _skipped_note(skipped: list[Path]) -> str:
    kinds = Counter(p.suffix.lower() or "(no extension)" for p in skipped)
    shown = ", ".join(f"{k} x{n}" for k, n in kinds.most_common(6)) + (", ..." if len(kinds) > 6 else "")
    return (f"skipped {len(skipped)} entries in the folders that are not image files by name ({shown}); "
            f"name a file explicitly to classify it")


def run_classify(args: argparse.Namespace) -> int:
    from ..errors import OptionError
    from ..extras import require_onnxruntime

    require_onnxruntime("edgeclip classify")
    from ..runtime.images import expand_inputs

    if args.top_k < 1:
        raise OptionError("--top-k must be >= 1")
    if args.ray_address and not args.ray:
        raise OptionError("--ray-address joins a Ray cluster for a --ray run: add --ray")
    if args.parquet and not args.ray:
        raise OptionError("--parquet writes Ray Data's shards: add --ray (or use --format csv/jsonl without it)")
    fmt = _format_for(args)
    skipped: list[Path] = []
    paths = expand_inputs(args.paths, missing="keep", skipped=skipped)
    state = _resume(args, fmt, paths) if args.resume else None
    todo = state.remaining(paths) if state else paths
    if not args.quiet and skipped:
        print(_skipped_note(skipped), file=sys.stderr)
    if args.ray:
        rows, failed, engine = _classify_ray(args, todo, fmt, state)
    else:
        clf = open_classifier(args, top_k=args.top_k)
        if not args.quiet:
            print(f"image encoder: {clf.choice.describe()}", file=sys.stderr)
        with image_limits(args), _output(args.output, append=state is not None) as out:
            with progress_bar(args, len(todo), "classify") as bar:
                def batch_done(n: int) -> None:  # a row reaches the file by the end of its batch
                    out.flush()
                    bar.update(n)

                results = clf.classify_files(todo, batch_size=args.batch_size, workers=args.workers,
                                             top_k=args.top_k, progress=batch_done, exact_decode=args.exact_decode)
                rows, failed = write_results(results, out, fmt, args.top_k, _path_width(paths),
                                             header=not (state and state.has_header))
        engine = f"{clf.encoder.name} ({clf.precision})"
    if not args.quiet:
        print(f"classified {rows - failed} of {rows} files with {engine}"
              + (f"; {failed} failed (see the error rows)" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def _path_width(paths: list[Path]) -> int:
    return max((len(str(p)) for p in paths), default=8)


def _resume(args: argparse.Namespace, fmt: str, paths: list[Path]):
    """--resume: read --output back (cutting a partial last row) and say what is left to do."""
    from ..errors import OptionError
    from ..batch.resume import RESUMABLE_FORMATS, resume_output

    if not args.output:
        raise OptionError("--resume needs --output FILE: the csv or jsonl file of the run to resume")
    if fmt not in RESUMABLE_FORMATS:
        raise OptionError(f"--resume reads the rows back, which a {fmt} file does not allow: use --format csv or "
                          f"--format jsonl (or an --output name ending in .csv or .jsonl)")
    state = resume_output(args.output, fmt)
    if not args.quiet:
        left = len(state.remaining(paths))
        print(f"resuming {args.output}: {len(paths) - left} of {len(paths)} inputs already have a row; "
              f"classifying the other {left}"
              + (f" (cut off a partial last row of {state.truncated} bytes)" if state.truncated else ""),
              file=sys.stderr)
    return state


def _classify_ray(args: argparse.Namespace, paths: list[Path], fmt: str, state) -> tuple[int, int, str]:
    """--ray: the same rows, computed by Ray Data actors (edgeclip.batch.classify_ray)."""
    from ..batch import classify_ray
    from ..errors import OptionError
    from .options import flag_wording, providers_of

    workers = args.workers or 2
    with _output(args.output, append=state is not None) as out:
        with progress_bar(args, len(paths), f"classify (Ray, {workers} workers)") as bar:
            def rows_done(n: int) -> None:
                out.flush()
                bar.update(n)

            try:
                results = classify_ray(args.bundle, paths, workers=workers, address=args.ray_address,
                                       batch_size=args.batch_size, top_k=args.top_k, exact_decode=args.exact_decode,
                                       parquet=args.parquet, device=args.device, precision=args.precision,
                                       backend=args.backend, target=args.target, providers=providers_of(args),
                                       threads=args.threads, max_pixels=args.max_image_pixels,
                                       max_bytes=args.max_file_size, progress=rows_done)
                rows, failed = write_results(results, out, fmt, args.top_k, _path_width(paths),
                                             header=not (state and state.has_header))
            except OptionError as exc:
                raise OptionError(flag_wording(str(exc))) from None
    return rows, failed, f"Ray Data ({workers} workers)"


def run_labels(args: argparse.Namespace) -> int:
    from ..extras import require_onnxruntime

    require_onnxruntime("edgeclip labels (the text encoder)")
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
        from ..devices.catalog import get_profile
        from ..devices.packing import runs_on

        runs = runs_on(b, get_profile(str(pack.get("profile"))), str(pack.get("precision")))
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
    from ..bundle import dumps_strict, load_bundle

    b = load_bundle(args.bundle, verify=not args.no_verify)  # the same checks classify runs
    m, info = b.manifest, b.info
    if args.json:
        print(dumps_strict(m), end="")
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
    return 0
