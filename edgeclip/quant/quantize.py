"""``edgeclip quantize``: calibration set -> INT8 image encoder -> agreement check -> bundle, atomically.

A thin layer over ``edgeclip.quant.quantizer`` (which works on any image model): the bundle adds the cached,
text-guided calibration sets, the zero-shot agreement against its labels, and the atomic write.

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
from ..errors import OptionError
from .agreement import LabelScoring
from .calibration import CalibSource, calibration_set, work_dir, write_contact_sheet
from .quantizer import quantize_images
from .recipes import CALIB_METHODS, int8_file_name, ranges_cache_name, recipe_for
from .synthetic import SynthesisConfig

log = logging.getLogger("edgeclip.quant")

DEFAULT_SOURCE = "text-guided"
DEFAULT_IMAGES = 64
DEFAULT_TIME_BUDGET = 180.0


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
    synthesis_resolution: str = "auto"  # auto | full | coarse-to-fine | coarser (``edgeclip.quant.budget``)
    synthesis_precision: str = "auto"  # auto | fp32 | bf16 | fp16 autocast
    synthesis_threads: int = 0  # torch CPU threads; 0 = the usable cores less those other processes keep busy

    def synthesis_config(self) -> SynthesisConfig:
        """The synthesis settings these options ask for."""
        return SynthesisConfig(device=self.device, resolution=self.synthesis_resolution,
                               precision=self.synthesis_precision, threads=self.synthesis_threads,
                               **({"steps": self.steps} if self.steps else {}))

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
        if self.synthesis_threads < 0:
            raise OptionError("`synthesis_threads` must be >= 0 (0: chosen for the machine)")
        self.synthesis_config().check()
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
    config = opts.synthesis_config()
    calib = calibration_set(bundle, source, opts.images, opts.seed, opts.time_budget, config, opts.cache,
                            progress, say)
    _, labels = bundle.labels()
    source_fp32 = bundle.encoder("image", "fp32")
    fp32_sha = bundle.manifest["files"][source_fp32.name]["sha256"]
    ranges = (work_dir(bundle) / ranges_cache_name(calib.key, fp32_sha, recipe, method) if opts.cache else None)
    name = int8_file_name(opts.target)
    with tempfile.TemporaryDirectory(prefix="edgeclip-quantize-") as tmp_s:
        made = quantize_images(source_fp32, Path(tmp_s) / "int8.onnx", recipe, calib, method, opts.max_drop,
                               labels, LabelScoring.of_bundle(bundle), ranges, progress, say, started=t0)
        r = made.record
        record: dict[str, Any] = {
            "recipe": r["recipe"], "file": name, "calibration": r["calibration"], "seconds": r["seconds"],
            "agreement": r["agreement"], "excluded_nodes": r["excluded_nodes"],
            "weighted_nodes": r["weighted_nodes"], "max_drop": r["max_drop"], "settings": r["settings"],
            "created": now_iso(),
        }
        for key in ("sensitivity", "kept_fp32"):
            if key in r:
                record[key] = r[key]
        say(f"writing {record['file']} into {bundle.path}")
        sheet = f"reports/calibration-{opts.target}.png"
        with update_bundle(bundle) as draft:
            shutil.copyfile(made.path, draft.new_file(name))
            draft.add_file(name, "image_encoder", precision="int8", target=opts.target, format="onnx",
                           recipe=recipe.name)
            write_contact_sheet(calib.images, bundle.preprocess, draft.new_file(sheet))
            draft.add_file(sheet, "report", of=name, source=str(calib.source))
            record["contact_sheet"] = sheet
            draft.manifest.setdefault("quantization", {})[opts.target] = record
    return record
