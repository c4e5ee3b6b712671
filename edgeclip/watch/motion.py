"""Motion gating: classify a region only when it changed.

Per region and frame (about 0.1 ms for a 300x200 region):

1. the region's box is turned grey and shrunk to at most ``cells`` cells on its longest side (area
   averaging, so sensor noise averages out);
2. it is compared with the region's *background*, the same small grey image averaged slowly over time
   (an exponential moving average with a half-life of ``background`` seconds of frame time);
3. (polygons: pixels outside the polygon are blacked out first, and only cells mostly inside count)
   the median difference over the region is subtracted first, so a uniform brightness change (clouds,
   auto-exposure, dusk) is not motion; what is left must exceed ``level`` grey levels in at least ``area`` of
   the cells (polygon regions count only their inside cells);
4. the background then takes the new image in with the EMA weight, so slow lighting drift follows it;
5. a change that has stood still (the same rule against the previous frame finds nothing) for ``hold``
   seconds *becomes* the background at once: a door that opened and stays open, a car that parked, shadows
   that moved are motion while they change and for ``hold`` seconds after, then no longer.

A region is *due* for classification while it moves, for ``hold`` seconds after its motion stopped (so
smoothing and dwell settle on the new state), and at least every ``refresh`` seconds; otherwise it keeps its
last decision and costs no encoder call. A step change is therefore classified for about twice ``hold``.
"""
from __future__ import annotations

import numpy as np

from ..stream.decisions import ema_weight
from .config import MotionSettings

try:  # optional: OpenCV makes the grey conversion and area resize a few times faster
    import cv2
except ImportError:
    cv2 = None


def small_grey(image: np.ndarray, cells: int) -> np.ndarray:
    """float32 grey copy of a BGR (or grey) uint8 image, longest side at most ``cells`` (area averaging)."""
    h, w = image.shape[:2]
    scale = min(1.0, cells / max(h, w))
    sw, sh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    if cv2 is not None:
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 and image.shape[2] == 3 else image
        return cv2.resize(grey, (sw, sh), interpolation=cv2.INTER_AREA).astype(np.float32)
    img = image.astype(np.float32)
    grey = img[..., 0] * 0.114 + img[..., 1] * 0.587 + img[..., 2] * 0.299 if img.ndim == 3 else img
    ys = np.linspace(0, h, sh + 1).astype(int)
    xs = np.linspace(0, w, sw + 1).astype(int)
    rows = np.add.reduceat(grey, ys[:-1], axis=0) / np.diff(ys)[:, None]
    return (np.add.reduceat(rows, xs[:-1], axis=1) / np.diff(xs)[None, :]).astype(np.float32)


class MotionGate:
    """Whether one region changed since its background; see the module doc for the rule."""

    def __init__(self, settings: MotionSettings, mask: np.ndarray | None = None) -> None:
        self.settings = settings
        self.mask = mask
        self.background: np.ndarray | None = None
        self._valid: np.ndarray | None = None
        self.last_t: float | None = None
        self.last_motion: float | None = None
        self.previous: np.ndarray | None = None
        self.still_since = 0.0
        self.changed = 0.0  # fraction of cells that changed at the last update

    def update(self, crop: np.ndarray, t: float) -> bool:
        """Fold in the region's pixels at time ``t`` (seconds); True when it moved."""
        s = self.settings
        if self.mask is not None and crop.shape[:2] == self.mask.shape:  # outside a polygon: constant, never motion
            crop = crop * (self.mask[..., None] if crop.ndim == 3 else self.mask)
        g = small_grey(crop, s.cells)
        if self.background is None or self.background.shape != g.shape:
            self.background, self.previous, self.last_t = g, g, t
            self._valid = self._cells_inside(g.shape)
            self.last_motion, self.still_since = t, t
            self.changed = 1.0
            return True
        self.changed = self._changed(g - self.background)
        moved = self.changed >= max(s.area, 1e-9)
        if self._changed(g - self.previous) >= max(s.area, 1e-9):
            self.still_since = t
        if moved and t - self.still_since >= s.hold:  # a change that stands still becomes the background
            self.background = g.copy()
            moved = False
        else:
            self.background += ema_weight(t - self.last_t, s.background) * (g - self.background)
        self.previous, self.last_t = g, t
        if moved:
            self.last_motion = t
        return moved

    def _changed(self, d: np.ndarray) -> float:
        """Fraction of the region's cells whose difference exceeds ``level`` once the median is removed."""
        inside = d[self._valid] if self._valid is not None else d.ravel()
        if not inside.size:
            return 0.0
        return float(np.mean(np.abs(inside - np.median(inside)) > self.settings.level))

    def active(self, t: float) -> bool:
        """Moving now or within the last ``hold`` seconds."""
        return self.last_motion is not None and t - self.last_motion <= self.settings.hold

    def _cells_inside(self, shape: tuple[int, ...]) -> np.ndarray | None:
        if self.mask is None:
            return None
        m = small_grey(self.mask * np.uint8(255), self.settings.cells)  # same box, same cells: same shape
        return m >= 128 if m.shape == shape else None
