"""Torch-free image preprocessing that reproduces open_clip's eval transform (numpy only).

open_clip's ``image_transform(size, is_train=False, ...)`` runs torchvision transforms on PIL images:
resize (Pillow, antialiased), centre crop or pad, ``ToTensor`` (RGB, /255) and ``Normalize``. A CLIP model
was trained and evaluated with exactly that, so the runtime reproduces it on OpenCV's BGR arrays:

* **Resampling** is Pillow's own algorithm, not ``cv2.resize``: Pillow widens the filter support by the
  downscale factor (antialiasing), ``cv2.INTER_CUBIC`` does not, so the two differ a lot when shrinking.
  The per-axis weights are computed the way Pillow's ``precompute_coeffs`` does (bicubic ``a = -0.5``,
  bilinear triangle, support scaled by ``max(scale, 1)``, pixel centres at ``i + 0.5``, weights normalised
  per output pixel) and quantised to Pillow's 22-bit fixed point. They are applied in Pillow's pass order
  (horizontal first, unless the height shrinks by more than twice as many pixels as the width: Pillow
  >= 13; older Pillow always went horizontal first), rounding and clipping to uint8 after each pass as
  Pillow does for 8-bit images. Each run of neighbouring output rows is one float32 matrix product over
  the input rows it reads (about a hundred thousand multiply-adds per call, so the calls cost little beside
  the arithmetic); the few outputs whose float32 sum lies within float32's error bound of a rounding
  boundary are recomputed in float64, where every product and partial sum is exact, so the result is *bit-identical*
  to Pillow, not merely close. ``nearest`` reproduces Pillow's
  affine nearest-neighbour scaling (its accumulated source coordinates included).
* **Geometry** follows torchvision and open_clip exactly: ``Resize(int)`` sizes the long side with
  ``int(size * long / short)``; open_clip's ``ResizeKeepRatio`` uses Python's ``round``; ``CenterCrop``
  offsets are ``int(round((h - crop) / 2.0))``; padding puts ``(d // 2, (d + 1) // 2)`` before/after.
  Only the output pixels that survive the crop are computed.
* **Weights are cached** per input size (a small LRU), so frames of a fixed size pay only the matrix
  products, and each thread reuses its work arrays (fresh ones cost page faults on every call). The
  preprocessor is safe to share between threads.

One open_clip quirk is reproduced on purpose: for ``resize_mode="shortest"`` with a *non-square* size,
open_clip builds ``ResizeKeepRatio(image_size)`` without passing the interpolation, so it always resizes
with bicubic. ``bilinear`` therefore also resizes with bicubic in that one case (``nearest`` does not
exist in open_clip and is always honoured).

This module must not import torch, torchvision, open_clip or PIL. It uses OpenCV only where installed (a faster
pixel transpose and table lookup); without it numpy does the same, bit for bit.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

try:  # optional: the base install has no OpenCV
    import cv2
except ImportError:
    cv2 = None

from ..errors import BundleError, ImageReadError, OptionError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

RESIZE_MODES = ("shortest", "longest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")

_PRECISION_BITS = 22  # Pillow's fixed point for 8-bit images: 32 - 8 - 2
_FIXED_SCALE = float(1 << _PRECISION_BITS)
_CACHE_SIZE = 16  # input sizes whose resampling plans are kept (cameras have one, photo folders many)
_STRIP_ELEMENTS = 1 << 22  # float32 elements converted at once by a resampling pass (16 MB)
_CALL_WORK = 1 << 17  # multiply-adds per matrix product of a resampling pass, give or take (see _Axis._blocks)
_WORK_KEPT = 1 << 22  # bytes: work arrays up to this size are kept per thread and reused (see _work)
_thread = threading.local()


# ---------------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _parse(values: dict[str, Any], fail: Any) -> dict[str, Any]:
    """Validate and normalise config values; ``fail(key, message)`` raises the caller's error."""
    size = values["size"]
    if _is_int(size):
        size = (size, size)
    if (not isinstance(size, (list, tuple)) or len(size) != 2 or not all(_is_int(s) for s in size)
            or min(size) < 1):
        fail("size", f"must be a positive int or [height, width] of positive ints, got {values['size']!r}")
    out: dict[str, Any] = {"size": (int(size[0]), int(size[1]))}
    for key, allowed in (("resize_mode", RESIZE_MODES), ("interpolation", INTERPOLATIONS)):
        if values[key] not in allowed:
            fail(key, f"must be one of {', '.join(allowed)}, got {values[key]!r}")
        out[key] = values[key]
    for key in ("mean", "std"):
        v = values[key]
        if (not isinstance(v, (list, tuple)) or len(v) != 3 or not all(_is_number(x) for x in v)
                or not all(math.isfinite(float(x)) for x in v)):
            fail(key, f"must be a list of 3 finite numbers (R, G, B), got {v!r}")
        out[key] = tuple(float(x) for x in v)
    if min(out["std"]) <= 0:
        fail("std", f"must be 3 positive numbers, got {values['std']!r}")
    fill = values["fill_color"]
    if not _is_int(fill) or not 0 <= fill <= 255:
        fail("fill_color", f"must be an int in 0..255, got {fill!r}")
    out["fill_color"] = int(fill)
    return out


