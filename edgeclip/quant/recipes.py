"""INT8 recipes: how an fp32 image encoder becomes ``image_encoder.int8.<target>.onnx``.

One recipe per target, as data (``RECIPES``), applied by one function (``quantize_onnx``) on top of ONNX
Runtime's ``quantize_static`` (QDQ format). Only *weighted* layers are quantized: ``Conv``, and
``MatMul``/``Gemm`` whose second input is a constant weight (QKV, projections, MLP, the patch conv, the
ResNet convs). Attention's activation x activation MatMuls, LayerNorm, Softmax, GELU and residual adds
stay fp32.

``tensorrt``: explicit quantization for TensorRT 10+: symmetric INT8 activations and weights (zero points
0, int8), per-channel weights, Q/DQ on the *inputs* of the weighted layers only (no output quantization,
biases stay float: TensorRT fuses DQ -> Conv/MatMul -> bias itself and has no INT32 DequantizeLinear), and
every other consumer of a quantized tensor reads the float tensor (so residual adds and LayerNorms never
see a Q/DQ pair). What is checked without TensorRT is asserted by ``tests/test_quant_structure.py``.

``cpu``: the fastest accurate recipe for ONNX Runtime's CPU kernels (measured; docs/quantization.md):
static QDQ with U8 (asymmetric) activations and S8 weights; Conv inputs and outputs quantized so ORT fuses
``QLinearConv``, MatMul/Gemm inputs quantized and outputs float so ORT fuses ``MatMulIntegerToFloat``;
per-channel weights for Conv and per-tensor for MatMul/Gemm; 7-bit weights (``reduce_range``) so AVX2
CPUs without VNNI cannot saturate their 16-bit intermediate sums. A bounded activation ``Clip(0, max)``
(ReLU6) that alone reads a quantized Conv output is folded into that output's quantizer
(``fold_activations``): the U8 range is the activation's ``[0, max]`` rather than the pre-activation range,
and ONNX Runtime drops the Clip (measured on EfficientNet-Lite0: docs/quantization.md). The CLIP towers
have no Clip after a Conv (ViT: GELU; ModifiedResNet: Relu), so their INT8 files are unaffected.

``openvino``: the fastest accurate recipe for OpenVINO's CPU plugin (measured against NNCF's own INT8 in
``scripts/bench_openvino.py``; docs/quantization.md): U8 (asymmetric) activations and S8 symmetric
per-channel weights, Q/DQ on the *inputs* only (OpenVINO fuses the rest), and beyond the weighted layers
also on the inputs of the residual adds of feature maps (an ``Add`` of two rank-4 activations) and of the
``AveragePool`` layers (``activation_ops``), so that a ResNet runs INT8 from one convolution to the next:
without them, the ModifiedResNet's adds and anti-aliasing pools ran in fp32 between INT8 convolutions.
A ViT has no such adds or pools, so its ``openvino`` file differs from ``cpu``/``tensorrt`` only in types.
In a convolutional graph (one without LayerNormalization: the ModifiedResNet, not a transformer) it also
follows NNCF's preset for CNNs, as measured against it: activations whose calibrated range has negatives get
symmetric int8 (zero point 0; ``cnn_signed_activations``), and the attention head runs in INT8 too: the inputs of
its activation x activation MatMuls, float Concats and Reshape/Transpose chains get Q/DQ (``cnn_attention``,
``attention_nodes``), and a reshape of a dequantized tensor is not quantized again (``drop_requantization``).
Transformers keep asymmetric uint8 activations, as NNCF's transformer preset does.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .._version import __version__
from ..errors import OptionError, QuantizationError
from ..tables import INT8_RECIPES, pick
from .options import CALIB_METHODS

log = logging.getLogger("edgeclip.quant")

TARGETS = tuple(INT8_RECIPES)
WEIGHTED_OPS = ("Conv", "MatMul", "Gemm")
#: activations a recipe may fold into the quantizer of the output they read (``Recipe.fold_activations``)
FOLDABLE_ACTIVATIONS = ("Relu", "Clip")
#: data-movement ops whose chains ``attention_nodes`` quantizes at their start
MOVEMENT_OPS = ("Reshape", "Transpose")
#: the op types ``attention_nodes`` selects
ATTENTION_OPS = ("MatMul", "Concat", *MOVEMENT_OPS)


@dataclass(frozen=True)
class Recipe:
    """What ``quantize_onnx`` does for one target."""

    name: str
    target: str
    activation_type: str  # "int8" or "uint8"
    activation_symmetric: bool
    per_channel: str  # "all", "conv" (Conv per-channel, MatMul/Gemm per-tensor) or "none"
    reduce_range: bool
    output_ops: tuple[str, ...]  # op types whose outputs are quantized too (for fused integer kernels)
    quantize_bias: bool
    float_consumers_read_float: bool
    calib_method: str  # the measured default
    op_types: tuple[str, ...] = WEIGHTED_OPS
    percentile: float = 99.999
    #: op types (among ``FOLDABLE_ACTIVATIONS``) of the activations folded into the quantizer of the
    #: quantized output they alone read: the output range is the activation's, e.g. [0, 6] for ReLU6,
    #: instead of the pre-activation range (a Clip only when bounded below by 0: ``foldable_activations``)
    fold_activations: tuple[str, ...] = ()
    #: unweighted op types whose activation inputs are quantized too (``activation_nodes``: residual adds
    #: of feature maps, average pools), for backends that run them in INT8 between INT8 layers
    activation_ops: tuple[str, ...] = ()
    #: in a convolutional graph (``is_convolutional``), activations whose calibrated range has negatives get
    #: symmetric int8 instead of ``activation_type`` (the model input keeps ``activation_type``)
    cnn_signed_activations: bool = False
    #: in a convolutional graph, the attention head is quantized too (``attention_nodes``)
    cnn_attention: bool = False

    def __post_init__(self) -> None:
        fold = self.fold_activations
        if isinstance(fold, (str, bool)) or not set(fold) <= set(FOLDABLE_ACTIVATIONS):
            raise OptionError(f"fold_activations is a tuple of op types among {FOLDABLE_ACTIVATIONS}, not {fold!r}")
        object.__setattr__(self, "fold_activations", tuple(fold))

    def record(self) -> dict[str, Any]:
        """The recipe as recorded in the manifest."""
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        for key in _RECORDED_WHERE_USED:  # so records of the recipes without them stay as they were
            if not d[key]:
                d.pop(key)
        return d


#: recipe settings recorded in the manifest only when set
_RECORDED_WHERE_USED = ("fold_activations", "activation_ops", "cnn_signed_activations", "cnn_attention")

RECIPES: dict[str, Recipe] = {
    "tensorrt": Recipe("tensorrt-qdq-s8s8-symmetric-per-channel", "tensorrt", "int8", True, "all", False,
                       output_ops=(), quantize_bias=False, float_consumers_read_float=True,
                       calib_method="percentile"),
    # Relu is not folded: the ModifiedResNet CLIP towers have Conv -> Relu, so folding it would change the
    # CLIP proxies' INT8 files (and their measured tables); Clip(0, 6) (ReLU6) never follows a Conv in them.
    "cpu": Recipe("cpu-qdq-u8s8-7bit", "cpu", "uint8", False, "conv", True,
                  output_ops=("Conv",), quantize_bias=True, float_consumers_read_float=False,
                  calib_method="percentile", fold_activations=("Clip",)),
    "openvino": Recipe("openvino-qdq-u8s8-per-channel", "openvino", "uint8", False, "all", False,
                       output_ops=(), quantize_bias=False, float_consumers_read_float=True,
                       calib_method="percentile", activation_ops=("Add", "AveragePool"),
                       cnn_signed_activations=True, cnn_attention=True),
}

#: Alternatives measured for the CPU target (scripts/compare_cpu_recipes.py); not used by default.
CPU_CANDIDATES: dict[str, Recipe] = {
    "qdq-u8s8-per-tensor": Recipe("qdq-u8s8-per-tensor", "cpu", "uint8", False, "none", False, WEIGHTED_OPS,
                                  True, False, "minmax"),
    "qdq-u8s8-per-channel": Recipe("qdq-u8s8-per-channel", "cpu", "uint8", False, "all", False, WEIGHTED_OPS,
                                   True, False, "minmax"),
    "qdq-u8s8-all-outputs-7bit": Recipe("qdq-u8s8-all-outputs-7bit", "cpu", "uint8", False, "conv", True,
                                        WEIGHTED_OPS, True, False, "minmax"),
    "qdq-u8s8-7bit (cpu)": RECIPES["cpu"],
    "qdq-s8s8-symmetric": Recipe("qdq-s8s8-symmetric", "cpu", "int8", True, "none", False, WEIGHTED_OPS, True,
                                 False, "minmax"),
}


def recipe_for(target: str) -> Recipe:
    """The recipe of ``target`` (a row of ``edgeclip.tables.INT8_RECIPES``); OptionError for an unknown one."""
    return RECIPES[pick(INT8_RECIPES, target, "target").name]


def int8_file_name(target: str) -> str:
    """``image_encoder.int8.<target>.onnx``."""
    return pick(INT8_RECIPES, target, "target").file


# ---------------------------------------------------------------------------------------------------------
# model preparation and node selection
# ---------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def quiet_onnxruntime() -> Iterator[None]:
    """Silence ONNX Runtime's quantization tool (prints and root-logger warnings) for the duration."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def prepare_fp32(src: Path, dst: Path) -> Path:
    """The fp32 model the quantizer starts from: ORT basic graph optimisations + ONNX shape inference.

    (ONNX Runtime's ``quant_pre_process`` without its symbolic shape inference, which rejects the dynamic
    Reshapes of exported attention.) Falls back to a plain copy if the optimisation fails.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with quiet_onnxruntime():
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    except Exception as exc:  # ORT raises many types; an unoptimised model still quantizes
        log.warning("quantization pre-processing failed (%s); quantizing the model as exported", exc)
        shutil.copyfile(src, dst)
    return dst


def weighted_nodes(model: Any, op_types: Sequence[str] = WEIGHTED_OPS) -> list[str]:
    """Names of the nodes a recipe may quantize: Conv, and MatMul/Gemm with a constant weight input, less
    those the family rules keep in fp32 (``kept_fp32``)."""
    consts = _constant_names(model)
    kept = {n for names in kept_fp32(model).values() for n in names}
    return [n.name for n in model.graph.node
            if n.op_type in op_types and len(n.input) >= 2 and n.name and n.input[1] in consts and n.name not in kept]


#: ops through which a tensor computed from constants stays constant data (``constant_query_nodes``)
_BROADCAST_OPS = ("Expand", "Tile", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Identity", "Cast")
#: a depthwise convolution keeps fp32 when per-channel INT8 weights would change its non-peak taps by more
#: than this share of their norm (``identity_folded_convs``)
FOLDED_TAP_ERROR = 0.5


def kept_fp32(model: Any) -> dict[str, list[str]]:
    """Weighted nodes that no recipe quantizes, by rule (recorded in the manifest as ``kept_fp32``):

    * ``constant_query``: a MatMul/Gemm whose data input is a constant broadcast to the batch, not an
      activation: SigLIP's attention-pool (MAP) head projects its learnt latent query so; quantizing it only
      rounds a constant (``constant_query_nodes``);
    * ``identity_folded``: depthwise convolutions whose kernel has an identity folded in, as FastViT's
      reparameterized token mixers (RepMixer) and conditional position encodings have: per-channel INT8
      steps are set by the centre tap, so the mixing taps round away (``identity_folded_convs``).
    """
    out = {"constant_query": constant_query_nodes(model), "identity_folded": identity_folded_convs(model)}
    return {k: v for k, v in out.items() if v}


#: a MatMul/Gemm weight whose largest output channel exceeds this many times the median channel's range gets
#: per-channel scales in a recipe whose MatMul weights are otherwise per tensor (``outlier_weights``)
OUTLIER_RATIO = 8.0


def outlier_weights(model: Any, nodes: Sequence[str], ratio: float = OUTLIER_RATIO) -> dict[str, int]:
    """MatMul/Gemm nodes among ``nodes`` whose constant weight has outlier output channels: node -> the weight's
    output-channel axis. One per-tensor scale would be set by the outlier and round the other channels coarsely
    (SigLIP's attention-pool MLP: a mean cosine of 0.914 to fp32 with per-tensor weights, 0.999 per channel)."""
    consts, wanted = _constants(model), set(nodes)
    out = {}
    for n in model.graph.node:
        if n.name not in wanted or n.op_type not in ("MatMul", "Gemm") or n.input[1] not in consts:
            continue
        w = np.abs(np.asarray(consts[n.input[1]], dtype=np.float64))
        if w.ndim != 2:
            continue
        trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
        axis = 0 if n.op_type == "Gemm" and trans_b else 1
        channels = w.max(axis=1 - axis)
        median = float(np.median(channels))
        if median > 0 and float(channels.max()) > ratio * median:
            out[n.name] = axis
    return out


def constant_query_nodes(model: Any) -> list[str]:
    """MatMul/Gemm nodes whose first input is constant data (an initializer broadcast with ``_BROADCAST_OPS``;
    the shape inputs of Expand/Reshape may come from the batch)."""
    consts = _constant_names(model)
    producer = {o: n for n in model.graph.node for o in n.output}

    def constant(tensor: str) -> bool:
        seen = 0
        while tensor not in consts:
            node = producer.get(tensor)
            if node is None or node.op_type not in _BROADCAST_OPS or seen > 16:
                return False
            tensor, seen = node.input[0], seen + 1
        return True

    return [n.name for n in model.graph.node
            if n.op_type in ("MatMul", "Gemm") and n.name and n.input and constant(n.input[0])]


def identity_folded_convs(model: Any, limit: float = FOLDED_TAP_ERROR) -> list[str]:
    """Depthwise Conv nodes (one input channel per group, kernel > 1x1) whose per-channel symmetric INT8
    weights would change the taps other than each channel's largest by more than ``limit`` of their norm."""
    consts = _constants(model)
    out = []
    for n in model.graph.node:
        if n.op_type != "Conv" or not n.name or len(n.input) < 2 or n.input[1] not in consts:
            continue
        w = np.asarray(consts[n.input[1]], dtype=np.float64)
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if w.ndim != 4 or w.shape[1] != 1 or group != w.shape[0] or w.shape[2] * w.shape[3] == 1:
            continue
        flat = w.reshape(w.shape[0], -1)
        scale = np.maximum(np.abs(flat).max(axis=1, keepdims=True), 1e-30) / 127.0
        error = np.round(flat / scale) * scale - flat
        peak = np.abs(flat).argmax(axis=1)
        rest = np.ones_like(flat, dtype=bool)
        rest[np.arange(len(flat)), peak] = False
        norm = np.linalg.norm(flat[rest])
        if norm > 0 and np.linalg.norm(error[rest]) > limit * norm:
            out.append(n.name)
    return out


def _constant_names(model: Any) -> set[str]:
    """Names of the initializers and Constant-node outputs of ``model``."""
    g = model.graph
    return {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}


def activation_nodes(model: Any, op_types: Sequence[str]) -> list[str]:
    """Names of the unweighted nodes of ``op_types`` whose activation inputs a recipe quantizes too: an
    ``Add`` only when it adds two rank-4 activations (a residual add of feature maps, not a bias or a
    transformer's residual), any other type (``AveragePool``) always. Ranks come from the shape inference
    of ``prepare_fp32``."""
    g = model.graph
    consts = _constant_names(model)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*g.value_info, *g.input, *g.output]
             if v.type.tensor_type.HasField("shape")}
    out = []
    for node in g.node:
        if node.op_type not in op_types or not node.name:
            continue
        if node.op_type == "Add" and not (len(node.input) == 2 and all(i not in consts and ranks.get(i) == 4
                                                                       for i in node.input)):
            continue
        out.append(node.name)
    return out


