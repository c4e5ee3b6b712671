"""TensorRT engines: key and cache logic everywhere; building and running where TensorRT and a GPU exist."""
from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgeclip.bundle import load_bundle, update_bundle
from edgeclip.devices.catalog import get_profile
from edgeclip.devices.engines import (BuildOptions, EngineKey, build_engine, engine_problem, find_engine,
                                      resolve_precision, timing_cache_file)
from edgeclip.devices.fp16 import mixed_fp16
from edgeclip.errors import BackendError, BundleError, DeviceError
from edgeclip.runtime.backends import create_backend
from onnx_models import make_bundle, qdq_model, tiny_encoder

ORIN = get_profile("jetson-orin-nano")
DESKTOP = get_profile("desktop-gpu")


class FakeCompiler:
    """Stands in for TensorRT's builder in the cache tests: records calls, returns recognisable bytes."""

    def __init__(self) -> None:
        self.calls: list[tuple[Path, EngineKey, BuildOptions]] = []

    def __call__(self, onnx_path: Path, key: EngineKey, options: BuildOptions) -> tuple[bytes, bytes]:
        self.calls.append((onnx_path, key, options))
        return f"engine {key.key}".encode(), f"timing cache {len(self.calls)}".encode()


def build(bundle: Path, compiler: FakeCompiler, profile=DESKTOP, sm: str = "8.9", tensorrt: str = "10.3.0", **kw):
    return build_engine(bundle, profile, tensorrt=tensorrt, sm=sm, compile=compiler, **kw)


# ------------------------------------------------------------------------------------------------ no TensorRT
def test_engine_key_names_every_dependency() -> None:
    key = EngineKey("image_encoder.onnx", "ab" * 32, "10.3.0", "8.7", "fp16", (1, 4, 16))
    assert key.key == "abababababababab-trt10.3.0-sm87-fp16-b1-4-16"
    assert key.file == "engines/abababababababab-trt10.3.0-sm87-fp16-b1-4-16.engine"
    assert dataclasses.replace(key, dla_core=0).key.endswith("-dla0")
    assert key.fields()["batch"] == [1, 4, 16] and key.fields()["format"] == "tensorrt-engine"


def test_engine_problem_detects_stale_and_foreign_engines() -> None:
    files = {"image_encoder.onnx": {"sha256": "a" * 64, "role": "image_encoder"}}
    entry = {"source": "image_encoder.onnx", "source_sha256": "a" * 64, "tensorrt": "10.3.0", "sm": "8.7"}
    assert engine_problem(entry, files, "10.3.0", "8.7") is None
    assert "stale" in engine_problem({**entry, "source_sha256": "b" * 64}, files, "10.3.0", "8.7")
    assert "TensorRT 10.3.0, this machine has 10.4.0" in engine_problem(entry, files, "10.4.0", "8.7")
    assert "SM 8.7, this GPU is SM 8.9" in engine_problem(entry, files, "10.3.0", "8.9")
    assert "no longer in the bundle" in engine_problem(entry, {}, "10.3.0", "8.7")


