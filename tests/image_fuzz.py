"""Malformed image generator for the input-hardening fuzz suite (tests and scripts/fuzz_images.py).

``cases(n, seed)`` gives ``n`` deterministic :class:`Case` objects: valid images of every format the
runtime reads, and the same images truncated, bit-flipped, with lying headers (huge, zero or negative
sizes), decompression bombs (a 643-byte JPEG and an 875 KB PNG that claim 30000 x 30000 pixels), empty
files, random bytes (with and without a real magic number) and wrong extensions. Everything is made
with OpenCV and zlib on the spot; nothing is downloaded.
"""
from __future__ import annotations

import functools
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

KINDS = ("valid", "truncated", "bitflip", "header_lie", "bomb", "zero_size", "random", "wrong_extension",
         "empty", "trailing_garbage")
#: How often each kind is drawn (valid images stay frequent so that predictions are exercised too).
WEIGHTS = (0.10, 0.20, 0.20, 0.16, 0.04, 0.05, 0.10, 0.07, 0.02, 0.06)


@dataclass
class Case:
    """One generated input: its file name (unique, with an image extension), bytes and kind."""

    name: str
    data: bytes
    kind: str
    format: str

    def write(self, folder: Path) -> Path:
        path = folder / self.name
        path.write_bytes(self.data)
        return path


def _picture(h: int = 40, w: int = 56) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // (w - 1)), (yy * 255 // (h - 1)), ((xx + yy) * 3) % 256], axis=2)
    return img.astype(np.uint8)