def is_convolutional(model: Any) -> bool:
    """True for a convolutional graph (the ModifiedResNet, FastViT, ConvNeXt), False for a transformer: where a
    recipe's ``cnn_*`` choices apply. A transformer normalises token sequences (LayerNormalization of rank-3
    tensors); a CNN has no LayerNormalization, or only channels-last ones over feature maps (ConvNeXt's, of
    rank-4 tensors; ranks from the shape inference of ``prepare_fp32``, unknown ranks count as tokens)."""
    g = model.graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*g.value_info, *g.input, *g.output]
             if v.type.tensor_type.HasField("shape")}
    return all(ranks.get(n.input[0]) == 4 for n in g.node if n.op_type == "LayerNormalization")


def attention_nodes(model: Any) -> list[str]:
    """Names of the nodes whose float inputs quantize an attention head to INT8 (``Recipe.cnn_attention``):
    activation x activation ``MatMul``s, ``Concat``s of float tensors, and each ``Reshape``/``Transpose`` that
    starts a chain of them at a computed float tensor, unless the chain leads only to the model's outputs.
    OpenVINO then runs the chains in int8 (it moves dequantization through them), as with NNCF's INT8."""
    from onnx import TensorProto

    g = model.graph
    consts = _constant_names(model)
    floats = {v.name for v in [*g.value_info, *g.input, *g.output]
              if v.type.tensor_type.elem_type == TensorProto.FLOAT} - consts
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}

    def only_to_outputs(tensor: str) -> bool:
        """Whether ``tensor`` reaches nothing but model outputs through movement/indexing ops."""
        ahead = readers.get(tensor, [])
        if not ahead:
            return tensor in outputs
        return all(r.op_type in (*MOVEMENT_OPS, "Gather", "Squeeze", "Unsqueeze", "Flatten")
                   and all(only_to_outputs(o) for o in r.output) for r in ahead)

    out = []
    for node in g.node:
        data = [i for i in node.input if i and i not in consts]
        if not node.name or not data:
            continue
        if node.op_type == "MatMul" and len(data) == 2 or node.op_type == "Concat":
            if all(i in floats for i in data):
                out.append(node.name)
        elif node.op_type in MOVEMENT_OPS and node.input[0] in floats:
            start = producer.get(node.input[0])
            if (start is None or start.op_type not in MOVEMENT_OPS) and not only_to_outputs(node.output[0]):
                out.append(node.name)
    return out


