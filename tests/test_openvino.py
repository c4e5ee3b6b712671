"""The OpenVINO backend: real compiled models on the tiny bundles, equal to ONNX Runtime's results; cache, bf16, auto."""
from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeclip
from edgeclip.cli import main
from edgeclip.devices.choice import backend_order
from edgeclip.devices.catalog import get_profile
from edgeclip.runtime.backends.openvino import check_bf16, default_cache_dir, rest_precision
from edgeclip.runtime.cpu import BF16_FLAGS, read_cpuinfo

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino is not installed: pip install "
                                    "'edgeclip[openvino]' (CI installs it)")
CPU_HAS_BF16 = bool(read_cpuinfo()[2] & set(BF16_FLAGS))
X86 = "x86-avx512-vnni"




@pytest.fixture(scope="module")
def photos(cifar_test: Path) -> list[Path]:
    return [p for c in ("ship", "cat", "truck") for p in sorted((cifar_test / c).glob("*.jpg"))[:4]]


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    return tmp_path / "ov-cache"


@needs_openvino
@pytest.mark.parametrize("precision,target,tolerance", [("fp32", None, 1e-4), ("int8", "tensorrt", 0.02),
                                                        ("int8", "cpu", 0.02)])
def test_classify_equals_onnxruntime(both_int8: Path, photos: list[Path], cache: Path, precision: str,
                                     target: str | None, tolerance: float) -> None:
    ov = edgeclip.load(both_int8, device=X86, precision=precision, backend="openvino", target=target, cache_dir=cache)
    ort = edgeclip.load(both_int8, device=X86, precision=precision, backend="onnxruntime", target=target)
    assert ov.encoder.name == "openvino:cpu" and ort.encoder.name == "onnxruntime:cpu"
    assert ov.choice.file == ort.choice.file and ov.choice.precision == precision
    assert ov.encoder.rest_precision == ("bf16" if precision == "int8" and CPU_HAS_BF16 else "f32")
    a, b = ov.embed(photos), ort.embed(photos)
    assert a.shape == b.shape == (len(photos), a.shape[1])
    assert float((a * b).sum(1).min()) > 1 - tolerance / 10
    pa, pb = ov.probabilities(a), ort.probabilities(b)
    assert float(np.abs(pa - pb).max()) < tolerance
    # dynamic batch: one image, then an odd batch, the same embeddings as in the batch of all
    assert np.allclose(ov.embed(photos[0]), a[0], atol=1e-5)
    assert np.allclose(ov.embed(photos[1:6]), a[1:6], atol=1e-5)


def test_int8_keeps_its_float_layers_in_bf16_only_where_the_cpu_has_it() -> None:
    assert rest_precision("int8", "CPU", {"avx512f", "avx512_bf16"}) == "bf16"
    assert rest_precision("int8", "CPU", {"avx512f", "amx_bf16"}) == "bf16"
    assert rest_precision("int8", "CPU", {"avx2", "avx512_vnni"}) == "f32"
    assert rest_precision("fp32", "CPU", {"avx512_bf16"}) == "f32"  # fp32 is pinned
    assert rest_precision("int8", "GPU", {"avx512_bf16"}) == "f32"


