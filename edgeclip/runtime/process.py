"""The process's own limits: how many threads the numeric libraries start, and freed memory given back.

edgeclip parallelises its own work (decoding and preprocessing threads, a micro-batcher, the encoder's
intra-op pool), so the libraries under it must not each start a pool of their own sized from the machine
or from whatever the environment happens to say. :func:`configure_threads` is the one place that decides,
called when a command starts (``edgeclip.cli.main``) and when the service is created
(``edgeclip.serve.create_app``):

* **BLAS under numpy** (OpenBLAS, as numpy's wheels ship it; Accelerate on macOS): 1 thread. edgeclip's
  numpy products are small vector-matrix products run from many threads at once; a threaded BLAS only
  makes them spin against each other (8 concurrent 9400x9400 uploads took minutes with threaded OpenBLAS,
  seconds with one thread).
* **OpenCV's parallel loops**: 1 thread, for the same reason (decoding runs on edgeclip's threads).
* **ONNX Runtime and OpenVINO** (the encoders): ``threads`` intra-op threads, where 0 means one per
  physical core this process may run on (:func:`encoder_cpus`: the CPU affinity mask, hyper-threads of one
  core counted once, as both libraries count by default); ONNX Runtime's inter-op pool is 1 thread (the
  graphs run sequentially).

Environment variables that would otherwise set these (``OPENBLAS_NUM_THREADS``, ``VECLIB_MAXIMUM_THREADS``,
``OPENCV_FOR_THREADS_NUM``) are overwritten, so a run behaves the same whatever the shell exported, and
child processes (Ray workers) inherit edgeclip's choice. torch (export, quantize) keeps its own pool
(``MKL_NUM_THREADS`` and ``OMP_NUM_THREADS`` are left to it). :func:`release_memory` hands freed heap
pages back to the system (glibc ``malloc_trim``); the service calls it after large request bodies are
dropped.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading
from dataclasses import dataclass

log = logging.getLogger("edgeclip.runtime")

#: Threads for BLAS and OpenCV's own pools (edgeclip runs its parallel work on its own threads).
HELPER_THREADS = 1
_HELPER_ENV = ("OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "OPENCV_FOR_THREADS_NUM")
#: OpenBLAS entry points, by build (numpy's own scipy-openblas first).
_OPENBLAS_SET = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
                 "openblas_set_num_threads")
_OPENBLAS_GET = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads", "openblas_get_num_threads64_",
                 "openblas_get_num_threads")


@dataclass(frozen=True)
class ThreadSettings:
    """The thread counts in force: encoder intra-op threads, BLAS and OpenCV (None: library not loaded)."""

    compute: int
    blas: int | None
    opencv: int | None


_compute = 0
_lock = threading.Lock()


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the system has one), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def encoder_cpus() -> int:
    """Physical cores among the CPUs this process may run on (Linux topology files), else :func:`usable_cpus`."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return usable_cpus()
    cores = set()
    for cpu in cpus:
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        try:
            with open(base + "core_id") as a, open(base + "physical_package_id") as b:
                cores.add((b.read().strip(), a.read().strip()))
        except OSError:
            return usable_cpus()
    return max(1, len(cores))


def compute_threads(requested: int = 0) -> int:
    """Intra-op threads for an encoder: ``requested`` when > 0, else the configured count, else
    :func:`encoder_cpus`."""
    if requested and requested > 0:
        return int(requested)
    return _compute or encoder_cpus()


def configure_threads(compute: int | None = None) -> ThreadSettings:
    """Set every thread count edgeclip relies on (see the module doc); returns what is in force.

    ``compute``: default intra-op threads of encoders opened from now on (0: :func:`encoder_cpus`; None:
    keep the current default). Safe to call more than once and from any thread.
    """
    global _compute
    if compute is not None and compute < 0:
        from ..errors import OptionError

        raise OptionError(f"`threads` must be >= 0 (0: one per physical core), got {compute}")
    with _lock:
        if compute is not None:
            _compute = int(compute)
        for name in _HELPER_ENV:
            os.environ[name] = str(HELPER_THREADS)
        opencv = _set_opencv(HELPER_THREADS)  # first: importing OpenCV may load numpy (and its BLAS)
        blas = _set_openblas(HELPER_THREADS)
    return ThreadSettings(compute_threads(), blas, opencv)


def current_threads() -> ThreadSettings:
    """The thread counts in force now (BLAS read from OpenBLAS itself where numpy uses it)."""
    cv2 = sys.modules.get("cv2")
    return ThreadSettings(compute_threads(), _openblas_threads(), int(cv2.getNumThreads()) if cv2 else None)


def _openblas_libraries() -> list[ctypes.CDLL]:
    """The OpenBLAS libraries loaded in this process (Linux: read from /proc/self/maps)."""
    if "numpy" not in sys.modules:
        return []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:
        return []
    libs = []
    for path in sorted(paths):
        try:
            libs.append(ctypes.CDLL(path))
        except OSError:
            continue
    return libs


def _symbol(lib: ctypes.CDLL, names: tuple[str, ...]):
    for name in names:
        fn = getattr(lib, name, None)
        if fn is not None:
            return fn
    return None


def _set_openblas(n: int) -> int | None:
    """Set the thread count of every loaded OpenBLAS; returns the count read back (None: none loaded)."""
    for lib in _openblas_libraries():
        fn = _symbol(lib, _OPENBLAS_SET)
        if fn is not None:
            fn.argtypes, fn.restype = [ctypes.c_int], None
            fn(n)
    return _openblas_threads()


def _openblas_threads() -> int | None:
    counts = []
    for lib in _openblas_libraries():
        fn = _symbol(lib, _OPENBLAS_GET)
        if fn is not None:
            fn.restype = ctypes.c_int
            counts.append(int(fn()))
    return max(counts) if counts else None


def _set_opencv(n: int) -> int | None:
    """OpenCV's thread count when it is installed (imported here: its pool is sized when it loads)."""
    try:
        import cv2
    except ImportError:
        return None
    cv2.setNumThreads(n)
    return int(cv2.getNumThreads())


_malloc_trim = None


def release_memory() -> bool:
    """Give freed heap memory back to the system (glibc ``malloc_trim``); False where unavailable."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
            fn = libc.malloc_trim
            fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
            _malloc_trim = fn
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim is False:
        return False
    _malloc_trim(0)
    return True
