"""Calibration sets for INT8: which source, how many images, the cache, and a contact sheet to look at.

``calib`` sources:

======================  =============================================================================
``noise``               Gaussian noise in the normalised input space (``noise:uniform``: uniform pixels)
``bn-stats``            ZeroQ: images whose BatchNorm batch statistics match the running ones (ResNets)
``bn-stats:priors``     the same plus natural-image priors and random views (jitter, flip, scale)
``text-guided``         images pulled toward the text embeddings of the labels and generic prompts, with
                        natural-image priors; + patch diversity (ViT) or + bn-stats (BatchNorm towers)
``real:DIR``            real images from DIR through the bundle's own preprocessing (for comparison)
======================  =============================================================================

Synthetic sets are cached in ``<bundle>/.work/calib-<key>.npy`` (+ ``.json`` with what happened), where the
key hashes the source, its parameters, the seed, the image encoder's sha256, the preprocessing and (for
text-guided) the label embeddings. ``.work/`` is never recorded in the manifest, so it does not take part
in hash verification; delete it freely (``rm -r <bundle>/.work``) before shipping a bundle.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..bundle import Bundle
from ..errors import EdgeclipError, OptionError, QuantizationError
from ..runtime.preprocess import to_pixels
from .budget import describe_plan, summary
from .synthesis import GENERIC_PROMPTS, SynthesisConfig, noise_images

log = logging.getLogger("edgeclip.quant")

WORK_DIR = ".work"
#: Bumped whenever synthesis changes what it makes for the same parameters (invalidates caches).
SYNTH_VERSION = 1
#: The least a time budget leaves synthesis, however little the rest of the job leaves it (seconds).
MIN_SYNTHESIS_SECONDS = 5.0


@dataclass(frozen=True)
class CalibSource:
    """A parsed ``calib`` value: ``kind`` plus an argument (``real``: the folder; ``noise``: the kind)."""

    kind: str
    arg: str | None = None

    @classmethod
    def parse(cls, spec: str) -> "CalibSource":
        """``noise``, ``noise:uniform``, ``bn-stats``, ``bn-stats:priors``, ``text-guided`` or ``real:DIR``."""
        spec = (spec or "").strip()
        kind, sep, arg = spec.partition(":")
        if kind == "real":
            if not arg:
                raise OptionError("calib='real' needs a folder: calib='real:/path/to/images'")
            folder = Path(arg).expanduser()
            if not folder.is_dir():
                raise OptionError(f"calib='real:{arg}': no such folder")
            return cls("real", str(folder.resolve()))
        if kind == "noise":
            if arg not in ("", "gaussian", "uniform"):
                raise OptionError(f"calib='noise:{arg}': use noise (Gaussian) or noise:uniform")
            return cls("noise", arg or "gaussian")
        if kind in ("bn-stats", "text-guided") and not sep:
            return cls(kind)
        if kind == "bn-stats" and arg == "priors":
            return cls(kind, arg)
        raise OptionError(f"unknown calibration source {spec!r}; use noise, bn-stats, bn-stats:priors, text-guided "
                          f"or real:DIR")

    def __str__(self) -> str:
        if self.kind == "noise":
            return "noise" if self.arg == "gaussian" else f"noise:{self.arg}"
        return f"{self.kind}:{self.arg}" if self.kind in ("real", "bn-stats") and self.arg else self.kind


@dataclass
class CalibrationSet:
    """Calibration images (float32 [N, 3, H, W], normalised model input) and how they were made."""

    images: np.ndarray
    source: CalibSource
    seed: int
    key: str
    seconds: float
    cached: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The manifest's ``calibration`` entry (method is added by the quantizer)."""
        rec = {"source": str(self.source), "images": int(len(self.images)), "seed": self.seed,
               "key": self.key, "seconds": self.seconds, "cached": self.cached}
        for k in ("objective", "terms", "steps", "steps_planned", "steps_run", "plan_cut", "truncated", "schedule",
                  "plan", "time_budget", "summary", "start", "end", "files"):
            if k in self.info:
                rec[k] = self.info[k]
        return rec