@needs_openvino
def test_compiled_model_cache_lives_outside_the_bundle_and_makes_the_second_start_a_load(
        both_int8: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeclip.runtime.backends.openvino import OpenVinoBackend

    before = sorted(p.relative_to(both_int8) for p in both_int8.rglob("*"))
    monkeypatch.delenv("EDGECLIP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "edgeclip" / "openvino"
    first = edgeclip.load(both_int8, device=X86, precision="int8", backend="openvino")  # default folder: the user's cache
    assert first.encoder.cache_dir.parent == default_cache_dir() and not first.encoder.from_cache
    assert list(first.encoder.cache_dir.glob("*.blob"))
    second = edgeclip.load(both_int8, device=X86, precision="int8", backend="openvino")
    assert second.encoder.from_cache and second.encoder.cache_dir == first.encoder.cache_dir
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    assert np.allclose(first.encoder.run(x), second.encoder.run(x), atol=1e-6)
    monkeypatch.setenv("EDGECLIP_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine" / "openvino"
    # the folder is keyed by the file's content: another file never reuses it
    other = OpenVinoBackend(both_int8 / "image_encoder.onnx", cache_dir=tmp_path / "explicit")
    assert other.cache_dir.parent == tmp_path / "explicit" and not other.from_cache
    assert other.cache_dir.name != first.encoder.cache_dir.name
    no_cache = OpenVinoBackend(both_int8 / "image_encoder.onnx", cache=False)
    assert no_cache.cache_dir is None and np.allclose(no_cache.run(x), other.run(x), atol=1e-6)
    assert sorted(p.relative_to(both_int8) for p in both_int8.rglob("*")) == before  # nothing written in the bundle


def test_bf16_needs_avx512_bf16_or_amx(tiny_vit_bundle: Path) -> None:
    with pytest.raises(edgeclip.OptionError, match="AVX512_BF16 or AMX"):
        check_bf16("CPU", {"avx2", "avx512f", "avx512_vnni"})
    check_bf16("CPU", {"avx2", "avx512_bf16"})
    check_bf16("CPU", {"amx_bf16"})
    check_bf16("GPU.0", set())  # not a CPU question
    with pytest.raises(edgeclip.OptionError, match="openvino only.*backend='openvino'"):
        edgeclip.load(tiny_vit_bundle, device=X86, precision="bf16", backend="onnxruntime")
    with pytest.raises(edgeclip.OptionError, match="drop `target`"):
        edgeclip.load(tiny_vit_bundle, device=X86, precision="bf16", target="tensorrt")


@needs_openvino
def test_bf16_error_on_a_cpu_without_it_and_agreement_where_it_has_it(both_int8: Path, photos: list[Path],
                                                                     cache: Path) -> None:
    from edgeclip.runtime.backends.openvino import OpenVinoBackend

    with pytest.raises(edgeclip.OptionError, match="AVX512_BF16 or AMX.*precision='fp32'"):
        OpenVinoBackend(both_int8 / "image_encoder.onnx", precision="bf16", cpu_flags={"avx2", "fma"}, cache_dir=cache)
    assert not list(cache.rglob("*.blob"))  # refused before compiling anything
    if not CPU_HAS_BF16:
        with pytest.raises(edgeclip.OptionError, match="AVX512_BF16 or AMX"):
            edgeclip.load(both_int8, device=X86, precision="bf16", cache_dir=cache)
        return
    bf16 = edgeclip.load(both_int8, device=X86, precision="bf16", cache_dir=cache)  # auto: bf16 means OpenVINO
    fp32 = edgeclip.load(both_int8, device=X86, precision="fp32", backend="openvino", cache_dir=cache)
    assert bf16.choice.precision == "bf16" and bf16.encoder.name == "openvino:cpu"
    assert bf16.choice.file.name == "image_encoder.onnx"
    a, b = bf16.embed(photos), fp32.embed(photos)
    assert float((a * b).sum(1).min()) > 0.99
    assert not np.array_equal(a, b)  # bf16 arithmetic really ran


def test_auto_picks_openvino_when_installed_and_onnxruntime_when_told_not(caplog: pytest.LogCaptureFixture) -> None:
    profile = get_profile(X86)
    assert profile.backends == ("openvino", "onnxruntime:cpu") == get_profile("x86-avx2").backends
    with caplog.at_level(logging.INFO, logger="edgeclip.devices"):
        order = backend_order(profile, probes={"onnxruntime": {"providers": ["CPUExecutionProvider"]},
                                               "openvino": {"installed": True}})
    assert [c.label for c in order if c.available][0] == "openvino"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="edgeclip.devices"):
        order = backend_order(profile, probes={"onnxruntime": {"providers": ["CPUExecutionProvider"]},
                                               "openvino": {"installed": False}})
    assert [c.label for c in order if c.available][0] == "onnxruntime:cpu"
    assert "falling back to onnxruntime:cpu; openvino skipped: OpenVINO is not installed" in caplog.text


@needs_openvino
def test_auto_runs_openvino_on_x86_and_onnxruntime_without_it(both_int8: Path, cache: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    auto = edgeclip.load(both_int8, device=X86, cache_dir=cache)  # the profile: int8, OpenVINO first
    assert auto.encoder.name == "openvino:cpu" and auto.choice.precision == "int8"
    assert auto.choice.file.name == "image_encoder.int8.tensorrt.onnx"
    assert "the tensorrt recipe" in auto.choice.describe()
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed: import fails
    with caplog.at_level(logging.INFO, logger="edgeclip.devices"):
        fallback = edgeclip.load(both_int8, device=X86, cache_dir=cache)
    assert fallback.encoder.name == "onnxruntime:cpu" and fallback.choice.file.name == "image_encoder.int8.cpu.onnx"
    assert "falling back to onnxruntime:cpu; openvino skipped: OpenVINO is not installed" in caplog.text
    with pytest.raises(edgeclip.BackendError, match="openvino.*pip install"):
        edgeclip.load(both_int8, device=X86, backend="openvino")


@needs_openvino
def test_cli_classify_and_stream_run_on_openvino(both_int8: Path, cifar_test: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    folder = cifar_test / "ship"
    runs = {}
    for backend in ("openvino", "onnxruntime"):
        own = ["--cache-dir", str(tmp_path / "c"), "--hint", "throughput"] if backend == "openvino" else []
        assert main(["classify", str(both_int8), str(folder), "--backend", backend, "--precision", "int8",
                     "--target", "tensorrt", "--format", "csv", "--device", X86, *own]) == 0
        captured = capsys.readouterr()
        assert f"image_encoder.int8.tensorrt.onnx on {backend}:cpu (int8)" in captured.err
        runs[backend] = captured.out.splitlines()
    assert len(runs["openvino"]) == 1 + 1000
    same = np.mean([a.split(",")[1] == b.split(",")[1] for a, b in zip(runs["openvino"][1:], runs["onnxruntime"][1:])])
    assert same >= 0.98
    events = tmp_path / "events.jsonl"
    assert main(["-q", "stream", str(both_int8), "--source", "synthetic://64x48", "--max-frames", "12", "--jsonl",
                 str(events), "--backend", "openvino", "--precision", "bf16" if CPU_HAS_BF16 else "fp32",
                 "--device", X86, "--cache-dir", str(tmp_path / "c")]) == 0
    ev = [json.loads(line) for line in events.read_text().splitlines()]
    assert ev[-1]["event"] == "end" and ev[-1]["frame"] == 11 and ev[1]["event"] == "label"
    # an option of one backend given to another is refused before any work, naming it
    assert main(["classify", str(both_int8), str(folder), "--backend", "onnxruntime", "--hint", "throughput"]) == 2
    assert "--hint is read by the openvino backend only" in capsys.readouterr().err


@needs_openvino
def test_bench_compares_backends_in_one_run(both_int8: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    assert main(["-q", "bench", str(both_int8), "--rounds", "2", "--warmup", "1", "--round-seconds", "0",
                 "--batch-sizes", "1", "3", "--no-torch", "--cache-dir", str(tmp_path / "c"), "--json", str(out),
                 "--png", str(png)]) == 0
    rep = json.loads(out.read_text())
    names = {r["variant"] for r in rep["results"]}
    want = {"onnxruntime fp32", "onnxruntime int8/cpu", "onnxruntime int8/tensorrt", "openvino fp32",
            "openvino int8/cpu", "openvino int8/tensorrt"}
    assert want <= names
    assert ("openvino bf16" in names) == CPU_HAS_BF16 or any("openvino bf16" in s for s in rep["skipped"])
    assert {r["batch"] for r in rep["results"]} == {1, 3} and rep["machine"]["openvino"]
    assert png.stat().st_size > 10_000


@needs_openvino
def test_devices_lists_openvino_devices(capsys: pytest.CaptureFixture) -> None:
    assert main(["devices", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    openvino = data["backends"]["openvino"]
    assert openvino["available"] and "CPU" in [d["device"] for d in openvino["devices"]]


@needs_openvino
def test_the_compiled_model_cache_is_pruned_and_cleared(both_int8: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    from edgeclip.runtime.backends.openvino import OpenVinoBackend

    monkeypatch.setenv("EDGECLIP_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "openvino"
    first = OpenVinoBackend(both_int8 / "image_encoder.onnx")
    assert [p.name for p in folder.iterdir()] == [first.cache_dir.name]
    monkeypatch.setenv("EDGECLIP_CACHE_MAX", "1k")  # smaller than one entry: only the one in use stays
    second = OpenVinoBackend(both_int8 / "image_encoder.int8.cpu.onnx")
    assert [p.name for p in folder.iterdir()] == [second.cache_dir.name]
    assert main(["cache"]) == 0 and "openvino: 1 entries" in capsys.readouterr().out
    assert main(["cache", "--clear"]) == 0 and "freed" in capsys.readouterr().out
    assert list(folder.iterdir()) == [] and sorted(both_int8.iterdir())  # the bundle is never touched


def test_inspect_names_what_a_device_does_not_need(both_int8: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(both_int8), "--no-verify"]) == 0
    out = capsys.readouterr().out
    assert "not needed on a device" in out and "reports/calibration-" in out
    if (both_int8 / ".work").exists():
        assert ".work/" in out and "calibration cache of quantize" in out
