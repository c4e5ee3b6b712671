"""Exporting each CLIP tower to its own ONNX file, checked against torch on the spot.

Image encoder: input ``pixel_values`` float32 [batch, 3, H, W] (preprocessed, NCHW, RGB, normalised)
-> output ``image_embeds`` float32 [batch, D] (not L2-normalised).
Text encoder: input ``input_ids`` int64 [batch, context_length] (CLIP BPE, start/end tokens, zero padded)
-> output ``text_embeds`` float32 [batch, D] (not L2-normalised).
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._version import __version__
from ..errors import ExportError, ParityShapeError, ParityToleranceError

log = logging.getLogger("edgeclip.export")

MIN_OPSET = 17
DEFAULT_OPSET = 17
PROTOBUF_LIMIT = 2 * 1024 ** 3

IO_DOCS = {
    "pixel_values": "float32 [batch, 3, H, W]: RGB image, resized/cropped and normalised as manifest.preprocess says",
    "image_embeds": "float32 [batch, embed_dim]: image embedding, not L2-normalised",
    "input_ids": "int64 [batch, context_length]: CLIP BPE ids, <start>, tokens, <end>, zero padding",
    "text_embeds": "float32 [batch, embed_dim]: text embedding, not L2-normalised",
}


@dataclass
class Tolerance:
    """Parity limits: max abs difference relative to the output's scale, and minimum cosine."""

    max_abs: float = 1e-4
    min_cosine: float = 0.99999


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str,
                opset: int = DEFAULT_OPSET, metadata: dict[str, str] | None = None,
                external_data: bool | None = None) -> list[Path]:
    """Export ``module`` (one input, one output) with a dynamic batch axis; returns the files written.

    Weights go to an external-data file (``<name>.data`` beside the model) when ``external_data`` is true,
    or, by default, when they would pass protobuf's 2 GB limit.
    """
    import onnx

    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: use `opset` {MIN_OPSET} or newer "
                          f"(LayerNormalization must stay one op for TensorRT FP16)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    if external_data is None:
        external_data = sum(p.numel() * p.element_size() for p in module.parameters()) > PROTOBUF_LIMIT * 0.9
    # grad stays enabled: under no_grad nn.MultiheadAttention takes a fused fast path with no ONNX mapping
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=[output_name],
                              dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        except Exception as exc:  # the exporter raises many types
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
            raise ExportError(f"ONNX export of {path.name} failed: {type(exc).__name__}: {reason}") from exc
    model = onnx.load(str(path), load_external_data=True)
    for name in (input_name, output_name):
        for v in list(model.graph.input) + list(model.graph.output):
            if v.name == name:
                v.doc_string = IO_DOCS.get(name, "")
    props = {"edgeclip.version": __version__, **(metadata or {})}
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=str(v))
    model.producer_name = "edgeclip"
    model.producer_version = __version__
    written = [path]
    for stale in path.parent.glob(path.name + ".data"):
        stale.unlink()
    if external_data:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
        written.append(path.with_name(path.name + ".data"))
    else:
        onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path))
    return written


def check_parity(module: nn.Module, path: Path, inputs: list[torch.Tensor],
                 tol: Tolerance = Tolerance()) -> dict[str, Any]:
    """Run torch and ONNX Runtime on the same inputs; ParityShapeError or ParityToleranceError past ``tol``.

    Returns the numbers recorded in the manifest: max abs difference, relative max abs difference
    (divided by the largest torch output magnitude), minimum cosine, and the batch sizes tried.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    max_abs, rel, min_cos = 0.0, 0.0, 1.0
    for x in inputs:
        with torch.no_grad():
            ref = module(x).float().numpy().astype(np.float64)
        got = sess.run(None, {name: x.numpy()})[0].astype(np.float64)
        if got.shape != ref.shape:
            raise ParityShapeError(f"{path.name}: output shape {got.shape} differs from the source model's "
                                   f"{ref.shape}; the export traced another graph than the model runs",
                                   {"shape": list(got.shape), "expected_shape": list(ref.shape),
                                    "batch": int(x.shape[0])})
        diff = float(np.abs(got - ref).max())
        cos = (got * ref).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1) + 1e-12)
        max_abs = max(max_abs, diff)
        rel = max(rel, diff / max(float(np.abs(ref).max()), 1e-12))
        min_cos = min(min_cos, float(cos.min()))
    numbers = {"max_abs_diff": max_abs, "rel_max_abs_diff": rel, "min_cosine": min_cos,
               "batches": [int(x.shape[0]) for x in inputs], "tolerance": {"max_abs": tol.max_abs,
                                                                           "min_cosine": tol.min_cosine}}
    # small models are judged by the absolute difference, large ones relative to their output scale
    if min(max_abs, rel) > tol.max_abs or min_cos < tol.min_cosine:
        raise ParityToleranceError(f"{path.name} disagrees with torch: max abs diff {max_abs:.3g} (relative "
                                   f"{rel:.3g}, limit {tol.max_abs:.3g}), min cosine {min_cos:.6f} (limit "
                                   f"{tol.min_cosine}); try another opset or report the model", numbers)
    return numbers


def image_parity_inputs(size: tuple[int, int], seed: int = 0) -> list[torch.Tensor]:
    """Fixed inputs for the image tower: normalised-range noise at batch 1 and 3 (dynamic batch)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, *size, generator=g) for n in (1, 3)]
