"""From per-frame probabilities to a stable label: EMA smoothing, hysteresis, "unknown", region of interest.

Pure numpy and the standard library, so every rule is easy to unit-test.

* :class:`EmaSmoother` averages probability vectors with an exponential moving average whose *half-life*
  is given in seconds (using frame timestamps, so irregular frame rates and dropped frames are handled) or
  in frames. After one half-life the weight of an old observation has halved:
  ``alpha = 1 - 0.5 ** (dt / half_life)`` is the weight of the new frame.
* :class:`LabelDecider` turns smoothed scores into a label with hysteresis: a challenger must beat the
  current label's score by ``margin`` for ``min_frames`` consecutive frames before the label changes.
  With a ``threshold``, "unknown" is a virtual class whose score is the threshold: the label becomes
  unknown when the current label's score falls to ``threshold - margin`` and leaves unknown when a label
  reaches ``threshold + margin`` (the same rule, so the band around the threshold does not flicker).
* :class:`Roi` is a region of interest ``x,y,w,h`` in pixels (integers) or in fractions of the frame
  (numbers with a decimal point, all in [0, 1]).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import OptionError

UNKNOWN = "unknown"


# ---------------------------------------------------------------------------------------------------------
# half-life and EMA
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HalfLife:
    """A half-life: ``value`` seconds (``unit="s"``) or frames (``unit="frames"``); 0 disables smoothing."""

    value: float
    unit: str = "s"

    def __post_init__(self) -> None:
        if self.unit not in ("s", "frames"):
            raise OptionError(f"half-life unit must be 's' or 'frames', got {self.unit!r}")
        if not (math.isfinite(self.value) and self.value >= 0):
            raise OptionError(f"half-life must be a finite number >= 0, got {self.value!r}")

    @classmethod
    def parse(cls, text: str | float) -> "HalfLife":
        """``"0.5"``/``"0.5s"``/``"500ms"`` (seconds) or ``"5f"``/``"5frames"`` (frames)."""
        s = str(text).strip().lower()
        for suffix, unit, scale in (("frames", "frames", 1.0), ("frame", "frames", 1.0), ("f", "frames", 1.0),
                                    ("ms", "s", 1e-3), ("s", "s", 1.0), ("", "s", 1.0)):
            if s.endswith(suffix):
                number = s[:len(s) - len(suffix)].strip() if suffix else s
                try:
                    return cls(float(number) * scale, unit)
                except ValueError:
                    break
        raise OptionError(f"half-life {text!r} is not understood; use seconds (0.5, 0.5s, 500ms) or "
                          f"frames (5f)")

    def __str__(self) -> str:
        return f"{self.value:g}{'s' if self.unit == 's' else ' frames'}"


def ema_weight(dt: float, half_life: float) -> float:
    """Weight of a new observation ``dt`` after the previous one: ``1 - 0.5 ** (dt / half_life)``.

    ``half_life <= 0`` means no smoothing (weight 1); ``dt <= 0`` gives weight 0 (no time has passed).
    """
    if half_life <= 0:
        return 1.0
    if dt <= 0:
        return 0.0
    return 1.0 - 0.5 ** (dt / half_life)


class EmaSmoother:
    """Exponential moving average of probability vectors, timed by frame timestamps or frame counts."""

    def __init__(self, half_life: HalfLife | float = 0.0) -> None:
        self.half_life = half_life if isinstance(half_life, HalfLife) else HalfLife(float(half_life))
        self.reset()

    def reset(self) -> None:
        """Forget the history (e.g. after the label set changed)."""
        self.state: np.ndarray | None = None
        self.last_t: float | None = None

    def update(self, probs: np.ndarray, t: float | None = None) -> np.ndarray:
        """Fold in one frame's probabilities (timestamp ``t`` in seconds) and return the smoothed vector."""
        p = np.asarray(probs, dtype=np.float64)
        if self.state is None or self.state.shape != p.shape:
            self.state, self.last_t = p.copy(), t
            return self.state.copy()
        if self.half_life.unit == "frames":
            dt = 1.0
        elif t is None or self.last_t is None:
            raise OptionError("a half-life in seconds needs frame timestamps; pass t, or use a half-life in frames")
        else:
            dt = t - self.last_t
        w = ema_weight(dt, self.half_life.value)
        self.state = (1.0 - w) * self.state + w * p
        if t is not None and (self.last_t is None or t > self.last_t):
            self.last_t = t
        return self.state.copy()


# ---------------------------------------------------------------------------------------------------------
# hysteresis and unknown
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Decision:
    """The label after hysteresis: ``index`` is -1 for unknown; ``changed`` on the frame it switched."""

    label: str
    index: int
    score: float
    changed: bool
    previous: str | None = None