def test_build_miss_then_hit_then_force(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    fake = FakeCompiler()
    first = build(bundle, fake)
    assert first.built and len(fake.calls) == 1
    assert fake.calls[0][0] == bundle / "image_encoder.onnx" and fake.calls[0][2].timing_cache is None
    assert fake.calls[0][2].workspace_mb == DESKTOP.workspace_mb
    entry = load_bundle(bundle).manifest["files"][first.key.file]  # verified: hashes match
    assert entry["role"] == "engine" and entry["precision"] == "fp16" and entry["sm"] == "8.9"
    assert entry["batch"] == [1, DESKTOP.opt_batch, DESKTOP.max_batch] and entry["device"] == "desktop-gpu"
    assert (bundle / timing_cache_file("10.3.0", "8.9")).read_bytes() == b"timing cache 1"

    again = build(bundle, fake)
    assert not again.built and len(fake.calls) == 1 and again.path == first.path
    assert "cache hit" in again.notes[-1]

    forced = build(bundle, fake, force=True)
    assert forced.built and len(fake.calls) == 2
    assert fake.calls[1][2].timing_cache == b"timing cache 1"  # the timing cache is carried over


def test_changed_onnx_makes_the_engine_stale_and_it_is_rebuilt_and_pruned(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    fake = FakeCompiler()
    old = build(bundle, fake)
    with update_bundle(bundle) as draft:  # re-export: a different image encoder
        onnx.save(tiny_encoder(seed=1), draft.new_file("image_encoder.onnx"))
        draft.add_file("image_encoder.onnx", "image_encoder", precision="fp32", format="onnx")
    with pytest.raises(BackendError, match="stale: built from an older image_encoder.onnx.*edgeclip build"):
        find_engine(load_bundle(bundle), tensorrt="10.3.0", sm="8.9")
    new = build(bundle, fake)
    assert new.built and new.key.key != old.key.key and new.pruned == [old.key.file]
    files = load_bundle(bundle).manifest["files"]
    assert old.key.file not in files and not (bundle / old.key.file).exists()
    assert find_engine(load_bundle(bundle), tensorrt="10.3.0", sm="8.9") == bundle / new.key.file


def test_foreign_engines_are_kept_but_never_loaded(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    fake = FakeCompiler()
    orin = build(bundle, fake, profile=ORIN, sm="8.7")  # built on a Jetson, bundle copied to a desktop
    with pytest.raises(BackendError) as err:
        find_engine(load_bundle(bundle), tensorrt="10.3.0", sm="8.9")
    assert "built for SM 8.7, this GPU is SM 8.9" in str(err.value) and "`edgeclip build`" in str(err.value)
    with pytest.raises(BackendError, match="built with TensorRT 10.3.0, this machine has 10.7.0"):
        find_engine(load_bundle(bundle), tensorrt="10.7.0", sm="8.7")
    desk = build(bundle, fake)
    assert desk.built and desk.pruned == []
    files = load_bundle(bundle).manifest["files"]
    assert orin.key.file in files and desk.key.file in files
    assert find_engine(load_bundle(bundle), tensorrt="10.3.0", sm="8.7") == bundle / orin.key.file


def test_an_unrecorded_engine_file_is_rebuilt_not_loaded(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    fake = FakeCompiler()
    key = build(bundle, fake).key
    with update_bundle(bundle) as draft:  # drop the record, leave a file that nobody vouches for
        draft.manifest["files"].pop(key.file)
        draft.new_file(key.file).write_bytes(b"copied from somewhere")
    with pytest.raises(BackendError, match="no TensorRT engine"):
        find_engine(load_bundle(bundle), tensorrt="10.3.0", sm="8.9")
    result = build(bundle, fake)
    assert result.built and any("the manifest does not record it" in n for n in result.notes)
    assert (bundle / key.file).read_bytes() == f"engine {key.key}".encode()


def test_a_deleted_engine_is_dropped_and_rebuilt(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    fake = FakeCompiler()
    first = build(bundle, fake)
    shutil.rmtree(bundle / "engines")  # a user clearing the cache
    with pytest.raises(BundleError, match="run `edgeclip build"):
        load_bundle(bundle)
    again = build(bundle, fake)
    assert again.built and any(f"dropped the missing or damaged engine {first.key.file}" in n for n in again.notes)
    assert load_bundle(bundle).manifest["files"][first.key.file]["role"] == "engine"


def test_a_damaged_engine_is_rebuilt_but_a_damaged_onnx_fails_naming_it(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    fake = FakeCompiler()
    first = build(bundle, fake)
    (bundle / first.key.file).write_bytes(b"bit rot")
    again = build(bundle, fake)
    assert again.built and any(f"dropped the missing or damaged engine {first.key.file}" in n for n in again.notes)
    load_bundle(bundle)  # verified again: the rebuilt engine is recorded
    onnx_file = bundle / "image_encoder.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:-1] + b"!")
    with pytest.raises(BundleError, match=r"image_encoder\.onnx: sha256.*re-export"):
        build(bundle, fake)
    assert len(fake.calls) == 2


def test_precision_from_profile_and_int8_source(tmp_path: Path) -> None:
    plain = load_bundle(make_bundle(tmp_path / "plain"))
    precision, notes = resolve_precision(plain, ORIN, None)
    assert precision == "fp16" and "quantize" in notes[0]  # the profile prefers INT8, the bundle has none
    with pytest.raises(DeviceError, match="no image encoder at precision int8 for target tensorrt.*or build FP16"):
        resolve_precision(plain, ORIN, "int8")
    assert resolve_precision(plain, get_profile("jetson-nano"), None) == ("fp16", [])

    bundle = make_bundle(tmp_path / "q", int8_tensorrt=qdq_model())
    fake = FakeCompiler()
    result = build(bundle, fake, profile=ORIN, sm="8.7")
    assert result.key.precision == "int8" and result.key.source == "image_encoder.int8.tensorrt.onnx"
    assert result.key.batch == (1, ORIN.opt_batch, ORIN.max_batch)
    fp16 = build(bundle, fake, profile=ORIN, sm="8.7", precision="fp16", batch=(1, 2, 4))
    b = load_bundle(bundle)
    assert find_engine(b, "int8", tensorrt="10.3.0", sm="8.7") == bundle / result.key.file
    assert find_engine(b, "fp32", tensorrt="10.3.0", sm="8.7") == bundle / fp16.key.file


def test_build_refuses_cpu_profiles_unready_onnx_and_bad_options(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    fake = FakeCompiler()
    with pytest.raises(DeviceError, match="CPU profile"):
        build(bundle, fake, profile=get_profile("x86-avx2"))
    with pytest.raises(DeviceError, match="batch range 4,2,8 is invalid"):
        build(bundle, fake, batch=(4, 2, 8))
    with pytest.raises(DeviceError, match="DLA runs FP16 or INT8"):
        build(bundle, fake, precision="fp32", dla_core=0)
    dla = build(bundle, fake, dla_core=0)
    assert dla.key.batch == (DESKTOP.opt_batch,) * 3 and dla.key.key.endswith("-dla0")
    with pytest.raises(DeviceError, match="LayerNormalization needs TensorRT >= 8.6"):
        build(bundle, fake, profile=get_profile("jetson-nano"), tensorrt="8.2.1", sm="5.3")
    assert len(fake.calls) == 1  # nothing reached the builder but the DLA build


def test_mixed_fp16_keeps_outputs_close_to_fp32() -> None:
    model = tiny_encoder()
    converted, count = mixed_fp16(model)
    assert count == 1
    assert [n.op_type for n in converted.graph.node].count("Cast") == 3  # two inputs in, one output back
    assert {n.op_type for n in converted.graph.node} >= {"LayerNormalization"}  # LayerNorm stays FP32
    x = np.random.default_rng(0).standard_normal((3, 3, 4, 4)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(  # noqa: E731
        None, {"pixel_values": x})[0]
    a, b = run(model), run(converted)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert b.dtype == np.float32 and cos.min() > 0.999
    _, untouched = mixed_fp16(qdq_model())  # INT8 GEMMs fed by DequantizeLinear are left to TensorRT
    assert untouched == 0


def test_backend_without_tensorrt_says_what_to_install(tmp_path: Path) -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(BackendError, match="tensorrt Python package is not importable.*python3-libnvinfer"):
        create_backend(engine)
    with pytest.raises(BackendError, match="tensorrt Python package is not importable"):
        find_engine(load_bundle(make_bundle(tmp_path / "b")))


# ------------------------------------------------------------------------------------ TensorRT and a GPU
def _tensorrt_and_gpu():
    trt = pytest.importorskip("tensorrt", reason="TensorRT's Python package is not installed here")
    from edgeclip.devices.detect import cuda_compute_capability

    if cuda_compute_capability() is None:
        pytest.skip("no NVIDIA GPU visible")
    return trt


@pytest.fixture(scope="module")
def trt_bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    _tensorrt_and_gpu()  # skip before exporting the session's tiny ViT bundle
    dst = tmp_path_factory.mktemp("trt") / "bundle"
    shutil.copytree(request.getfixturevalue("tiny_vit_bundle"), dst)
    return dst


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.tensorrt
def test_fp16_engine_matches_onnxruntime(trt_bundle: Path) -> None:
    result = build_engine(trt_bundle, DESKTOP, precision="fp16", batch=(1, 4, 8))
    assert result.built and result.path.stat().st_size > 0
    backend = create_backend(result.path)
    assert backend.name == "tensorrt" and backend.max_batch == 8 and backend.input_name == "pixel_values"
    x = np.random.default_rng(0).standard_normal((11, 3, 32, 32)).astype(np.float32)  # > max batch: split
    ref = ort.InferenceSession(str(trt_bundle / "image_encoder.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"pixel_values": x})[0]
    out = backend.run(x)
    assert out.shape == ref.shape and _cosine(out, ref).min() > 0.999
    assert _cosine(backend.run(x[:1]), ref[:1]).min() > 0.999  # batch 1 after a larger one


@pytest.mark.tensorrt
def test_engine_cache_hit_miss_and_stale_rebuild(trt_bundle: Path) -> None:
    first = build_engine(trt_bundle, DESKTOP, precision="fp16", batch=(1, 2, 4))
    again = build_engine(trt_bundle, DESKTOP, precision="fp16", batch=(1, 2, 4))
    assert not again.built and again.path == first.path
    model = onnx.load(str(trt_bundle / "image_encoder.onnx"))
    onnx.helper.set_model_props(model, {"edgeclip.note": "changed"})
    with update_bundle(trt_bundle) as draft:
        onnx.save(model, draft.new_file("image_encoder.onnx"))
        draft.add_file("image_encoder.onnx", "image_encoder", precision="fp32", format="onnx")
    rebuilt = build_engine(trt_bundle, DESKTOP, precision="fp16", batch=(1, 2, 4))
    assert rebuilt.built and first.key.file in rebuilt.pruned
    assert find_engine(load_bundle(trt_bundle), "fp32") == rebuilt.path


@pytest.mark.tensorrt
def test_classifier_runs_on_the_tensorrt_backend(trt_bundle: Path) -> None:
    from edgeclip.runtime.classifier import Classifier

    build_engine(trt_bundle, DESKTOP, precision="fp16", batch=(1, 4, 8))
    images = [np.full((40, 40, 3), v, np.uint8) for v in (0, 128, 255)]
    on_trt = Classifier(trt_bundle, backend="tensorrt").embed(images)
    on_ort = Classifier(trt_bundle, backend="onnxruntime").embed(images)
    assert _cosine(on_trt, on_ort).min() > 0.999
