"""Inference backends behind one small interface: ``run(inputs) -> outputs`` on numpy arrays.

ONNX Runtime is always available; its execution providers are tried in a declared order and every
fallback is logged with the reason. One module per backend: ``onnxruntime``, ``tensorrt`` (native engines).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from ...errors import OptionError

log = logging.getLogger("edgeclip.runtime")

#: Short provider names accepted on the command line, in the default fallback order.
PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
DEFAULT_PROVIDERS = ("cpu",)


class Backend(Protocol):
    """What the classifier needs from an inference engine."""

    name: str
    input_name: str
    output_name: str

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run one batch and return the first output."""
        ...


def resolve_providers(names: Sequence[str] | None) -> list[str]:
    """Map short names (``cpu``, ``cuda``, ``tensorrt``...) or full ONNX Runtime names to provider names."""
    out = []
    for n in names or DEFAULT_PROVIDERS:
        full = PROVIDER_ALIASES.get(n.lower(), n)
        if not full.endswith("ExecutionProvider"):
            raise OptionError(f"unknown execution provider {n!r}; use one of {', '.join(PROVIDER_ALIASES)}")
        out.append(full)
    return out



def create_backend(path: Path, backend: str = "auto", providers: Sequence[str] | None = None,
                   threads: int = 0) -> Backend:
    """Open ``path`` with the named backend: ``onnxruntime``, ``tensorrt`` or ``auto``.

    ``auto`` uses a TensorRT engine when ``path`` is an ``.engine`` file and ONNX Runtime otherwise.
    """
    path = Path(path)
    if backend == "tensorrt" or (backend == "auto" and path.suffix == ".engine"):
        from .tensorrt import TensorRTBackend  # imported lazily: most machines lack TensorRT

        return TensorRTBackend(path)
    if backend not in ("auto", "onnxruntime"):
        raise OptionError(f"unknown backend {backend!r}; use auto, onnxruntime or tensorrt")
    if path.suffix == ".engine":
        raise OptionError(f"{path}: a TensorRT engine needs backend='tensorrt' (or auto)")
    from .onnxruntime import OrtBackend

    return OrtBackend(path, list(providers) if providers else list(DEFAULT_PROVIDERS), threads)
