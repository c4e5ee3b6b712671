"""The ``openvino`` INT8 recipe: its Q/DQ structure on a ResNet tower, and OpenVINO choosing and running it."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import onnx
import pytest
from qdq import assert_openvino_qdq

import edgeclip
from edgeclip.quant.recipes import activation_nodes, attention_nodes, is_convolutional, prepare_fp32

pytest.importorskip("onnxruntime.quantization")
HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
X86 = "x86-avx512-vnni"


@pytest.fixture(scope="module")
def rn_openvino(quantized_copy, tiny_rn_bundle: Path) -> Path:
    """The tiny ResNet bundle with the openvino and tensorrt recipes (noise calibration)."""
    return quantized_copy(tiny_rn_bundle, "rn", ("openvino", "tensorrt"))


def test_residual_adds_and_pools_read_int8_inputs(rn_openvino: Path, tmp_path: Path) -> None:
    path = rn_openvino / "image_encoder.int8.openvino.onnx"
    fp32 = onnx.load(str(prepare_fp32(rn_openvino / "image_encoder.onnx", tmp_path / "prep.onnx")))
    adds = activation_nodes(fp32, ("Add",))
    pools = activation_nodes(fp32, ("AveragePool",))
    assert adds and pools, "the tiny ModifiedResNet has residual adds and anti-aliasing pools"
    assert len(adds) < len([n for n in fp32.graph.node if n.op_type == "Add"]), "bias adds are not chosen"
    weighted = {n.name for n in fp32.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")
                and any(i.name == n.input[1] for i in fp32.graph.initializer)}
    attention = attention_nodes(fp32)
    assert is_convolutional(fp32)
    kinds = {n.op_type for n in fp32.graph.node if n.name in set(attention)}
    assert {"MatMul", "Reshape"} <= kinds, f"the attention pool's activation MatMuls and reshapes: {kinds}"
    assert all("attnpool" in name or name.startswith("Transpose") for name in attention), attention
    producer = {o: n for n in fp32.graph.node for o in n.output}
    to_output = [n.name for n in fp32.graph.node if n.op_type == "Reshape" and n.input[0] in producer
                 and producer[n.input[0]].op_type == "Gemm"]
    assert to_output and not set(to_output) & set(attention), "the reshape of the last projection leads to the output"
    assert_openvino_qdq(path, weighted, adds + pools, attention, convolutional=True)
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert meta["edgeclip.int8_graph"] == "convolutional"


def test_a_vit_gets_no_extra_quantizers(quantized_copy, tiny_vit_bundle: Path, tmp_path: Path) -> None:
    dst = quantized_copy(tiny_vit_bundle, "vit", ("openvino",), images=8)
    fp32 = onnx.load(str(prepare_fp32(dst / "image_encoder.onnx", tmp_path / "prep.onnx")))
    assert activation_nodes(fp32, ("Add", "AveragePool")) == []  # transformer residuals are rank 3
    assert not is_convolutional(fp32) and attention_nodes(fp32), "a transformer, with attention MatMuls"
    weighted = {n.name for n in fp32.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")
                and any(i.name == n.input[1] for i in fp32.graph.initializer)}
    path = dst / "image_encoder.int8.openvino.onnx"
    assert_openvino_qdq(path, weighted, ())  # uint8 everywhere, the attention left in float
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert meta["edgeclip.int8_graph"] == "transformer"


def test_record_names_the_activation_ops(rn_openvino: Path) -> None:
    q = edgeclip.load_bundle(rn_openvino).manifest["quantization"]
    rec = q["openvino"]
    assert rec["file"] == "image_encoder.int8.openvino.onnx"
    assert rec["recipe"] == "openvino-qdq-u8s8-per-channel"
    assert rec["settings"]["activation_ops"] == ["Add", "AveragePool"]
    assert rec["settings"]["cnn_signed_activations"] is True and rec["settings"]["cnn_attention"] is True
    for key in ("activation_ops", "cnn_signed_activations", "cnn_attention"):
        assert key not in q["tensorrt"]["settings"]  # records of the other recipes as they were


@pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino is not installed: pip install 'edgeclip[openvino]'")
def test_openvino_runs_its_own_recipe_and_agrees_with_onnxruntime(rn_openvino: Path, cifar_test: Path,
                                                                  tmp_path: Path) -> None:
    photos = [p for c in ("ship", "cat", "truck") for p in sorted((cifar_test / c).glob("*.jpg"))[:4]]
    ov = edgeclip.load(rn_openvino, device=X86, precision="int8", backend="openvino", cache_dir=tmp_path / "cache")
    assert ov.choice.file.name == "image_encoder.int8.openvino.onnx"
    assert "the openvino recipe is the one made for openvino" in ov.choice.describe()
    ort = edgeclip.load(rn_openvino, device=X86, precision="int8", backend="onnxruntime", target="openvino")
    a, b = ov.embed(photos), ort.embed(photos)
    assert float((a * b).sum(1).min()) > 0.99  # the same Q/DQ model on two runtimes
    fp32 = edgeclip.load(rn_openvino, device=X86, precision="fp32", backend="onnxruntime").embed(photos)
    assert float((a * fp32).sum(1).min()) > 0.98
