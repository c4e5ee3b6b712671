"""Rockchip NPUs: the converter job and its files, the converter environment's errors, calibration as raw
pixels, the RKNN Lite backend's pixel path, NPU readiness from fixture trees; and (slow, with RKNN-Toolkit2's
venv named by EDGECLIP_RKNN_PYTHON) the proxies built from synthetic calibration and run in the simulator."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeclip.bundle import load_bundle
from edgeclip.devices import rknn_convert
from edgeclip.devices.catalog import get_profile, load_profiles, profile_from_dict
from edgeclip.devices.choice import backend_order
from edgeclip.devices.rknn import (CONVERTER, DEFAULT_ALGORITHM, ENV_VAR, MAKE_ENV, TARGET_PLATFORMS, RknnBuildOptions,
                                   cached_calibration, find_converter_python, make_job, probe_converter, raw_pixels,
                                   write_dataset)
from edgeclip.devices.rknpu import npu_readiness
from edgeclip.errors import BackendError, DeviceError, EdgeclipError, OptionError
from edgeclip.runtime.backends.rknn import RknnBackend, check_core_mask, fixed_batches, to_pixels
from edgeclip.runtime.images import read_image
from edgeclip.runtime.preprocess import PreprocessConfig, Preprocessor

FIXTURES = Path(__file__).parent / "fixtures"
DEVICES = FIXTURES / "devices"


def photos(cifar_test: Path, n: int = 6) -> list[Path]:
    return [sorted((cifar_test / c).iterdir())[i] for c in ("cat", "ship", "truck") for i in range(n // 3)]


# -- the pixel path: normalised model input <-> the uint8 pixels the NPU takes ------------------------------
@pytest.mark.parametrize("size", [(64, 64), (224, 224)])
def test_pixels_come_back_exactly_from_the_preprocessors_output(size, cifar_test: Path,
                                                                imagenette_train: Path) -> None:
    pre = Preprocessor(PreprocessConfig(size=size))
    files = photos(cifar_test) + sorted(next(imagenette_train.iterdir()).iterdir())[:3]
    images = [read_image(f) for f in files]
    want = np.stack([pre.pixels(img)[:, :, ::-1] for img in images])  # RGB, as the .rknn input
    got = to_pixels(pre.batch(images), pre.config.mean, pre.config.std)
    assert got.dtype == np.uint8 and got.shape == (len(files), *size, 3) and got.flags.c_contiguous
    assert np.array_equal(got, want)
    # the calibration files' raw values are the same levels, NCHW float32
    raw = raw_pixels(pre.batch(images), pre.config.mean, pre.config.std)
    assert raw.dtype == np.float32 and np.array_equal(raw, want.transpose(0, 3, 1, 2).astype(np.float32))


def test_fixed_batches_pad_the_last_piece_and_say_how_many_rows_count() -> None:
    x = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)
    pieces = list(fixed_batches(x, 2))
    assert [n for _, n in pieces] == [2, 2, 1]
    assert all(p.shape == (2, 2) for p, _ in pieces)
    assert np.array_equal(pieces[2][0], np.stack([x[4], x[4]]))
    assert np.array_equal(np.concatenate([p[:n] for p, n in pieces]), x)
    assert [n for _, n in fixed_batches(x, 8)] == [5]


def test_backend_without_rknn_lite_names_the_extra(tmp_path: Path) -> None:
    try:
        import rknnlite  # noqa: F401
        pytest.skip("rknn-toolkit-lite2 is installed here")
    except ImportError:
        pass
    model = tmp_path / "m.rknn"
    model.write_bytes(b"RKNN")
    with pytest.raises(BackendError, match=r"'rknn' extra: .*pip install .*\[rknn\]"):
        RknnBackend(model, (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(BackendError, match="no such .rknn file"):
        RknnBackend(tmp_path / "missing.rknn", (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(OptionError, match="core_mask='3'.*auto, 0, 1, 2, 0_1, 0_1_2, all"):
        check_core_mask("3")


# -- profiles, detection and readiness from fixture trees ---------------------------------------------------
def test_npu_profiles_name_their_platform_and_fall_back_to_the_cpu() -> None:
    npu = [p for p in load_profiles().values() if p.kind == "npu"]
    assert {p.name for p in npu} == {"rk3588", "rk3566", "rk3568"}
    for p in npu:
        assert p.backends == ("rknn", "onnxruntime:cpu") and p.rknn_platform in TARGET_PLATFORMS
        assert p.int8_target == "cpu" and not p.uses_gpu
    good = get_profile("rk3588").to_dict()
    with pytest.raises(DeviceError, match="rknn backend and rknn_platform come together"):
        profile_from_dict({**good, "rknn_platform": None})
    with pytest.raises(DeviceError, match="core_mask='1_2' is not valid"):
        profile_from_dict({**good, "core_mask": "1_2"})
    assert profile_from_dict(good) == get_profile("rk3588")


def test_a_ready_rk3588_board() -> None:
    r = npu_readiness(DEVICES / "rk3588-orangepi-5", lite="2.5.0", model_toolkit="2.5.0", env={})
    assert r.ready, r.reasons()
    assert (r.soc, r.driver, r.runtime, r.lite) == ("rk3588", "0.9.8", "2.5.0", "2.5.0")
    assert r.describe() == "NPU ready (rk3588, rknpu driver 0.9.8, librknnrt 2.5.0, rknn-toolkit-lite2 2.5.0)"
    assert r.reasons() == []


def test_readiness_says_the_runtime_package_is_missing() -> None:
    r = npu_readiness(DEVICES / "rk3588-orangepi-5", lite=None, env={})
    assert not r.ready
    assert r.describe().startswith("NPU not usable: not installed; add the 'rknn' extra: ")
    assert "[rknn]" in r.describe()


def test_readiness_on_mainline_linux_names_the_rocket_driver_and_the_missing_library() -> None:
    r = npu_readiness(DEVICES / "rk3588-rock-5b-mainline", lite="2.5.0", env={})
    assert not r.ready
    text = "\n".join(r.reasons())
    assert "mainline Linux's rocket driver (/sys/class/accel/accel0)" in text
    assert "vendor's (BSP) kernel" in text
    assert "librknnrt.so: not found" in text and "rknpu2/runtime/Linux/librknn_api/aarch64" in text


def test_readiness_says_the_npu_is_disabled_in_the_device_tree() -> None:
    r = npu_readiness(DEVICES / "rk3566-radxa-zero3", lite="2.5.0", env={})
    assert r.soc == "rk3566" and not r.ready
    assert r.describe().startswith("NPU not usable: the NPU is disabled in the device tree "
                                   "(/proc/device-tree/npu@fde40000 status 'disabled')")
    assert "overlay" in r.describe()


def test_readiness_compares_runtime_package_and_model_versions() -> None:
    root = DEVICES / "rk3568-rock-3a"
    r = npu_readiness(root, lite="2.5.0", env={})
    assert r.ready  # a lite/runtime mismatch is a warning
    assert r.runtime == "2.3.0" and r.driver is None
    assert any(line.startswith("warn versions: rknn-toolkit-lite2 2.5.0 and librknnrt 2.3.0") for line in r.reasons())
    assert any("rknpu bound to /sys/class/drm/renderD129 (version unknown" in str(c) for c in r.checks)
    old = npu_readiness(root, lite="2.3.0", model_toolkit="2.5.0", env={})
    assert not old.ready
    assert "built with rknn-toolkit2 2.5.0, newer than this librknnrt 2.3.0" in old.describe()
    assert "rknn-toolkit2==2.3.0" in old.describe()
    # $LIBRKNNRT_PATH wins over the library folders, as in RKNN Lite
    moved = npu_readiness(root, lite="2.5.0", env={"LIBRKNNRT_PATH": "/../rk3588-orangepi-5/usr/lib/librknnrt.so"})
    assert moved.runtime == "2.5.0"


def test_readiness_off_rockchip_stops_at_the_chip() -> None:
    r = npu_readiness(DEVICES / "x86-avx2", lite="2.5.0", env={})
    assert [c.name for c in r.checks] == ["chip"] and not r.ready
    assert "not a Rockchip chip with an NPU (no /proc/device-tree/compatible)" in r.describe()


def test_backend_order_of_an_npu_profile_says_why_it_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="edgeclip.devices"):
        order = backend_order(get_profile("rk3588"), probes={"onnxruntime": {"providers": ["CPUExecutionProvider"]},
                                                             "rknn": {"installed": True}})
    assert [c.label for c in order] == ["rknn", "onnxruntime:cpu"]
    assert not order[0].available and order[1].available
    assert "falling back to onnxruntime:cpu; rknn skipped: NPU not usable" in caplog.text


# -- the converter environment --------------------------------------------------------------------------------
def test_no_converter_environment_gives_the_lines_that_make_one(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(DeviceError) as err:
        find_converter_python()
    assert isinstance(err.value, EdgeclipError)  # exit status 2 from the CLI
    assert ENV_VAR in str(err.value) and "`converter_python`" in str(err.value)
    assert all(line in str(err.value) for line in MAKE_ENV)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nope" / "python"))
    with pytest.raises(DeviceError, match=f"{ENV_VAR}='.*nope/python' is not an executable Python; make one with"):
        find_converter_python()


def test_a_python_without_the_toolkit_is_a_broken_converter_environment() -> None:
    """edgeclip's own Python has no rknn.api: the probe runs the real script there and reports why."""
    with pytest.raises(DeviceError) as err:
        probe_converter(sys.executable)
    text = str(err.value)
    assert f"{sys.executable} is not a working RKNN-Toolkit2 environment (rknn.api does not import" in text
    assert MAKE_ENV[0] in text


