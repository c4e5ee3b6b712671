"""An INT8 text encoder for relabelling on the device, measured against fp32 on label embeddings.

The text encoder only runs when labels change (``edgeclip labels``, ``set_labels``), on ONNX Runtime's CPU
provider, so it is quantized for size rather than speed: ONNX Runtime's dynamic quantization (weights of
every MatMul int8 per channel, activations quantized per batch at run time; no calibration set), and the
token embedding table (a Gather) int8 too, which is most of a CLIP text tower's bytes. A bundle's labels
keep the fp32 embeddings made at export; the INT8 encoder is checked by re-embedding them
(:func:`label_agreement`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import QuantizationError
from .recipes import quiet_onnxruntime

log = logging.getLogger("edgeclip.quant")

#: what ``quantize_text_encoder`` writes, as recorded in the manifest
TEXT_RECIPE = "text-dynamic-s8-per-channel"


def quantize_text_encoder(src: Path, dst: Path) -> dict[str, Any]:
    """Write the INT8 (dynamic) version of the fp32 text encoder ``src`` to ``dst``; returns its record."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        with quiet_onnxruntime():
            quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gather"], per_channel=True,
                             weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True})
    except Exception as exc:  # ORT's quantizer raises many types
        raise QuantizationError(f"ONNX Runtime could not quantize {Path(src).name} to INT8: {type(exc).__name__}: "
                                f"{exc}") from exc
    model = onnx.load(str(dst), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    props.update({"edgeclip.precision": "int8", "edgeclip.int8_recipe": TEXT_RECIPE})
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=str(v))
    onnx.save_model(model, str(dst))
    onnx.checker.check_model(str(dst))
    ops = sorted({n.op_type for n in model.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeLinear",
                                                                         "DequantizeLinear", "GatherBlockQuantized")})
    return {"recipe": TEXT_RECIPE, "quantized_ops": ops}


def label_agreement(fp32: np.ndarray, int8: np.ndarray) -> dict[str, Any]:
    """INT8 label embeddings against the fp32 ones (same labels, same order, L2-normalised rows): cosine per
    label, and whether each INT8 embedding is still nearest to its own fp32 label."""
    a = fp32 / np.linalg.norm(fp32, axis=1, keepdims=True)
    b = int8 / np.linalg.norm(int8, axis=1, keepdims=True)
    cos = (a * b).sum(1)
    nearest = (b @ a.T).argmax(1)
    return {"labels": int(len(a)), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "own_label_nearest": float((nearest == np.arange(len(a))).mean())}


def zero_shot_agreement(image_embeds: np.ndarray, fp32: np.ndarray, int8: np.ndarray) -> dict[str, Any]:
    """Top-1 agreement of zero-shot labels of ``image_embeds`` against the fp32 and the INT8 label embeddings."""
    x = image_embeds / np.linalg.norm(image_embeds, axis=1, keepdims=True)
    same = (x @ fp32.T).argmax(1) == (x @ int8.T).argmax(1)
    return {"images": int(len(x)), "top1_agreement": float(same.mean())}


def embed_with(encode: Callable[[list[str]], np.ndarray], labels: Sequence[Any], templates: Sequence[str]) -> np.ndarray:
    """Label embeddings of ``labels`` (``edgeclip.runtime.labels.Label``) with an encoder, as export makes them."""
    from ..runtime.labels import embed_labels

    return embed_labels(labels, templates, encode)
