"""The public Python API: ``edgeclip.load(bundle).classify(x)`` on real bundles and real JPEGs."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeclip
from edgeclip.cli import main
from edgeclip.runtime.images import read_image




@pytest.fixture(scope="module")
def photos(cifar_test: Path) -> list[Path]:
    return sorted((cifar_test / "ship").glob("*.jpg"))[:3] + sorted((cifar_test / "cat").glob("*.jpg"))[:3]


def test_import_is_cheap_and_the_api_is_listed() -> None:
    code = ("import sys, edgeclip; names = dir(edgeclip); "
            "assert 'load' in names and 'Classifier' in names and 'EdgeclipError' in names, names; "
            "heavy = [m for m in ('torch', 'onnxruntime', 'cv2', 'numpy', 'onnx') if m in sys.modules]; "
            "assert not heavy, heavy; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    for name in edgeclip.__all__:
        assert getattr(edgeclip, name) is not None
    with pytest.raises(AttributeError):
        edgeclip.no_such_name  # noqa: B018


def test_load_classify_a_path_without_torch(tiny_vit_bundle: Path, photos: list[Path]) -> None:
    code = (f"import sys, edgeclip; c = edgeclip.load({str(tiny_vit_bundle)!r}); p = c.classify({str(photos[0])!r}); "
            "print(type(p).__name__, p.label, p.score, c.choice.backend); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    kind, label, score, backend = done.stdout.split()
    assert kind == "Prediction" and label in edgeclip.load(tiny_vit_bundle).labels
    assert 0.0 < float(score) <= 1.0 and backend.split(":")[0] in ("onnxruntime", "openvino")


def test_one_image_in_one_prediction_out_a_list_in_a_list_out(tiny_vit_bundle: Path, photos: list[Path]) -> None:
    clf = edgeclip.load(tiny_vit_bundle, top_k=3)
    images = [read_image(p) for p in photos]
    batch = clf.classify(images)
    assert isinstance(batch, list) and len(batch) == len(photos)
    assert all(isinstance(p, edgeclip.Prediction) and len(p.labels) == 3 for p in batch)
    single = clf.classify(images[0])
    assert isinstance(single, edgeclip.Prediction)
    assert single.labels == batch[0].labels and np.allclose(single.scores, batch[0].scores, atol=1e-6)
    # a path, encoded bytes and a 4-D array give the same answers as the decoded arrays
    assert clf.classify(photos[1]).labels == batch[1].labels
    assert clf.classify(photos[2].read_bytes()).labels == batch[2].labels
    stacked = clf.classify(np.stack(images[:2]))
    assert [p.labels for p in stacked] == [p.labels for p in batch[:2]]
    assert clf.classify([]) == []
    emb = clf.embed(images[0])
    assert emb.shape == (int(clf.bundle.model["embed_dim"]),) and abs(float(np.linalg.norm(emb)) - 1) < 1e-5
    assert clf.embed(photos[:2]).shape == (2, emb.shape[0])
    json.dumps(single.to_dict())


@pytest.mark.parametrize("bad", [
    np.zeros((224, 224, 3), np.float32),         # float, not uint8
    np.zeros((3, 32, 32), np.uint8),              # CHW
    np.zeros((2, 2, 32, 32, 3), np.uint8),        # 5-D
    np.zeros((0, 32, 3), np.uint8),               # empty
    12,                                           # not an image at all
])
def test_a_wrong_input_is_a_clear_error_not_a_row_per_pixel(tiny_vit_bundle: Path, bad: object) -> None:
    clf = edgeclip.load(tiny_vit_bundle)
    with pytest.raises(edgeclip.ImageReadError) as err:
        clf.classify(bad)
    described = {np.ndarray: ("shape", "dtype")}.get(type(bad), (type(bad).__name__,))
    assert any(word in str(err.value) for word in described), err.value  # says what it was given


def test_set_labels_reembeds_on_the_device_like_the_labels_command(bundle_copy: Path, photos: list[Path]) -> None:
    clf = edgeclip.load(bundle_copy)
    clf.set_labels(["a red sports car", "a cup of coffee", "a snowy mountain"])
    assert clf.labels == ["a red sports car", "a cup of coffee", "a snowy mountain"]
    assert set(p.label for p in clf.classify(photos)) <= set(clf.labels)
    assert main(["-q", "labels", str(bundle_copy), "--labels", "a red sports car", "a cup of coffee",
                 "a snowy mountain"]) == 0
    names, matrix = edgeclip.load_bundle(bundle_copy).labels()
    assert names == clf.labels and np.allclose(matrix, clf.label_matrix, atol=1e-5)
    with pytest.raises(edgeclip.LabelsError):
        clf.set_labels([])


def test_int8_on_a_cpu_host_picks_the_cpu_recipe_and_says_why(both_int8: Path, photos: list[Path],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="edgeclip"):
        clf = edgeclip.load(both_int8, device="x86-avx512-vnni", precision="int8", backend="onnxruntime")
    assert clf.choice.file.name == "image_encoder.int8.cpu.onnx" and clf.precision == "int8"
    assert "the cpu recipe is the one made for onnxruntime:cpu" in caplog.text
    trt_file = edgeclip.load(both_int8, device="x86-avx512-vnni", precision="int8", target="tensorrt",
                             backend="onnxruntime")
    assert trt_file.choice.file.name == "image_encoder.int8.tensorrt.onnx"
    auto = edgeclip.load(both_int8, device="x86-avx512-vnni", backend="onnxruntime")  # the profile says int8
    assert auto.precision == "int8" and auto.choice.file.name == "image_encoder.int8.cpu.onnx"
    fp32 = edgeclip.load(both_int8, device="x86-avx2", precision="fp32", backend="onnxruntime")
    assert fp32.choice.file.name == "image_encoder.onnx"
    agree = np.mean([a.label == b.label for a, b in zip(clf.classify(photos), fp32.classify(photos))])
    assert agree >= 0.5


def test_contradictions_name_the_argument_to_drop(both_int8: Path, tiny_vit_bundle: Path) -> None:
    with pytest.raises(edgeclip.OptionError, match="drop `target`"):
        edgeclip.load(both_int8, precision="fp32", target="cpu")
    with pytest.raises(edgeclip.OptionError, match="drop `providers`"):
        edgeclip.load(both_int8, backend="tensorrt", providers=["cuda"])
    with pytest.raises(edgeclip.DeviceError, match="unknown device profile"):
        edgeclip.load(both_int8, device="no-such-device")
    with pytest.raises(edgeclip.BundleError, match="edgeclip quantize"):
        edgeclip.load(tiny_vit_bundle, precision="int8")  # asked for explicitly, and there is none


def test_cli_int8_on_a_bundle_with_both_recipes_says_which_file_and_why(both_int8: Path, cifar_test: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    assert main(["classify", str(both_int8), str(cifar_test / "ship"), "--precision", "int8", "--format", "csv",
                 "--device", "x86-avx512-vnni", "--backend", "onnxruntime"]) == 0
    captured = capsys.readouterr()
    assert "image_encoder.int8.cpu.onnx on onnxruntime:cpu (int8)" in captured.err
    assert "the cpu recipe is the one made for onnxruntime:cpu" in captured.err
    assert len(captured.out.splitlines()) == 1 + 1000
    assert main(["classify", str(both_int8), str(cifar_test / "ship"), "--precision", "fp32", "--target", "cpu"]) == 2
    assert "drop --target, or pass --precision int8" in capsys.readouterr().err


def test_the_readme_python_example_runs(tiny_vit_bundle: Path, photos: list[Path], tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Use from Python", 1)[1].split("\n## ", 1)[0]
    code = "\n".join(line[4:] for line in section.splitlines() if line.startswith("    "))
    assert "edgeclip.load(" in code and ".classify(" in code
    for name, photo in zip(("photo.jpg", "a.jpg", "b.jpg"), photos):
        (tmp_path / name).write_bytes(photo.read_bytes())
    code = code.replace('"out/bundle"', repr(str(tiny_vit_bundle)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("Prediction(") == 4 and "<Classifier " in done.stdout
