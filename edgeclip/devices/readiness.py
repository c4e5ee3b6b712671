"""Will TensorRT build this ONNX file? A check with plain ``onnx`` that needs no TensorRT and no GPU.

Checks: the opset (>= 13 for per-channel Q/DQ, >= 17 for LayerNormalization as one op), every operator
against the TensorRT ONNX parser's support list (``trt_ops``), Q/DQ placement (every QuantizeLinear feeds
DequantizeLinear; weights quantized per output channel), symmetric INT8 (signed, zero points all zero),
and a dynamic batch axis on every input. Each finding names the node and the fix.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .trt_ops import op_support, parse_version

ERROR, WARNING = "error", "warning"
DEFAULT_TENSORRT = "10.0"
QDQ = ("QuantizeLinear", "DequantizeLinear")
REQUANTIZE = "quantize again with target='tensorrt' (symmetric signed INT8, per-channel weights)"


@dataclass(frozen=True)
class Finding:
    """One problem: ``error`` blocks a TensorRT build, ``warning`` does not."""

    severity: str
    node: str
    message: str
    fix: str

    def __str__(self) -> str:
        fix = f"\n        fix: {self.fix}" if self.fix else ""
        return f"{self.severity.upper():7} {self.node}: {self.message}{fix}"


def errors(findings: list[Finding]) -> list[Finding]:
    """The findings that block a build."""
    return [f for f in findings if f.severity == ERROR]


def _nodes(graph: Any) -> Iterator[Any]:
    """Every node, including those of subgraphs (If/Loop/Scan bodies)."""
    import onnx

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _nodes(g)


def _name(node: Any) -> str:
    return f"{node.op_type} {node.name!r}" if node.name else f"{node.op_type} -> {node.output[0]!r}"


def _constants(graph: Any, nodes: list[Any]) -> dict[str, np.ndarray]:
    """The initializers and Constant-node outputs that Q/DQ nodes read, as numpy arrays."""
    from onnx import helper, numpy_helper

    wanted = {name for n in nodes if n.op_type in QDQ for name in n.input if name}
    if not wanted:
        return {}
    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name in wanted}
    for node in nodes:
        if node.op_type == "Constant" and node.attribute and node.output[0] in wanted:
            attr = node.attribute[0]
            if attr.name == "value":
                out[node.output[0]] = numpy_helper.to_array(attr.t)
            elif attr.name in ("value_float", "value_int", "value_floats", "value_ints"):
                out[node.output[0]] = np.asarray(helper.get_attribute_value(attr))
    return out


def check_opset(model: Any) -> list[Finding]:
    """Opset: >= 13 for per-channel Q/DQ, >= 17 for LayerNormalization as one (FP16-safe) op."""
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    has_qdq = any(n.op_type in QDQ for n in _nodes(model.graph))
    out = []
    if has_qdq and opset < 13:
        out.append(Finding(ERROR, "model", f"opset {opset} < 13: Q/DQ nodes cannot carry per-channel axes",
                           "re-export with opset='17' and quantize again"))
    if opset < 17:
        out.append(Finding(WARNING, "model", f"opset {opset} < 17: LayerNorm is exported as separate ops, which "
                           "TensorRT may run in FP16 and overflow", "re-export with opset='17'"))
    return out


def check_ops(model: Any, tensorrt: str = DEFAULT_TENSORRT) -> list[Finding]:
    """Every operator against the TensorRT ONNX parser's support list (custom domains need plugins)."""
    out = []
    counts = Counter((n.domain, n.op_type) for n in _nodes(model.graph))
    first = {}
    for node in _nodes(model.graph):
        first.setdefault((node.domain, node.op_type), node)
    for key, node in first.items():
        count = counts[key]
        where = f"{_name(node)}" + (f" (+{count - 1} more)" if count > 1 else "")
        if node.domain not in ("", "ai.onnx"):
            out.append(Finding(ERROR, where, f"custom-domain operator {node.domain}::{node.op_type} is not an ONNX "
                               "operator TensorRT imports", f"register a TensorRT plugin named {node.op_type} or "
                               "re-export without it (ONNX Runtime contrib ops are not TensorRT ops)"))
            continue
        why = op_support(node.op_type, tensorrt)
        if why:
            out.append(Finding(ERROR, where, why, "re-export so the op is decomposed (e.g. a lower `opset`), use a "
                               "newer TensorRT, or run this model with ONNX Runtime"))
    for node in _nodes(model.graph):  # the one matrix restriction a CLIP export can hit
        if node.op_type == "LayerNormalization" and any(node.output[1:]):
            out.append(Finding(ERROR, _name(node), "TensorRT imports only the first output (Y) of LayerNormalization",
                               "re-export without the Mean/InvStdDev outputs"))
    return out