# ---------------------------------------------------------------------------------------------------------
def work_dir(bundle: Bundle) -> Path:
    """The bundle's scratch folder (created on demand; never part of the manifest)."""
    d = bundle.path / WORK_DIR
    d.mkdir(exist_ok=True)
    return d


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _real_files(folder: str, n: int, seed: int) -> list[Path]:
    from ..runtime.images import expand_inputs

    files = expand_inputs([folder])
    if not files:
        raise OptionError(f"calib='real:{folder}': no image files in the folder")
    if len(files) < n:
        log.warning("real:%s holds %d images, fewer than images=%d: using all of them", folder, len(files), n)
        return files
    pick = np.random.default_rng(seed).choice(len(files), size=n, replace=False)
    return [files[i] for i in sorted(pick)]


def cache_key(bundle: Bundle, source: CalibSource, n: int, seed: int, time_budget: float | None,
              config: SynthesisConfig, files: list[Path] | None = None) -> str:
    """Hash of everything the calibration images depend on."""
    files_sha = bundle.manifest["files"]
    enc = files_sha[bundle.encoder("image", "fp32").name]["sha256"]
    key: dict[str, Any] = {"version": SYNTH_VERSION, "source": str(source), "images": n, "seed": seed,
                           "encoder": enc, "preprocess": bundle.preprocess}
    if source.kind in ("bn-stats", "text-guided"):
        key.update(time_budget=time_budget, config=config.as_dict())
    if source.kind == "text-guided":
        key["labels"] = files_sha.get("labels.npy", {}).get("sha256")
        key["prompts"] = list(GENERIC_PROMPTS)
    if files is not None:
        key["files"] = [[str(f), f.stat().st_size, int(f.stat().st_mtime)] for f in files]
    return _sha(key)[:16]


def text_targets(bundle: Bundle, n: int, seed: int, generic_fraction: float) -> tuple[np.ndarray, list[str]]:
    """One L2-normalised text embedding per image: the labels' (prompt-ensembled) rows and generic prompts.

    ``1 - generic_fraction`` of the images take the labels in turn, the rest the generic prompts in turn;
    the order is shuffled with ``seed`` so every batch mixes both. Returns (targets [n, D], names).
    """
    from ..runtime.text import TextEncoder

    names, matrix = bundle.labels()
    n_generic = int(round(n * generic_fraction))
    n_label = n - n_generic
    rows, what = [], []
    for i in range(n_label):
        rows.append(matrix[i % len(names)])
        what.append(names[i % len(names)])
    if n_generic:
        generic = TextEncoder.from_bundle(bundle)(list(GENERIC_PROMPTS))
        generic = generic / np.linalg.norm(generic, axis=-1, keepdims=True).clip(1e-12)
        for i in range(n_generic):
            rows.append(generic[i % len(generic)])
            what.append(GENERIC_PROMPTS[i % len(generic)])
    order = np.random.default_rng(seed).permutation(n)
    targets = np.stack(rows).astype(np.float32)[order]
    return targets, [what[i] for i in order]


def _atomic_save(path: Path, images: np.ndarray, info: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, images, allow_pickle=False)
    os.replace(tmp, path)
    meta = path.with_suffix(".json")
    tmp_meta = meta.with_name(meta.name + f".tmp-{os.getpid()}")
    tmp_meta.write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp_meta, meta)


def _load_cached(path: Path, n: int, size: tuple[int, int]) -> tuple[np.ndarray, dict[str, Any]] | None:
    try:
        images = np.load(path, allow_pickle=False)
        info = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if images.shape != (n, 3, *size) or images.dtype != np.float32:
        return None
    return images, info


