"""Camera-like test videos for ``edgeclip watch``, made with OpenCV's VideoWriter from real photos.

A scene is a background photo scaled to the frame with other photos pasted into rectangles ("regions")
that change at given frames (a door opening: one photo replaced by another), plus camera-like sensor noise
and, optionally, a slow global brightness drift (dusk, auto-exposure). Used by the tests and by
``scripts/bench_watch.py``; the videos are written to temporary folders, never committed.
"""
from __future__ import annotations

import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclass
class Patch:
    """A rectangle (x, y, w, h in pixels) showing ``images[k]`` from frame ``changes[k]`` on."""

    box: tuple[int, int, int, int]
    images: list[Path]
    changes: list[int] = field(default_factory=lambda: [0])


def photos(root: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` photos from an unpacked Imagenette folder, spread over its classes."""
    files = sorted(root.rglob("*.JPEG")) or sorted(root.rglob("*.jpg"))
    rng = np.random.default_rng(seed)
    return [files[i] for i in rng.choice(len(files), size=n, replace=False)]


def unpack_imagenette(data: Path, out: Path) -> Path:
    """Unpack ``imagenette-train.tar`` from the shared data folder into ``out`` once; the class folders' root."""
    root = out / "imagenette" / "train"
    if not root.is_dir():
        with tarfile.open(data / "imagenette-train.tar") as tar:
            tar.extractall(out, filter="data")
    return root


def _fit(path: Path, w: int, h: int):
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if img.shape[1] > w else cv2.INTER_CUBIC)


def write_scene(path: Path, background: Path, patches: Sequence[Patch], frames: int, fps: float = 15.0,
                size: tuple[int, int] = (640, 480), noise: int = 2, drift: float = 0.0, seed: int = 0,
                quality: int = 90) -> Path:
    """Write an MJPG .avi of ``frames`` frames; ``drift``: grey levels of brightness added per second."""
    import cv2

    w, h = size
    base = _fit(background, w, h).astype(np.int16)
    tiles = [[_fit(img, p.box[2], p.box[3]).astype(np.int16) for img in p.images] for p in patches]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, quality)
    rng = np.random.default_rng(seed)
    try:
        for k in range(frames):
            img = base.copy()
            for p, t in zip(patches, tiles):
                which = max(i for i, start in enumerate(p.changes) if start <= k)
                x, y, pw, ph = p.box
                img[y:y + ph, x:x + pw] = t[which]
            if drift:
                img += int(round(drift * k / fps))
            if noise:
                img += rng.integers(-noise, noise + 1, size=(h, w, 1), dtype=np.int16)
            writer.write(np.clip(img, 0, 255).astype(np.uint8))
    finally:
        writer.release()
    return path
