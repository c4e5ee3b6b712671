"""RKNN backend: a ``.rknn`` image encoder on a Rockchip NPU (RK3588, RK3566, RK3568) through RKNN Toolkit Lite 2.

Same interface as the others (``name``, ``input_name``, ``output_name``, ``run``). The ``.rknn`` file is
built on a workstation by ``edgeclip.devices.rknn`` with the normalisation inside the model, so the NPU
takes the resized image itself: uint8 NHWC RGB. ``run`` accepts what every backend is given (the
preprocessor's normalised float32 NCHW batch) and turns it back into those pixels exactly: the
preprocessor maps each uint8 value ``v`` to ``(v / 255 - mean) / std`` in float32, which this inverts with an
error far below half a level, so the NPU sees the very pixels the preprocessor resized (``to_pixels``;
tested bit for bit). ``run_pixels`` takes uint8 NHWC RGB directly.

The model's batch is fixed when it is built: batches are split into pieces of that size and the last one is
padded (the padding's outputs are dropped). ``core_mask`` picks the RK3588's NPU cores (``auto``: the runtime
picks an idle core; ``0``, ``1``, ``2``; ``0_1``, ``0_1_2``: one inference spread over the cores; ``all``); RK356x
chips have one core and ignore it. ``rknnlite`` is imported here only, when a backend is made.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Sequence

import numpy as np

from ...bundle import Bundle
from ...errors import BackendError, OptionError
from ...options import LoadOptions
from ...tables import RKNN_CORE_MASKS
from ..preprocess import to_pixels

log = logging.getLogger("edgeclip.runtime")

#: ``core_mask`` names -> RKNNLite's constants
CORE_MASKS = {mask: f"NPU_CORE_{mask.upper()}" for mask in RKNN_CORE_MASKS}
#: the pip distribution that provides ``rknnlite``
LITE_PACKAGE = "rknn-toolkit-lite2"


def import_rknnlite() -> ModuleType:
    """``rknnlite.api``; BackendError naming the ``rknn`` extra (aarch64 boards only) when it is missing."""
    try:
        import rknnlite.api as api
    except ImportError as exc:
        if getattr(exc, "name", None) not in (None, "rknnlite", "rknnlite.api"):
            raise BackendError(f"RKNN Toolkit Lite 2 is installed but does not import ({exc}); reinstall the "
                               f"'rknn' extra") from None
        from ...extras import install_command

        raise BackendError(f"RKNN Toolkit Lite 2 is not installed ({exc}); on an aarch64 Rockchip board add the "
                           f"'rknn' extra: {install_command('rknn')}") from None
    return api


def lite_version() -> str | None:
    """The installed rknn-toolkit-lite2 version (package metadata, nothing imported), or None."""
    from importlib import metadata

    try:
        return metadata.version(LITE_PACKAGE)
    except metadata.PackageNotFoundError:
        return None


#: the kind of file this backend runs (built from the bundle by ``edgeclip build`` for one chip)
FILE_SUFFIX = ".rknn"


def available(variant: str | None = None, installed: bool | None = None) -> tuple[bool, str]:
    """Whether RKNN Toolkit Lite 2 imports here (``installed`` states it instead of trying); whether the NPU
    itself is usable (driver, ``librknnrt.so``) is checked with the file (``edgeclip.devices.rknn``)."""
    if installed is not None:
        return installed, "rknn-toolkit-lite2 is installed" if installed else "rknn-toolkit-lite2 is not installed"
    try:
        import_rknnlite()
    except BackendError as exc:
        return False, str(exc)
    return True, f"rknn-toolkit-lite2 {lite_version() or '?'} imports"


def open_encoder(path: Path, options: LoadOptions, precision: str = "int8", variant: str | None = None,
                 bundle: Bundle | None = None) -> RknnBackend:
    """The ``.rknn`` file on the NPU with the options' core mask, its fixed batch and the bundle's normalisation
    (from the bundle's manifest)."""
    if bundle is None:
        raise OptionError(f"{path}: a .rknn file is opened from its bundle (its batch and normalisation are in the "
                          f"manifest): edgeclip.load(bundle, backend='rknn')")
    entry = bundle.manifest["files"].get(Path(path).name, {})
    pre = bundle.preprocess
    return RknnBackend(path, pre["mean"], pre["std"], int(entry.get("batch", 1)), options.core_mask or "auto")


def check_core_mask(core_mask: str) -> str:
    """``core_mask`` if it is one of :data:`CORE_MASKS`, else OptionError listing them."""
    if core_mask not in CORE_MASKS:
        raise OptionError(f"core_mask={core_mask!r} is not an NPU core mask; use one of {', '.join(CORE_MASKS)}")
    return core_mask


def fixed_batches(x: np.ndarray, batch: int) -> Iterator[tuple[np.ndarray, int]]:
    """``x`` in pieces of exactly ``batch`` rows, the last padded by repeating its last row: (piece, rows used)."""
    for i in range(0, len(x), batch):
        piece = x[i:i + batch]
        n = len(piece)
        if n < batch:
            piece = np.concatenate([piece, np.repeat(piece[-1:], batch - n, axis=0)])
        yield np.ascontiguousarray(piece), n


class RknnBackend:
    """One ``.rknn`` image encoder on the NPU (RKNN Toolkit Lite 2), behind the backend interface."""

    def __init__(self, path: str | os.PathLike[str], mean: Sequence[float], std: Sequence[float], batch: int = 1,
                 core_mask: str = "auto", input_name: str = "pixel_values", output_name: str = "image_embeds") -> None:
        """Load ``path`` onto the NPU.

        ``mean``/``std``: the bundle's normalisation (0..1 scale; the model applies it, ``run`` undoes the
        preprocessor's); ``batch``: the fixed batch the file was built with; ``core_mask``: see
        :data:`CORE_MASKS`; the names are the ONNX encoder's, for logs and callers.
        """
        self.path = Path(path)
        check_core_mask(core_mask)
        if batch < 1:
            raise OptionError(f"batch={batch} must be >= 1 (the fixed batch the .rknn file was built with)")
        if not self.path.is_file():
            raise BackendError(f"{self.path}: no such .rknn file; build it for this board (docs/rknn.md)")
        api = import_rknnlite()
        self.mean, self.std, self.batch, self.core_mask = tuple(mean), tuple(std), int(batch), core_mask
        self.name, self.input_name, self.output_name = "rknn", input_name, output_name
        self.max_batch = 0  # any batch: split into pieces of ``batch`` here
        self._lock = threading.Lock()
        start = time.perf_counter()
        lite = api.RKNNLite(verbose=False)
        if lite.load_rknn(str(self.path)) != 0:
            raise BackendError(f"{self.path}: RKNN Toolkit Lite 2 could not read the file; rebuild it")
        if lite.init_runtime(core_mask=getattr(api.RKNNLite, CORE_MASKS[core_mask])) != 0:
            lite.release()
            raise BackendError(f"{self.path}: the NPU runtime did not start (init_runtime failed); run `edgeclip "
                               f"devices` for the NPU's readiness (driver, librknnrt.so, versions)")
        self._lite: Any = lite
        self.start_seconds = time.perf_counter() - start
        log.info("loaded %s on the NPU (RKNN Lite %s, core mask %s, batch %d) in %.2f s", self.path.name,
                 lite_version() or "?", core_mask, batch, self.start_seconds)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Embeddings for a normalised float32 [B, 3, H, W] batch (turned back into uint8 pixels first)."""
        return self.run_pixels(to_pixels(np.asarray(x, dtype=np.float32), self.mean, self.std))

    def run_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Embeddings for uint8 [B, H, W, 3] RGB pixels (resized and cropped as the bundle preprocesses)."""
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise OptionError(f"expected uint8 [B, H, W, 3] RGB pixels, got {pixels.dtype} {pixels.shape}")
        outs = []
        with self._lock:
            for piece, n in fixed_batches(pixels, self.batch):
                got = self._lite.inference(inputs=[piece], data_format="nhwc")
                if got is None:
                    raise BackendError(f"{self.path}: NPU inference failed (RKNN Lite returned nothing; its log "
                                       f"says why)")
                outs.append(np.asarray(got[0], dtype=np.float32).reshape(self.batch, -1)[:n])
        return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)

    def close(self) -> None:
        """Release the NPU context."""
        lite, self._lite = getattr(self, "_lite", None), None
        if lite is not None:
            lite.release()
