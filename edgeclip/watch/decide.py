"""The state of one region: smoothed probabilities, a margin, a minimum dwell, and "unknown".

``RegionState.update(probs, t)`` folds one classification (timestamp ``t`` in seconds) into an exponential
moving average with a half-life in seconds (``edgeclip.stream.decisions.EmaSmoother``), then decides: the
first classification sets the state at once; afterwards a challenger must beat the current state's smoothed
score by ``margin`` continuously for ``dwell`` seconds before the state changes. With a ``threshold``,
"unknown" competes as a state whose score is the threshold. Timestamps are frame times, so the rule is the
same whether a region is classified at 30 fps or, gated by motion, now and then.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..stream.decisions import UNKNOWN, Decision, EmaSmoother, HalfLife
from .config import RegionSettings


class RegionState:
    """Decides one region's reported state from its classifications (see the module doc)."""

    def __init__(self, names: Sequence[str], settings: RegionSettings) -> None:
        self.names = list(names)
        self.threshold, self.margin, self.dwell = settings.threshold, settings.margin, settings.dwell
        self.smoother = EmaSmoother(HalfLife(settings.half_life, "s"))
        self.current: int | None = None  # index, -1 unknown, None: nothing decided yet
        self.candidate: int | None = None
        self.since = 0.0
        self.smoothed: np.ndarray | None = None
        self.changed_at: float | None = None

    @property
    def label(self) -> str | None:
        return self._name(self.current)

    def _name(self, index: int | None) -> str | None:
        if index is None:
            return None
        return UNKNOWN if index < 0 else self.names[index]

    def _score(self, scores: np.ndarray, index: int) -> float:
        return self.threshold if index < 0 else float(scores[index])

    def update(self, probs: np.ndarray, t: float) -> Decision:
        """One classification at time ``t`` -> the state after smoothing, margin and dwell."""
        scores = self.smoother.update(probs, t)
        self.smoothed = scores
        best = int(np.argmax(scores))
        proposed = best if (self.threshold <= 0 or scores[best] >= self.threshold) else -1
        previous = self.current
        if self.current is None:
            self.current, self.changed_at = proposed, t
        elif proposed != self.current and \
                self._score(scores, proposed) >= self._score(scores, self.current) + self.margin:
            if proposed != self.candidate:
                self.candidate, self.since = proposed, t
            if t - self.since >= self.dwell:
                self.current, self.candidate, self.changed_at = proposed, None, t
        else:
            self.candidate = None
        cur = self.current
        score = float(scores[best]) if cur < 0 else float(scores[cur])
        return Decision(self._name(cur), cur, score, changed=cur != previous, previous=self._name(previous))
