"""How closely an INT8 image model follows fp32: output cosine and top-1 agreement.

Two kinds of image model: a CLIP image encoder (outputs are embeddings; its label is the zero-shot label
against the label embeddings ``labels``) and a plain classifier (``labels=None``: outputs are class logits
and its label is the argmax).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def run_onnx(path: Path, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Raw embeddings of ``images`` from an ONNX image encoder on ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: np.ascontiguousarray(images[i:i + batch_size], dtype=np.float32)})[0]
            for i in range(0, len(images), batch_size)]
    return np.concatenate(outs, axis=0)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def zero_shot_probs(embeds: np.ndarray, labels: np.ndarray | None, logit_scale: float) -> np.ndarray:
    """softmax(logit_scale * cosine(image, label)) over the labels, [N, L] float64.

    ``labels=None``: ``embeds`` are a classifier's logits, and this is softmax(logit_scale * logits).
    """
    if labels is None:
        z = logit_scale * np.asarray(embeds, dtype=np.float64)
    else:
        z = logit_scale * (_unit(embeds) @ _unit(labels).T)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def compare(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None,
            logit_scale: float) -> dict[str, Any]:
    """Agreement of ``candidate`` embeddings with ``reference`` (same images).

    ``labels=None``: the outputs are classifier logits (see ``zero_shot_probs``).
    ``top1_agreement``: share of images whose zero-shot label is the same; ``mean_cosine`` /
    ``min_cosine``: embedding cosine; ``mean_kl``: KL(reference || candidate) of the label probabilities.
    """
    ref, cand = _unit(reference), _unit(candidate)
    cos = (ref * cand).sum(-1)
    p = zero_shot_probs(reference, labels, logit_scale)
    q = zero_shot_probs(candidate, labels, logit_scale)
    kl = (p * (np.log(np.maximum(p, 1e-12)) - np.log(np.maximum(q, 1e-12)))).sum(-1)
    return {"top1_agreement": float((p.argmax(-1) == q.argmax(-1)).mean()), "mean_cosine": float(cos.mean()),
            "min_cosine": float(cos.min()), "mean_kl": float(kl.mean()), "images": int(len(ref))}


def drop_points(agreement: dict[str, Any]) -> float:
    """Top-1 disagreement with fp32 in percentage points (what ``max_drop`` bounds)."""
    return 100.0 * (1.0 - float(agreement["top1_agreement"]))
