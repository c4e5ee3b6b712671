"""Scoring kinds: label probabilities from cosine similarities, as the bundle's manifest says
(``model.scoring``; the kinds are rows of ``edgeclip.tables.SCORINGS``, their functions live here)."""
from __future__ import annotations

import numpy as np

from ..tables import SCORINGS, pick


def softmax(z: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function, element-wise: each label scored on its own (SigLIP)."""
    z = np.asarray(z, dtype=np.result_type(z, np.float32))
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def is_exclusive(scoring: str) -> bool:
    """Whether the probabilities of ``scoring`` over the labels sum to 1 (one label wins)."""
    return pick(SCORINGS, scoring, "scoring").exclusive


def probabilities(cosine: np.ndarray, logit_scale: float, logit_bias: float = 0.0,
                  scoring: str = "softmax") -> np.ndarray:
    """``scoring(logit_scale * cosine + logit_bias)`` over the labels (last axis).

    ``softmax``: one distribution over the labels (CLIP); ``sigmoid``: each label's own probability that it
    matches (SigLIP), independent of the other labels, so they need not sum to 1.
    """
    function = globals()[pick(SCORINGS, scoring, "scoring").function]
    return function(logit_scale * cosine + logit_bias)
