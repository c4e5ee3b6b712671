"""Finding and decoding image files with OpenCV; a bad file is reported, never fatal."""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..errors import ImageReadError, OptionError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".pbm",
                              ".pgm", ".ppm", ".pnm"})
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"


def expand_inputs(inputs: Sequence[str | os.PathLike[str]], recursive: bool = True) -> list[Path]:
    """Files, folders (image files inside, recursively) and glob patterns -> a sorted, de-duplicated list.

    An explicitly named file is kept whatever its extension (so a bad file becomes an error row); a path
    or pattern that matches nothing raises OptionError.
    """
    found: list[Path] = []
    for item in inputs:
        s = str(item)
        p = Path(s)
        if p.is_dir():
            walker = p.rglob("*") if recursive else p.glob("*")
            found += sorted(f for f in walker if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            found.append(p)
        elif glob.has_magic(s):
            matches = sorted(Path(m) for m in glob.glob(s, recursive=True))
            files = [m for m in matches if m.is_file()]
            if not files:
                raise OptionError(f"{s}: the pattern matches no file")
            found += files
        else:
            raise OptionError(f"{s}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for f in found:
        if f not in seen:
            seen.add(f)
            unique.append(f)
    return unique


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to a BGR uint8 array; raises ImageReadError with the reason."""
    import cv2

    if not data:
        raise ImageReadError(f"{name}: empty file")
    if data[:2] == _JPEG_SOI and _JPEG_EOI not in data[-4096:]:
        raise ImageReadError(f"{name}: truncated or corrupt JPEG (no end-of-image marker)")
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise ImageReadError(f"{name}: not a decodable image (unknown format or corrupt data)")
    return img


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read and decode one image file to BGR uint8 (EXIF orientation applied, as displayed)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ImageReadError(f"{p}: cannot read ({exc.strerror or exc})") from exc
    return decode_image(data, str(p))


def iter_batches(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of at most ``size`` items."""
    if size < 1:
        raise OptionError(f"batch size must be >= 1 (got {size})")
    batch: list = []
    for it in items:
        batch.append(it)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