def _job(tmp_path: Path, bundle_path: Path, **changes) -> Path:
    bundle = load_bundle(bundle_path)
    pre = bundle.preprocess
    dataset = write_dataset(raw_pixels(np.zeros((2, 3, *pre["size"]), np.float32), pre["mean"], pre["std"]),
                            tmp_path / "calib")
    job = make_job(bundle.encoder("image", "fp32"), tmp_path / "out.rknn", dataset, pre, RknnBuildOptions(), tmp_path)
    job.update(changes)
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    return path


def test_job_file_and_calibration_files(tmp_path: Path, tiny_vit_bundle: Path) -> None:
    path = _job(tmp_path, tiny_vit_bundle)
    job = rknn_convert.read_job(path)
    pre = load_bundle(tiny_vit_bundle).preprocess
    assert job["input_name"] == "pixel_values" and job["input_size"] == list(pre["size"])
    assert job["mean_values"] == pytest.approx([m * 255 for m in pre["mean"]])
    assert job["std_values"] == pytest.approx([s * 255 for s in pre["std"]])
    assert (job["quantized_algorithm"], job["hybrid"], job["batch"]) == (DEFAULT_ALGORITHM, False, 1)
    assert rknn_convert.check_dataset(job) == 2
    first = Path((tmp_path / "calib" / "dataset.txt").read_text().split()[0])
    arr = np.load(first)
    assert arr.shape == (1, 3, *pre["size"]) and arr.dtype == np.float32
    assert np.allclose(arr[0, :, 0, 0], np.rint(np.asarray(pre["mean"]) * 255))  # zeros -> the mean's levels


