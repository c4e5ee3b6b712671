"""Image format and size read from the first bytes of a file, before any decoder allocates pixels.

``image_header(data)`` recognises the formats the runtime decodes (JPEG, PNG, GIF, BMP, WebP, TIFF,
PNM/PAM/PFM, JPEG 2000, AVIF, Radiance HDR, Sun raster) and returns ``(format, width, height)`` as the
header states them; this is what a decoder would allocate, so a decompression bomb (a small file whose
header claims 30000 x 30000 pixels) is caught before decoding. Pure Python; no decoder is called.
"""
from __future__ import annotations

import re
import struct
from typing import NamedTuple

from ..errors import ImageReadError

#: Formats ``image_header`` recognises (the names it returns).
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WebP", "TIFF", "PNM", "PAM", "PFM", "JPEG 2000", "AVIF", "HDR",
           "Sun raster")

_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI: no length field


class ImageHeader(NamedTuple):
    """What a header says: the format name and the stated width and height in pixels."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def image_header(data: bytes | bytearray | memoryview, name: str = "<bytes>") -> ImageHeader:
    """The format and stated size of encoded image bytes; ImageReadError when the header is unknown or broken."""
    if not isinstance(data, (bytes, bytearray)):
        data = bytes(data)
    for magic, parse in _PARSERS:
        if data.startswith(magic) if isinstance(magic, bytes) else magic(data):
            try:
                header = parse(data)
            except (struct.error, IndexError, ValueError) as exc:
                raise ImageReadError(f"{name}: truncated or corrupt image header") from exc
            if header is None:
                raise ImageReadError(f"{name}: truncated or corrupt image header")
            return header
    raise ImageReadError(f"{name}: not a supported image format (the runtime reads {', '.join(FORMATS)})")


# -- one small parser per format ---------------------------------------------------------------------------
def _jpeg(d: bytes) -> ImageHeader | None:
    i, n = 2, len(d)
    while i < n:
        if d[i] != 0xFF:  # garbage between segments: decoders skip to the next marker, so do we
            j = d.find(b"\xff", i)
            if j < 0:
                return None
            i = j
            continue
        while i < n and d[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return None
        marker = d[i]
        i += 1
        if marker == 0x00 or marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        (length,) = struct.unpack_from(">H", d, i)
        if marker in _JPEG_SOF:
            _, h, w = struct.unpack_from(">BHH", d, i + 2)
            return ImageHeader("JPEG", w, h)
        if length < 2:
            return None
        i += length
    return None


def _png(d: bytes) -> ImageHeader | None:
    if d[12:16] != b"IHDR":
        return None
    w, h = struct.unpack_from(">II", d, 16)
    return ImageHeader("PNG", w, h)


def _gif(d: bytes) -> ImageHeader:
    w, h = struct.unpack_from("<HH", d, 6)
    return ImageHeader("GIF", w, h)


def _bmp(d: bytes) -> ImageHeader:
    (dib,) = struct.unpack_from("<I", d, 14)
    if dib == 12:  # OS/2 BITMAPCOREHEADER
        w, h = struct.unpack_from("<HH", d, 18)
    else:
        w, h = struct.unpack_from("<ii", d, 18)
    return ImageHeader("BMP", abs(w), abs(h))


def _webp(d: bytes) -> ImageHeader | None:
    chunk = d[12:16]
    if chunk == b"VP8 ":
        if d[23:26] != b"\x9d\x01\x2a":
            return None
        w, h = struct.unpack_from("<HH", d, 26)
        return ImageHeader("WebP", w & 0x3FFF, h & 0x3FFF)
    if chunk == b"VP8L":
        if d[20] != 0x2F:
            return None
        (bits,) = struct.unpack_from("<I", d, 21)
        return ImageHeader("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        w = int.from_bytes(d[24:27], "little") + 1
        h = int.from_bytes(d[27:30], "little") + 1
        if len(d) < 30:
            return None
        return ImageHeader("WebP", w, h)
    return None


def _tiff(d: bytes) -> ImageHeader | None:
    e = "<" if d[:2] == b"II" else ">"
    (version,) = struct.unpack_from(e + "H", d, 2)
    big = version == 43
    if big:
        (ifd,) = struct.unpack_from(e + "Q", d, 8)
        (count,) = struct.unpack_from(e + "Q", d, ifd)
        start, size = ifd + 8, 20
    else:
        (ifd,) = struct.unpack_from(e + "I", d, 4)
        (count,) = struct.unpack_from(e + "H", d, ifd)
        start, size = ifd + 2, 12
    dims: dict[int, int] = {}
    for k in range(min(count, 4096)):
        at = start + k * size
        tag, typ = struct.unpack_from(e + "HH", d, at)
        if tag in (256, 257):
            value_at = at + (12 if big else 8)
            fmt = {3: "H", 4: "I", 16: "Q"}.get(typ)
            if fmt is None:
                return None
            (dims[tag],) = struct.unpack_from(e + fmt, d, value_at)
        if len(dims) == 2:
            return ImageHeader("TIFF", dims[256], dims[257])
    return None


_PNM_TOKEN = re.compile(rb"(?:\s|#[^\n]*\n?)*(\d+)")


def _pnm(d: bytes) -> ImageHeader | None:
    m1 = _PNM_TOKEN.match(d, 2)
    m2 = m1 and _PNM_TOKEN.match(d, m1.end())
    if not m2:
        return None
    return ImageHeader("PNM", int(m1.group(1)), int(m2.group(1)))


def _pam(d: bytes) -> ImageHeader | None:
    head = d[:4096].split(b"ENDHDR", 1)[0]
    w = re.search(rb"^\s*WIDTH\s+(\d+)", head, re.MULTILINE)
    h = re.search(rb"^\s*HEIGHT\s+(\d+)", head, re.MULTILINE)
    return ImageHeader("PAM", int(w.group(1)), int(h.group(1))) if w and h else None


def _pfm(d: bytes) -> ImageHeader | None:
    m = re.match(rb"P[Ff]\s+(\d+)\s+(\d+)", d)
    return ImageHeader("PFM", int(m.group(1)), int(m.group(2))) if m else None


def _jp2(d: bytes) -> ImageHeader | None:
    at = d.find(b"ihdr", 0, 4096)
    if at < 0:
        return None
    h, w = struct.unpack_from(">II", d, at + 4)
    return ImageHeader("JPEG 2000", w, h)


def _j2k(d: bytes) -> ImageHeader | None:
    if d[2:4] != b"\xff\x51":  # SIZ must follow SOC
        return None
    x, y, x0, y0 = struct.unpack_from(">IIII", d, 8)
    return ImageHeader("JPEG 2000", max(x - x0, 0), max(y - y0, 0))


def _avif(d: bytes) -> ImageHeader | None:
    best: ImageHeader | None = None
    for m in re.finditer(rb"ispe", d[:1 << 16]):  # every image's spatial extent; the largest one counts
        w, h = struct.unpack_from(">II", d, m.end() + 4)
        if best is None or w * h > best.pixels:
            best = ImageHeader("AVIF", w, h)
    return best


def _hdr(d: bytes) -> ImageHeader | None:
    end = d.find(b"\n\n", 0, 1 << 16)
    if end < 0:
        return None
    m = re.match(rb"\s*([-+])([XY])\s+(\d+)\s+([-+])([XY])\s+(\d+)", d[end + 2:end + 80])
    if not m or m.group(2) == m.group(5):
        return None
    dims = {m.group(2): int(m.group(3)), m.group(5): int(m.group(6))}
    return ImageHeader("HDR", dims[b"X"], dims[b"Y"])


def _sun(d: bytes) -> ImageHeader:
    w, h = struct.unpack_from(">II", d, 4)
    return ImageHeader("Sun raster", w, h)


def _is_avif(d: bytes) -> bool:
    return d[4:8] == b"ftyp" and d[8:12] in (b"avif", b"avis")


def _is_pnm(d: bytes) -> bool:
    return len(d) > 2 and d[0:1] == b"P" and d[1:2] in b"123456" and d[2:3].isspace()


_PARSERS = (
    (b"\xff\xd8", _jpeg),
    (b"\x89PNG\r\n\x1a\n", _png),
    (b"GIF87a", _gif), (b"GIF89a", _gif),
    (b"BM", _bmp),
    (lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP", _webp),
    (b"II*\x00", _tiff), (b"MM\x00*", _tiff), (b"II+\x00", _tiff), (b"MM\x00+", _tiff),
    (_is_pnm, _pnm),
    (b"P7", _pam),
    (b"PF", _pfm), (b"Pf", _pfm),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", _jp2),
    (b"\xff\x4f\xff\x51", _j2k),
    (_is_avif, _avif),
    (b"#?RADIANCE", _hdr), (b"#?RGBE", _hdr),
    (b"\x59\xa6\x6a\x95", _sun),
)