def _weight_axis(consumer: Any, input_index: int, rank: int) -> int | None:
    """The output-channel axis TensorRT needs for a weight at ``input_index`` of ``consumer``."""
    if consumer.op_type == "Conv" and input_index == 1:
        return 0
    if consumer.op_type == "ConvTranspose" and input_index == 1:
        return 1
    if consumer.op_type == "Gemm" and input_index == 1:
        trans_b = next((a.i for a in consumer.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if consumer.op_type == "MatMul" and input_index == 1:
        return rank - 1
    return None


def _zero_point(node: Any, consts: dict[str, np.ndarray], input_dtype: Any) -> list[Finding]:
    """Zero point present (or int8 input), signed INT8, all zeros."""
    zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if zp_name is None:
        if node.op_type == "QuantizeLinear" or input_dtype == np.uint8:
            return [Finding(ERROR, _name(node), "no zero point: ONNX then quantizes to uint8, and TensorRT only "
                            "takes signed INT8", f"give an int8 zero point of 0, or {REQUANTIZE}")]
        return []
    if zp_name not in consts:
        return [Finding(ERROR, _name(node), f"zero point {zp_name!r} is computed at run time; TensorRT needs a "
                        "constant", REQUANTIZE)]
    zp = consts[zp_name]
    if zp.dtype == np.uint8:
        return [Finding(ERROR, _name(node), f"uint8 quantization (zero point {zp_name!r} is uint8, values "
                        f"{np.unique(zp)[:4].tolist()}); TensorRT takes only signed symmetric INT8",
                        f"{REQUANTIZE}; the uint8 (U8S8) recipe is for ONNX Runtime on CPUs (target='cpu')")]
    if zp.dtype != np.int8:
        return [Finding(WARNING, _name(node), f"zero point type {zp.dtype} is not INT8; only INT8 is checked here",
                        "")]
    if np.any(zp != 0):
        return [Finding(ERROR, _name(node), f"asymmetric quantization: zero point {zp_name!r} has non-zero values "
                        f"(e.g. {int(zp.flat[np.flatnonzero(zp)[0]])}); TensorRT needs zero points of 0",
                        f"{REQUANTIZE}")]
    return []


def _scale(node: Any, consts: dict[str, np.ndarray]) -> tuple[np.ndarray | None, list[Finding]]:
    name = node.input[1]
    if name not in consts:
        return None, [Finding(ERROR, _name(node), f"scale {name!r} is computed at run time; TensorRT needs a constant",
                              REQUANTIZE)]
    scale = consts[name]
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        return scale, [Finding(ERROR, _name(node), f"scale {name!r} has zero, negative or non-finite values",
                               "recalibrate: every scale must be a positive finite number")]
    return scale, []


def check_qdq(model: Any) -> list[Finding]:
    """Q/DQ placement, symmetric signed INT8 and per-channel weights on the output-channel axis."""
    graph = model.graph
    nodes = list(_nodes(graph))
    consts = _constants(graph, nodes)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[tuple[Any, int]]] = {}
    for n in nodes:
        for i, name in enumerate(n.input):
            consumers.setdefault(name, []).append((n, i))
    out: list[Finding] = []
    for node in nodes:
        if node.op_type not in QDQ:
            continue
        src = producer.get(node.input[0])
        weight = consts.get(node.input[0])
        paired = False
        if node.op_type == "QuantizeLinear":
            bad = [c for c, _ in consumers.get(node.output[0], []) if c.op_type != "DequantizeLinear"]
            if bad or not consumers.get(node.output[0]):
                what = ", ".join(_name(c) for c in bad) or "nothing"
                out.append(Finding(ERROR, _name(node), f"QuantizeLinear feeds {what}; TensorRT needs every "
                                   "QuantizeLinear followed by a DequantizeLinear", REQUANTIZE))
            out += _zero_point(node, consts, None)
        else:
            if src is not None and src.op_type == "QuantizeLinear":
                weight = consts.get(src.input[0])
            elif weight is None:
                out.append(Finding(ERROR, _name(node), f"DequantizeLinear input {node.input[0]!r} comes from "
                                   f"{_name(src) if src else 'a graph input'}, not from a QuantizeLinear or "
                                   "constant INT8 weights", REQUANTIZE))
            paired = src is not None and src.op_type == "QuantizeLinear" and list(src.input[1:]) == list(node.input[1:])
            if not paired:  # a DQ sharing its Q's scale and zero point was checked with the Q
                out += _zero_point(node, consts, weight.dtype if weight is not None and src is None else None)
        scale, problems = _scale(node, consts)
        if not (node.op_type == "DequantizeLinear" and paired):
            out += problems
        if scale is None or scale.size <= 1:
            if weight is not None and node.op_type == "DequantizeLinear" and any(
                    _weight_axis(c, i, weight.ndim) is not None for c, i in consumers.get(node.output[0], [])):
                out.append(Finding(WARNING, _name(node), "per-tensor weight scale; per-channel keeps more accuracy",
                                   REQUANTIZE))
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if weight is None:
            out.append(Finding(ERROR, _name(node), f"per-channel scale ({scale.size} values) on an activation; "
                               "TensorRT quantizes activations per tensor", REQUANTIZE))
            continue
        axis = axis % weight.ndim
        if scale.size != weight.shape[axis]:
            out.append(Finding(ERROR, _name(node), f"{scale.size} scales for axis {axis} of a weight shaped "
                               f"{list(weight.shape)}", REQUANTIZE))
        if node.op_type != "DequantizeLinear":
            continue
        for consumer, index in consumers.get(node.output[0], []):
            want = _weight_axis(consumer, index, weight.ndim)
            if want is not None and axis != want:
                out.append(Finding(ERROR, _name(node), f"weight of {_name(consumer)} is quantized per channel on "
                                   f"axis {axis}; TensorRT needs the output-channel axis {want}", REQUANTIZE))
    return out


def check_dynamic_batch(model: Any) -> list[Finding]:
    """Every graph input needs a symbolic first (batch) dimension for the optimization profile."""
    inits = {t.name for t in model.graph.initializer}
    out = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        if not inp.type.tensor_type.HasField("shape") or not dims:
            out.append(Finding(WARNING, f"input {inp.name!r}", "no shape recorded; TensorRT needs the rank", ""))
        elif dims[0].HasField("dim_value"):
            out.append(Finding(ERROR, f"input {inp.name!r}", f"fixed batch {dims[0].dim_value}: the engine's batch "
                               "range (optimization profile) needs a dynamic batch axis",
                               "re-export with a dynamic batch axis (`edgeclip export` does this)"))
        elif any(d.HasField("dim_param") or not d.HasField("dim_value") for d in dims[1:]):
            out.append(Finding(WARNING, f"input {inp.name!r}", "dynamic non-batch dimensions: only the batch "
                               "range is set in the optimization profile", "export with a fixed image size"))
    return out


def check_model(model: Any, tensorrt: str = DEFAULT_TENSORRT) -> list[Finding]:
    """All readiness checks on an ONNX ModelProto or file path; errors first."""
    if isinstance(model, (str, Path)):
        model = load_onnx(model)
    found = check_opset(model) + check_ops(model, tensorrt) + check_qdq(model) + check_dynamic_batch(model)
    if parse_version(tensorrt) < (8,):
        found.append(Finding(ERROR, "model", f"TensorRT {tensorrt} is older than 8.0: no Q/DQ or explicit batch",
                             "use TensorRT 8.2 or newer"))
    return sorted(found, key=lambda f: f.severity != ERROR)


def load_onnx(path: str | Path) -> Any:
    """Load an ONNX file (with external data) or raise DeviceError naming it."""
    from ..errors import DeviceError

    try:
        import onnx
    except ImportError as exc:
        raise DeviceError("the readiness check needs the onnx package: pip install onnx") from exc
    path = Path(path)
    if not path.is_file():
        raise DeviceError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise DeviceError(f"{path}: not a readable ONNX model ({exc})") from exc


def format_findings(findings: list[Finding], what: str = "") -> str:
    """A short report: a verdict line, then one block per finding."""
    errs = errors(findings)
    head = (f"{what}: " if what else "") + (f"{len(errs)} problem(s) block a TensorRT build" if errs
                                            else "ready for TensorRT")
    if findings and len(findings) > len(errs):
        head += f" ({len(findings) - len(errs)} warning(s))"
    return "\n".join([head, *(str(f) for f in findings)])


@dataclass
class BuildCheck:
    """What would block a TensorRT build of one ONNX file (``edgeclip build`` with its check)."""

    onnx: Path
    tensorrt: str
    findings: list[Finding]
    notes: list[str] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        """Whether a finding blocks the build."""
        return bool(errors(self.findings))

    def report(self) -> str:
        """The verdict line and one block per finding."""
        return format_findings(self.findings, f"{self.onnx} (TensorRT {self.tensorrt})")