# ---------------------------------------------------------------------------------------------------------
# calibration data
# ---------------------------------------------------------------------------------------------------------
def _data_reader(images: np.ndarray, input_name: str, batch_size: int) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class ArrayReader(CalibrationDataReader):
        """Batches of a float32 array; supports ``set_range`` for strided (memory-bounded) collection."""

        def __init__(self) -> None:
            self.batches = [np.ascontiguousarray(images[i:i + batch_size], dtype=np.float32)
                            for i in range(0, len(images), batch_size)]
            self.lo, self.hi = 0, len(self.batches)
            self.pos = 0

        def get_next(self) -> dict | None:
            if self.lo + self.pos >= self.hi:
                return None
            batch = self.batches[self.lo + self.pos]
            self.pos += 1
            return {input_name: batch}

        def __len__(self) -> int:
            return len(self.batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.lo, self.hi, self.pos = start_index, min(end_index, len(self.batches)), 0

    return ArrayReader()


def _method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}
    if name not in table:
        raise OptionError(f"unknown calib_method {name!r}; use one of {', '.join(CALIB_METHODS)}")
    return table[name]


# ---------------------------------------------------------------------------------------------------------
# quantization
# ---------------------------------------------------------------------------------------------------------
def quantize_onnx(recipe: Recipe, fp32: Path, out: Path, images: np.ndarray, method: str | None = None,
                  exclude: Sequence[str] = (), nodes: Sequence[str] | None = None,
                  ranges_cache: Path | None = None, batch_size: int = 8) -> Path:
    """Quantize the prepared fp32 model ``fp32`` with ``recipe``, calibrated on ``images``; writes ``out``.

    ``nodes``: the weighted nodes of ``fp32`` for ``recipe.op_types`` when the caller already has them
    (``weighted_nodes``; found here otherwise); ``exclude`` keeps some of them in fp32. ``ranges_cache`` (a
    JSON file) stores the calibrated tensor ranges: when it exists the calibration pass is skipped, so
    rebuilding with other exclusions is cheap.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    method = method or recipe.calib_method
    calib = _method(method)
    model = onnx.load(str(fp32), load_external_data=False)
    candidates = list(nodes) if nodes is not None else weighted_nodes(model, recipe.op_types)
    unknown = set(exclude) - set(candidates)
    if unknown:
        raise QuantizationError(f"cannot exclude {sorted(unknown)[:3]}: not weighted nodes of {fp32.name}")
    selected = [n for n in candidates if n not in set(exclude)]
    if not selected:
        raise QuantizationError("nothing left to quantize: every weighted layer is excluded")
    input_name = model.graph.input[0].name
    extra: dict[str, Any] = {
        "ActivationSymmetric": recipe.activation_symmetric,
        "WeightSymmetric": True,
        "CalibStridedMinMax": 1,  # one batch at a time: bounded memory for big towers and histograms
        "CalibTensorRangeSymmetric": recipe.activation_symmetric,
    }
    if method == "percentile":
        extra["CalibPercentile"] = recipe.percentile
    no_output = [op for op in recipe.op_types if op not in recipe.output_ops]
    if no_output:
        extra["OpTypesToExcludeOutputQuantization"] = no_output
    if not recipe.quantize_bias:
        extra["QuantizeBias"] = False
    if recipe.per_channel == "conv":
        by_name = {n.name: n for n in model.graph.node}
        extra["TensorQuantOverrides"] = {by_name[n].input[1]: [{"axis": 0}] for n in selected
                                         if by_name[n].op_type == "Conv"}
        for name, axis in outlier_weights(model, [n for n in selected if by_name[n].op_type != "Conv"]).items():
            extra["TensorQuantOverrides"][by_name[name].input[1]] = [{"axis": axis}]
    op_types = list(recipe.op_types)
    if recipe.fold_activations:
        folded = foldable_activations(model, [n for n in selected if n in set(_by_type(model, recipe.output_ops))],
                                      recipe.fold_activations)
        selected = selected + folded
        op_types += sorted({n.op_type for n in model.graph.node if n.name in set(folded)})
    if recipe.activation_ops:
        selected = selected + activation_nodes(model, recipe.activation_ops)
        op_types += list(recipe.activation_ops)
        extra["ForceQuantizeNoInputCheck"] = True  # a pool reading a float tensor gets its input quantized too
    convolutional = is_convolutional(model)
    if recipe.cnn_attention and convolutional:
        selected = selected + attention_nodes(model)
        op_types += [op for op in ATTENTION_OPS if op not in op_types]
        extra["OpTypesToExcludeOutputQuantization"] = sorted({*no_output, *ATTENTION_OPS})
        extra["ForceQuantizeNoInputCheck"] = True
    signed = recipe.cnn_signed_activations and convolutional
    act = QuantType.QInt8 if recipe.activation_type == "int8" else QuantType.QUInt8
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="edgeclip-quant-") as tmp:
        raw = Path(tmp) / "qdq.onnx"
        cache = ranges_cache or (Path(tmp) / "ranges.json" if signed else None)

        def run() -> None:
            nonlocal calib, method
            try:
                with quiet_onnxruntime():
                    quantize_static(str(fp32), str(raw), _data_reader(images, input_name, batch_size),
                                    quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types,
                                    per_channel=recipe.per_channel == "all", reduce_range=recipe.reduce_range,
                                    activation_type=act, weight_type=QuantType.QInt8, nodes_to_quantize=selected,
                                    calibrate_method=calib, extra_options=extra,
                                    calibration_cache_path=str(cache) if cache else None)
            except QuantizationError:
                raise
            except ValueError as exc:
                if method == "minmax" or "bins" not in str(exc):
                    raise QuantizationError(f"ONNX Runtime could not quantize {fp32.name} with the {recipe.target} "
                                            f"recipe: {type(exc).__name__}: {exc}") from exc
                # ORT's histograms (percentile, entropy) fail on an activation whose values are all but equal
                # (a uniform attention softmax of a random-weight model): its range is the same under minmax
                log.warning("%s calibration of %s failed (%s): calibrating with minmax instead", method, fp32.name, exc)
                calib, method = _method("minmax"), "minmax"
                extra.pop("CalibPercentile", None)
                run()
            except Exception as exc:  # ORT's quantizer raises many types
                raise QuantizationError(f"ONNX Runtime could not quantize {fp32.name} with the {recipe.target} "
                                        f"recipe: {type(exc).__name__}: {exc}") from exc

        if signed:
            if not Path(cache).is_file():
                run()  # calibrates and writes the ranges the overrides come from
            negative = signed_activation_tensors(Path(cache), {i.name for i in model.graph.input})
            overrides = dict(extra.get("TensorQuantOverrides", {}))
            for name in negative:
                overrides[name] = [{**overrides.get(name, [{}])[0], "quant_type": QuantType.QInt8,
                                    "symmetric": True}]
            extra["TensorQuantOverrides"] = overrides
        run()
        q = onnx.load(str(raw))
    if recipe.float_consumers_read_float:
        reconnect_float_consumers(q, set(selected))
    if recipe.cnn_attention and convolutional:
        drop_requantization(q)
    props = {"edgeclip.version": __version__, "edgeclip.precision": "int8", "edgeclip.int8_target": recipe.target,
             "edgeclip.int8_recipe": recipe.name, "edgeclip.calib_method": method}
    if recipe.cnn_signed_activations or recipe.cnn_attention:  # whether the recipe's cnn_* choices applied
        props["edgeclip.int8_graph"] = "convolutional" if convolutional else "transformer"
    keep = {p.key: p.value for p in q.metadata_props if not p.key.startswith("edgeclip.")}
    del q.metadata_props[:]
    for k, v in {**keep, **props}.items():
        q.metadata_props.add(key=k, value=str(v))
    q.producer_name, q.producer_version = "edgeclip", __version__
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(q, str(out))
    onnx.checker.check_model(str(out))
    return out


def signed_activation_tensors(ranges: Path, keep: set[str]) -> list[str]:
    """The tensors whose calibrated range in ``ranges`` (ONNX Runtime's calibration cache) reaches below
    zero, except those in ``keep``: the activations to quantize as signed int8 (an override for a tensor
    the recipe does not quantize is not used)."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    data = load_tensors_data(ranges).data
    return sorted(t for t, d in data.items() if t not in keep and float(np.min(d.range_value[0])) < 0.0)


def _by_type(model: Any, op_types: Sequence[str]) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type in op_types]


