"""Inference backends behind one small interface: ``run(inputs) -> outputs`` on numpy arrays.

ONNX Runtime is always available; its execution providers are tried in a declared order and every
fallback is logged with the reason. The native TensorRT backend lives in ``edgeclip.runtime.tensorrt``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from ..errors import BackendError, OptionError

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


@dataclass
class OrtBackend:
    """ONNX Runtime session over one model file, with an explicit provider order."""

    path: Path
    providers: list[str] = field(default_factory=lambda: resolve_providers(None))
    threads: int = 0
    name: str = "onnxruntime"

    def __post_init__(self) -> None:
        import onnxruntime as ort

        self.path = Path(self.path)
        available = set(ort.get_available_providers())
        wanted = resolve_providers(self.providers) if self.providers else resolve_providers(None)
        chosen = []
        for p in wanted:
            if p in available:
                chosen.append(p)
            else:
                log.warning("execution provider %s is not available in this onnxruntime build "
                            "(available: %s); falling back to the next one", p, ", ".join(sorted(available)))
        if not chosen:
            log.warning("none of the requested providers is available; using CPUExecutionProvider")
            chosen = ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            opts.intra_op_num_threads = self.threads
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError(f"{self.path}: ONNX Runtime could not load the model ({exc}); "
                               f"re-export the bundle or check the providers") from exc
        used = self.session.get_providers()
        if used[0] != chosen[0]:
            log.warning("ONNX Runtime did not start %s for %s; running on %s", chosen[0], self.path.name, used[0])
        self.providers = used
        self.name = f"onnxruntime:{used[0].replace('ExecutionProvider', '').lower()}"
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        log.info("loaded %s with %s", self.path.name, ", ".join(used))

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run one batch; returns the first output."""
        return self.session.run([self.output_name], {self.input_name: x})[0]


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
        raise OptionError(f"{path}: a TensorRT engine needs --backend tensorrt (or auto)")
    return OrtBackend(path, list(providers) if providers else list(DEFAULT_PROVIDERS), threads)