@dataclass(frozen=True)
class PreprocessConfig:
    """What the image encoder expects; the manifest's ``preprocess`` section."""

    size: tuple[int, int]  # (height, width) of the model input
    resize_mode: str = "shortest"  # shortest | longest | squash
    interpolation: str = "bicubic"  # bicubic | bilinear | nearest
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    fill_color: int = 0  # padding value (0..255) for "longest"

    def __post_init__(self) -> None:
        def fail(key: str, msg: str) -> None:
            raise OptionError(f"preprocess {key} {msg}")

        values = _parse({k: getattr(self, k) for k in
                         ("size", "resize_mode", "interpolation", "mean", "std", "fill_color")}, fail)
        for k, v in values.items():
            object.__setattr__(self, k, v)

    @classmethod
    def from_manifest(cls, d: dict) -> "PreprocessConfig":
        """Config from a manifest's ``preprocess`` section; raises BundleError naming the bad key."""
        if not isinstance(d, dict):
            raise BundleError(f"manifest preprocess section must be a JSON object, got {type(d).__name__}")
        for key in ("size", "resize_mode", "interpolation", "mean", "std"):
            if key not in d:
                raise BundleError(f"manifest preprocess.{key} is missing; re-export the bundle")
        if d.get("color", "RGB") != "RGB":
            raise BundleError(f"manifest preprocess.color must be 'RGB', got {d['color']!r}")
        if d.get("layout", "NCHW") != "NCHW":
            raise BundleError(f"manifest preprocess.layout must be 'NCHW', got {d['layout']!r}")

        def fail(key: str, msg: str) -> None:
            raise BundleError(f"manifest preprocess.{key} {msg}")

        values = dict(d)
        values.setdefault("fill_color", 0)
        return cls(**_parse(values, fail))

    def to_manifest(self) -> dict:
        """JSON-able ``preprocess`` section; ``from_manifest(to_manifest())`` gives the same config."""
        return {"size": list(self.size), "resize_mode": self.resize_mode, "interpolation": self.interpolation,
                "mean": list(self.mean), "std": list(self.std), "fill_color": self.fill_color,
                "color": "RGB", "layout": "NCHW"}


# ---------------------------------------------------------------------------------------------------------
# Pillow-compatible resampling weights
# ---------------------------------------------------------------------------------------------------------
def _bicubic(x: np.ndarray) -> np.ndarray:
    # Pillow's bicubic_filter (a = -0.5), same operation order so the doubles are identical.
    x = np.abs(x)
    near = ((1.5 * x - 2.5) * x) * x + 1.0
    far = ((((x - 5.0) * x) + 8.0) * x - 4.0) * -0.5
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


_FILTERS = {"bicubic": (_bicubic, 2.0), "bilinear": (_bilinear, 1.0)}


