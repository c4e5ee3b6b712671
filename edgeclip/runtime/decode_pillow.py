"""Decoding photos with Pillow, for devices without OpenCV (the runtime's base install).

The result is what ``cv2.imdecode(data, cv2.IMREAD_COLOR)`` gives: a BGR uint8 array with the EXIF
orientation applied (as a photo viewer shows it), alpha dropped, gray replicated to three channels and
16-bit samples reduced to their high byte. Both decoders use libjpeg-turbo, and JPEGs decode to the same
pixels; Pillow takes about 1.9x OpenCV's time (scripts/bench_decode.py). The array is read-only (it wraps
Pillow's bytes without a further copy): copy it before drawing on it.
"""
from __future__ import annotations

import io

import numpy as np

from ..errors import ImageReadError


def pillow_available() -> bool:
    """Whether Pillow can be imported."""
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        return False
    return True


def decode_pillow(data: bytes, name: str = "<bytes>", reduce: int = 1) -> np.ndarray:
    """Decode encoded image bytes to BGR uint8 with Pillow; raises ImageReadError with the reason.

    ``reduce`` (2, 4 or 8) decodes a JPEG at that reduced DCT scale (Pillow's draft mode), as OpenCV's
    ``IMREAD_REDUCED_COLOR_*`` does; other formats ignore it.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            if reduce > 1 and img.format == "JPEG":
                img.draft("RGB", (max(1, img.size[0] // reduce), max(1, img.size[1] // reduce)))
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return _to_bgr(img)
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{name}: too many pixels to decode safely ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(f"{name}: not a decodable image (unknown format or corrupt data)") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's errors for truncated or broken files
        raise ImageReadError(f"{name}: not a decodable image ({exc})") from exc


def _to_bgr(img) -> np.ndarray:
    """A loaded PIL image -> contiguous BGR uint8 [H, W, 3]."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit PNG/TIFF: keep the high byte, as OpenCV does
        a = np.asarray(img)
        a = (a >> 8 if img.mode != "I" else np.clip(a, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, P, RGBA (alpha dropped), CMYK, YCbCr, LA, 1
    w, h = img.size
    return np.frombuffer(img.tobytes("raw", "BGR"), dtype=np.uint8).reshape(h, w, 3)
