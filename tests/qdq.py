"""Shared Q/DQ graph helpers for the quantization tests: read an INT8 ONNX file and assert its structure.

``Graph`` gives producer/consumer maps; ``assert_tensorrt_qdq``, ``assert_cpu_qdq`` and
``assert_openvino_qdq`` check what each recipe promises (docs/quantization.md) on any quantized model, so
every test that makes an INT8 file (bundle towers, hand-made nets, the generic ``quantize_model``) checks
it the same way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

WEIGHTED = ("Conv", "MatMul", "Gemm")


class Graph:
    """Producer / consumer maps of an ONNX graph."""

    def __init__(self, path: Path | str) -> None:
        self.model = onnx.load(str(path))
        g = self.model.graph
        self.nodes = list(g.node)
        self.inits = {i.name: i for i in g.initializer}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def of(self, op: str) -> list:
        return [n for n in self.nodes if n.op_type == op]

    def made_by(self, tensor: str, op: str) -> bool:
        p = self.producer.get(tensor)
        return p is not None and p.op_type == op

    def dequantized(self, tensor: str) -> bool:
        """Made by a DequantizeLinear, directly or through reshapes and transposes."""
        p = self.producer.get(tensor)
        while p is not None and p.op_type in ("Reshape", "Transpose"):
            p = self.producer.get(p.input[0])
        return p is not None and p.op_type == "DequantizeLinear"

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name])

    def quantized(self) -> list:
        """Weighted nodes (a constant weight) whose inputs are dequantized."""
        def weighted(n) -> bool:
            w = n.input[1] if len(n.input) > 1 else ""
            return w in self.inits or self.made_by(w, "DequantizeLinear") and self.producer[w].input[0] in self.inits

        return [n for n in self.nodes if n.op_type in WEIGHTED and weighted(n)
                and any(self.made_by(i, "DequantizeLinear") for i in n.input[:2])]


def assert_quantized_exactly(g: Graph, expected: Iterable[str]) -> None:
    """The weighted layers that read dequantized inputs are exactly ``expected``; each reads a DQ activation
    and a DQ weight."""
    expected = set(expected)
    assert expected, "the model has weighted layers"
    assert {n.name for n in g.quantized()} == expected
    for n in g.nodes:
        if n.name in expected:
            assert g.dequantized(n.input[0]), f"{n.name}: activation not from DQ"
            assert g.made_by(n.input[1], "DequantizeLinear"), f"{n.name}: weight not from DQ"


def assert_tensorrt_qdq(path: Path | str, expected: Iterable[str]) -> Graph:
    """TensorRT explicit quantization: symmetric int8 (zero points 0), per-channel weights, float biases,
    Q/DQ only on the inputs of the weighted layers (DQ outputs feed only weighted layers)."""
    g = Graph(path)
    assert_quantized_exactly(g, expected)
    for n in g.quantized():
        if len(n.input) > 2 and n.input[2]:
            assert not g.made_by(n.input[2], "DequantizeLinear"), f"{n.name}: bias must stay float"
        dq = g.producer[n.input[1]]
        w, scale = g.array(dq.input[0]), g.array(dq.input[1])
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
        out_axis = 0 if n.op_type == "Conv" or (n.op_type == "Gemm" and trans_b) else 1
        assert scale.ndim == 1 and axis == out_axis and scale.shape[0] == w.shape[out_axis], \
            f"{n.name}: scale shape {scale.shape}, axis {axis}, weight {w.shape}"
        assert w.dtype == np.int8 and w.min() >= -127, "symmetric weights use -127..127"
    qdq = g.of("QuantizeLinear") + g.of("DequantizeLinear")
    for n in qdq:
        assert len(n.input) == 3, f"{n.name}: zero point must be explicit (int8), not defaulted (uint8)"
        zp = g.array(n.input[2])
        assert zp.dtype == np.int8 and not zp.any(), f"{n.name}: zero point {zp} ({zp.dtype})"
    for dq in g.of("DequantizeLinear"):
        for c in g.consumers.get(dq.output[0], []):
            assert c.op_type in WEIGHTED, f"{c.op_type} {c.name} reads the quantized copy {dq.output[0]}"
    for q in g.of("QuantizeLinear"):  # a GEMM output is quantized only as the next GEMM's input (ConvNeXt:
        if any(g.made_by(q.input[0], op) for op in WEIGHTED):  # a downsampling conv feeds a depthwise one)
            readers = [c for dq in g.consumers.get(q.output[0], []) for c in g.consumers.get(dq.output[0], [])]
            assert readers and all(c.op_type in WEIGHTED for c in readers), f"{q.name} quantizes a GEMM output"
    return g


def assert_cpu_qdq(path: Path | str, expected: Iterable[str], weight_bits: int = 7,
                   per_channel: Iterable[str] = ()) -> Graph:
    """The ``cpu`` recipe: uint8 activations, int8 weights of ``weight_bits`` bits, Conv weights per channel
    with the Conv output quantized (QLinearConv), MatMul/Gemm weights per tensor with a float output, except
    the MatMul/Gemm nodes ``per_channel`` (weights with outlier channels), per channel."""
    per_channel = set(per_channel)
    g = Graph(path)
    assert_quantized_exactly(g, expected)
    limit = 2 ** (weight_bits - 1)
    for q in g.of("QuantizeLinear"):
        assert g.array(q.input[2]).dtype == np.uint8, "activations are asymmetric uint8"
    for node in g.quantized():
        dq = g.producer[node.input[1]]
        w, scale = g.array(dq.input[0]), g.array(dq.input[1])
        assert w.dtype == np.int8 and w.min() >= -limit and w.max() <= limit, f"{weight_bits}-bit weights"
        readers = g.consumers.get(node.output[0], [])
        if node.op_type == "Conv":
            assert scale.ndim == 1 and scale.shape[0] == w.shape[0], "Conv weights per channel"
            assert any(r.op_type == "QuantizeLinear" for r in readers), "Conv output quantized (QLinearConv)"
        elif node.name in per_channel:
            assert scale.ndim == 1 and scale.size > 1, f"{node.name}: outlier weights per channel"
        else:
            assert scale.ndim == 0 or scale.size == 1, "MatMul/Gemm weights per tensor"
            assert not any(r.op_type == "QuantizeLinear" for r in readers), "MatMul output float"
    return g


def assert_openvino_qdq(path: Path | str, expected: Iterable[str], activation: Iterable[str],
                        attention: Iterable[str] = (), convolutional: bool = False, unsigned: bool = True) -> Graph:
    """The ``openvino`` recipe: the weighted layers ``expected``, the residual adds / pools ``activation`` and
    the attention-head nodes ``attention`` (a CNN's) read dequantized inputs; symmetric per-channel int8
    weights; float biases; no other node reads a quantized copy. Activations: in a transformer, asymmetric
    uint8; in a CNN (``convolutional``), symmetric (zero point 0), int8 where they have negatives, uint8 where
    they have none (a ReLU network has both; ``unsigned=False`` for one without ReLUs, ConvNeXt's GELUs),
    except the model input, which stays asymmetric uint8."""
    g = Graph(path)
    assert_quantized_exactly(g, expected)
    activation, attention = set(activation), set(attention)
    for node in g.nodes:
        if node.name in activation | attention:
            data = [i for i in node.input if i and i not in g.inits]
            inputs = data if node.op_type in ("Add", "MatMul", "Concat") else data[:1]
            assert all(g.dequantized(i) for i in inputs), f"{node.name} reads a float input"
    inputs = {i.name for i in g.model.graph.input}
    signs = set()
    for q in g.of("QuantizeLinear"):
        zp = g.array(q.input[2])
        if not convolutional or q.input[0] in inputs:
            assert zp.dtype == np.uint8, f"{q.name}: activations are asymmetric uint8"
        else:
            assert zp.dtype in (np.uint8, np.int8) and not zp.any(), f"{q.name}: symmetric ({zp}, {zp.dtype})"
            signs.add(zp.dtype.name)
    want = {"int8", "uint8"} if unsigned else {"int8"}
    assert not convolutional or signs == want, f"a CNN's activations: {want} expected, got {signs}"
    for q in g.of("QuantizeLinear"):  # a reshape of a dequantized tensor is read as it is, never requantized
        moved = g.producer.get(q.input[0]) is not None and g.producer[q.input[0]].op_type in ("Reshape", "Transpose")
        assert not (moved and g.dequantized(q.input[0])), f"{q.name} requantizes a reshaped quantized tensor"
    for node in g.quantized():
        dq = g.producer[node.input[1]]
        w, scale = g.array(dq.input[0]), g.array(dq.input[1])
        assert w.dtype == np.int8 and w.min() >= -127 and scale.ndim == 1, f"{node.name}: symmetric per-channel"
        if len(node.input) > 2 and node.input[2]:
            assert not g.made_by(node.input[2], "DequantizeLinear"), f"{node.name}: bias stays float"
    for dq in g.of("DequantizeLinear"):
        for c in g.consumers.get(dq.output[0], []):
            assert c.op_type in WEIGHTED or c.name in activation | attention, \
                f"{c.op_type} {c.name} reads a quantized copy"
    return g


def output_range(g: Graph, node) -> tuple[float, float]:
    """The float range ``[lo, hi]`` of the quantizer of ``node``'s output (uint8 or int8 QuantizeLinear)."""
    q = next((r for r in g.consumers.get(node.output[0], []) if r.op_type == "QuantizeLinear"), None)
    assert q is not None, f"{node.name}: output not quantized"
    scale, zp = float(g.array(q.input[1])), g.array(q.input[2])
    qmin, qmax = (0, 255) if zp.dtype == np.uint8 else (-128, 127)
    return (qmin - float(zp)) * scale, (qmax - float(zp)) * scale
