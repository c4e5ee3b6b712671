"""``edgeclip quantize``, ``classify --precision int8`` and ``edgeclip bench`` end to end on the tiny models."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from edgeclip.bundle import load_bundle
from edgeclip.cli import main


def _quantize(bundle: Path, *args: str) -> int:
    return main(["-q", "quantize", str(bundle), "--images", "8", "--steps", "10", *args])


@pytest.fixture()
def vit(tmp_path: Path, tiny_vit_bundle: Path) -> Path:
    dst = tmp_path / "vit"
    shutil.copytree(tiny_vit_bundle, dst)
    return dst


@pytest.fixture()
def rn(tmp_path: Path, tiny_rn_bundle: Path) -> Path:
    dst = tmp_path / "rn"
    shutil.copytree(tiny_rn_bundle, dst)
    return dst


def test_quantize_both_targets_records_everything(vit: Path, capsys: pytest.CaptureFixture) -> None:
    assert _quantize(vit, "--target", "tensorrt") == 0
    assert _quantize(vit, "--target", "cpu", "--calib-method", "minmax") == 0
    b = load_bundle(vit)  # verifies every hash
    for target in ("tensorrt", "cpu"):
        name = f"image_encoder.int8.{target}.onnx"
        assert b.encoder("image", "int8", target) == vit / name
        entry = b.manifest["files"][name]
        assert entry["role"] == "image_encoder" and entry["precision"] == "int8" and entry["target"] == target
        q = b.manifest["quantization"][target]
        assert q["calibration"]["source"] == "text-guided" and q["calibration"]["images"] == 8
        assert q["calibration"]["seed"] == 0 and q["calibration"]["method"] in ("minmax", "percentile", "entropy")
        assert set(q["agreement"]) >= {"top1_agreement", "mean_cosine"} and q["agreement"]["mean_cosine"] > 0.99
        assert q["excluded_nodes"] == [] and q["seconds"] >= 0 and q["recipe"]
        sheet = q["contact_sheet"]
        assert b.manifest["files"][sheet]["role"] == "report" and (vit / sheet).is_file()
    assert b.manifest["quantization"]["cpu"]["calibration"]["method"] == "minmax"
    assert b.manifest["quantization"]["cpu"]["calibration"]["cached"], "second target reuses the images"
    assert not any(n.startswith(".work") for n in b.manifest["files"])
    capsys.readouterr()
    assert main(["inspect", str(vit)]) == 0
    out = capsys.readouterr().out
    assert "int8        tensorrt: recipe" in out and "int8        cpu: recipe" in out


def test_quantize_resnet_with_bn_stats_and_max_drop(rn: Path) -> None:
    assert _quantize(rn, "--calib", "bn-stats", "--target", "cpu", "--max-drop", "0") == 0
    q = load_bundle(rn).manifest["quantization"]["cpu"]
    assert q["calibration"]["source"] == "bn-stats" and q["max_drop"] == 0.0
    assert q["agreement"]["top1_agreement"] == 1.0, "max-drop 0: every calibration image keeps its label"
    import onnx

    from edgeclip.quant.recipes import weighted_nodes

    weighted = weighted_nodes(onnx.load(str(rn / "image_encoder.onnx")))
    assert set(q["excluded_nodes"]) <= set(weighted) and len(set(q["excluded_nodes"])) == len(q["excluded_nodes"])


def test_quantize_rejects_bad_options(vit: Path, capsys: pytest.CaptureFixture) -> None:
    assert _quantize(vit, "--calib", "bn-stats") == 2
    assert "no BatchNorm" in capsys.readouterr().err
    assert _quantize(vit, "--calib", "real:/no/such/folder") == 2
    assert _quantize(vit, "--max-drop", "150") == 2
    assert _quantize(vit, "--images", "0") == 2
    assert "quantization" not in load_bundle(vit).manifest, "a failed quantize leaves the bundle alone"


def test_classify_int8_on_real_images(vit: Path, cifar_test: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    assert _quantize(vit, "--target", "cpu", "--calib", "noise") == 0
    files = [str(p) for cls in ("cat", "ship", "truck") for p in sorted((cifar_test / cls).iterdir())[:4]]
    rows = {}
    for precision in ("fp32", "int8"):
        capsys.readouterr()
        args = ["-q", "classify", str(vit), *files, "--precision", precision, "--format", "csv"]
        assert main(args + (["--target", "cpu"] if precision == "int8" else [])) == 0
        rows[precision] = {r["path"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert len(rows["int8"]) == len(files) and all(not r["error"] for r in rows["int8"].values())
    same = sum(rows["fp32"][p]["label"] == rows["int8"][p]["label"] for p in rows["fp32"])
    assert same >= len(files) - 2, f"INT8 changed {len(files) - same} of {len(files)} labels"


def test_bench_table_json_and_png(vit: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _quantize(vit, "--target", "cpu", "--calib", "noise") == 0
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    capsys.readouterr()
    assert main(["-q", "bench", str(vit), "--rounds", "2", "--warmup", "1", "--round-seconds", "0",
                 "--batch-sizes", "1", "4", "--json", str(out_json), "--png", str(out_png)]) == 0
    table = capsys.readouterr().out
    assert "onnxruntime int8/cpu" in table and "vs onnxruntime fp32" in table
    rep = json.loads(out_json.read_text())
    variants = {r["variant"] for r in rep["results"]}
    assert {"onnxruntime fp32", "onnxruntime int8/cpu", "torch eager fp32"} <= variants
    for r in rep["results"]:
        assert r["batch"] in (1, 4) and r["runs"] == 2 and r["p95_ms"] >= r["p50_ms"] > 0
        assert r["throughput"] > 0 and r["vs_reference"] > 0 and r["vs_peer"] > 0
    assert out_png.stat().st_size > 1000 and out_png.read_bytes()[:4] == b"\x89PNG"


def test_max_drop_keeps_the_most_sensitive_layers_in_fp32(vit: Path, tmp_path: Path) -> None:
    """Labels +-d, d the direction INT8 moves the first calibration image: its label must flip, so
    --max-drop 0 has to keep layers in fp32 (found by the sensitivity probe, confirmed on the real model)."""
    import numpy as np

    from edgeclip.bundle import update_bundle
    from edgeclip.quant.agreement import run_onnx
    from edgeclip.quant.quantize import QuantizeOptions, quantize_bundle
    from edgeclip.quant.recipes import RECIPES, prepare_fp32, quantize_onnx
    from edgeclip.quant.synthesis import noise_images
    from edgeclip.runtime.labels import Label
    from edgeclip.runtime.text import write_labels

    b = load_bundle(vit)
    pre = b.preprocess
    x = noise_images(16, tuple(pre["size"]), pre["mean"], pre["std"], seed=0)
    fp32 = prepare_fp32(b.encoder("image", "fp32"), tmp_path / "fp32.onnx")
    int8 = quantize_onnx(RECIPES["tensorrt"], fp32, tmp_path / "int8.onnx", x, "minmax")
    e, e8 = run_onnx(fp32, x[:1])[0], run_onnx(int8, x[:1])[0]
    d = e / np.linalg.norm(e) - e8 / np.linalg.norm(e8)
    d /= np.linalg.norm(d)
    with update_bundle(vit) as draft:
        write_labels(draft, [Label("plus"), Label("minus")], "none", ["{}"], np.stack([d, -d]))
    rec = quantize_bundle(vit, QuantizeOptions(calib="noise", target="tensorrt", images=16, calib_method="minmax",
                                               max_drop=0.0), progress=False)
    assert rec["agreement"]["top1_agreement"] == 1.0
    assert 1 <= len(rec["excluded_nodes"]) < rec["weighted_nodes"]
    assert len(rec["sensitivity"]) == rec["weighted_nodes"]
    assert rec["excluded_nodes"][0] == rec["sensitivity"][0]["node"], "the most sensitive layer goes first"
    manifest = load_bundle(vit).manifest
    assert manifest["quantization"]["tensorrt"]["excluded_nodes"] == rec["excluded_nodes"]


def test_target_auto_makes_the_recipe_this_machines_backend_runs_best(vit: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    import edgeclip
    from edgeclip.api import best_int8_recipe
    from edgeclip.devices.catalog import get_profile

    target, why = best_int8_recipe()
    assert main(["quantize", str(vit), "--images", "4", "--steps", "4", "--calib", "noise"]) == 0
    assert f"[quantize] target {target}: {why}" in capsys.readouterr().err
    assert list(load_bundle(vit).manifest["quantization"]) == [target]
    clf = edgeclip.load(vit)  # and the device's backend runs that file by default, as made for it
    assert clf.precision == "int8" and f"the {target} recipe is the one made for" in clf.choice.describe()
    import importlib.util

    on_x86 = "openvino" if importlib.util.find_spec("openvino") else "cpu"
    assert best_int8_recipe(get_profile("x86-avx2"))[0] == on_x86  # OpenVINO first where it is installed
