"""Accuracy of synthetic-calibration INT8 on the trained proxy models (CIFAR-10 test). Slow: -m slow."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeclip.cli import main
from edgeclip.export.models import MODELS_DIR


@pytest.mark.slow
@pytest.mark.parametrize("model", ["proxy-vit", "proxy-rn"])
@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_text_guided_int8_stays_within_a_point_of_fp32(model: str, target: str, tmp_path: Path,
                                                       cifar_test: Path) -> None:
    if not (MODELS_DIR / model / "open_clip_config.json").is_file():
        pytest.skip(f"{model} is not installed in {MODELS_DIR}")
    bundle = tmp_path / model
    assert main(["-q", "export", "--model", model, "--out", str(bundle)]) == 0
    assert main(["-q", "quantize", str(bundle), "--target", target]) == 0  # defaults: text-guided, 64 images
    report = tmp_path / "eval.json"
    assert main(["-q", "eval", str(bundle), str(cifar_test), "--precision", "int8", "--target", target,
                 "--limit", "2000", "--against", str(bundle), "--against-precision", "fp32",
                 "--json", str(report)]) == 0
    rep = json.loads(report.read_text())
    comparison = rep["comparison"]
    assert abs(rep["top1"] - comparison["against_top1"]) <= 1.0, comparison
    # Measured on all 10,000 images (docs/quantization.md): tensorrt >= 98.4% agreement, cosine >= 0.9991; the
    # cpu recipe's 7-bit weights (no saturation on AVX2 without VNNI) cost more: proxy-rn 95.6%, cosine 0.9928.
    min_agreement, min_cosine = (95.0, 0.998) if target == "tensorrt" else (94.0, 0.99)
    assert comparison["top1_agreement"] >= min_agreement and comparison["mean_cosine"] > min_cosine, comparison
