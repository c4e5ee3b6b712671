"""``edgeclip quantize``: calibration set -> INT8 image encoder -> agreement check -> bundle, atomically.

Steps: make (or load) the calibration images; prepare the fp32 encoder (ORT basic optimisation); quantize
with the target's recipe; compare INT8 with fp32 on the calibration images; with ``max_drop``, keep the
most sensitive layers in fp32 until top-1 agreement is within ``max_drop`` points; write
``image_encoder.int8.<target>.onnx`` and a contact sheet of the calibration images
(``reports/calibration-<target>.png``, role ``report``) into the bundle with ``update_bundle`` and record
``manifest["quantization"][target]``.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..bundle import load_bundle, now_iso, update_bundle
from ..errors import OptionError, QuantizationError
from .agreement import compare, drop_points, run_onnx
from .calibration import CalibSource, calibration_set, work_dir, write_contact_sheet
from .recipes import (CALIB_METHODS, int8_file_name, prepare_fp32, quantize_onnx, ranges_cache_name,
                      recipe_for, weighted_nodes)
from .synthetic import SynthesisConfig

log = logging.getLogger("edgeclip.quant")

DEFAULT_SOURCE = "text-guided"
DEFAULT_IMAGES = 64
DEFAULT_TIME_BUDGET = 180.0
SENSITIVITY_IMAGES = 16


@dataclass
class QuantizeOptions:
    """What ``edgeclip quantize`` was asked for."""

    calib: str = DEFAULT_SOURCE
    target: str = "cpu"
    images: int = DEFAULT_IMAGES
    seed: int = 0
    calib_method: str | None = None
    max_drop: float | None = None
    time_budget: float = DEFAULT_TIME_BUDGET
    cache: bool = True
    steps: int | None = None
    device: str = "cpu"

    def check(self) -> CalibSource:
        """Validate; returns the parsed calibration source."""
        recipe_for(self.target)
        if self.calib_method is not None and self.calib_method not in CALIB_METHODS:
            raise OptionError(f"unknown --calib-method {self.calib_method!r}; use one of {', '.join(CALIB_METHODS)}")
        if self.images < 1:
            raise OptionError("--images must be >= 1")
        if self.time_budget <= 0:
            raise OptionError("--time-budget must be > 0 seconds")
        if self.max_drop is not None and not 0.0 <= self.max_drop <= 100.0:
            raise OptionError("--max-drop is in percentage points of top-1 agreement with fp32: 0 to 100 "
                              "(e.g. --max-drop 1 allows 1% of the calibration images to change label)")
        if self.steps is not None and self.steps < 1:
            raise OptionError("--steps must be >= 1")
        return CalibSource.parse(self.calib)


def quantize_bundle(path: str | Path, opts: QuantizeOptions, progress: bool = True,
                    step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Quantize the bundle's image encoder for ``opts.target``; returns the manifest record."""
    say = step or (lambda m: log.info(m))
    source = opts.check()
    recipe = recipe_for(opts.target)
    method = opts.calib_method or recipe.calib_method
    bundle = load_bundle(path)
    t0 = time.monotonic()
    config = SynthesisConfig(device=opts.device, **({"steps": opts.steps} if opts.steps else {}))
    calib = calibration_set(bundle, source, opts.images, opts.seed, opts.time_budget, config, opts.cache,
                            progress, say)
    _, labels = bundle.labels()
    scale = bundle.logit_scale
    source_fp32 = bundle.encoder("image", "fp32")
    fp32_sha = bundle.manifest["files"][source_fp32.name]["sha256"]
    with tempfile.TemporaryDirectory(prefix="edgeclip-quantize-") as tmp_s:
        tmp = Path(tmp_s)
        say(f"preparing {source_fp32.name} for quantization")
        fp32 = prepare_fp32(source_fp32, tmp / "fp32.onnx")
        nodes = weighted_nodes(_load(fp32), recipe.op_types)
        ranges = (work_dir(bundle) / ranges_cache_name(calib.key, fp32_sha, recipe, method)
                  if opts.cache else tmp / "ranges.json")
        say(f"quantizing for {opts.target} ({recipe.name}, {method} calibration on {len(calib.images)} images)")
        int8 = quantize_onnx(recipe, fp32, tmp / "int8.onnx", calib.images, method, nodes=nodes,
                             ranges_cache=ranges)
        say("comparing INT8 with fp32 on the calibration images")
        reference = run_onnx(fp32, calib.images)
        agreement = compare(reference, run_onnx(int8, calib.images), labels, scale)
        excluded: list[str] = []
        sensitivity: list[dict[str, Any]] = []
        if opts.max_drop is not None and drop_points(agreement) > opts.max_drop:
            excluded, agreement, sensitivity = _mixed_precision(recipe, method, fp32, nodes, int8, tmp,
                                                                calib.images, reference, labels, scale,
                                                                opts.max_drop, ranges, progress, say)
            int8 = tmp / "int8.onnx"
        seconds = round(time.monotonic() - t0, 2)
        record: dict[str, Any] = {
            "recipe": recipe.name, "file": int8_file_name(opts.target),
            "calibration": {**calib.record(), "method": method},
            "seconds": seconds, "agreement": {k: agreement[k] for k in ("top1_agreement", "mean_cosine",
                                                                       "min_cosine", "mean_kl", "images")},
            "excluded_nodes": excluded, "weighted_nodes": len(nodes),
            "max_drop": opts.max_drop, "settings": recipe.record(), "created": now_iso(),
        }
        if sensitivity:
            record["sensitivity"] = sensitivity[:20]
        say(f"writing {record['file']} into {bundle.path}")
        name = int8_file_name(opts.target)
        sheet = f"reports/calibration-{opts.target}.png"
        with update_bundle(bundle) as draft:
            shutil.copyfile(int8, draft.new_file(name))
            draft.add_file(name, "image_encoder", precision="int8", target=opts.target, format="onnx",
                           recipe=recipe.name)
            write_contact_sheet(calib.images, bundle.preprocess, draft.new_file(sheet))
            draft.add_file(sheet, "report", of=name, source=str(calib.source))
            record["contact_sheet"] = sheet
            draft.manifest.setdefault("quantization", {})[opts.target] = record
    return record