@pytest.mark.parametrize("change,message", [
    ({"quantized_algorithm": "best"}, "'quantized_algorithm' is 'best'; use one of normal, mmse, kl_divergence"),
    ({"input_size": [64]}, "'input_size' must be [height, width]"),
    ({"std_values": [0, 1, 1]}, "'std_values' must be positive"),
    ({"onnx": "/nonexistent/model.onnx"}, "job field 'onnx': no such file /nonexistent/model.onnx"),
    ({"batch": 0}, "'batch' must be an int >= 1"),
    ({"eval_inputs": "/x.npy"}, "'eval_inputs' and 'eval_outputs' come together"),
])
def test_a_bad_job_is_exit_2_with_the_field_named(change: dict, message: str, tmp_path: Path,
                                                  tiny_vit_bundle: Path) -> None:
    """The real script in a subprocess (edgeclip's Python: a job is checked before the toolkit is imported)."""
    path = _job(tmp_path, tiny_vit_bundle, **change)
    done = subprocess.run([sys.executable, str(CONVERTER), str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 2, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "error" and result["kind"] == "job" and message in result["error"]


def test_calibration_files_of_the_wrong_shape_are_named(tmp_path: Path, tiny_vit_bundle: Path) -> None:
    path = _job(tmp_path, tiny_vit_bundle)
    bad = tmp_path / "calib" / "calib-0001.npy"
    np.save(bad, np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(rknn_convert.JobError, match=r"calib-0001.npy: shape \(1, 32, 32, 3\) float32, expected "
                                                    r"\(1, 3, 32, 32\) float32 \(raw 0-255 RGB, NCHW\)"):
        rknn_convert.check_dataset(rknn_convert.read_job(path))


def test_layer_summary_from_the_toolkits_log() -> None:
    """A real excerpt of the toolkit's verbose log (proxy-vit built for rk3588)."""
    s = rknn_convert.layer_summary((FIXTURES / "rknn" / "proxy-vit-layers.log").read_text())
    assert s is not None and s["layers"] == 70  # 72 rows less the input and output operators
    assert s["by_target"] == {"NPU": 70} and s["by_dtype"] == {"INT8": 70} and s["not_on_npu"] == {}
    assert rknn_convert.layer_summary("no table here") is None


def test_build_options_are_checked() -> None:
    for change, word in [({"target_platform": "rk3399"}, "target_platform='rk3399' is not an RKNN target"),
                         ({"algorithm": "best"}, "algorithm='best'"), ({"fixed_batch": 0}, "fixed_batch=0"),
                         ({"hybrid_cos_thresh": 1.5}, "hybrid_cos_thresh=1.5")]:
        with pytest.raises(OptionError, match=word):
            RknnBuildOptions(**change).check()


def test_cached_calibration_is_the_set_quantize_made(tmp_path: Path, tiny_vit_bundle: Path,
                                                      cifar_test: Path) -> None:
    bundle_path = tmp_path / "b"
    shutil.copytree(tiny_vit_bundle, bundle_path)
    with pytest.raises(DeviceError, match=r"no cached text-guided calibration set; make it by quantizing the "
                                          r"bundle with calib='text-guided'"):
        cached_calibration(load_bundle(bundle_path))
    real = tmp_path / "real"
    real.mkdir()
    for p in photos(cifar_test):
        shutil.copy(p, real / f"{p.parent.name}-{p.name}")
    from edgeclip.cli import main

    assert main(["-q", "quantize", str(bundle_path), "--calib", f"real:{real}", "--target", "cpu"]) == 0
    bundle = load_bundle(bundle_path)
    source = bundle.manifest["quantization"]["cpu"]["calibration"]["source"]
    calib = cached_calibration(bundle, source)
    key = bundle.manifest["quantization"]["cpu"]["calibration"]["key"]
    assert calib.key == key and calib.record() == {"source": source, "images": 6, "key": key}
    assert np.array_equal(calib.images, np.load(bundle_path / ".work" / f"calib-{key}.npy"))
    # the same images the runtime's preprocessing makes of those photos
    pre = Preprocessor(PreprocessConfig.from_manifest(bundle.preprocess))
    want = pre.batch([read_image(p) for p in sorted(real.iterdir())])
    assert np.array_equal(np.sort(calib.images.reshape(6, -1), axis=0), np.sort(want.reshape(6, -1), axis=0))


# -- slow: the toolkit's simulator (RKNN-Toolkit2 in its own venv) --------------------------------------------
def converter_or_skip():
    python = os.environ.get(ENV_VAR)
    if not python:
        pytest.skip(f"no RKNN-Toolkit2 environment: set {ENV_VAR} to its Python ({'; '.join(MAKE_ENV)})")
    try:
        return probe_converter(python)
    except DeviceError as exc:
        pytest.skip(f"{ENV_VAR}={python} is not usable: {exc}")


@pytest.mark.slow
@pytest.mark.parametrize("model", ["proxy-vit", "proxy-rn"])
def test_proxy_built_from_synthetic_calibration_agrees_with_fp32_in_the_simulator(
        model: str, tmp_path: Path, cifar_test: Path, imagenette_train: Path) -> None:
    """The proxy's .rknn (rk3588, default algorithm, text-guided calibration from `edgeclip quantize`) against
    ONNX Runtime fp32 on 300 CIFAR-10 test photos and 300 held-out Imagenette photos, same pixels."""
    from edgeclip.cli import main
    from edgeclip.evaluate import load_dataset, read_class_map
    from edgeclip.export.models import MODELS_DIR
    from edgeclip.bundle.store import sha256_file
    from edgeclip.devices.rknn import convert_bundle
    from edgeclip.quant.agreement import compare
    from edgeclip.runtime.classifier import Classifier

    converter = converter_or_skip()
    path = tmp_path / model
    assert main(["-q", "export", "--model", model, "--out", str(path)]) == 0
    assert main(["-q", "quantize", str(path), "--calib", "text-guided", "--images", "32", "--time-budget", "90",
                 "--target", "cpu"]) == 0
    bundle = load_bundle(path)
    clf = Classifier(bundle, precision="fp32")
    repo = Path(__file__).resolve().parents[1]
    sets = [load_dataset(cifar_test, limit=300, seed=0),
            load_dataset(imagenette_train, read_class_map(repo / "scripts" / "data" / "imagenette-classes.tsv"),
                         MODELS_DIR / model / "heldout_imagenette.txt", limit=300, seed=0)]
    pre = bundle.preprocess
    inputs = [clf.preprocessor.batch([read_image(f) for f in d.files]) for d in sets]
    pixels = [to_pixels(x, pre["mean"], pre["std"]) for x in inputs]  # exactly what the NPU will be given
    built = convert_bundle(bundle, tmp_path / "encoder.rknn", RknnBuildOptions(fixed_batch=4), converter=converter,
                           eval_pixels=np.concatenate(pixels))
    rec = built.record
    assert rec["target_platform"] == "rk3588" and rec["toolkit"]["version"] == converter.toolkit
    assert rec["calibration"]["source"] == "text-guided" and rec["calibration"]["images"] == 32
    assert rec["input"]["layout"] == "NHWC" and rec["input"]["shape"] == [4, *pre["size"], 3]
    assert rec["sha256"] == sha256_file(tmp_path / "encoder.rknn") and rec["bytes"] > 100_000
    assert rec["layers"]["not_on_npu"] == {}, rec["layers"]  # everything runs on the NPU
    start = 0
    for d, x in zip(sets, inputs):
        got = built.eval_outputs[start:start + len(x)]
        start += len(x)
        ref = clf.embed_pixels(x)
        agree = compare(ref, got, clf.embed_labels(d.names, "imagenet80"), 100.0)
        assert agree["top1_agreement"] >= 0.94, (d.root, agree)
        assert agree["mean_cosine"] >= 0.99, (d.root, agree)


# -- the table row: build and load through the same paths as every backend ------------------------------------
def test_build_on_a_rockchip_profile_refuses_tensorrt_flags_and_says_how_to_make_the_converter(
        tiny_vit_bundle: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from edgeclip.cli import main

    monkeypatch.delenv(ENV_VAR, raising=False)
    assert main(["build", str(tiny_vit_bundle), "--device", "rk3588", "--batch", "1,2,4"]) == 2
    assert "--batch: for tensorrt builds, but this device builds for rknn" in capsys.readouterr().err
    assert main(["build", str(tiny_vit_bundle), "--device", "jetson-orin-nano", "--fixed-batch", "4"]) == 2
    assert "--fixed-batch: for rknn builds" in capsys.readouterr().err
    assert main(["build", str(tiny_vit_bundle), "--device", "rk3588"]) == 2  # checked before any calibration
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ENV_VAR in err and MAKE_ENV[0] in err
    assert main(["build", str(tiny_vit_bundle), "--device", "x86-avx2"]) == 2
    assert "nothing to build" in capsys.readouterr().err


def test_an_npu_profile_never_falls_back_to_the_cpu_silently(tiny_vit_bundle: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    import edgeclip

    with caplog.at_level(logging.WARNING, logger="edgeclip.devices"):
        clf = edgeclip.load(tiny_vit_bundle, device="rk3588")
    assert clf.encoder.name == "onnxruntime:cpu"
    assert "device rk3588: falling back to onnxruntime:cpu; rknn skipped:" in caplog.text  # a warning
    with pytest.raises(edgeclip.BackendError, match="rknn cannot run here"):
        edgeclip.load(tiny_vit_bundle, device="rk3588", backend="rknn")
    with pytest.raises(edgeclip.OptionError, match="`core_mask` is read by the rknn backend only"):
        edgeclip.load(tiny_vit_bundle, backend="onnxruntime", core_mask="0_1_2")


def test_a_built_rknn_file_is_found_for_its_chip_and_left_alone_by_tensorrt(bundle_copy: Path) -> None:
    from edgeclip.bundle import load_bundle, update_bundle
    from edgeclip.devices.engines import find_engine
    from edgeclip.devices.rknn import FORMAT, bundle_file, find_file

    bundle = load_bundle(bundle_copy)
    fp32 = bundle.encoder("image", "fp32").name
    with update_bundle(bundle) as draft:  # what build_in_bundle records, with stand-in bytes
        draft.new_file(bundle_file("rk3588")).write_bytes(b"RKNN stand-in")
        draft.add_file(bundle_file("rk3588"), "engine", format=FORMAT, source=fp32, precision="int8",
                       source_sha256=bundle.manifest["files"][fp32]["sha256"], target_platform="rk3588", batch=1)
    bundle = load_bundle(bundle_copy)  # the manifest check accepts the entry
    board = DEVICES / "rk3588-orangepi-5"
    assert find_file(bundle, root=str(board), lite="2.5.0") == bundle_copy / bundle_file("rk3588")
    with pytest.raises(DeviceError, match="no .rknn file for rk3568"):
        find_file(bundle, platform="rk3568", root=str(board), lite="2.5.0")
    with pytest.raises(DeviceError, match="rk3588 NPU is not usable: .*the 'rknn' extra"):
        find_file(bundle, root=str(board), lite=None)
    with pytest.raises(BackendError, match="no TensorRT engine for this machine") as err:
        find_engine(bundle, tensorrt="10.3.0", sm="8.7")
    assert "not usable" not in str(err.value)  # not a rejected engine: another backend's file
    # built from an fp32 image encoder the bundle no longer has (re-exported since): not run, and the error says why
    with update_bundle(bundle) as draft:
        entry = {k: v for k, v in bundle.manifest["files"][bundle_file("rk3588")].items() if k not in ("sha256", "bytes")}
        draft.add_file(bundle_file("rk3588"), **{**entry, "source_sha256": "0" * 64})
    with pytest.raises(DeviceError, match="no .rknn file for rk3588 .*built from an image encoder the bundle no "
                                          "longer has"):
        find_file(load_bundle(bundle_copy), root=str(board), lite="2.5.0")


@pytest.mark.slow
def test_edgeclip_build_writes_the_rknn_file_into_the_bundle_for_the_board_to_find(tmp_path: Path,
                                                                                  tiny_vit_bundle: Path) -> None:
    """`edgeclip build --device rk3588` with the real converter: the file goes into the bundle (verified), and
    on the board (a fixture tree) the rknn backend's finder picks it; a second chip's file sits beside it."""
    import shutil

    from edgeclip.cli import main
    from edgeclip.devices.rknn import bundle_file, find_file

    converter = converter_or_skip()
    path = tmp_path / "b"
    shutil.copytree(tiny_vit_bundle, path)
    assert main(["-q", "quantize", str(path), "--target", "cpu", "--images", "8", "--steps", "4"]) == 0
    assert main(["-q", "build", str(path), "--device", "rk3588", "--algorithm", "normal",
                 "--converter-python", str(converter.python)]) == 0
    assert main(["-q", "build", str(path), "--device", "rk3566", "--algorithm", "normal",
                 "--converter-python", str(converter.python)]) == 0
    bundle = load_bundle(path)  # hashes verified
    entry = bundle.manifest["files"][bundle_file("rk3588")]
    assert entry["role"] == "engine" and entry["format"] == "rknn" and entry["precision"] == "int8"
    assert entry["calibration"]["source"] == "text-guided" and entry["toolkit"]["version"] == converter.toolkit
    assert find_file(bundle, root=str(DEVICES / "rk3588-orangepi-5"), lite="2.5.0") == path / bundle_file("rk3588")
    assert bundle_file("rk3566") in bundle.manifest["files"]
