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

from ..stream.decisions import Decision, EmaSmoother, HalfLife, LabelDecider
from .config import RegionSettings


class RegionState:
    """Decides one region's reported state from its classifications (see the module doc): the stream's EMA and
    label decider, with the hysteresis held for ``dwell`` seconds instead of a number of frames."""

    def __init__(self, names: Sequence[str], settings: RegionSettings) -> None:
        self.names = list(names)
        self.smoother = EmaSmoother(HalfLife(settings.half_life, "s"))
        self.decider = LabelDecider(self.names, settings.threshold, settings.margin, dwell=settings.dwell)
        self.smoothed: np.ndarray | None = None

    @property
    def current(self) -> int | None:
        """The state's index, -1 unknown, None before the first classification."""
        return self.decider.current

    @property
    def label(self) -> str | None:
        return self.decider.label

    def update(self, probs: np.ndarray, t: float) -> Decision:
        """One classification at time ``t`` -> the state after smoothing, margin and dwell."""
        self.smoothed = self.smoother.update(probs, t)
        return self.decider.update(self.smoothed, t)
