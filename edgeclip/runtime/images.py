"""Finding, reading and decoding image files; a bad file is reported, never fatal.

Limits (raise them for trusted inputs; see docs/limits.md):

* :data:`MAX_IMAGE_PIXELS` -- the width x height a header may state. Checked from the header before any
  decoder allocates pixels, so a small file claiming 30000 x 30000 pixels (a decompression bomb) is refused
  in microseconds. The default is Pillow's ``MAX_IMAGE_PIXELS`` (89,478,485: about 9500 x 9500).
* :data:`MAX_FILE_BYTES` -- the largest file read (256 MiB); bigger files are refused from their size,
  and reading stops at the limit if a file grows while it is read.

Both are module-level defaults (change them with :func:`set_limits`) and parameters of
:func:`read_image` / :func:`decode_image`. Only regular files are read: a named pipe, a device such as
``/dev/zero``, a socket, a folder, a dangling symbolic link or a symbolic link loop is an ImageReadError
(the file is opened without blocking, so a FIFO never hangs a run).
"""
from __future__ import annotations

import functools
import glob
import os
import stat
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..errors import ImageReadError, OptionError
from .decode_pillow import decode_pillow, pillow_available
from .image_header import ImageHeader, image_header

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".pbm",
                              ".pgm", ".ppm", ".pnm", ".gif", ".avif"})
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"

#: Largest width x height an image header may state (Pillow's default MAX_IMAGE_PIXELS).
MAX_IMAGE_PIXELS = 89_478_485
#: Largest image file read, in bytes.
MAX_FILE_BYTES = 256 * 2**20

