"""FP16 by graph edit, for strongly typed TensorRT networks (TensorRT 11 has no FP16 builder flag).

MatMul, Gemm and Conv compute in FP16 (a Cast to FP16 on each input, a Cast back to FP32 on the output);
LayerNormalization, Softmax, GELU and residual adds stay FP32, so the FP16 LayerNorm overflow cannot
happen. Nodes fed by DequantizeLinear (INT8 Q/DQ) are left alone: TensorRT fuses them into INT8 kernels.
The model's inputs and outputs keep their FP32 types.
"""
from __future__ import annotations

from typing import Any

COMPUTE_OPS = ("MatMul", "Gemm", "Conv")


def _float_tensors(model: Any) -> set[str]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    infos = list(g.value_info) + list(g.input) + list(g.output)
    out = {v.name for v in infos if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    out |= {t.name for t in g.initializer if t.data_type == onnx.TensorProto.FLOAT}
    for node in g.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value" \
                and node.attribute[0].t.data_type == onnx.TensorProto.FLOAT:
            out.add(node.output[0])
    return out


def mixed_fp16(model: Any, ops: tuple[str, ...] = COMPUTE_OPS) -> tuple[Any, int]:
    """A copy of ``model`` with ``ops`` computing in FP16; returns (model, number of nodes converted)."""
    import onnx
    from onnx import helper

    floats = _float_tensors(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    casted: dict[str, str] = {}
    nodes, converted = [], 0
    for node in graph.node:
        inputs = [i for i in node.input if i]
        if node.op_type not in ops or any(i in dq_outputs for i in inputs) or not all(i in floats for i in inputs):
            nodes.append(node)
            continue
        for i, name in enumerate(node.input):
            if not name:
                continue
            if name not in casted:
                casted[name] = f"{name}__fp16"
                nodes.append(helper.make_node("Cast", [name], [casted[name]], name=f"{name}__to_fp16",
                                              to=onnx.TensorProto.FLOAT16))
            node.input[i] = casted[name]
        result = node.output[0]
        node.output[0] = f"{result}__fp16"
        nodes.append(node)
        nodes.append(helper.make_node("Cast", [node.output[0]], [result], name=f"{result}__to_fp32",
                                      to=onnx.TensorProto.FLOAT))
        converted += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return out, converted
