"""OpenVINO backend: the bundle's ONNX files (fp32 or Q/DQ INT8) compiled by OpenVINO, cached per machine.

Same interface as ``OrtBackend`` (``name``, ``input_name``, ``output_name``, ``run``). OpenVINO reads the
ONNX file itself (no conversion step, nothing written into the bundle); the compiled model is cached in the
user's cache directory (``$EDGECLIP_CACHE_DIR/openvino``, else ``$XDG_CACHE_HOME/edgeclip/openvino``, else
``~/.cache/edgeclip/openvino``) under a folder named by the file's hash, so a second start skips compilation;
the folder is pruned to ``$EDGECLIP_CACHE_MAX`` (default 2 GiB), least recently used first
(``edgeclip.runtime.cache``; ``edgeclip cache`` shows and clears it).

Precision: ``fp32`` pins OpenVINO's inference precision to f32 (on CPUs with bf16 it would otherwise run
bf16 by default); ``bf16`` asks for bf16 and needs AVX512_BF16 or AMX; ``int8`` runs a Q/DQ file with the
layers it leaves in float (LayerNorm, Softmax, GELU, the attention pool) in bf16 on CPUs with AVX512_BF16 or
AMX, OpenVINO's own default there (measured 5-15% faster than f32 on ViT-B/32 and RN50, with the proxies'
agreement with fp32 within 0.13 point of the f32 figures: docs/quantization.md), else in f32
(``rest_precision``). The ``latency`` hint runs one request over the whole batch with every core; ``throughput``
splits a batch over OpenVINO's parallel streams (fewer threads each); ``auto`` uses the first for one image and
the second for batches. ``openvino`` is imported here only.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

import numpy as np

from ...errors import BackendError, OptionError
from ...bundle import Bundle
from ...options import LoadOptions
from ...tables import BACKENDS, OPENVINO_HINTS
from ..cache import cache_root, prune, touch
from ..cpu import BF16_FLAGS, read_cpuinfo
from ..process import compute_threads

log = logging.getLogger("edgeclip.runtime")

#: ``auto``: a latency-compiled model for single images, a throughput-compiled one (compiled on first use) for batches
HINTS = OPENVINO_HINTS
PRECISIONS = BACKENDS["openvino"].precisions
_INFERENCE_PRECISION = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}


def rest_precision(precision: str, device: str, cpu_flags: Iterable[str] | None = None) -> str:
    """OpenVINO's inference precision for ``precision``: ``int8`` files keep their float layers in bf16 on a
    CPU with AVX512_BF16 or AMX (OpenVINO's default there), in f32 elsewhere."""
    if precision == "int8" and device.upper().startswith("CPU"):
        return "bf16" if _has_bf16(cpu_flags) else "f32"
    return _INFERENCE_PRECISION[precision]


def _has_bf16(cpu_flags: Iterable[str] | None = None) -> bool:
    """Whether this CPU (or one with ``cpu_flags``) has AVX512_BF16 or AMX."""
    return bool(frozenset(read_cpuinfo()[2] if cpu_flags is None else cpu_flags) & set(BF16_FLAGS))


def import_openvino() -> ModuleType:
    """The ``openvino`` module; BackendError naming the extra to install when it is missing."""
    try:
        import openvino
    except ImportError as exc:
        if getattr(exc, "name", None) not in (None, "openvino"):
            raise
        from ...extras import install_command

        raise BackendError(f"OpenVINO is not installed ({exc}); add the 'openvino' extra: "
                           f"{install_command('openvino')}") from None
    return openvino


def available(variant: str | None = None, installed: bool | None = None) -> tuple[bool, str]:
    """(whether OpenVINO imports here, why or why not); ``installed`` states it instead of trying."""
    if installed is not None:
        return installed, "OpenVINO is installed" if installed else "OpenVINO is not installed (the 'openvino' extra)"
    try:
        ov = import_openvino()
    except BackendError as exc:
        return False, str(exc)
    return True, f"openvino {ov.get_version().split('-')[0]} imports"


def open_encoder(path: Path, options: LoadOptions, precision: str = "fp32", variant: str | None = None,
                 bundle: Bundle | None = None) -> OpenVinoBackend:
    """The file compiled on the CPU with the options' hint, threads and compiled-model cache (cached under the
    file's sha256 from the bundle's manifest when given)."""
    key = bundle.manifest["files"].get(path.name, {}).get("sha256") if bundle is not None else None
    return OpenVinoBackend(path, "CPU", precision, options.hint or "auto", options.threads, options.cache_dir, key=key)


def devices() -> list[dict[str, str]]:
    """OpenVINO's devices here (CPU, GPU.0, NPU...): name, full name, capabilities; [] without OpenVINO."""
    try:
        ov = import_openvino()
    except BackendError:
        return []
    core, out = ov.Core(), []
    for dev in core.available_devices:
        info = {"device": dev}
        for key, prop in (("name", "FULL_DEVICE_NAME"), ("capabilities", "OPTIMIZATION_CAPABILITIES")):
            try:
                value = core.get_property(dev, prop)
            except RuntimeError:
                continue
            info[key] = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        out.append(info)
    return out


def default_cache_dir() -> Path:
    """Where compiled models are cached: the ``openvino`` folder of edgeclip's user cache (``runtime.cache``)."""
    return cache_root() / "openvino"


def file_key(path: Path) -> str:
    """A short key of a model file's content (its sha256), so a changed file never reuses a stale compile."""
    h = hashlib.sha256()
    for part in (path, path.with_suffix(".bin")) if path.suffix == ".xml" else (path,):  # IR: graph + weights
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def check_bf16(device: str, cpu_flags: Iterable[str] | None = None) -> None:
    """Raise OptionError unless bf16 can run on ``device`` (a CPU needs AVX512_BF16 or AMX)."""
    if not device.upper().startswith("CPU"):
        return
    if not _has_bf16(cpu_flags):
        raise OptionError(f"precision='bf16' needs a CPU with AVX512_BF16 or AMX ({' or '.join(BF16_FLAGS)} in its "
                          f"flags); this CPU has neither: use precision='fp32', or 'int8' with a quantized file")


class OpenVinoBackend:
    """One ONNX file compiled by OpenVINO for one device, behind the backend interface."""

    def __init__(self, path: str | os.PathLike[str], device: str = "CPU", precision: str = "fp32",
                 hint: str = "auto", threads: int = 0, cache_dir: str | os.PathLike[str] | None = None,
                 cache: bool = True, key: str | None = None, cpu_flags: Iterable[str] | None = None) -> None:
        """Compile ``path`` (an .onnx file) for ``device``.

        ``precision``: fp32, bf16 or int8 (see the module docstring); ``hint``: auto, latency or throughput;
        ``threads``: inference threads (0 = one per physical core, see ``runtime.process``); ``cache_dir``:
        compiled-model cache (default :func:`default_cache_dir`; ``cache=False`` turns it off); ``key``: the
        file's sha256 when
        the caller knows it (else it is computed); ``cpu_flags``: this CPU's flags (default: /proc/cpuinfo).
        """
        self.path = Path(path)
        if precision not in PRECISIONS:
            raise OptionError(f"unknown OpenVINO precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        if hint not in HINTS:
            raise OptionError(f"unknown performance hint {hint!r}; use one of {', '.join(HINTS)}")
        if threads < 0:
            raise OptionError(f"threads={threads} must be >= 0 (0 = all cores)")
        if self.path.suffix not in (".onnx", ".xml"):
            raise OptionError(f"{self.path}: the OpenVINO backend reads .onnx files (or OpenVINO IR .xml)")
        if not self.path.is_file():
            raise BackendError(f"{self.path}: no such model file; re-export or re-quantize the bundle")
        if precision == "bf16":
            check_bf16(device, cpu_flags)
        ov = import_openvino()
        self.device, self.precision, self.hint, self.threads = device, precision, hint, threads
        #: precision of the layers a Q/DQ file leaves in float (``fp32``: f32, ``bf16``: bf16)
        self.rest_precision = rest_precision(precision, device, cpu_flags)
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": self.rest_precision}
        if threads or device.upper().startswith("CPU"):  # explicit on the CPU (runtime/process.py)
            config["INFERENCE_NUM_THREADS"] = compute_threads(threads)
        self.cache_dir: Path | None = None
        if cache:
            root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
            self.cache_dir = root / (key or file_key(self.path))[:16]
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BackendError(f"cannot create the OpenVINO cache folder {self.cache_dir} ({exc}); pass another "
                                   f"`cache_dir`, or set EDGECLIP_CACHE_DIR") from exc
            config["CACHE_DIR"] = str(self.cache_dir)
        self._core, self._config = ov.Core(), config
        self._modes: dict[str, tuple[Any, list[Any]]] = {}
        self._lock = threading.Lock()
        before = set(self.cache_dir.glob("*.blob")) if self.cache_dir is not None else set()
        start = time.perf_counter()
        compiled, _ = self._mode("throughput" if hint == "throughput" else "latency")
        self.start_seconds = time.perf_counter() - start
        #: True when this start loaded a compiled model from the cache (no new cache file was written)
        self.from_cache = self.cache_dir is not None and set(self.cache_dir.glob("*.blob")) == before != set()
        if self.cache_dir is not None:  # the cache stays under its size limit, this model kept
            touch(self.cache_dir)
            if not self.from_cache:
                prune(self.cache_dir.parent, keep=self.cache_dir)
        self.name = f"openvino:{device.lower()}"
        self.input_name = compiled.inputs[0].any_name
        self.output_name = compiled.outputs[0].any_name
        shown = f"{precision}, other layers {self.rest_precision}" if precision == "int8" else precision
        log.info("loaded %s with OpenVINO on %s (%s, %s hint, %s) in %.2f s%s", self.path.name, device, shown,
                 hint, f"{config.get('INFERENCE_NUM_THREADS', 'all')} threads", self.start_seconds,
                 " from the cache" if self.from_cache else "")

    def settings(self) -> str:
        """What this compiled model was asked for, in one line (``EncoderChoice.describe`` shows it)."""
        threads = f"{self.threads} threads" if self.threads else "all cores"
        cache = f"cache {self.cache_dir.parent}" if self.cache_dir is not None else "no cache"
        return f"{self.hint} hint, {threads}, {cache}"

    def _mode(self, hint: str) -> tuple[Any, list[Any]]:
        """The model compiled with ``hint`` and one infer request per stream (compiled on first use)."""
        if hint not in self._modes:
            try:
                compiled = self._core.compile_model(str(self.path), self.device,
                                                    {**self._config, "PERFORMANCE_HINT": hint.upper()})
            except RuntimeError as exc:
                raise BackendError(f"{self.path}: OpenVINO could not compile the model for {self.device} ({exc}); "
                                   f"re-export the bundle, or use backend='onnxruntime'") from exc
            streams = 1 if hint == "latency" else max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            self._modes[hint] = compiled, [compiled.create_infer_request() for _ in range(streams)]
        return self._modes[hint]

    def output_width(self) -> int | None:
        """Values per image of the first output as OpenVINO infers it (None when not static)."""
        compiled = next(iter(self._modes.values()))[0]
        shape = compiled.outputs[0].partial_shape
        if shape.rank.is_dynamic or shape.rank.get_length() != 2 or shape[1].is_dynamic:
            return None
        return int(shape[1].get_length())

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run one batch; returns the first output. Thread-safe (one batch at a time)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        with self._lock:
            hint = self.hint if self.hint != "auto" else ("latency" if len(x) < 2 else "throughput")
            compiled, requests = self._mode(hint)
            parts = min(len(requests), len(x))
            if parts <= 1:
                return requests[0].infer({0: x})[compiled.outputs[0]].copy()
            for req, chunk in zip(requests, np.array_split(x, parts)):
                req.start_async({0: chunk})
            for req in requests[:parts]:
                req.wait()
            return np.concatenate([req.get_output_tensor(0).data.copy() for req in requests[:parts]])