def _load(path: Path) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _mixed_precision(recipe: Any, method: str, fp32: Path, nodes: list[str], int8: Path, tmp: Path, images: Any,
                     reference: Any, labels: Any, scale: float, max_drop: float, ranges: Path, progress: bool,
                     say: Callable[[str], None]) -> tuple[list[str], dict[str, Any], list[dict[str, Any]]]:
    """Keep the most sensitive layers in fp32 until top-1 agreement is within ``max_drop`` points.

    ``nodes``: the weighted nodes of ``fp32``; ``reference``: its embeddings of ``images``.
    """
    from tqdm import tqdm

    from .sensitivity import QuantProbe, layer_sensitivity, plan_exclusions

    say(f"INT8 changes the label of more than {max_drop:g}% of the calibration images: measuring the "
        f"sensitivity of {len(nodes)} layers")
    probe = QuantProbe(int8, fp32, nodes, tmp / "probe.onnx")
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
                                    f"points on the calibration images; allow a larger --max-drop, or use more "
                                    f"or other calibration images (--images, --calib)")
        excluded = order[:k]
        say(f"keeping {k} of {len(order)} layers in fp32 ({', '.join(excluded[:4])}{', ...' if k > 4 else ''})")
        out = quantize_onnx(recipe, fp32, tmp / "int8.onnx", images, method, exclude=excluded, nodes=nodes,
                            ranges_cache=ranges)
        agreement = compare(reference, run_onnx(out, images), labels, scale)
        if drop_points(agreement) <= max_drop + 1e-9:
            return excluded, agreement, [s.record() for s in ranking]
        k = max(k + 1, int(k * 1.5))  # the probe was optimistic: confirm on the real model with more layers
