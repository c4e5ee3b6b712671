"""TensorRT readiness without TensorRT: exported bundles pass, hand-built Q/DQ passes, broken files fail clearly."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from edgeclip.bundle import load_bundle
from edgeclip.cli import main
from edgeclip.devices.readiness import check_model, errors, format_findings
from onnx_models import make_bundle, node, qdq_model, set_initializer, tiny_encoder


def _messages(findings) -> str:
    return "\n".join(str(f) for f in errors(findings))


@pytest.mark.parametrize("which", ["vit", "rn"])
def test_exported_fp32_encoders_are_ready_for_tensorrt_10(which: str, request: pytest.FixtureRequest) -> None:
    bundle = load_bundle(request.getfixturevalue(f"tiny_{which}_bundle"))
    for tower in ("image", "text"):
        findings = check_model(bundle.encoder(tower), "10.3")
        assert not errors(findings), format_findings(findings)


def test_tensorrt_8_2_cannot_parse_the_vit_but_can_the_resnet(tiny_vit_bundle: Path, tiny_rn_bundle: Path) -> None:
    vit = _messages(check_model(load_bundle(tiny_vit_bundle).encoder("image"), "8.2"))
    assert "LayerNormalization needs TensorRT >= 8.6" in vit and "Mod needs TensorRT >= 8.5" in vit
    assert not errors(check_model(load_bundle(tiny_rn_bundle).encoder("image"), "8.2"))


def test_hand_built_qdq_model_is_ready_and_runs() -> None:
    model = qdq_model()
    assert check_model(model) == []
    x = np.random.default_rng(1).random((2, 3, 8, 8), dtype=np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = session.run(None, {"pixel_values": x})
    assert y[0].shape == (2, 5)


def test_asymmetric_zero_point_fails() -> None:
    model = qdq_model()
    set_initializer(model, "pixel_values_zp", np.array(3, np.int8))
    msg = _messages(check_model(model))
    assert "asymmetric quantization" in msg and "pixel_values_quant" in msg and "zero points of 0" in msg


def test_uint8_quantization_fails() -> None:
    model = qdq_model()
    set_initializer(model, "flat_zp", np.array(128, np.uint8))
    msg = _messages(check_model(model))
    assert "uint8 quantization" in msg and "flat_quant" in msg and "target='cpu'" in msg


def test_missing_zero_point_means_uint8_and_fails() -> None:
    model = qdq_model()
    del node(model, "hidden_quant").input[2]
    assert "no zero point" in _messages(check_model(model))


def test_unsupported_and_custom_domain_ops_fail() -> None:
    model = tiny_encoder()
    model.graph.node.append(helper.make_node("MatMulInteger", ["pixel_values", "pixel_values"], ["unused"], name="mmi"))
    model.graph.node.append(helper.make_node("FusedGemm", ["normed", "proj"], ["unused2"], name="fused",
                                             domain="com.microsoft"))
    msg = _messages(check_model(model))
    assert "MatMulInteger 'mmi': MatMulInteger is not in the TensorRT ONNX parser's operator support matrix" in msg
    assert "custom-domain operator com.microsoft::FusedGemm" in msg and "plugin" in msg


def test_fixed_batch_fails() -> None:
    model = tiny_encoder()
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.dim_value = 1
    msg = _messages(check_model(model))
    assert "input 'pixel_values'" in msg and "fixed batch 1" in msg and "dynamic batch" in msg


def test_weight_quantized_on_the_wrong_axis_fails() -> None:
    model = qdq_model()
    w = next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "mm_w")
    scale = (np.abs(w).max(axis=1) / 127).astype(np.float32)  # per input channel (axis 0) of a MatMul weight
    set_initializer(model, "mm_w_scale", scale)
    set_initializer(model, "mm_w_zp", np.zeros(scale.shape, np.int8))
    for name in ("mm_w_quant", "mm_w_dequant"):
        node(model, name).attribute[0].i = 0
    msg = _messages(check_model(model))
    assert "quantized per channel on axis 0; TensorRT needs the output-channel axis 1" in msg


def test_quantize_without_dequantize_and_per_channel_activations_fail() -> None:
    model = qdq_model()
    node(model, "matmul").input[0] = "flat_q"  # MatMul reads the INT8 tensor straight from QuantizeLinear
    set_initializer(model, "pixel_values_scale", np.full(3, 0.03, np.float32))
    set_initializer(model, "pixel_values_zp", np.zeros(3, np.int8))
    msg = _messages(check_model(model))
    assert "QuantizeLinear feeds MatMul 'matmul'" in msg and "followed by a DequantizeLinear" in msg
    assert "per-channel scale (3 values) on an activation" in msg


def test_old_opset_warns() -> None:
    model = tiny_encoder()
    model.graph.node.remove(node(model, "ln"))
    node(model, "proj").input[0] = "flat"
    model.opset_import[0].version = 16
    findings = check_model(model)
    assert not errors(findings) and "opset 16 < 17" in format_findings(findings)


def test_cli_check_reports_and_sets_the_exit_status(tmp_path: Path, tiny_vit_bundle: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    assert main(["build", str(tiny_vit_bundle), "--check", "--device", "jetson-orin-nano"]) == 0
    assert "ready for TensorRT" in capsys.readouterr().out
    assert main(["build", str(tiny_vit_bundle), "--check", "--device", "jetson-nano"]) == 1
    assert "LayerNormalization needs TensorRT >= 8.6" in capsys.readouterr().out

    broken = qdq_model()
    set_initializer(broken, "conv_w_zp", np.full(4, 5, np.int8))
    bundle = make_bundle(tmp_path / "b", int8_tensorrt=broken)
    assert main(["build", str(bundle), "--check", "--precision", "int8", "--device", "desktop-gpu"]) == 1
    out = capsys.readouterr().out
    assert "image_encoder.int8.tensorrt.onnx" in out
    assert "1 problem(s) block a TensorRT build" in out  # Q and DQ share the zero point: reported once
    assert "asymmetric quantization" in out and "conv_w_quant" in out
    onnx.save(broken, tmp_path / "broken.onnx")
    assert main(["build", str(tmp_path / "broken.onnx"), "--check", "--device", "desktop-gpu"]) == 1


def test_check_runs_on_the_tensorrt_int8_output_of_edgeclip_quantize(bundle_copy: Path) -> None:
    assert main(["-q", "quantize", str(bundle_copy), "--target", "tensorrt"]) == 0
    findings = check_model(load_bundle(bundle_copy).encoder("image", "int8", "tensorrt"), "10.3")
    assert not errors(findings), format_findings(findings)