def calibration_set(bundle: Bundle, source: CalibSource | str, images: int = 64, seed: int = 0,
                    time_budget: float | None = 180.0, config: SynthesisConfig | None = None,
                    cache: bool = True, progress: bool = True,
                    step: Callable[[str], None] | None = None, *, started: float | None = None,
                    reserve: Callable[[], float] | None = None) -> CalibrationSet:
    """Make (or load from the cache) the calibration images of ``source`` for ``bundle``.

    ``time_budget`` bounds the caller's whole job, which began at ``started`` (``time.monotonic()``;
    default: now) and needs ``reserve()`` seconds after the images are made (asked only when they are
    synthesised): synthesis gets what is left (at least :data:`MIN_SYNTHESIS_SECONDS`).
    """
    src = CalibSource.parse(source) if isinstance(source, str) else source
    cfg = config or SynthesisConfig()
    say = step or (lambda m: log.info(m))
    if images < 1:
        raise OptionError("`images` must be >= 1")
    if time_budget is not None and time_budget <= 0:
        raise OptionError("`time_budget` must be > 0 seconds")
    size = tuple(int(s) for s in bundle.preprocess["size"])
    t0 = time.monotonic()
    if src.kind == "noise":
        x = noise_images(images, size, bundle.preprocess["mean"], bundle.preprocess["std"], seed, src.arg or "gaussian")
        key = cache_key(bundle, src, images, seed, None, cfg)
        return CalibrationSet(x, src, seed, key, round(time.monotonic() - t0, 2), info={"objective": str(src)})

    files = _real_files(src.arg, images, seed) if src.kind == "real" else None
    key = cache_key(bundle, src, images, seed, time_budget, cfg, files)
    n = len(files) if files is not None else images
    path = work_dir(bundle) / f"calib-{key}.npy"
    if cache and path.is_file():
        hit = _load_cached(path, n, size)
        if hit is not None:
            say(f"calibration images from the cache ({path.relative_to(bundle.path)})")
            return CalibrationSet(hit[0], src, seed, key, float(hit[1].get("seconds", 0.0)), True, hit[1])

    if src.kind == "real":
        x, info = real_images(files, bundle.preprocess, progress)
    else:
        job = Deadline(time_budget, started if started is not None else t0, reserve) if time_budget else None
        x, info = _synthetic_images(bundle, src, images, seed, job, cfg, progress, say)
    seconds = round(time.monotonic() - t0, 2)
    info["seconds"] = seconds
    if cache:
        _atomic_save(path, x, info)
    return CalibrationSet(x, src, seed, key, seconds, False, info)


def real_images(files: list[Path], preprocess: dict[str, Any], progress: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode ``files`` through the runtime's ``Preprocessor`` (``preprocess``: a manifest ``preprocess``
    section); returns (images float32 [N, 3, H, W], info). Unreadable files are skipped with a warning."""
    from tqdm import tqdm

    from ..runtime.images import read_image
    from ..runtime.preprocess import PreprocessConfig, Preprocessor

    pre = Preprocessor(PreprocessConfig.from_manifest(preprocess))
    out, bad = [], []
    for f in tqdm(files, desc="calib real", unit="img", disable=not progress, dynamic_ncols=True, mininterval=0.5):
        try:
            out.append(pre(read_image(f)))
        except EdgeclipError as exc:
            bad.append(str(exc))
    if not out:
        raise QuantizationError(f"none of the {len(files)} real images could be read: {bad[:3]}")
    if bad:
        log.warning("%d real calibration images could not be read (first: %s)", len(bad), bad[0])
    return np.stack(out).astype(np.float32), {"objective": "real", "files": len(out), "unreadable": len(bad)}


@dataclass
class Deadline:
    """A job's time budget: ``seconds`` from ``started``, of which ``reserve()`` are needed after synthesis."""

    seconds: float
    started: float
    reserve: Callable[[], float] | None = None

    def for_synthesis(self, say: Callable[[str], None]) -> float:
        """The seconds synthesis may take from now, said in one line with how the budget is split."""
        spent = time.monotonic() - self.started
        after = self.reserve() if self.reserve is not None else 0.0
        left = self.seconds - spent - after
        split = f"{spent:.0f} s spent loading, about {after:.0f} s kept to quantize and check"
        if left < MIN_SYNTHESIS_SECONDS:
            say(f"time budget {self.seconds:.0f} s: {split}, which leaves too little to synthesise; synthesis "
                f"gets {MIN_SYNTHESIS_SECONDS:.0f} s and the job will take about "
                f"{spent + after + MIN_SYNTHESIS_SECONDS:.0f} s (a larger `time_budget` makes better images)")
            return MIN_SYNTHESIS_SECONDS
        say(f"time budget {self.seconds:.0f} s: {split}, {left:.0f} s to synthesise")
        return left


def _synthetic_images(bundle: Bundle, src: CalibSource, n: int, seed: int, job: Deadline | None,
                      cfg: SynthesisConfig, progress: bool, say: Callable[[str], None]) -> tuple[np.ndarray, dict]:
    from .synthesis import bn_stats_objective, load_torch_tower, text_guided_objective

    say(f"loading the torch model for {src} synthesis")
    tower = load_torch_tower(bundle)
    if src.kind == "bn-stats":
        objective = bn_stats_objective(tower, priors=src.arg == "priors")
        prompts: list[str] = []
    else:
        targets, prompts = text_targets(bundle, n, seed, cfg.generic_fraction)
        objective = text_guided_objective(tower, targets)
    time_budget = job.for_synthesis(say) if job is not None else None
    x, info = synthesise_images(tower, objective, n, seed, time_budget, cfg, progress, say, prompts)
    if job is not None:
        info["time_budget"] = job.seconds  # the whole job's; info["plan"]["budget"] is synthesis's share
    return x, info