class LabelDecider:
    """Stable labels from smoothed scores: margin + hysteresis (``min_frames`` consecutive frames and, with
    ``dwell``, that many seconds of the frames' times), and an unknown threshold."""

    def __init__(self, names: Sequence[str], threshold: float = 0.0, margin: float = 0.0,
                 min_frames: int = 1, unknown: str = UNKNOWN, dwell: float = 0.0) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise OptionError(f"threshold must be in [0, 1] (a probability), got {threshold}")
        if not 0.0 <= margin < 1.0:
            raise OptionError(f"hysteresis margin must be in [0, 1), got {margin}")
        if int(min_frames) != min_frames or min_frames < 1:
            raise OptionError(f"min-frames must be an integer >= 1, got {min_frames}")
        self.threshold, self.margin, self.min_frames = float(threshold), float(margin), int(min_frames)
        self.unknown, self.dwell = unknown, float(dwell)
        self.set_names(names)

    def set_names(self, names: Sequence[str]) -> None:
        """Use a new label set; the current label and streak are forgotten."""
        self.names = list(names)
        self.reset()

    def reset(self) -> None:
        self.current: int | None = None  # label index, -1 = unknown, None = nothing decided yet
        self.candidate: int | None = None
        self.streak = 0
        self.since = 0.0  # when the candidate first beat the current label

    @property
    def label(self) -> str | None:
        """The decided label (None before the first update)."""
        return self._name(self.current)

    def _name(self, index: int | None) -> str | None:
        if index is None:
            return None
        return self.unknown if index < 0 else self.names[index]

    def _score(self, scores: np.ndarray, index: int) -> float:
        return self.threshold if index < 0 else float(scores[index])

    def update(self, scores: np.ndarray, t: float = 0.0) -> Decision:
        """One frame's (smoothed) scores, at time ``t`` in seconds (used with ``dwell``) -> the decided label."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(self.names),):
            raise OptionError(f"expected {len(self.names)} scores, got shape {scores.shape}")
        best = int(np.argmax(scores))
        # "unknown" competes as a virtual class scoring `threshold`; real labels win ties
        proposed = best if (self.threshold <= 0 or scores[best] >= self.threshold) else -1
        previous = self.current
        if self.current is None:
            self.current, self.candidate, self.streak = proposed, None, 0
        elif proposed != self.current and \
                self._score(scores, proposed) >= self._score(scores, self.current) + self.margin:
            if proposed != self.candidate:
                self.streak, self.since = 0, t
            self.streak += 1
            self.candidate = proposed
            if self.streak >= self.min_frames and t - self.since >= self.dwell:
                self.current, self.candidate, self.streak = proposed, None, 0
        else:
            self.candidate, self.streak = None, 0
        cur = self.current
        score = float(scores[best]) if cur < 0 else float(scores[cur])
        return Decision(self._name(cur), cur, score, changed=cur != previous, previous=self._name(previous))


# ---------------------------------------------------------------------------------------------------------
# region of interest
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Roi:
    """A region ``(x, y, w, h)``: pixels, or fractions of the frame when ``relative``."""

    x: float
    y: float
    w: float
    h: float
    relative: bool = False

    @classmethod
    def parse(cls, text: str) -> "Roi":
        """``"x,y,w,h"``: integers are pixels; numbers with a decimal point are fractions of the frame."""
        parts = [p.strip() for p in str(text).split(",")]
        if len(parts) != 4:
            raise OptionError(f"ROI {text!r} must be 4 comma-separated numbers x,y,w,h (pixels, or fractions "
                              f"like 0.25,0.25,0.5,0.5)")
        relative = any("." in p or "e" in p.lower() for p in parts)
        try:
            vals = [float(p) if relative else int(p) for p in parts]
        except ValueError:
            raise OptionError(f"ROI {text!r}: {', '.join(parts)} are not all numbers") from None
        roi = cls(*vals, relative=relative)
        if relative:
            if not all(0.0 <= v <= 1.0 for v in vals) or roi.w <= 0 or roi.h <= 0 \
                    or roi.x + roi.w > 1.0 + 1e-9 or roi.y + roi.h > 1.0 + 1e-9:
                raise OptionError(f"ROI {text!r} in fractions needs 0 <= x, y and x + w, y + h <= 1 with w, h > 0")
        elif min(vals) < 0 or roi.w < 1 or roi.h < 1:
            raise OptionError(f"ROI {text!r} in pixels needs x, y >= 0 and w, h >= 1")
        return roi

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The region in pixels of a ``width`` x ``height`` frame; OptionError if it does not fit."""
        if self.relative:
            x, y = int(round(self.x * width)), int(round(self.y * height))
            w = max(1, min(int(round(self.w * width)), width - x))
            h = max(1, min(int(round(self.h * height)), height - y))
        else:
            x, y, w, h = int(self.x), int(self.y), int(self.w), int(self.h)
        if x < 0 or y < 0 or x + w > width or y + h > height or w < 1 or h < 1:
            raise OptionError(f"ROI x={x},y={y},w={w},h={h} does not fit the {width}x{height} frame; "
                              f"pass a smaller `roi` (or fractions such as 0.25,0.25,0.5,0.5)")
        return x, y, w, h

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The region of an [H, W, ...] image (a view, no copy)."""
        x, y, w, h = self.pixels(image.shape[1], image.shape[0])
        return image[y:y + h, x:x + w]
