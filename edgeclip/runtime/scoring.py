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


def probabilities(cosine: np.ndarray, logit_scale: float, logit_bias: float = 0.0,
                  scoring: str = "softmax") -> np.ndarray:
    """``scoring(logit_scale * cosine + logit_bias)`` over the labels (last axis)."""
    function = globals()[pick(SCORINGS, scoring, "scoring").function]
    return function(logit_scale * cosine + logit_bias)