def pillow_coefficients(in_size: int, out_size: int, interpolation: str, o0: int = 0,
                        o1: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's fixed-point resampling coefficients for outputs ``o0 .. o1`` (default: all) of one axis.

    Returns ``(xmin, kk)``: ``xmin[i]`` is the first input index of output ``o0 + i``, ``kk[i, j]`` the
    int64 weight of input ``xmin[i] + j`` scaled by 2**22 (zero past the filter's reach), exactly as
    Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` compute them. Each output's weights depend
    on that output alone, so a window costs memory in proportion to the window, not to the resized size
    (a 65535x1 image resized to 224 px high is 14.7 M columns, of which a centre crop keeps 224).
    """
    fn, base_support = _FILTERS[interpolation]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = base_support * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(o0, out_size if o1 is None else o1, dtype=np.float64) + 0.5) * scale
    # C's (int) truncates toward zero; negative values are clamped to 0 right after anyway.
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize, dtype=np.int64)
    valid = taps[None, :] < xmax[:, None]
    w = fn((((taps[None, :] + xmin[:, None]).astype(np.float64) - center[:, None]) + 0.5) * (1.0 / filterscale))
    w = np.where(valid, w, 0.0)
    ww = np.zeros(len(center), dtype=np.float64)
    for j in range(ksize):  # sequential sum, in Pillow's order (numpy's sum is pairwise)
        ww += w[:, j]
    w = np.where(ww[:, None] != 0.0, w / np.where(ww == 0.0, 1.0, ww)[:, None], w)
    kk = np.where(w < 0, np.trunc(-0.5 + w * _FIXED_SCALE), np.trunc(0.5 + w * _FIXED_SCALE))
    return xmin, kk.astype(np.int64)


def pillow_nearest_index(in_size: int, out_size: int, stop: int | None = None) -> np.ndarray:
    """Source index of output pixels ``0 .. stop`` (default: all) for Pillow's NEAREST resize (ImagingScaleAffine)."""
    step = float(in_size) / out_size
    n = out_size if stop is None else stop
    # Pillow accumulates the coordinate; so must we, to the last ulp: add.accumulate sums in order
    terms = np.full(n, step, dtype=np.float64)
    terms[:1] = step * 0.5
    xo = np.add.accumulate(terms)
    idx = np.where(xo < 0.0, -1, np.trunc(xo)).astype(np.int64)
    return np.clip(idx, 0, in_size - 1)


class _Axis:
    """How one axis goes from ``in_size`` to the output window ``[o0, o1)`` of an ``out_size`` resize.

    ``lo, hi``: the input range read. Then one of: ``identity`` (no resampling along this axis, as Pillow
    skips a pass whose size does not change), ``index`` (nearest: a gather), or the filter weights in
    ``blocks`` (see ``_blocks``). ``line``: about how many values each input row will hold (the other axis
    times the channels), which sizes the blocks.
    """

    def __init__(self, in_size: int, out_size: int, o0: int, o1: int, interpolation: str, line: int) -> None:
        self.identity = in_size == out_size
        self.index: np.ndarray | None = None
        self.n = o1 - o0
        if self.identity:
            self.lo, self.hi = o0, o1
            return
        if interpolation == "nearest":
            idx = pillow_nearest_index(in_size, out_size, o1)[o0:o1]
            self.lo, self.hi = int(idx.min()), int(idx.max()) + 1
            self.index = idx - self.lo
            return
        xmin, kk = pillow_coefficients(in_size, out_size, interpolation, o0, o1)
        nz = kk != 0  # every row has some: its weights sum to 2**22
        first = np.argmax(nz, axis=1)
        last = kk.shape[1] - np.argmax(nz[:, ::-1], axis=1)  # exclusive
        starts, stops = xmin + first, xmin + last
        self.lo, self.hi = int(starts.min()), int(stops.max())
        w = kk / _FIXED_SCALE  # k * 2**-22: exact in float32 and float64 (|k| < 2**24)
        # each output's taps, padded to the longest (float64 for the exact recomputation below)
        k = int((last - first).max())
        self._wide = np.zeros((self.n, k), dtype=np.float64)
        for i, (f, l) in enumerate(zip(first, last)):
            self._wide[i, :l - f] = w[i, f:l]
        self._rows = np.minimum((starts - self.lo)[:, None] + np.arange(k), self.hi - self.lo - 1)
        self.blocks = self._blocks(starts - self.lo, stops - self.lo, line)
        # Bound on |float32 result - exact sum| for pixels <= 255, any summation order, with FMA or not:
        # (taps + 1) * 2**-24 * 255 * sum|w|, doubled for safety, plus the rounding of "+ 0.5" in float32.
        # (The zero weights of a block add exact zeros: they change no partial sum.)
        taps = (last - first).astype(np.float64)
        bound = (taps + 1) * 2.0 ** -23 * 255 * np.abs(w).sum(axis=1) + 2.0 ** -15
        self._threshold = np.float32(0.5 - bound.max())

    def _blocks(self, starts: np.ndarray, stops: np.ndarray,
                line: int) -> list[tuple[int, int, int, int, np.ndarray]]:
        """The outputs in runs of ``m``, each run one dense float32 weight matrix over the inputs it reads:
        ``(first output, end, first input, end, weights)``. One product per run instead of one per output;
        ``m`` balances the per-call cost against the zeros a run computes (its inputs widen by the step
        between outputs), for lines of about ``line`` values."""
        step = max(float(starts[-1] - starts[0]) / max(self.n - 1, 1), 1.0 / 64)
        line = min(line, _STRIP_ELEMENTS // (self.hi - self.lo))  # large images go in strips
        m = int(min(64, max(1, round(math.sqrt(_CALL_WORK / (step * max(line, 1)))))))
        k = self._wide.shape[1]
        out = []
        for i0 in range(0, self.n, m):
            i1 = min(self.n, i0 + m)
            a, b = int(starts[i0:i1].min()), int(stops[i0:i1].max())
            w = np.zeros((i1 - i0, b - a + k), dtype=np.float32)  # k spare columns: every row's padded taps fit
            cols = (starts[i0:i1] - a)[:, None] + np.arange(k)
            w[np.arange(i1 - i0)[:, None], cols] = self._wide[i0:i1]
            out.append((i0, i1, a, b, np.ascontiguousarray(w[:, :b - a])))
        return out

    def apply(self, x: np.ndarray, dst: np.ndarray) -> None:
        """Resample along axis 0 of ``x`` (``hi - lo`` rows, any trailing shape, uint8 values) into ``dst``
        (uint8, ``n`` rows, the same trailing shape). Not for nearest (callers gather ``index`` rows).

        Pillow's 8-bit resampling is integer arithmetic (22-bit fixed-point weights, round half up, clip to
        0..255 after each pass); here each run of outputs is one float32 matrix product over the inputs it
        reads (memory-bound, so float32 halves the time), and the outputs whose float32 sum is within the
        error bound of a rounding boundary (about 0.1 %) are recomputed in float64, where every product and partial
        sum is exact. The result is bit-identical to Pillow. Work arrays are the thread's own and reused.
        """
        line = x.size // x.shape[0]
        flat = _work("in", (x.shape[0], line), np.float32)
        np.copyto(flat.reshape(x.shape), x)
        out = _work("out", (self.n, line), np.float32)
        for i0, i1, a, b, w in self.blocks:
            np.matmul(w, flat[a:b], out=out[i0:i1])
        out += np.float32(0.5)
        res = np.floor(out, out=_work("res", out.shape, np.float32))
        out -= res  # the fraction, exact (Sterbenz)
        out -= np.float32(0.5)
        np.abs(out, out=out)  # 0.5 - distance to the rounding boundary
        near = np.flatnonzero(out > self._threshold)  # (np.modf and 2-D np.nonzero are several x slower)
        if near.size:
            ii, cc = np.divmod(near, line)
            vals = flat[self._rows[ii], cc[:, None]].astype(np.float64)
            exact = np.einsum("ij,ij->i", vals, self._wide[ii])
            res[ii, cc] = np.floor(exact + 0.5)
        np.clip(res, 0.0, 255.0, out=res)
        np.copyto(dst, res.reshape(dst.shape), casting="unsafe")


def _work(slot: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A work array of this thread's, reused from call to call (contents undefined). Fresh arrays of a few
    hundred kB come from newly mapped pages each time, and the page faults cost as much as the arithmetic on
    a camera crop. Arrays over ``_WORK_KEPT`` bytes are made afresh, so a thread keeps at most six of 4 MB
    (a camera crop's come to about 2 MB)."""
    dtype = np.dtype(dtype)
    n = math.prod(shape)
    if n * dtype.itemsize > _WORK_KEPT:
        return np.empty(shape, dtype)
    pool = getattr(_thread, "work", None)
    if pool is None:
        pool = _thread.work = {}
    buf = pool.get(slot)
    if buf is None or buf.size < n or buf.dtype != dtype:
        buf = pool[slot] = np.empty(n, dtype)
    return buf[:n].reshape(shape)


def to_pixels(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised float32 [B, 3, H, W] model input -> the uint8 [B, H, W, 3] RGB pixels it was made from.

    Exact for the preprocessor's output (each value is ``(v / 255 - mean) / std`` of a uint8 ``v``); other
    input is rounded to the nearest level and clipped to 0..255.
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise OptionError(f"expected a normalised [B, 3, H, W] batch, got shape {x.shape}")
    m = np.asarray(mean, np.float32).reshape(1, 3, 1, 1) * np.float32(255.0)
    s = np.asarray(std, np.float32).reshape(1, 3, 1, 1) * np.float32(255.0)
    px = np.rint(x * s + m)
    np.clip(px, 0, 255, out=px)
    return np.ascontiguousarray(px.astype(np.uint8).transpose(0, 2, 3, 1))


def _center(resized: int, target: int) -> tuple[int, int, int]:
    """(first resized index kept, number kept, offset in the output) for crop-or-pad along one axis."""
    if target > resized:  # pad (d // 2 before, (d + 1) // 2 after), as torchvision/open_clip do
        return 0, resized, (target - resized) // 2
    return int(round((resized - target) / 2.0)), target, 0


class _Plan:
    """Everything that depends only on the input size: resized size, crop/pad, per-axis weights."""

    def __init__(self, config: PreprocessConfig, h: int, w: int) -> None:
        th, tw = config.size
        interpolation = config.interpolation
        mode = config.resize_mode
        if mode == "squash":
            rh, rw = th, tw
        elif mode == "shortest" and th == tw:
            # torchvision Resize(int): short side -> size, long side -> int(size * long / short)
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = th, int(th * long / short)
            rw, rh = (new_short, new_long) if w <= h else (new_long, new_short)
        else:
            # open_clip ResizeKeepRatio (longest=1 for "longest", 0 for non-square "shortest")
            longest = 1.0 if mode == "longest" else 0.0
            ratio_h, ratio_w = h / th, w / tw
            ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
            rh, rw = round(h * 1.0 / ratio), round(w * 1.0 / ratio)
            if mode == "shortest" and interpolation == "bilinear":
                interpolation = "bicubic"  # open_clip's ResizeKeepRatio(image_size) ignores it (see module doc)
        if rh < 1 or rw < 1:
            raise ImageReadError(f"a {w}x{h} image is too elongated to resize to {tw}x{th} "
                                 f"({mode!r} would make it {rw}x{rh}); crop it first")
        self.fill = config.fill_color if mode == "longest" else 0
        y0, ny, self.oy = _center(rh, th)
        x0, nx, self.ox = _center(rw, tw)
        self.ny, self.nx = ny, nx
        self.padded = ny < th or nx < tw
        # Pillow >= 13 runs the vertical pass first when the height shrinks by more than twice as many
        # pixels as the width (ImagingResampleInner); older Pillow always ran the horizontal pass first.
        self.vertical_first = (h - rh) > 0 and (h - rh) > (w - rw) * 2
        # values per row of each pass: the other axis (resized already if its pass runs first) x 3 channels
        rows_line, cols_line = 3 * (nx if not self.vertical_first else w), 3 * (ny if self.vertical_first else h)
        self.rows = _Axis(h, rh, y0, y0 + ny, interpolation, rows_line)
        self.cols = _Axis(w, rw, x0, x0 + nx, interpolation, cols_line)

    def resample(self, img: np.ndarray) -> np.ndarray:
        """uint8 [H, W, C] -> the kept part of the resized image, uint8 [ny, nx, C]: a work array of this
        thread's (or a view of ``img``), valid until its next resample."""
        rows, cols = self.rows, self.cols
        x = img[rows.lo:rows.hi, cols.lo:cols.hi]
        passes = (rows, 0), (cols, 1)
        for k, (axis, dim) in enumerate(passes if self.vertical_first else passes[::-1]):
            if not axis.identity:
                x = _resample_axis(axis, x, dim, f"pass{k}")
        return x


def _resample_axis(axis: _Axis, x: np.ndarray, dim: int, slot: str) -> np.ndarray:
    """Resample uint8 [A, B, C] along ``dim`` (0 or 1) into uint8, in strips of the other axis; the result is
    the thread's work array ``slot`` (see ``_work``).

    Only one strip (~16 MB of float32) is ever converted at once, and each resampled strip is stored as
    uint8 (its values are whole numbers in 0..255 after Pillow's per-pass rounding and clipping, so nothing
    is lost): besides the decoded image, a 9400x9400 photo needs the strip and a [9400, 224, 3] uint8
    intermediate (6 MB), not a float32 copy of the image.
    """
    if axis.index is not None:
        return x[axis.index] if dim == 0 else x[:, axis.index]
    other = 1 - dim
    step = max(1, _STRIP_ELEMENTS // (x.shape[dim] * x.shape[2]))
    shape = list(x.shape)
    shape[dim] = axis.n
    out = _work(slot, tuple(shape), np.uint8)
    for s in range(0, x.shape[other], step):
        if dim == 0:
            axis.apply(x[:, s:s + step], out[:, s:s + step])
        else:  # the contracted axis goes first, so each product reads whole contiguous rows
            t = _swap01(x[s:s + step])
            r = _work("swapped", (axis.n,) + t.shape[1:], np.uint8)
            axis.apply(t, r)
            out[s:s + step] = _swap01(r)
    return out


def _swap01(x: np.ndarray) -> np.ndarray:
    """Contiguous copy of [A, B, C] as [B, A, C]. cv2.transpose moves whole pixels (and reads strided
    views as they are); numpy's strided copy with a 3-element inner loop is ten times slower, so without
    OpenCV each pixel is moved as one opaque item (1.3-1.8x cv2's time)."""
    if x.shape[2] == 1:
        g = x[:, :, 0]
        return (cv2.transpose(g) if cv2 is not None else np.ascontiguousarray(g.T))[:, :, None]
    if cv2 is not None:
        return cv2.transpose(x)
    return _swap01_numpy(x)


def _swap01_numpy(x: np.ndarray) -> np.ndarray:
    """_swap01 without OpenCV: the pixels viewed as [A, B] opaque items, transposed by one copy."""
    a, b, c = x.shape
    try:
        items = x.view(np.dtype((np.void, c * x.itemsize))).reshape(a, b)
    except ValueError:  # channels not contiguous: make them so first
        items = np.ascontiguousarray(x).view(np.dtype((np.void, c * x.itemsize))).reshape(a, b)
    return np.ascontiguousarray(items.T).view(x.dtype).reshape(b, a, c)


# ---------------------------------------------------------------------------------------------------------
# the preprocessor
# ---------------------------------------------------------------------------------------------------------
def _as_image(image: Any) -> np.ndarray:
    """Validate a decoded image; returns a uint8 [H, W, C] view with C = 1 (gray) or 3 (BGR)."""
    if image is None:
        raise ImageReadError("no image (None): the decoder could not read it (cv2.imread returns None "
                             "for a missing or unreadable file)")
    if not isinstance(image, np.ndarray):
        raise ImageReadError(f"expected a numpy array (OpenCV BGR image), got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageReadError(f"expected a uint8 image, got dtype {image.dtype}; convert it first "
                             f"(e.g. cv2.convertScaleAbs or (img / 257).astype(np.uint8) for 16-bit)")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ImageReadError(f"expected an image of shape HxW (gray), HxWx3 (BGR) or HxWx4 (BGRA), "
                             f"got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageReadError(f"empty image (shape {image.shape})")
    if image.shape[2] == 4:
        image = image[:, :, :3]  # like PIL's convert("RGB"): alpha is dropped, not composited
    return image


class Preprocessor:
    """BGR uint8 images -> float32 model input, identical to open_clip's eval transform on PIL images."""

    def __init__(self, config: PreprocessConfig, cache_size: int = _CACHE_SIZE) -> None:
        self.config = config
        #: input sizes whose resampling plans are kept (raise it to the number of differently sized inputs
        #: that recur, e.g. the regions of many cameras, so no plan is rebuilt)
        self.cache_size = int(cache_size)
        mean = np.asarray(config.mean, dtype=np.float32)
        std = np.asarray(config.std, dtype=np.float32)
        # ToTensor then Normalize, in float32 like torch: (v / 255 - mean) / std, tabulated per channel.
        v = np.arange(256, dtype=np.float32) / np.float32(255.0)
        self._lut = ((v[None, :] - mean[:, None]) / std[:, None]).astype(np.float32)  # [3 (RGB), 256]
        self._plans: OrderedDict[tuple[int, int], _Plan] = OrderedDict()
        self._lock = threading.Lock()

    def _plan(self, h: int, w: int) -> _Plan:
        key = (h, w)
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
                return plan
        plan = _Plan(self.config, h, w)  # built outside the lock; a duplicate build is harmless
        with self._lock:
            self._plans[key] = plan
            while len(self._plans) > max(1, self.cache_size):
                self._plans.popitem(last=False)
        return plan

    def pixels(self, image_bgr: np.ndarray, roi: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """The resized, cropped/padded image as uint8 [H, W, 3] in BGR order (before normalisation)."""
        img = _as_image(image_bgr)
        if roi is not None:
            img = _crop_roi(img, roi)
        plan = self._plan(img.shape[0], img.shape[1])
        res = plan.resample(img)  # [ny, nx, C], C = 1 (gray) or 3 (BGR)
        th, tw = self.config.size
        out = np.empty((th, tw, 3), dtype=np.uint8)
        if plan.padded:
            out.fill(plan.fill)
        out[plan.oy:plan.oy + plan.ny, plan.ox:plan.ox + plan.nx] = res  # gray broadcasts to 3 channels
        return out

    def __call__(self, image_bgr: np.ndarray, roi: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """float32 [3, H, W] RGB model input for one BGR (or gray, or BGRA) uint8 image; ``roi`` = (x, y, w,
        h) is cropped first."""
        th, tw = self.config.size
        out = np.empty((3, th, tw), dtype=np.float32)
        self.into(out, image_bgr, roi)
        return out

    def into(self, out: np.ndarray, image_bgr: np.ndarray, roi: tuple[int, int, int, int] | None = None) -> None:
        """As calling the preprocessor, written into ``out`` (float32 [3, H, W], e.g. one row of a batch)."""
        self._normalize(self.pixels(image_bgr, roi), out)

    def _normalize(self, px: np.ndarray, out: np.ndarray) -> None:
        for c in range(3):  # output channel c (RGB) comes from BGR channel 2 - c
            if cv2 is not None and out[c].flags.c_contiguous:  # the same table lookup, twice as fast
                cv2.LUT(px[:, :, 2 - c], self._lut[c], dst=out[c])
            else:
                np.take(self._lut[c], px[:, :, 2 - c], out=out[c])

    def batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """float32 [B, 3, H, W] for a sequence of images."""
        th, tw = self.config.size
        out = np.empty((len(images), 3, th, tw), dtype=np.float32)
        for i, image in enumerate(images):
            self._normalize(self.pixels(image), out[i])
        return out


def _crop_roi(img: np.ndarray, roi: Sequence[int]) -> np.ndarray:
    h, w = img.shape[:2]
    try:
        x, y, rw, rh = (int(v) for v in roi)
        if any(int(v) != v for v in roi):
            raise ValueError
    except (TypeError, ValueError):
        raise OptionError(f"roi must be 4 integers (x, y, width, height), got {roi!r}") from None
    if rw < 1 or rh < 1 or x < 0 or y < 0 or x + rw > w or y + rh > h:
        raise OptionError(f"roi (x={x}, y={y}, w={rw}, h={rh}) does not fit inside the {w}x{h} image; "
                          f"pass a region with 0 <= x, x + w <= {w}, 0 <= y, y + h <= {h}")
    return img[y:y + rh, x:x + rw]
