"""Regions on a frame: a rectangle or polygon resolved to a bounding box (and a mask) for one frame size.

Only the region is ever processed: motion gating reads its box, and the classifier's preprocessing crops the
box first and then resizes it (``Preprocessor(image, roi=box)``), so a 640x480 frame with two small regions
costs two small resizes, not a full-frame one. Pixels of a polygon's box that lie outside the polygon are
painted mid-grey before classifying, so the model sees only the region.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import OptionError
from .config import Shape

#: Grey level painted outside a polygon inside its bounding box.
OUTSIDE = 128


class Geometry:
    """A region resolved for ``width`` x ``height`` frames: ``box`` = (x, y, w, h); ``mask`` (uint8 [h, w],
    1 inside) for polygons, None for rectangles."""

    def __init__(self, shape: Shape, width: int, height: int, where: str = "region") -> None:
        pts = np.asarray(shape.pixels(width, height), dtype=np.int64)
        x0, y0 = int(pts[:, 0].min()), int(pts[:, 1].min())
        x1, y1 = int(pts[:, 0].max()), int(pts[:, 1].max())
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
        if x1 - x0 < 2 or y1 - y0 < 2:
            raise OptionError(f"{where}: the region lies outside the {width}x{height} frame (or is under 2 pixels "
                              f"wide); give it in fractions of the frame or in this frame's pixels")
        self.size = (width, height)
        self.box = (x0, y0, x1 - x0, y1 - y0)
        self.points = [(int(x), int(y)) for x, y in pts]
        self.mask = None if shape.kind == "rect" else polygon_mask(pts - [x0, y0], x1 - x0, y1 - y0)
        self._outside = None if self.mask is None else self.mask == 0  # made once, used on every crop

    def crop(self, frame: np.ndarray) -> np.ndarray:
        """The region's box of ``frame`` (a view for rectangles; a copy with the outside grey for polygons)."""
        x, y, w, h = self.box
        view = frame[y:y + h, x:x + w]
        if self.mask is None:
            return view
        out = view.copy()
        out[self._outside] = OUTSIDE
        return out


def polygon_mask(points: Any, width: int, height: int) -> np.ndarray:
    """uint8 [height, width], 1 inside the polygon (OpenCV when installed, else Pillow)."""
    pts = np.asarray(points, dtype=np.int32).reshape(-1, 2)
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, [pts], 1)
        return mask
    from PIL import Image, ImageDraw

    img = Image.new("L", (width, height), 0)
    ImageDraw.Draw(img).polygon([tuple(map(int, p)) for p in pts], fill=1, outline=1)
    return np.asarray(img, dtype=np.uint8)
