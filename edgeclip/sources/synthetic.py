"""Generated frames (``synthetic://WxH``): a moving gradient with a bright square and a little noise, for tests and
soak runs without a camera."""
from __future__ import annotations

import re
from typing import Any

import numpy as np


class SyntheticReader:
    """Deterministic generated frames: a moving gradient with a bright square and a little noise."""

    def __init__(self, width: int, height: int, fps: float | None, seed: int = 0) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:height, 0:width]
        self._base = ((xx * 255 // max(width - 1, 1)) ^ (yy * 255 // max(height - 1, 1))).astype(np.uint8)
        self.n = 0

    def read(self) -> np.ndarray | None:
        shift = (self.n * 4) % self.width
        g = np.roll(self._base, shift, axis=1)
        img = np.stack([g, np.roll(g, self.height // 3, axis=0), 255 - g], axis=2)
        s = max(4, min(self.width, self.height) // 4)
        x0 = (self.n * 7) % max(self.width - s, 1)
        y0 = (self.n * 3) % max(self.height - s, 1)
        img[y0:y0 + s, x0:x0 + s] = (40 * (self.n // 50)) % 256
        img ^= self.rng.integers(0, 8, size=(self.height, self.width, 1), dtype=np.uint8)
        self.n += 1
        return img

    def close(self) -> None:
        pass



def match(kind: str, text: str, options: Any) -> dict[str, Any] | None:
    """``synthetic://`` or ``synthetic://640x480`` (default: width and height, else 640x480)."""
    m = re.fullmatch(r"synthetic://(?:(\d+)x(\d+))?", text.lower())
    if not m:
        return None
    w, h = (int(m.group(1)), int(m.group(2))) if m.group(1) else (options.width or 640, options.height or 480)
    return {"target": f"{w}x{h}", "width": w, "height": h}


def open_reader(spec: Any) -> SyntheticReader:
    """Start generating at the source's nominal rate."""
    return SyntheticReader(int(spec.width or 640), int(spec.height or 480), spec.nominal_fps())
