"""``edgeclip pack``: a verified bundle with only what one device profile runs; an INT8 text encoder checked
against fp32; `inspect` says what was left out and what the bundle can still do."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import edgeclip
from edgeclip.bundle import load_bundle
from edgeclip.cli import main
from edgeclip.errors import BundleError

pytest.importorskip("onnx", reason="packing with an INT8 text encoder needs onnx")

X86 = "x86-avx512-vnni"


@pytest.fixture(scope="module")
def three_recipes(quantized_copy, tiny_vit_bundle: Path) -> Path:
    """The tiny ViT bundle with the cpu, tensorrt and openvino INT8 files (noise calibration). Read-only."""
    return quantized_copy(tiny_vit_bundle, "three", ("cpu", "tensorrt", "openvino"))


def _photos(cifar_test: Path) -> list[Path]:
    return sorted((cifar_test / "horse").iterdir())[:6] + sorted((cifar_test / "truck").iterdir())[:6]


def test_pack_keeps_what_the_x86_profile_runs(three_recipes: Path, tmp_path: Path, cifar_test: Path,
                                              capsys) -> None:
    out = tmp_path / "packed"
    assert main(["pack", str(three_recipes), "--out", str(out), "--for", X86]) == 0
    assert f"for {X86}: image_encoder.int8.tensorrt.onnx (int8), text int8" in capsys.readouterr().out
    b = load_bundle(out)  # a verified bundle
    pack = b.manifest["pack"]
    # OpenVINO first, ONNX Runtime's CPU provider as fallback: the one INT8 recipe both run
    assert pack["image"] == ["image_encoder.int8.tensorrt.onnx"] and pack["precision"] == "int8"
    assert sorted(b.info.files) == ["image_encoder.int8.tensorrt.onnx", "labels.json", "labels.npy",
                                    "text_encoder.int8.onnx", "tokenizer/bpe_simple_vocab_16e6.txt.gz"]
    assert set(pack["left_out"]) == {"image_encoder.onnx", "image_encoder.int8.cpu.onnx",
                                     "image_encoder.int8.openvino.onnx", "text_encoder.onnx",
                                     "reports/calibration-cpu.png", "reports/calibration-tensorrt.png",
                                     "reports/calibration-openvino.png"}
    assert list(b.manifest["quantization"]) == ["tensorrt"]
    assert pack["bytes"] == sum(e.bytes for e in b.info.files.values()) < pack["source"]["bytes"]
    assert pack["text_int8"]["labels"]["min_cosine"] >= 0.99 and pack["text_int8"]["labels"]["own_label_nearest"] == 1.0

    # the device runs it as the full bundle's tensorrt file, on both backends of the profile
    files = _photos(cifar_test)
    full = edgeclip.load(three_recipes, device=X86, precision="int8", backend="onnxruntime", target="tensorrt")
    want = full.embed(files)
    for backend in ("onnxruntime", "openvino"):
        clf = edgeclip.load(out, device=X86, backend=backend)
        assert clf.choice.file.name == "image_encoder.int8.tensorrt.onnx" and clf.precision == "int8"
        got = clf.embed(files)
        if backend == "onnxruntime":  # the same file on the same engine
            np.testing.assert_allclose(got, want, atol=1e-5)
        else:  # OpenVINO's own INT8 kernels
            assert float((got * want).sum(1).min()) > 0.99
    # relabelling on the device with the INT8 text encoder: label embeddings close to fp32's
    names, fp32 = full.bundle.labels()
    int8 = edgeclip.load(out, device=X86).embed_labels(names)
    assert float((int8 * fp32).sum(1).min()) >= 0.99
    assert main(["-q", "labels", str(out), "--labels", "cat", "delivery van"]) == 0
    assert load_bundle(out).labels()[0] == ["cat", "delivery van"]


def test_inspect_shows_what_was_left_out_and_what_it_can_do(three_recipes: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "packed"
    assert main(["-q", "pack", str(three_recipes), "--out", str(out), "--for", X86, "--text", "none"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"packed      for {X86}" in text and "text encoder none" in text
    assert "left out  image_encoder.onnx" in text and "left out  text_encoder.onnx" in text
    assert "runs        openvino: image_encoder.int8.tensorrt.onnx; onnxruntime:cpu: image_encoder.int8.tensorrt.onnx" in text
    assert "no relabelling" in text and "not: fp32 image encoding" in text
    assert sorted(load_bundle(out).info.files) == ["image_encoder.int8.tensorrt.onnx", "labels.json", "labels.npy"]
    # what it cannot do fails with the reason, not a traceback
    assert main(["labels", str(out), "--labels", "cat", "dog"]) == 2
    assert "packed for device profile x86-avx512-vnni without its text encoder" in capsys.readouterr().err
    with pytest.raises(BundleError, match="packed for device profile x86-avx512-vnni without it .*: run it at the "
                                          "precision it was packed for \\(`precision` auto or int8\\)"):
        edgeclip.load(out, device=X86, precision="fp32")
    assert main(["-q", "classify", str(out), str(Path(__file__)), "--device", X86, "--precision", "fp32"]) == 2
    assert "run it at the precision it was packed for (--precision auto or int8)" in capsys.readouterr().err
    assert main(["quantize", str(out), "--calib", "noise"]) == 2
    assert "packed for device profile" in capsys.readouterr().err


def test_profiles_that_run_fp32_or_fp16_keep_the_fp32_file(three_recipes: Path, tmp_path: Path) -> None:
    b = edgeclip.pack(three_recipes, tmp_path / "gpu", device="desktop-gpu", text="fp32")
    assert b.manifest["pack"]["image"] == ["image_encoder.onnx"] and "TensorRT builds its engine" in \
        b.manifest["pack"]["reasons"][0]
    assert "text_encoder.onnx" in b.info.files and "quantization" not in b.manifest
    jetson = edgeclip.pack(three_recipes, tmp_path / "orin", device="jetson-orin-nano", text="none")
    assert jetson.manifest["pack"]["image"] == ["image_encoder.int8.tensorrt.onnx"]


def test_without_an_int8_file_the_profile_gets_fp32_or_the_quantize_line(tiny_vit_bundle: Path, tmp_path: Path,
                                                                         capsys) -> None:
    b = edgeclip.pack(tiny_vit_bundle, tmp_path / "a", device=X86, text="none")
    assert b.manifest["pack"]["precision"] == "fp32" and "edgeclip quantize" in b.manifest["pack"]["reasons"][0]
    assert main(["pack", str(tiny_vit_bundle), "--out", str(tmp_path / "b"), "--for", X86, "--image", "int8"]) == 2
    err = capsys.readouterr().err
    assert "no INT8 image encoder that profile x86-avx512-vnni runs" in err and "--target openvino" in err
    assert not (tmp_path / "b").exists()
    assert main(["pack", str(tiny_vit_bundle), "--out", str(tmp_path / "a"), "--for", X86]) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(edgeclip.OptionError, match="unknown pack option"):
        edgeclip.pack(tiny_vit_bundle, tmp_path / "c", txt="none")


def test_a_packed_manifest_without_any_image_encoder_is_refused(three_recipes: Path, tmp_path: Path) -> None:
    out = tmp_path / "p"
    edgeclip.pack(three_recipes, out, device=X86, text="none")
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["files"]["image_encoder.int8.tensorrt.onnx"]
    del manifest["quantization"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="a packed bundle: at least one image encoder"):
        load_bundle(out)


def test_a_packed_siglip_bundle_relabels_with_its_tokenizer(family_bundles, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(family_bundles("siglip"), src)
    assert main(["-q", "quantize", str(src), "--calib", "noise", "--images", "8", "--target", "cpu"]) == 0
    b = edgeclip.pack(src, tmp_path / "p", device="arm64-cpu")
    assert b.manifest["pack"]["image"] == ["image_encoder.int8.cpu.onnx"]
    assert b.manifest["tokenizer"]["type"] == "hf-tokenizer" and "tokenizer/tokenizer.json" in b.info.files
    clf = edgeclip.load(b, device="arm64-cpu")
    names, fp32 = clf.bundle.labels()
    assert float((clf.embed_labels(names) * fp32).sum(1).min()) >= 0.99
