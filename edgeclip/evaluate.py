"""Zero-shot evaluation on an image-folder dataset (``<root>/<class>/<image>``), torch-free (``edgeclip eval``).

    from edgeclip.evaluate import EvalOptions, evaluate
    report = evaluate("bundle", "dataset/", EvalOptions(classes="classes.tsv"))
    print(report.top1, report.top5, report.per_class)
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Sequence

import numpy as np

from .api import load
from .bundle import load_bundle
from .errors import OptionError
from .options import LoadOptions, Options, option
from .runtime.images import IMAGE_EXTENSIONS
from .runtime.labels import Label, resolve_templates
from .tables import precisions
from .runtime.scoring import probabilities

if TYPE_CHECKING:
    from .runtime.classifier import Classifier


@dataclass
class Dataset:
    """Image files with integer targets and the class names they index."""

    root: Path
    files: list[Path]
    targets: np.ndarray
    folders: list[str]
    names: list[str]


def read_class_map(path: str | Path) -> dict[str, str]:
    """Folder id -> class name from a TSV/CSV file of two columns (e.g. imagenette-classes.tsv)."""
    p = Path(path)
    if not p.is_file():
        raise OptionError(f"{p}: class map not found")
    text = p.read_text(encoding="utf-8-sig")
    delim = "\t" if "\t" in text else ","
    out = {}
    for i, row in enumerate(csv.reader(text.splitlines(), delimiter=delim), 1):
        if not row or not row[0].strip() or row[0].startswith("#"):
            continue
        if len(row) < 2:
            raise OptionError(f"{p}:{i}: expected 'folder{'<TAB>' if delim == chr(9) else ','}class name'")
        out[row[0].strip()] = row[1].strip()
    return out


def load_dataset(root: str | Path, class_map: dict[str, str] | None = None, files_from: str | Path | None = None,
                 limit: int = 0, seed: int = 0) -> Dataset:
    """Scan ``root/<class>/*``; ``files_from`` restricts to listed paths (relative to root or to a folder above
    it; ``#`` lines are comments), ``limit`` samples that many files (deterministic for a seed)."""
    root = Path(root)
    if not root.is_dir():
        raise OptionError(f"{root}: dataset folder not found (expected <root>/<class>/<image files>)")
    folders = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not folders:
        raise OptionError(f"{root}: no class sub-folders; expected <root>/<class>/<image files>")
    if class_map is not None:
        missing = [f for f in folders if f not in class_map]
        if missing:
            unused = sorted(set(class_map) - set(folders))
            raise OptionError(f"the class map has no name for folder(s) {', '.join(missing[:5])}"
                              + (f"; it names folder(s) that do not exist: {', '.join(unused[:5])} (a typo in "
                                 f"the map?)" if unused else "") + "; add a line 'folder<TAB>name' for each")
    if class_map is None and all(re.fullmatch(r"n\d{8}", f) for f in folders):
        raise OptionError(f"{root}: the class folders are WordNet ids ({', '.join(folders[:3])}, ...), which the text "
                          f"encoder would read as words; pass `classes`: a map of folder<TAB>class name (e.g. "
                          f"imagenette-classes.tsv)")
    names = [class_map[f] if class_map else f.replace("_", " ") for f in folders]
    allowed = None
    if files_from:  # listed paths may be relative to root or to a parent of it: match on path suffixes
        lines = (line.strip() for line in Path(files_from).read_text(encoding="utf-8").splitlines())
        listed = [line for line in lines if line and not line.startswith("#")]
        allowed = {"/".join(parts[i:]) for entry in listed for parts in [Path(entry).parts]
                   for i in range(len(parts))}
    files, targets = [], []
    for i, f in enumerate(folders):
        for p in sorted((root / f).iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                if allowed is None or p.relative_to(root).as_posix() in allowed:
                    files.append(p)
                    targets.append(i)
    if allowed is not None and not files:
        raise OptionError(f"{files_from}: none of the listed files is under {root} (paths are relative to it "
                          f"or to a folder above it)")
    t = np.asarray(targets, dtype=np.int64)
    if limit and limit < len(files):
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(files), size=limit, replace=False))
        files, t = [files[k] for k in keep], t[keep]
    return Dataset(root, files, t, folders, names)


@dataclass
class EvalReport:
    """Top-1/top-5 accuracy, per-class accuracy and the confusion matrix."""

    top1: float
    top5: float
    count: int
    failed: list[dict]
    per_class: dict[str, float]
    confusion: np.ndarray
    names: list[str]
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "count": self.count, "failed": self.failed,
                "per_class": self.per_class, "classes": self.names, "confusion": self.confusion.tolist(),
                **self.extra}


def score(probs: np.ndarray, targets: np.ndarray, names: Sequence[str], failed: list[dict] | None = None) -> EvalReport:
    """Accuracy figures from [N, C] scores and [N] targets (in percent)."""
    n, c = probs.shape
    order = np.argsort(-probs, axis=1, kind="stable")
    pred = order[:, 0]
    top1 = float((pred == targets).mean() * 100) if n else 0.0
    top5 = float((order[:, :min(5, c)] == targets[:, None]).any(1).mean() * 100) if n else 0.0
    conf = np.zeros((c, c), dtype=np.int64)
    np.add.at(conf, (targets, pred), 1)
    per_class = {names[i]: float(conf[i, i] / conf[i].sum() * 100) if conf[i].sum() else float("nan")
                 for i in range(c)}
    return EvalReport(top1, top5, n, failed or [], per_class, conf, list(names))


def confusion_png(report: EvalReport, path: str | Path, title: str = "") -> Path:
    """Draw the row-normalised confusion matrix as a PNG with OpenCV (no plotting library needed)."""
    import cv2

    c = len(report.names)
    cell, left, top = 44, 170, 60
    w, h = left + cell * c + 20, top + cell * c + 150
    img = np.full((h, w, 3), 255, np.uint8)
    rows = report.confusion / np.maximum(report.confusion.sum(1, keepdims=True), 1)
    for i in range(c):
        for j in range(c):
            v = rows[i, j]
            color = tuple(int(255 - v * k) for k in (60, 160, 220))  # white -> dark blue, BGR
            x, y = left + j * cell, top + i * cell
            cv2.rectangle(img, (x, y), (x + cell - 1, y + cell - 1), color, -1)
            if report.confusion[i, j]:
                cv2.putText(img, f"{v * 100:.0f}", (x + 6, y + 28), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                            (255, 255, 255) if v > 0.5 else (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, report.names[i][:22], (6, top + i * cell + 28), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)
    for j in range(c):  # column labels, rotated
        label = np.full((cell, 140, 3), 255, np.uint8)
        cv2.putText(label, report.names[j][:18], (4, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        rot = cv2.rotate(label, cv2.ROTATE_90_CLOCKWISE)
        x, y = left + j * cell, top + cell * c + 4
        img[y:y + rot.shape[0], x:x + rot.shape[1]] = rot[: h - y, : w - x]
    cv2.putText(img, (title + "  " if title else "") + f"top-1 {report.top1:.2f}%  (rows: true, cols: predicted)",
                (6, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    path = Path(path)
    if not cv2.imwrite(str(path), img):
        raise OptionError(f"{path}: cannot write the confusion-matrix PNG")
    return path


def write_json(data: dict, path: str | Path) -> None:
    """Write a JSON report (UTF-8, indented)."""
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def evaluate_embeddings(embed_files: Callable[[list[Path]], tuple[np.ndarray, list[dict], np.ndarray]],
                        dataset: Dataset, label_matrix: np.ndarray, logit_scale: float, logit_bias: float = 0.0,
                        scoring: str = "softmax") -> tuple[EvalReport, np.ndarray, np.ndarray]:
    """Run ``embed_files`` (-> embeddings of readable files, failures, mask of readable) and score.

    Scores are the bundle's: ``scoring(logit_scale * cosine + logit_bias)`` (``edgeclip.runtime.scoring``).
    Returns the report, the embeddings and the readable-file mask (to compare runs).
    """
    emb, failed, ok = embed_files(dataset.files)
    probs = probabilities(emb @ label_matrix.T, logit_scale, logit_bias, scoring)
    return score(probs, dataset.targets[ok], dataset.names, failed), emb, ok


def embed_files_with(clf: "Classifier", files: list[Path], batch_size: int = 64, workers: int = 0,
                     progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, list[dict], np.ndarray]:
    """Image embeddings of ``files`` with a classifier: (embeddings of readable files, failures, readable mask)."""
    embs, failed, ok = [], [], np.zeros(len(files), bool)
    for i, r in enumerate(clf.classify_files(files, batch_size, workers, keep_embeddings=True, progress=progress)):
        if r.ok:
            embs.append(r.embedding)
            ok[i] = True
        else:
            failed.append({"path": str(r.path), "error": r.error})
    dim = int(clf.bundle.model["embed_dim"])
    return (np.stack(embs) if embs else np.zeros((0, dim), np.float32)), failed, ok


def agreement(emb_a: np.ndarray, ok_a: np.ndarray, matrix_a: np.ndarray, emb_b: np.ndarray, ok_b: np.ndarray,
              matrix_b: np.ndarray) -> dict[str, float | int]:
    """How two runs over the same files agree, on the files both could read.

    ``emb_*`` hold the embeddings of the readable files only (``ok_*`` marks them among all files);
    returns top-1 agreement in percent, the mean cosine of the image embeddings (NaN when the embedding
    sizes differ) and the number of files compared.
    """
    both = ok_a & ok_b
    a, b = emb_a[both[ok_a]], emb_b[both[ok_b]]
    if not len(a):
        return {"top1_agreement": 0.0, "mean_cosine": float("nan"), "compared": 0}
    pa, pb = (a @ matrix_a.T).argmax(1), (b @ matrix_b.T).argmax(1)
    cosine = float((a * b).sum(1).mean()) if a.shape == b.shape else float("nan")
    return {"top1_agreement": float((pa == pb).mean() * 100), "mean_cosine": cosine, "compared": int(len(a))}


# ---------------------------------------------------------------------------------------------------------
# the eval job (``edgeclip eval``)
# ---------------------------------------------------------------------------------------------------------
_COMPARE = "comparison"


@dataclass(frozen=True)
class EvalOptions(Options):
    """What ``edgeclip eval`` measures, on which images, with which engine."""

    WHAT: ClassVar[str] = "eval option"

    classes: str | None = option(None, "TSV/CSV mapping folder names to class names (e.g. imagenette-classes.tsv)")
    templates: str = option("imagenet80", "prompt templates: imagenet80, short, photo, none or a file")
    files_from: str | None = option(None, "only evaluate the files listed (paths relative to DATASET), e.g. a "
                                          "held-out split")
    limit: int = option(0, "evaluate a class-stratified random subset of N images")
    seed: int = option(0, "seed for `limit` sampling")
    batch_size: int = option(64, "images per inference batch")
    workers: int = option(0, "decoding threads (0 = number of CPUs)")
    exact_decode: bool = option(False, "decode every JPEG at full size (default: photos at least twice the model "
                                       "input decode at a reduced DCT scale, as edgeclip classify does)")
    engine: str = option("runtime", "runtime: the bundle's ONNX files; torch: the source PyTorch model with "
                                    "open_clip's own preprocessing (needs the export extra), as a reference",
                         choices=("runtime", "torch"))
    against: str | None = option(None, "also run this bundle (may be the same one) and report top-1 agreement and "
                                       "mean image-embedding cosine", metavar="BUNDLE", group=_COMPARE)
    against_precision: str | None = option(None, "precision for `against` (default: same as `precision`)",
                                           choices=("auto", *precisions("load")), group=_COMPARE)
    json: str | None = option(None, "write the report as JSON", metavar="FILE", group=_COMPARE, output="file")
    confusion: str | None = option(None, "write the confusion matrix as a PNG image", metavar="PNG", group=_COMPARE,
                                   output="file")

    def problems(self) -> list[str]:
        """Contradictions and values out of range, each naming the option."""
        out = [f"`{name}` must be >= {low}, got {getattr(self, name)}"
               for name, low in (("limit", 0), ("batch_size", 1), ("workers", 0)) if getattr(self, name) < low]
        if self.against_precision and not self.against:
            out.append("`against_precision` needs `against` (a bundle)")
        return out


Embedder = Callable[[list[Path]], tuple[np.ndarray, list[dict], np.ndarray]]
Progress = Callable[[str, int], Callable[[int], None]]


def _runtime_embedder(bundle: str | os.PathLike[str], options: EvalOptions, load_options: LoadOptions,
                      names: list[str], templates: list[str],
                      progress: Progress | None) -> tuple[Embedder, np.ndarray, tuple, str, str]:
    clf = load(bundle, load_options)
    if options.exact_decode:
        clf.decode_ratio = 0
    matrix = clf.embed_labels(names, templates)

    def embed(files: list[Path]) -> tuple[np.ndarray, list[dict], np.ndarray]:
        tick = progress(f"eval {clf.precision}", len(files)) if progress else None
        return embed_files_with(clf, files, options.batch_size, options.workers, tick)

    return embed, matrix, (clf.logit_scale, clf.logit_bias, clf.scoring), clf.encoder.name, clf.precision


def _torch_embedder(bundle: str | os.PathLike[str], options: EvalOptions, threads: int, names: list[str],
                    templates: list[str], progress: Progress | None) -> tuple[Embedder, np.ndarray, tuple, str, str]:
    from .export.reference import TorchReference

    b = load_bundle(bundle)
    ref = TorchReference(b, threads)
    matrix = ref.label_matrix([Label(n) for n in names], templates)

    def embed(files: list[Path]) -> tuple[np.ndarray, list[dict], np.ndarray]:
        tick = progress("eval torch", len(files)) if progress else None
        return ref.embed_files(files, options.batch_size, tick)

    model = b.info.model
    return embed, matrix, (ref.loaded.logit_scale, model.logit_bias, model.scoring), "torch-eager", "fp32"


def evaluate(bundle: str | os.PathLike[str], dataset: str | os.PathLike[str], options: EvalOptions | None = None,
             load_options: LoadOptions | None = None, progress: Progress | None = None) -> EvalReport:
    """Zero-shot top-1/top-5 of ``bundle`` on an image-folder dataset (``<root>/<class>/<image>``).

    Class names (folder names, or the ``classes`` map) are embedded with the bundle's text encoder and
    prompt templates. With ``against``, a second bundle runs on the same images and the report's
    ``extra["comparison"]`` holds top-1 agreement and mean embedding cosine. ``progress(what, total)``
    returns a callable given the images done after each batch.
    """
    opts, lopts = options or EvalOptions(), load_options or LoadOptions()
    if opts.engine == "torch" and lopts.precision not in ("auto", "fp32"):
        raise OptionError("engine='torch' evaluates the fp32 source model; drop `precision` or use engine='runtime'")
    cmap = read_class_map(opts.classes) if opts.classes else None
    ds = load_dataset(dataset, cmap, opts.files_from, opts.limit, opts.seed)
    tname, templates = resolve_templates(opts.templates)
    if opts.engine == "torch":
        made = _torch_embedder(bundle, opts, lopts.threads, ds.names, templates, progress)
    else:
        made = _runtime_embedder(bundle, opts, lopts, ds.names, templates, progress)
    embed, matrix, scale, engine, precision = made
    report, emb, ok = evaluate_embeddings(embed, ds, matrix, *scale)
    report.extra.update({"bundle": str(bundle), "dataset": str(dataset), "engine": engine, "precision": precision,
                         "templates": tname, "files_from": opts.files_from, "limit": opts.limit})
    if opts.against:
        precision2 = opts.against_precision or lopts.precision
        other_options = dataclasses.replace(lopts, precision=precision2,
                                            target=lopts.target if precision2 != "fp32" else None)
        embed2, matrix2, scale2, _, used2 = _runtime_embedder(opts.against, opts, other_options, ds.names, templates,
                                                             progress)
        other, emb2, ok2 = evaluate_embeddings(embed2, ds, matrix2, *scale2)
        report.extra[_COMPARE] = {"against": str(opts.against), "against_precision": used2,
                                  "against_top1": other.top1, **agreement(emb, ok, matrix, emb2, ok2, matrix2)}
    return report