@functools.lru_cache(maxsize=None)
def base_images() -> dict[str, bytes]:
    """Small valid encodings, one per format the runtime decodes ({format: bytes}); cached."""
    import cv2

    img = _picture()
    out: dict[str, bytes] = {}
    encodings = {
        "jpg": (".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90]),
        "progressive.jpg": (".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        "png": (".png", img, []),
        "gray16.png": (".png", (img[:, :, 0].astype(np.uint16) * 257), []),
        "bmp": (".bmp", img, []),
        "webp": (".webp", img, [cv2.IMWRITE_WEBP_QUALITY, 80]),
        "lossless.webp": (".webp", img, [cv2.IMWRITE_WEBP_QUALITY, 101]),
        "tiff": (".tiff", img, []),
        "gif": (".gif", img, []),
        "ppm": (".ppm", img, []),
        "pgm": (".pgm", img[:, :, 0], []),
        "jp2": (".jp2", img, []),
    }
    for name, (ext, pixels, params) in encodings.items():
        try:
            ok, buf = cv2.imencode(ext, pixels, params)
        except cv2.error:
            continue  # an OpenCV build without this encoder
        if ok:
            out[name] = buf.tobytes()
    return out


def jpeg_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny valid JPEG whose frame header claims ``width`` x ``height`` (a few hundred bytes)."""
    import cv2

    data = bytearray(cv2.imencode(".jpg", np.zeros((8, 8), np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 50])[1].tobytes())
    at = _jpeg_sof(data)
    struct.pack_into(">HH", data, at + 5, height, width)
    return bytes(data)


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A complete, valid 8-bit gray PNG of ``width`` x ``height`` zero pixels: ~1 KB per MB of pixels."""
    raw_len = height * (width + 1)  # a filter byte per row, then the pixels: all zero
    block = 1 << 20
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    c.compress(bytes(block))
    c.flush(zlib.Z_FULL_FLUSH)
    piece = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)  # identical for every full block of zeros
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    last = tail.compress(bytes(raw_len % block)) + tail.flush()
    adler = ((raw_len % 65521) << 16) | 1  # adler32 of raw_len zero bytes
    stream = b"\x78\xda" + piece * (raw_len // block) + last + struct.pack(">I", adler)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", stream) + _png_chunk(b"IEND", b""))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _jpeg_sof(data: bytes | bytearray) -> int:
    for marker in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
        at = bytes(data).find(marker, 2)
        if at > 0:
            return at
    raise ValueError("no SOF marker")


_LIES = (0, 1, 2, 255, 256, 4096, 30000, 65535, 65536, 2**24, 2**31 - 1, 2**32 - 1)


def lie_about_size(data: bytes, fmt: str, w: int, h: int) -> bytes:
    """``data`` with its header's width and height replaced (CRC fixed for PNG); unchanged if not possible."""
    d = bytearray(data)
    ext = fmt.rsplit(".", 1)[-1]
    if ext == "jpg":
        struct.pack_into(">HH", d, _jpeg_sof(d) + 5, h & 0xFFFF, w & 0xFFFF)
    elif ext == "png":
        struct.pack_into(">II", d, 16, w & 0xFFFFFFFF, h & 0xFFFFFFFF)
        struct.pack_into(">I", d, 29, zlib.crc32(bytes(d[12:29])))
    elif ext == "gif":
        struct.pack_into("<HH", d, 6, w & 0xFFFF, h & 0xFFFF)
    elif ext == "bmp":
        struct.pack_into("<ii", d, 18, min(w, 2**31 - 1), -min(h, 2**31 - 1) if h % 2 else min(h, 2**31 - 1))
    elif ext == "webp" and d[12:16] == b"VP8 ":
        struct.pack_into("<HH", d, 26, w & 0x3FFF, h & 0x3FFF)
    elif ext == "webp" and d[12:16] == b"VP8L":
        bits = struct.unpack_from("<I", d, 21)[0] & ~0xFFFFFFF
        struct.pack_into("<I", d, 21, bits | ((max(w, 1) - 1) & 0x3FFF) | (((max(h, 1) - 1) & 0x3FFF) << 14))
    elif ext == "tiff" and d[:4] == b"II*\x00":
        ifd = struct.unpack_from("<I", d, 4)[0]
        for k in range(struct.unpack_from("<H", d, ifd)[0]):
            at = ifd + 2 + 12 * k
            tag, typ = struct.unpack_from("<HH", d, at)
            if tag in (256, 257):
                value = w if tag == 256 else h
                struct.pack_into("<H" if typ == 3 else "<I", d, at + 8, value & (0xFFFF if typ == 3 else 0xFFFFFFFF))
    elif ext == "jp2" and d.find(b"ihdr") > 0:
        struct.pack_into(">II", d, d.find(b"ihdr") + 4, h & 0xFFFFFFFF, w & 0xFFFFFFFF)
    elif ext in ("ppm", "pgm"):
        magic, rest = bytes(d[:2]), bytes(d[2:]).split(None, 2)[2]
        d = bytearray(magic + b"\n%d %d\n" % (w, h) + rest)
    else:
        return data
    return bytes(d)


def cases(n: int, seed: int = 0) -> list[Case]:
    """``n`` generated inputs (deterministic for a seed), every kind in proportion to WEIGHTS."""
    bases = base_images()
    formats = sorted(bases)
    rng = np.random.default_rng(seed)
    kinds = rng.choice(len(KINDS), size=n, p=WEIGHTS)
    kinds[: min(n, len(KINDS))] = np.arange(min(n, len(KINDS)))  # every kind at least once
    out = []
    for i, k in enumerate(kinds):
        kind = KINDS[int(k)]
        fmt = formats[int(rng.integers(len(formats)))]
        data, ext = _make(kind, fmt, bases, rng)
        out.append(Case(f"{i:05d}_{kind}_{fmt.replace('.', '-')}{ext}", data, kind, fmt))
    return out


def _ext(fmt: str) -> str:
    return "." + fmt.rsplit(".", 1)[-1]


def _make(kind: str, fmt: str, bases: dict[str, bytes], rng: np.random.Generator) -> tuple[bytes, str]:
    base = bases[fmt]
    if kind == "valid":
        return base, _ext(fmt)
    if kind == "truncated":
        return base[: int(rng.integers(1, len(base)))], _ext(fmt)
    if kind == "bitflip":
        d = bytearray(base)
        span = 64 if rng.random() < 0.5 else len(d)  # half of the time in the header area
        for _ in range(int(rng.integers(1, 17))):
            at = int(rng.integers(0, min(span, len(d))))
            d[at] ^= 1 << int(rng.integers(8))
        return bytes(d), _ext(fmt)
    if kind == "header_lie":
        w, h = (int(rng.choice(_LIES)), int(rng.choice(_LIES)))
        return lie_about_size(base, fmt, w, h), _ext(fmt)
    if kind == "bomb":
        side = int(rng.choice([12000, 20000, 30000, 65535]))
        if rng.random() < 0.5:
            return jpeg_bomb(side, side), ".jpg"
        return png_bomb(min(side, 30000), min(side, 30000)), ".png"
    if kind == "zero_size":
        w, h = (0, int(rng.integers(1, 100))) if rng.random() < 0.5 else (int(rng.integers(1, 100)), 0)
        return lie_about_size(base, fmt, w, h), _ext(fmt)
    if kind == "random":
        body = rng.integers(0, 256, size=int(rng.integers(1, 4096)), dtype=np.uint8).tobytes()
        if rng.random() < 0.5:  # a real magic number, then noise
            body = base[: int(rng.integers(2, 16))] + body
        return body, _ext(fmt)
    if kind == "wrong_extension":
        other = [f for f in bases if _ext(f) != _ext(fmt)]
        ext = _ext(other[int(rng.integers(len(other)))])
        if rng.random() < 0.25:
            return b"this is not an image\n" * int(rng.integers(1, 50)), ext
        return base, ext
    if kind == "empty":
        return b"", _ext(fmt)
    if kind == "trailing_garbage":
        return base + rng.integers(0, 256, size=int(rng.integers(1, 2048)), dtype=np.uint8).tobytes(), _ext(fmt)
    raise ValueError(kind)
