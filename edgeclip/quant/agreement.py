"""How closely an INT8 image model follows fp32: output cosine and top-1 agreement.

Two kinds of image model: a CLIP image encoder (outputs are embeddings; its label is the zero-shot label
against the label embeddings ``labels``, scored as the bundle says: :class:`LabelScoring`) and a plain
classifier (``labels=None``: outputs are class logits and its label is the argmax).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..runtime.scoring import is_exclusive, probabilities


@dataclass(frozen=True)
class LabelScoring:
    """How cosines become label probabilities: ``scoring(logit_scale * cosine + logit_bias)`` (the manifest's
    ``model.logit_scale``, ``model.logit_bias`` and ``model.scoring``)."""

    logit_scale: float
    logit_bias: float = 0.0
    scoring: str = "softmax"

    @classmethod
    def of(cls, scoring: "Scoring") -> "LabelScoring":
        """A plain number is a softmax logit scale (CLIP)."""
        return scoring if isinstance(scoring, LabelScoring) else cls(float(scoring))

    @classmethod
    def of_bundle(cls, bundle: Any) -> "LabelScoring":
        """The scoring a bundle's manifest records."""
        model = bundle.info.model
        return cls(model.logit_scale, model.logit_bias, model.scoring)


#: a :class:`LabelScoring`, or a number: the logit scale of a softmax
Scoring = Union[LabelScoring, float]


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


def zero_shot_probs(embeds: np.ndarray, labels: np.ndarray | None, logit_scale: Scoring) -> np.ndarray:
    """Label probabilities ``scoring(logit_scale * cosine(image, label) + logit_bias)``, [N, L] float64.

    ``logit_scale``: a :class:`LabelScoring`, or a number (a softmax's scale). ``labels=None``: ``embeds``
    are a classifier's logits, and this is softmax(logit_scale * logits).
    """
    s = LabelScoring.of(logit_scale)
    if labels is None:
        return probabilities(np.asarray(embeds, dtype=np.float64), s.logit_scale)
    return probabilities(_unit(embeds) @ _unit(labels).T, s.logit_scale, s.logit_bias, s.scoring)


def kl_divergence(p: np.ndarray, q: np.ndarray, exclusive: bool = True) -> np.ndarray:
    """KL(p || q) per row: of the label distributions (``exclusive``), else the mean over labels of the
    Bernoulli KL of each label's own probability (sigmoid scoring)."""
    lp, lq = np.log(np.maximum(p, 1e-12)), np.log(np.maximum(q, 1e-12))
    if exclusive:
        return (p * (lp - lq)).sum(-1)
    lp1, lq1 = np.log(np.maximum(1.0 - p, 1e-12)), np.log(np.maximum(1.0 - q, 1e-12))
    return (p * (lp - lq) + (1.0 - p) * (lp1 - lq1)).mean(-1)


def compare(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None,
            logit_scale: Scoring) -> dict[str, Any]:
    """Agreement of ``candidate`` embeddings with ``reference`` (same images).

    ``labels=None``: the outputs are classifier logits (see ``zero_shot_probs``).
    ``top1_agreement``: share of images whose zero-shot label is the same; ``mean_cosine`` /
    ``min_cosine``: embedding cosine; ``mean_kl``: KL(reference || candidate) of the label probabilities
    (``kl_divergence``).
    """
    ref, cand = _unit(reference), _unit(candidate)
    cos = (ref * cand).sum(-1)
    s = LabelScoring.of(logit_scale)
    p = zero_shot_probs(reference, labels, s)
    q = zero_shot_probs(candidate, labels, s)
    kl = kl_divergence(p, q, labels is None or is_exclusive(s.scoring))
    return {"top1_agreement": float((p.argmax(-1) == q.argmax(-1)).mean()), "mean_cosine": float(cos.mean()),
            "min_cosine": float(cos.min()), "mean_kl": float(kl.mean()), "images": int(len(ref))}


def drop_points(agreement: dict[str, Any]) -> float:
    """Top-1 disagreement with fp32 in percentage points (what ``max_drop`` bounds)."""
    return 100.0 * (1.0 - float(agreement["top1_agreement"]))