def foldable_activations(model: Any, producers: Sequence[str],
                         op_types: Sequence[str] = FOLDABLE_ACTIVATIONS) -> list[str]:
    """Names of the ``op_types`` activations that are the only reader of the output of one of ``producers``.

    A Clip qualifies only when bounded below by exactly 0 (ReLU6-style ``Clip(0, max)``, constant bounds):
    folding removes it and relies on the U8 quantizer's range, which always starts at 0 or below, so any
    other lower bound would no longer be applied.
    """
    names = set(producers)
    producer = {o: n.name for n in model.graph.node for o in n.output}
    readers: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    consts = _constants(model)
    return [n.name for n in model.graph.node if n.op_type in op_types and n.op_type in FOLDABLE_ACTIVATIONS
            and n.name and n.input and producer.get(n.input[0]) in names and readers.get(n.input[0]) == 1
            and (n.op_type != "Clip" or _clip_min(n, consts) == 0.0)]


def _constants(model: Any) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs of ``model``, as arrays."""
    from onnx import numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output:
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            if value is not None:
                out[n.output[0]] = numpy_helper.to_array(value)
    return out


def _clip_min(node: Any, consts: dict[str, np.ndarray]) -> float | None:
    """The constant lower bound of a Clip node (None when absent or not constant)."""
    attr = next((a.f for a in node.attribute if a.name == "min"), None)  # opset < 11
    if attr is not None:
        return float(attr)
    if len(node.input) > 1 and node.input[1] in consts and consts[node.input[1]].size == 1:
        return float(consts[node.input[1]].reshape(()))
    return None


def reconnect_float_consumers(model: Any, quantized: set[str]) -> None:
    """Make every consumer that is not a quantized node read the float tensor instead of ``DQ(Q(x))``.

    ONNX Runtime's quantizer rewires *all* consumers of a quantized activation to the DequantizeLinear
    output, so a residual Add or a Shape next to a quantized MatMul would read the quantized copy. For
    TensorRT that puts Q/DQ pairs where they do not belong; this puts the float tensor back and drops Q/DQ
    nodes left without consumers.
    """
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    for node in nodes:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or node.name in quantized:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                continue  # a DQ of a constant weight (only quantized nodes read those)
            node.input[i] = q.input[0]
    _drop_unread_qdq(model)


def drop_requantization(model: Any) -> list[str]:
    """Let the readers of ``DQ(Q(x))`` read ``x`` itself when ``x`` is only a reshape/transpose of a
    dequantized tensor: its values are already on that quantizer's grid, so a second quantizer would only
    round them again (and cost a requantization). Returns the tensors freed."""
    producer = {o: n for n in model.graph.node for o in n.output}

    def moved_from_dq(tensor: str) -> bool:
        node = producer.get(tensor)
        if node is None or node.op_type not in MOVEMENT_OPS:
            return False
        while node is not None and node.op_type in MOVEMENT_OPS:
            node = producer.get(node.input[0])
        return node is not None and node.op_type == "DequantizeLinear"

    freed = []
    for q in [n for n in model.graph.node if n.op_type == "QuantizeLinear" and moved_from_dq(n.input[0])]:
        dqs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]}
        for node in model.graph.node:
            for k, name in enumerate(node.input):
                if name in dqs:
                    node.input[k] = q.input[0]
        freed.append(q.input[0])
    _drop_unread_qdq(model)
    return freed


def _drop_unread_qdq(model: Any) -> None:
    """Remove the Q/DQ nodes whose outputs nobody reads any more, and the initializers left unused."""
    outputs = {o.name for o in model.graph.output}
    while True:
        used = {i for n in model.graph.node for i in n.input} | outputs
        dead = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    used = {i for n in model.graph.node for i in n.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)


def ranges_cache_name(calib_key: str, fp32_sha: str, recipe: Recipe, method: str) -> str:
    """File name (in the bundle's ``.work``) of the calibrated ranges for this set, model, recipe, method."""
    import hashlib

    key = [calib_key, fp32_sha, recipe.activation_symmetric, list(recipe.op_types), method, recipe.percentile,
           __version__]
    if recipe.fold_activations:  # folding calibrates the activations' outputs too
        key.append(sorted(recipe.fold_activations))
    if recipe.activation_ops:  # so do the inputs of these
        key.append(sorted(recipe.activation_ops))
    if recipe.cnn_attention:  # and, in a convolutional graph, those of the attention head
        key.append("cnn_attention")
    h = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
    return f"ranges-{h}.json"
