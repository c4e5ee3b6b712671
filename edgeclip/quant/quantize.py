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
from pathlib import Path
from typing import Any, Callable

from ..bundle import load_bundle, now_iso, update_bundle
from .agreement import LabelScoring
from .calibration import CalibSource, calibration_set, work_dir, write_contact_sheet
from .quantizer import quantize_images, seconds_after_calibration
from .options import QuantizeOptions
from .recipes import int8_file_name, ranges_cache_name, recipe_for
from .synthesis import SynthesisConfig

log = logging.getLogger("edgeclip.quant")

def synthesis_config(opts: QuantizeOptions) -> SynthesisConfig:
    """The synthesis settings the options ask for."""
    return SynthesisConfig(device=opts.device, resolution=opts.synthesis_resolution,
                           precision=opts.synthesis_precision, threads=opts.synthesis_threads,
                           **({"steps": opts.steps} if opts.steps else {}))


def check(opts: QuantizeOptions) -> CalibSource:
    """Validate every option (one OptionError listing all problems); returns the parsed calibration source."""
    opts.check()
    synthesis_config(opts).check()
    return CalibSource.parse(opts.calib)


def quantize_bundle(path: str | Path, opts: QuantizeOptions, progress: bool = True,
                    step: Callable[[str], None] | None = None, started: float | None = None) -> dict[str, Any]:
    """Quantize the bundle's image encoder for ``opts.target``; returns the manifest record. ``started``: the
    ``time.monotonic()`` the job began (default: now); ``opts.time_budget`` counts from it."""
    t0 = time.monotonic() if started is None else started
    say = step or (lambda m: log.info(m))
    source = check(opts)
    recipe = recipe_for(opts.target)
    method = opts.calib_method or recipe.calib_method
    bundle = load_bundle(path)
    config = synthesis_config(opts)
    source_fp32 = bundle.encoder("image", "fp32")
    calib = calibration_set(bundle, source, opts.images, opts.seed, opts.time_budget, config, opts.cache,
                            progress, say, started=t0,
                            reserve=lambda: seconds_after_calibration(source_fp32, opts.images, opts.max_drop))
    _, labels = bundle.labels()
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
