"""The quantization engine for any image model: fp32 ONNX + calibration source + recipe -> INT8 ONNX + record.

``quantize_model`` works on a plain ONNX image model (a classifier, a CLIP image tower, a detector's
backbone): it makes the calibration images (``noise``, ``bn-stats``, ``bn-stats:priors`` from the model's
torch twin, ``real:DIR``, or images you pass), prepares the fp32 graph, quantizes it with the target's
recipe, measures how closely INT8 follows fp32 on the calibration images and, with ``max_drop``, keeps
the most sensitive layers in fp32 (ZeroQ's mixed precision). ``quantize_images`` is the same from an
already made ``CalibrationSet``; the bundle pipeline (``edgeclip quantize``) is a thin layer over it.

Agreement is measured on the model's outputs: with ``labels`` (an [L, D] matrix of label embeddings) the
outputs are embeddings and the label is the zero-shot one (CLIP); without, the outputs are class logits.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import OptionError, QuantizationError
from .agreement import Scoring, compare, drop_points, run_onnx
from .calibration import CalibrationSet, CalibSource, Deadline, real_images, synthesise_images
from .recipes import (CALIB_METHODS, Recipe, kept_fp32, prepare_fp32, quantize_onnx, recipe_for,
                      weighted_nodes)
from .synthesis import SynthesisConfig, noise_images

log = logging.getLogger("edgeclip.quant")

#: Calibration images used to rank layer sensitivity for ``max_drop`` (each layer costs one probe pass).
SENSITIVITY_IMAGES = 16
AGREEMENT_KEYS = ("top1_agreement", "mean_cosine", "min_cosine", "mean_kl", "images")
#: What the work after calibration costs, for a time budget: seconds per MB of the fp32 file (preparing it,
#: rewriting it with Q/DQ, writing it) and fp32 inferences per calibration image (the calibration pass runs
#: an augmented model; agreement runs fp32 and INT8), measured on ViT-B/32 and proxy-vit with the openvino and
#: cpu recipes (docs/quantization.md, "Time budget"); with ``max_drop``, each weighted layer's probe pass
#: and up to three rebuilds come on top.
SECONDS_PER_MB = 0.05
INFERENCES_PER_IMAGE = 6.0
FIXED_SECONDS = 1.5


@dataclass
class QuantRecord:
    """What ``quantize_model`` made: the INT8 file and how it was made and compares with fp32."""

    path: Path
    record: dict[str, Any]
    calibration: CalibrationSet
    agreement: dict[str, Any] = field(default_factory=dict)
    excluded_nodes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------
# calibration images for any model
# ---------------------------------------------------------------------------------------------------------
def _preprocess_dict(preprocess: Any) -> dict[str, Any]:
    from ..runtime.preprocess import PreprocessConfig

    if preprocess is None:
        raise OptionError("this calibration source needs the model's input preprocessing: pass preprocess="
                          "PreprocessConfig(size=(H, W), mean=..., std=...) (or its manifest dict)")
    if isinstance(preprocess, PreprocessConfig):
        return preprocess.to_manifest()
    if isinstance(preprocess, dict):
        return PreprocessConfig.from_manifest({"resize_mode": "shortest", "interpolation": "bicubic",
                                               **preprocess}).to_manifest()
    raise OptionError(f"preprocess must be a PreprocessConfig or a dict, not {type(preprocess).__name__}")


def make_calibration(source: CalibSource | str, preprocess: Any, images: int = 64, seed: int = 0,
                     torch_model: Any = None, fp32_onnx: str | Path | None = None,
                     time_budget: float | None = None, config: SynthesisConfig | None = None,
                     files: Sequence[str | Path] | None = None, progress: bool = True,
                     step: Callable[[str], None] | None = None, started: float | None = None) -> CalibrationSet:
    """Calibration images of ``source`` for any image model (no bundle, no cache).

    ``time_budget`` bounds the whole job begun at ``started`` (``time.monotonic()``, default now): with
    ``fp32_onnx``, synthesis leaves the time quantizing it will take.

    ``noise`` / ``noise:uniform`` need only ``preprocess``; ``bn-stats`` and ``bn-stats:priors`` synthesise
    from ``torch_model`` (the fp32 model's torch twin, with BatchNorm layers; when ``fp32_onnx`` is given
    the twin is first checked against it); ``real:DIR`` reads ``images`` files sampled with ``seed`` from
    DIR, or exactly ``files`` when given. ``text-guided`` needs a CLIP bundle (``edgeclip quantize``).
    """
    from .calibration import _real_files
    from .synthesis import bn_stats_objective, tower_from_module

    src = CalibSource.parse(source) if isinstance(source, str) else source
    say = step or (lambda m: log.info(m))
    cfg = config or SynthesisConfig()
    if images < 1:
        raise OptionError("images must be >= 1")
    pre = _preprocess_dict(preprocess)
    size = tuple(int(s) for s in pre["size"])
    t0 = time.monotonic()
    key = f"{src}-{images}-{seed}"
    if src.kind == "noise":
        x = noise_images(images, size, pre["mean"], pre["std"], seed, src.arg or "gaussian")
        return CalibrationSet(x, src, seed, key, round(time.monotonic() - t0, 2), info={"objective": str(src)})
    if src.kind == "real":
        picked = [Path(f) for f in files] if files is not None else _real_files(src.arg, images, seed)
        x, info = real_images(picked, pre, progress)
        return CalibrationSet(x, src, seed, key, round(time.monotonic() - t0, 2), info=info)
    if src.kind == "text-guided":
        raise OptionError("text-guided calibration pulls images toward label prompts and needs a CLIP bundle: use "
                          "edgeclip quantize (quantize_bundle); for a plain image model use bn-stats, noise or real")
    if torch_model is None:
        raise OptionError(f"{src} calibration synthesises images from the model itself: pass torch_model= (the "
                          f"fp32 model's torch twin), or calibrate with noise or real:DIR")
    tower = tower_from_module(torch_model, size, pre["mean"], pre["std"])
    if fp32_onnx is not None:
        check_twin(tower, Path(fp32_onnx))
    objective = bn_stats_objective(tower, priors=src.arg == "priors")
    if time_budget:
        after = (lambda: seconds_after_calibration(fp32_onnx, images)) if fp32_onnx is not None else None
        time_budget = Deadline(time_budget, started if started is not None else t0, after).for_synthesis(say)
    x, info = synthesise_images(tower, objective, images, seed, time_budget, cfg, progress, say)
    seconds = round(time.monotonic() - t0, 2)
    info["seconds"] = seconds
    return CalibrationSet(x, src, seed, key, seconds, info=info)


def check_twin(tower: Any, fp32_onnx: Path, min_cosine: float = 0.999) -> None:
    """QuantizationError unless the torch twin and the ONNX model give the same outputs (cosine)."""
    import torch

    x = noise_images(2, tower.size, tower.mean, tower.std, seed=12345)
    with torch.no_grad():
        ref = tower.encode(torch.from_numpy(x)).float().numpy()
    got = run_onnx(fp32_onnx, x)
    if ref.shape != got.shape:
        raise QuantizationError(f"the torch model gives outputs of shape {ref.shape}, {fp32_onnx.name} gives "
                                f"{got.shape}: pass the torch twin of this ONNX model")
    a = ref.reshape(len(ref), -1)
    b = got.reshape(len(got), -1)
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
    if float(cos.min()) < min_cosine:
        raise QuantizationError(f"the torch model does not match {fp32_onnx.name} (output cosine "
                                f"{float(cos.min()):.4f} < {min_cosine}): pass the torch twin of this ONNX model "
                                f"(same weights, eval mode)")


def seconds_after_calibration(fp32_onnx: str | Path, images: int, max_drop: float | None = None) -> float:
    """About how long quantizing ``fp32_onnx`` on ``images`` calibration images takes once they exist: one
    fp32 inference is timed here on ONNX Runtime's CPU provider, the rest follows from the file's size."""
    import onnxruntime as ort

    path = Path(fp32_onnx)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    x = np.zeros([2, *shape[1:]], dtype=np.float32)
    sess.run(None, {inp.name: x})  # the first run pays for allocations
    t = time.monotonic()
    sess.run(None, {inp.name: x})
    per_image = (time.monotonic() - t) / 2
    size_mb = path.stat().st_size / 2 ** 20
    seconds = FIXED_SECONDS + SECONDS_PER_MB * size_mb + INFERENCES_PER_IMAGE * images * per_image
    if max_drop is not None:
        layers = len(weighted_nodes(_load(path)))
        seconds += 2 * layers * min(images, SENSITIVITY_IMAGES) * per_image + 3 * seconds
    return seconds


# ---------------------------------------------------------------------------------------------------------
# quantization
# ---------------------------------------------------------------------------------------------------------
def _recipe(recipe: Recipe | str) -> Recipe:
    return recipe if isinstance(recipe, Recipe) else recipe_for(recipe)


def quantize_images(fp32_onnx: str | Path, out_path: str | Path, recipe: Recipe | str,
                    calibration: CalibrationSet, calib_method: str | None = None, max_drop: float | None = None,
                    labels: np.ndarray | None = None, logit_scale: Scoring = 1.0, ranges_cache: Path | None = None,
                    progress: bool = True, step: Callable[[str], None] | None = None,
                    started: float | None = None) -> QuantRecord:
    """Quantize ``fp32_onnx`` with ``recipe`` on the images of ``calibration``; writes ``out_path``.

    ``labels``/``logit_scale``: how outputs become labels for the agreement check (see the module doc).
    ``ranges_cache``: JSON file of calibrated ranges (reused when it exists). ``started``: the
    ``time.monotonic()`` the caller's work began (default: now), for ``record["seconds"]``.
    """
    say = step or (lambda m: log.info(m))
    t0 = time.monotonic() if started is None else started
    rec = _recipe(recipe)
    method = calib_method or rec.calib_method
    if method not in CALIB_METHODS:
        raise OptionError(f"unknown calibration method {method!r}; use one of {', '.join(CALIB_METHODS)}")
    if max_drop is not None and not 0.0 <= max_drop <= 100.0:
        raise OptionError("max_drop is in percentage points of top-1 agreement with fp32: 0 to 100")
    src = Path(fp32_onnx)
    if not src.is_file():
        raise OptionError(f"{src}: no such ONNX file")
    out = Path(out_path)
    images = calibration.images
    with tempfile.TemporaryDirectory(prefix="edgeclip-quantize-") as tmp_s:
        tmp = Path(tmp_s)
        say(f"preparing {src.name} for quantization")
        fp32 = prepare_fp32(src, tmp / "fp32.onnx")
        prepared = _load(fp32)
        nodes, kept = weighted_nodes(prepared, rec.op_types), kept_fp32(prepared)
        ranges = ranges_cache or tmp / "ranges.json"
        say(f"quantizing for {rec.target} ({rec.name}, {method} calibration on {len(images)} images)")
        int8 = quantize_onnx(rec, fp32, tmp / "int8.onnx", images, method, nodes=nodes, ranges_cache=ranges)
        method = _used_method(int8, method)
        say("comparing INT8 with fp32 on the calibration images")
        reference = run_onnx(fp32, images)
        agreement = compare(reference, run_onnx(int8, images), labels, logit_scale)
        excluded: list[str] = []
        sensitivity: list[dict[str, Any]] = []
        if max_drop is not None and drop_points(agreement) > max_drop:
            excluded, agreement, sensitivity = _mixed_precision(rec, method, fp32, nodes, tmp, images, reference,
                                                                labels, logit_scale, max_drop, ranges, progress,
                                                                say)
            int8 = tmp / "int8.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(int8, out)
    seconds = round(time.monotonic() - t0, 2)
    record: dict[str, Any] = {
        "recipe": rec.name, "calibration": {**calibration.record(), "method": method}, "seconds": seconds,
        "agreement": {k: agreement[k] for k in AGREEMENT_KEYS}, "excluded_nodes": excluded,
        "weighted_nodes": len(nodes), "max_drop": max_drop, "settings": rec.record(),
    }
    if kept:
        record["kept_fp32"] = kept
    if sensitivity:
        record["sensitivity"] = sensitivity[:20]
    return QuantRecord(out, record, calibration, record["agreement"], excluded)


def quantize_model(fp32_onnx: str | Path, out_path: str | Path, recipe: Recipe | str = "cpu",
                   calibration: CalibSource | str | CalibrationSet | np.ndarray = "noise", *,
                   torch_model: Any = None, preprocess: Any = None, images: int = 64, seed: int = 0,
                   calib_method: str | None = None, max_drop: float | None = None,
                   time_budget: float | None = None, synthesis: SynthesisConfig | None = None,
                   labels: np.ndarray | None = None, logit_scale: Scoring = 1.0, progress: bool = True,
                   step: Callable[[str], None] | None = None) -> QuantRecord:
    """INT8 QDQ model of any fp32 ONNX image model; returns the file and its record.

    ``recipe``: ``"cpu"``, ``"tensorrt"``, ``"openvino"`` (or a ``Recipe``). ``calibration``: a source (``noise``,
    ``noise:uniform``, ``bn-stats``, ``bn-stats:priors``, ``real:DIR``), a made ``CalibrationSet``, or a
    float32 array [N, 3, H, W] of model input. ``torch_model``: the torch twin for the synthetic sources;
    ``preprocess``: the model's input (``PreprocessConfig`` or dict with size, mean, std) for every source
    but arrays. ``max_drop``: points of top-1 agreement with fp32 on the calibration images that INT8 may
    lose; beyond it the most sensitive layers stay fp32. ``labels``: label embeddings when the model outputs
    CLIP embeddings (default: outputs are class logits).
    """
    t0 = time.monotonic()
    if isinstance(calibration, CalibrationSet):
        calib = calibration
    elif isinstance(calibration, np.ndarray):
        if calibration.ndim != 4 or len(calibration) < 1:
            raise OptionError(f"calibration images must be a float32 array [N, C, H, W], got shape "
                              f"{calibration.shape}")
        calib = CalibrationSet(np.ascontiguousarray(calibration, dtype=np.float32), CalibSource("array"), seed,
                               "array", 0.0, info={"objective": "array"})
    else:
        _recipe(recipe)  # reject an unknown recipe before any synthesis
        calib = make_calibration(calibration, preprocess, images, seed, torch_model, fp32_onnx, time_budget,
                                 synthesis, progress=progress, step=step, started=t0)
    return quantize_images(fp32_onnx, out_path, recipe, calib, calib_method, max_drop, labels, logit_scale,
                           progress=progress, step=step, started=t0)


def _used_method(path: Path, asked: str) -> str:
    """The calibration method a quantized file records (``quantize_onnx`` falls back to minmax where ONNX
    Runtime's histograms cannot be built)."""
    props = {p.key: p.value for p in _load(path).metadata_props}
    return props.get("edgeclip.calib_method", asked)


def _load(path: Path) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _mixed_precision(recipe: Recipe, method: str, fp32: Path, nodes: list[str], tmp: Path, images: np.ndarray,
                     reference: np.ndarray, labels: np.ndarray | None, scale: Scoring, max_drop: float,
                     ranges: Path, progress: bool,
                     say: Callable[[str], None]) -> tuple[list[str], dict[str, Any], list[dict[str, Any]]]:
    """Keep the most sensitive layers in fp32 until top-1 agreement is within ``max_drop`` points.

    ``nodes``: the weighted nodes of ``fp32``; ``reference``: its outputs on ``images``; the fully
    quantized model is ``tmp / "int8.onnx"`` (rewritten with the chosen exclusions).
    """
    from tqdm import tqdm

    from .sensitivity import QuantProbe, layer_sensitivity, plan_exclusions

    say(f"INT8 changes the label of more than {max_drop:g}% of the calibration images: measuring the "
        f"sensitivity of {len(nodes)} layers")
    probe = QuantProbe(tmp / "int8.onnx", fp32, nodes, tmp / "probe.onnx", recipe.output_ops)
    subset = images[:SENSITIVITY_IMAGES]
    with tqdm(total=len(nodes), desc="sensitivity", unit="layer", disable=not progress, dynamic_ncols=True,
              mininterval=0.5) as bar:
        ranking = layer_sensitivity(probe, subset, reference[:SENSITIVITY_IMAGES], labels, scale, bar.update)
    with tqdm(desc="mixed precision", unit="try", disable=not progress, dynamic_ncols=True, mininterval=0.5) as bar:
        k, _ = plan_exclusions(probe, ranking, images, reference, labels, scale, max_drop, bar.update)
    order = [s.node for s in ranking]
    while True:
        if k >= len(order):
            raise QuantizationError(f"no mix of INT8 and fp32 layers keeps top-1 agreement within {max_drop:g} "
                                    f"points on the calibration images; allow a larger `max_drop`, or use more "
                                    f"or other calibration images (`images`, `calib`)")
        excluded = order[:k]
        say(f"keeping {k} of {len(order)} layers in fp32 ({', '.join(excluded[:4])}{', ...' if k > 4 else ''})")
        out = quantize_onnx(recipe, fp32, tmp / "int8.onnx", images, method, exclude=excluded, nodes=nodes,
                            ranges_cache=ranges)
        agreement = compare(reference, run_onnx(out, images), labels, scale)
        if drop_points(agreement) <= max_drop + 1e-9:
            return excluded, agreement, [s.record() for s in ranking]
        # the probe was optimistic: confirm on the real model with more layers, up to all but one
        k = len(order) if k >= len(order) - 1 else min(max(k + 1, int(k * 1.5)), len(order) - 1)