def synthesise_images(tower: Any, objective: Any, n: int, seed: int, time_budget: float | None,
                      cfg: SynthesisConfig, progress: bool, say: Callable[[str], None],
                      prompts: list[str] | None = None) -> tuple[np.ndarray, dict]:
    """``synthesise`` with a progress bar and a log line; returns (images, info for the record)."""
    from .synthesis import synthesise

    src = objective.name
    say(f"synthesising {n} {src} images ({objective.name}: {', '.join(objective.terms)})")
    with _PlanBar(f"calib {src}", progress, say) as bar:
        result = synthesise(tower, n, objective, seed, cfg, time_budget, bar.update, bar.report)
    info = dict(result.info)
    info["summary"] = summary(info)
    if info.get("plan_cut") or info.get("truncated"):  # after the bar, so the line is not torn by it
        log.warning("synthesis: %s; a larger `time_budget` or fewer `images` make better images", info["summary"])
    else:
        say(f"synthesis: {info['summary']}")
    info["config"] = cfg.as_dict()
    if prompts:
        info["prompts"] = prompts
    return result.images, info


class _PlanBar:
    """Synthesis events to the user: the plan as a line before the work, then a bar whose total follows the
    plan and whose time left is the plan's own estimate (step times measured per size, bounded by the
    budget), not a rate of steps whose cost differs many-fold between the coarse and the full size."""

    def __init__(self, desc: str, enabled: bool, say: Callable[[str], None]) -> None:
        self.desc, self.enabled, self.say = desc, enabled, say
        self.bar: Any = None
        self.shown = 0.0

    def __enter__(self) -> "_PlanBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, k: int) -> None:
        if self.bar is not None:
            self.bar.update(k)

    def report(self, event: dict[str, Any]) -> None:
        from tqdm import tqdm

        if event["event"] == "plan":
            self.say(describe_plan(event))
            timed = event.get("seconds") is not None
            fmt = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps [{elapsed}{postfix}]" if timed else None
            self.bar = tqdm(total=event["batches"] * event["steps"], desc=self.desc, unit="step", bar_format=fmt,
                            disable=not self.enabled, dynamic_ncols=True, mininterval=0.5)
        elif event["event"] == "left" and self.bar is not None and time.monotonic() - self.shown >= 0.5:
            self.shown = time.monotonic()
            self.bar.total = event["steps"]
            left = int(event["seconds"])
            self.bar.set_postfix_str(f"about {left // 60}:{left % 60:02d} left", refresh=False)


# ---------------------------------------------------------------------------------------------------------
def contact_sheet(images: np.ndarray, mean: Any, std: Any, columns: int = 8, min_tile: int = 96,
                  gap: int = 2) -> np.ndarray:
    """A grid of the denormalised images (uint8 RGB [H, W, 3]); small images are enlarged (nearest)."""
    px = to_pixels(images, mean, std)
    n, h, w, _ = px.shape
    zoom = max(1, -(-min_tile // max(h, w)))
    if zoom > 1:
        px = px.repeat(zoom, axis=1).repeat(zoom, axis=2)
        h, w = h * zoom, w * zoom
    cols = max(1, min(columns, n))
    rows = -(-n // cols)
    sheet = np.full((rows * (h + gap) + gap, cols * (w + gap) + gap, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = gap + r * (h + gap), gap + c * (w + gap)
        sheet[y:y + h, x:x + w] = px[i]
    return sheet


def write_contact_sheet(images: np.ndarray, preprocess: dict[str, Any], path: str | os.PathLike[str],
                        columns: int = 8) -> Path:
    """Save the contact sheet of ``images`` as a PNG (OpenCV); returns the path."""
    import cv2

    sheet = contact_sheet(images, preprocess["mean"], preprocess["std"], columns)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(sheet[:, :, ::-1])):
        raise QuantizationError(f"{path}: could not write the contact sheet PNG")
    return path