_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def set_limits(max_pixels: int | None = None, max_bytes: int | None = None) -> tuple[int, int]:
    """Change the default limits (None keeps one); returns the previous ``(max_pixels, max_bytes)``."""
    global MAX_IMAGE_PIXELS, MAX_FILE_BYTES
    previous = (MAX_IMAGE_PIXELS, MAX_FILE_BYTES)
    for name, value in (("max_pixels", max_pixels), ("max_bytes", max_bytes)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise OptionError(f"image limit {name} must be a positive integer, got {value!r}")
    if max_pixels is not None:
        MAX_IMAGE_PIXELS = max_pixels
    if max_bytes is not None:
        MAX_FILE_BYTES = max_bytes
    return previous


def expand_inputs(inputs: Sequence[str | os.PathLike[str]], recursive: bool = True, missing: str = "error",
                  skipped: list[Path] | None = None) -> list[Path]:
    """Files, folders (image files inside, recursively) and glob patterns -> a sorted, de-duplicated list.

    An explicitly named path is kept whatever it is (a bad file, a FIFO, a dangling link: each becomes an
    error row when read). Inside folders, entries are chosen by name: every non-folder entry with an
    image extension (:data:`IMAGE_EXTENSIONS`, any case) is kept, including special files and broken
    links; other files are left out and appended to ``skipped`` when a list is given. A pattern matches
    non-folder entries. Symbolic links to folders are not followed inside folders (no loops); an
    unreadable sub-folder is kept as an entry so that it is reported.

    A path or pattern that matches nothing raises OptionError with ``missing="error"``; with
    ``missing="keep"`` it is kept (it becomes an error row) unless nothing at all was found, which still
    raises OptionError.
    """
    if missing not in ("error", "keep"):
        raise OptionError(f"missing must be 'error' or 'keep', got {missing!r}")
    found: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        s = os.fspath(item)
        p = Path(s)
        if os.path.isdir(s):
            found += _walk(p, recursive, skipped)
        elif os.path.lexists(s):
            found.append(p)
        elif glob.has_magic(s):
            matches = sorted(Path(m) for m in glob.glob(s, recursive=True))
            files = [m for m in matches if not m.is_dir()]
            if skipped is not None:
                skipped += [m for m in matches if m.is_dir()]
            if files:
                found += files
            else:
                problems.append(f"{s}: the pattern matches no file")
                found.append(p)
        else:
            problems.append(f"{s}: no such file or folder")
            found.append(p)
    if problems and (missing == "error" or len(problems) == len(found)):
        raise OptionError(problems[0])
    seen: set[Path] = set()
    unique = []
    for f in found:
        if f not in seen:
            seen.add(f)
            unique.append(f)
    return unique


def _walk(folder: Path, recursive: bool, skipped: list[Path] | None) -> list[Path]:
    """Entries of ``folder`` chosen by extension (see expand_inputs), sorted; unreadable sub-folders kept."""
    files: list[Path] = []

    def unreadable(exc: OSError) -> None:  # a folder that cannot be listed gets its own (error) row
        if exc.filename is not None:
            files.append(Path(exc.filename))

    for root, dirs, names in os.walk(folder, onerror=unreadable):
        if not recursive:
            dirs.clear()
        for n in names:
            f = Path(root, n)
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(f)
            elif skipped is not None:
                skipped.append(f)
    return sorted(files)


def check_header(data: bytes | bytearray | memoryview, name: str = "<bytes>",
                 max_pixels: int | None = None) -> ImageHeader:
    """The format and size the header states, refused (ImageReadError) when empty or over ``max_pixels``."""
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    header = image_header(data, name)
    if header.width < 1 or header.height < 1:
        raise ImageReadError(f"{name}: the {header.format} header states a zero-size image "
                             f"({header.width}x{header.height})")
    if header.pixels > limit:
        raise ImageReadError(f"{name}: the {header.format} header states {header.width}x{header.height} = "
                             f"{header.pixels:,} pixels, over the limit of {limit:,} (a decompression bomb or a "
                             f"very large image); if it is trusted, raise the limit (`max_image_pixels`, or "
                             f"set_limits(max_pixels=...) in Python)")
    return header


def jpeg_reduction(width: int, height: int, min_size: int | None) -> int:
    """The largest DCT scale divisor (8, 4 or 2; 1 = full size) whose decode keeps the short side >= ``min_size``.

    libjpeg decodes at 1/2, 1/4 or 1/8 in the DCT domain (sizes rounded up) for a fraction of the cost
    of a full decode; None or a ``min_size`` the image does not exceed twice gives 1.
    """
    if not min_size or min_size < 1:
        return 1
    short = min(width, height)
    return next((f for f in (8, 4, 2) if -(-short // f) >= min_size), 1)


def decode_image(data: bytes | bytearray | memoryview, name: str = "<bytes>",
                 max_pixels: int | None = None, min_size: int | None = None) -> np.ndarray:
    """Decode encoded image bytes to a BGR uint8 array; raises ImageReadError with the reason.

    The header is checked first (format known, size within ``max_pixels``, default
    :data:`MAX_IMAGE_PIXELS`), then the bytes are decoded once. With ``min_size``, a JPEG is decoded at
    the largest reduced DCT scale (1/2, 1/4, 1/8) that keeps its short side at least ``min_size``
    pixels (:func:`jpeg_reduction`); other formats, and None, decode at full size. EXIF orientation is
    applied either way.
    """
    if not len(data):
        raise ImageReadError(f"{name}: empty file")
    header = check_header(data, name, max_pixels)
    if header.format == "JPEG" and _JPEG_EOI not in bytes(data[-4096:]):
        raise ImageReadError(f"{name}: truncated or corrupt JPEG (no end-of-image marker)")
    reduce = jpeg_reduction(header.width, header.height, min_size) if header.format == "JPEG" else 1
    if _decoder() == "pillow":
        return decode_pillow(data, name, reduce) if reduce > 1 else decode_pillow(data, name)
    import cv2

    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}[reduce]  # the reduced flags apply EXIF orientation too
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    except cv2.error as exc:  # some decoders raise instead of returning None
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "decoder error"
        raise ImageReadError(f"{name}: not a decodable image ({reason})") from exc
    if img is None or img.size == 0:
        raise ImageReadError(f"{name}: not a decodable image (unknown format or corrupt data)")
    return img


@functools.lru_cache(maxsize=None)
def _decoder() -> str:
    """``opencv`` when cv2 imports, else ``pillow`` (the base install); ``EDGECLIP_DECODER`` overrides."""
    wanted = os.environ.get("EDGECLIP_DECODER", "").strip().lower()
    if wanted in ("opencv", "pillow"):
        return wanted
    try:
        import cv2  # noqa: F401
    except ImportError:
        if not pillow_available():
            raise ImageReadError("no image decoder: install Pillow (part of edgeclip's base install) or the "
                                 "'opencv' extra") from None
        return "pillow"
    return "opencv"


def read_file(path: str | os.PathLike[str], max_bytes: int | None = None) -> bytearray:
    """The bytes of a regular file, at most ``max_bytes`` (default :data:`MAX_FILE_BYTES`).

    Opened without blocking and checked before reading: anything but a regular file is an ImageReadError
    naming what it is, and so is a file over the limit (refused from its size; the read is bounded too).
    """
    limit = MAX_FILE_BYTES if max_bytes is None else max_bytes
    p = os.fspath(path)
    try:  # refuse special files before opening them: opening some devices has side effects
        _check_regular(p, os.stat(p).st_mode)
    except OSError as exc:
        raise ImageReadError(_open_failure(p, exc)) from exc
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(p, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ImageReadError(_open_failure(p, exc)) from exc
    try:
        st = os.fstat(fd)
        _check_regular(p, st.st_mode)  # again: it may have been replaced since
        if st.st_size > limit:
            raise ImageReadError(_too_big(p, st.st_size, limit))
        buf = bytearray(st.st_size + 1)  # one byte more: a file that grew is noticed
        view, n = memoryview(buf), 0
        with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
            while n < len(buf):
                got = f.readinto(view[n:])
                if not got:
                    break
                n += got
            if n == len(buf):  # grown since fstat: read on, bounded
                more = f.read(limit + 1 - n) if limit + 1 > n else b""
                if n + len(more) > limit:
                    raise ImageReadError(_too_big(p, n + len(more), limit))
                view.release()
                buf += more
                return buf
        view.release()
        del buf[n:]
        return buf
    except OSError as exc:
        raise ImageReadError(f"{p}: cannot read ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)


def _check_regular(p: str, mode: int) -> None:
    if stat.S_ISDIR(mode) and not os.access(p, os.R_OK | os.X_OK):
        raise ImageReadError(f"{p}: a folder that cannot be listed (permission denied); its images were not read")
    if not stat.S_ISREG(mode):
        kind = next((what for test, what in _FILE_KINDS if test(mode)), "not a regular file")
        raise ImageReadError(f"{p}: {kind}, not an image file; only regular files are read")


def _too_big(p: str, size: int, limit: int) -> str:
    return (f"{p}: {size:,} bytes, over the file size limit of {limit:,} bytes; if it is a trusted image, raise "
            f"the limit (`max_file_size`, or set_limits(max_bytes=...) in Python)")


def _open_failure(p: str, exc: OSError) -> str:
    """Why a path cannot be opened, in words (broken links, link loops and empty patterns named as such)."""
    import errno

    if exc.errno == errno.ELOOP:
        return f"{p}: a symbolic link loop (too many levels of symbolic links)"
    if exc.errno == errno.ENOENT:
        if os.path.islink(p):
            return f"{p}: a broken symbolic link (its target {os.readlink(p)!r} does not exist)"
        if glob.has_magic(p):
            return f"{p}: the pattern matches no file"
        return f"{p}: no such file or folder"
    return f"{p}: cannot read ({exc.strerror or exc})"


def read_image(path: str | os.PathLike[str], max_pixels: int | None = None,
               max_bytes: int | None = None, min_size: int | None = None) -> np.ndarray:
    """Read and decode one image file to BGR uint8 (EXIF orientation applied, as displayed).

    ``max_pixels`` / ``max_bytes`` default to :data:`MAX_IMAGE_PIXELS` / :data:`MAX_FILE_BYTES`;
    ``min_size`` allows a reduced JPEG decode (see :func:`decode_image`).
    """
    return decode_image(read_file(path, max_bytes), os.fspath(path), max_pixels, min_size)


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


def encode_jpeg(image: np.ndarray, quality: int = 80, max_side: int | None = None) -> bytes:
    """A BGR (or gray) uint8 image as JPEG bytes (OpenCV when installed, else Pillow), scaled down first so its
    longer side is at most ``max_side`` where given."""
    h, w = image.shape[:2]
    scale = 1.0 if not max_side else max_side / max(h, w)
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if scale < 1 else image
        ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if ok:
            return buf.tobytes()
    import io

    from PIL import Image

    rgb = image[:, :, ::-1] if image.ndim == 3 else image
    pil = Image.fromarray(np.ascontiguousarray(rgb))
    if scale < 1:
        pil = pil.resize(size)
    out = io.BytesIO()
    pil.save(out, format="JPEG", quality=int(quality))
    return out.getvalue()
