"""Hand-built ONNX models and bundles for the device tests (onnx.helper; no torch, no export)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeclip.bundle import create_bundle

OPSET = 17
IR_VERSION = 9  # what onnxruntime 1.17+ loads


def _model(nodes: list, inits: list, inputs: list, outputs: list, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def _weight_qdq(name: str, w: np.ndarray, axis: int) -> tuple[list, list]:
    """Per-channel symmetric INT8 Q/DQ of a constant weight on ``axis``."""
    scale = (np.abs(w).max(axis=tuple(i for i in range(w.ndim) if i != axis)) / 127).astype(np.float32)
    inits = [numpy_helper.from_array(w, name), numpy_helper.from_array(scale, f"{name}_scale"),
             numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{name}_zp")]
    nodes = [helper.make_node("QuantizeLinear", [name, f"{name}_scale", f"{name}_zp"], [f"{name}_q"],
                              name=f"{name}_quant", axis=axis),
             helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_scale", f"{name}_zp"], [f"{name}_dq"],
                              name=f"{name}_dequant", axis=axis)]
    return nodes, inits


def _act_qdq(tensor: str, scale: float) -> tuple[list, list]:
    """Per-tensor symmetric INT8 Q/DQ of an activation."""
    inits = [numpy_helper.from_array(np.array(scale, np.float32), f"{tensor}_scale"),
             numpy_helper.from_array(np.array(0, np.int8), f"{tensor}_zp")]
    nodes = [helper.make_node("QuantizeLinear", [tensor, f"{tensor}_scale", f"{tensor}_zp"], [f"{tensor}_q"],
                              name=f"{tensor}_quant"),
             helper.make_node("DequantizeLinear", [f"{tensor}_q", f"{tensor}_scale", f"{tensor}_zp"], [f"{tensor}_dq"],
                              name=f"{tensor}_dequant")]
    return nodes, inits


def qdq_model(seed: int = 0) -> onnx.ModelProto:
    """A valid TensorRT-style INT8 model: Q/DQ activations (per tensor) and weights (per channel, symmetric)
    into a Conv, a MatMul and a Gemm(transB=1): ``pixel_values`` [batch, 3, 8, 8] -> ``image_embeds`` [batch, 5]."""
    rng = np.random.default_rng(seed)
    parts = [_act_qdq("pixel_values", 0.03),
             _weight_qdq("conv_w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32), 0),
             _act_qdq("flat", 0.05),
             _weight_qdq("mm_w", rng.standard_normal((256, 8)).astype(np.float32) * 0.1, 1),
             _act_qdq("hidden", 0.05),
             _weight_qdq("gemm_w", rng.standard_normal((5, 8)).astype(np.float32), 0)]
    nodes = [n for p in parts[:2] for n in p[0]]
    nodes += [helper.make_node("Conv", ["pixel_values_dq", "conv_w_dq"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
              helper.make_node("Flatten", ["relu"], ["flat"], name="flatten")]
    nodes += parts[2][0] + parts[3][0]
    nodes += [helper.make_node("MatMul", ["flat_dq", "mm_w_dq"], ["hidden"], name="matmul")]
    nodes += parts[4][0] + parts[5][0]
    nodes += [helper.make_node("Gemm", ["hidden_dq", "gemm_w_dq"], ["image_embeds"], name="gemm", transB=1)]
    inits = [i for p in parts for i in p[1]]
    inputs = [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 8, 8])]
    outputs = [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", 5])]
    return _model(nodes, inits, inputs, outputs, "qdq")


def set_initializer(model: onnx.ModelProto, name: str, array: np.ndarray) -> None:
    """Replace an initializer's value (and type)."""
    for i, t in enumerate(model.graph.initializer):
        if t.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(array, name))
            return
    raise KeyError(name)


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    """The node called ``name``."""
    return next(n for n in model.graph.node if n.name == name)


def tiny_encoder(seed: int = 0, embed: int = 4, size: int = 4) -> onnx.ModelProto:
    """A small FP32 image encoder: pixel_values [batch, 3, size, size] -> LayerNorm -> MatMul -> image_embeds."""
    rng = np.random.default_rng(seed)
    flat = 3 * size * size
    inits = [numpy_helper.from_array(rng.standard_normal((flat, embed)).astype(np.float32), "proj"),
             numpy_helper.from_array(np.ones(flat, np.float32), "ln_scale"),
             numpy_helper.from_array(np.zeros(flat, np.float32), "ln_bias")]
    nodes = [helper.make_node("Flatten", ["pixel_values"], ["flat"], name="flatten"),
             helper.make_node("LayerNormalization", ["flat", "ln_scale", "ln_bias"], ["normed"], name="ln", axis=-1),
             helper.make_node("MatMul", ["normed", "proj"], ["image_embeds"], name="proj")]
    inputs = [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, size, size])]
    outputs = [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", embed])]
    return _model(nodes, inits, inputs, outputs, "tiny_encoder")


def make_bundle(path: Path, image: onnx.ModelProto | None = None, int8_tensorrt: onnx.ModelProto | None = None) -> Path:
    """A minimal valid bundle around hand-built encoders (no text tower, no labels); the manifest's size and
    embed_dim follow the INT8 encoder's input and output when one is given (loads check they agree)."""
    size, embed = 4, 4
    if int8_tensorrt is not None:
        size = int8_tensorrt.graph.input[0].type.tensor_type.shape.dim[2].dim_value
        embed = int8_tensorrt.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    with create_bundle(path) as draft:
        draft.manifest["model"] = {"id": "hand-built", "embed_dim": embed, "logit_scale": 100.0}
        draft.manifest["preprocess"] = {"size": [size, size], "resize_mode": "shortest", "interpolation": "bicubic",
                                        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
        onnx.save(image or tiny_encoder(embed=embed, size=size), draft.new_file("image_encoder.onnx"))
        draft.add_file("image_encoder.onnx", "image_encoder", precision="fp32", format="onnx")
        if int8_tensorrt is not None:
            onnx.save(int8_tensorrt, draft.new_file("image_encoder.int8.tensorrt.onnx"))
            draft.add_file("image_encoder.int8.tensorrt.onnx", "image_encoder", precision="int8", target="tensorrt",
                           format="onnx")
    return path
