"""ONNX operators the TensorRT ONNX parser imports, kept as data for the readiness check.

Source: the operator support matrix of onnx-tensorrt (``docs/operators.md``, rows marked ``Y`` in the
TensorRT 10.x release) and its changelog for the release that added an operator. Operators not in
``ADDED_IN`` are assumed present in TensorRT 8.2 (the oldest release edgeclip targets: Jetson Nano).
Per-operator restrictions that matter to CLIP models are checked in ``readiness``.
"""
from __future__ import annotations

#: Operators of the default ONNX domain supported by the TensorRT 10.x ONNX parser.
TRT10_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten
Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater
GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax
Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log
LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish
Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear
RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2
ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu
Reshape Resize ReverseSequence RMSNormalization RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan
Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

#: The TensorRT release whose ONNX parser first imports an operator (later than 8.2 only).
ADDED_IN = {
    "Shrink": "8.4", "Xor": "8.4",
    "Mod": "8.5", "Trilu": "8.5", "GridSample": "8.5", "NonZero": "8.5", "MeanVarianceNormalization": "8.5",
    "RoiAlign": "8.5", "RandomNormal": "8.5", "RandomNormalLike": "8.5", "OneHot": "8.5", "Reciprocal": "8.5",
    "HardSwish": "8.5",
    "LayerNormalization": "8.6", "GroupNormalization": "8.6", "IsInf": "8.6",
    "Hardmax": "9.2",
    # first listed in the 10.x matrix; the release that added them is not in the changelog
    "CastLike": "10.0", "Gelu": "10.0", "Mish": "10.0",
    "DeformConv": "10.1",
    "BlackmanWindow": "10.4", "HammingWindow": "10.4", "HannWindow": "10.4",
    "STFT": "10.5",
    "Attention": "10.14",
    "RMSNormalization": "10.15", "RotaryEmbedding": "10.15", "TensorScatter": "10.15",
}

def parse_version(version: str) -> tuple[int, ...]:
    """``"10.3.0.26"`` -> ``(10, 3, 0, 26)``; non-numeric parts end the tuple."""
    out = []
    for part in str(version).split("."):
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def op_support(op_type: str, tensorrt: str = "10.0") -> str | None:
    """None if TensorRT ``tensorrt`` imports ``op_type``; otherwise why not."""
    if op_type not in TRT10_OPS:
        return f"{op_type} is not in the TensorRT ONNX parser's operator support matrix"
    added = ADDED_IN.get(op_type)
    if added and parse_version(tensorrt)[:2] < parse_version(added)[:2]:
        return f"{op_type} needs TensorRT >= {added} (target is {tensorrt})"
    return None
