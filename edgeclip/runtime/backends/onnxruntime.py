"""ONNX Runtime backend: one session over one model file, with an explicit execution-provider order."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Sequence

import numpy as np

from ...errors import BackendError, OptionError
from ...bundle import Bundle
from ...options import LoadOptions
from ...tables import PROVIDERS
from ..process import compute_threads

log = logging.getLogger("edgeclip.runtime")


def import_onnxruntime() -> ModuleType:
    """The ``onnxruntime`` module; BackendError naming the extra to install (cpu or gpu) when it is missing."""
    try:
        import onnxruntime
    except ModuleNotFoundError as exc:
        if exc.name != "onnxruntime":
            raise
        from ...extras import onnxruntime_help

        raise BackendError(onnxruntime_help()) from None
    return onnxruntime


def resolve_providers(names: Sequence[str] | None) -> list[str]:
    """Short provider names (``cpu``, ``cuda``, ``tensorrt``...) or ONNX Runtime's full names -> full names."""
    out = []
    for n in names or ("cpu",):
        row = PROVIDERS.get(n.lower())
        full = row.ort_name if row is not None else n
        if not full.endswith("ExecutionProvider"):
            raise OptionError(f"unknown execution provider {n!r}; use one of {', '.join(PROVIDERS)}")
        out.append(full)
    return out


def available(variant: str | None = None, providers: Sequence[str] | None = None) -> tuple[bool, str]:
    """Whether this onnxruntime build has the execution provider ``variant`` (``providers``: the ones it has,
    default: asked)."""
    if providers is None:
        try:
            providers = import_onnxruntime().get_available_providers()
        except BackendError as exc:
            return False, str(exc)
    wanted = resolve_providers([variant or "cpu"])[0]
    if wanted in providers:
        return True, f"{wanted} is available"
    return False, f"{wanted} is not in this onnxruntime build (has {', '.join(providers)})"


def open_encoder(path: Path, options: LoadOptions, precision: str = "fp32", variant: str | None = None,
                 bundle: Bundle | None = None) -> OrtBackend:
    """One ONNX Runtime session: ``options.providers`` (or ``variant``) in order, ``options.threads``."""
    providers = list(options.providers or ((variant,) if variant else ("cpu",)))
    return OrtBackend(path, providers, options.threads)


@dataclass
class OrtBackend:
    """ONNX Runtime session over one model file, with an explicit provider order."""

    path: Path
    providers: list[str] = field(default_factory=lambda: resolve_providers(None))
    threads: int = 0
    name: str = "onnxruntime"

    def __post_init__(self) -> None:
        ort = import_onnxruntime()

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
        opts.intra_op_num_threads = compute_threads(self.threads)  # explicit, never ORT's or the shell's
        opts.inter_op_num_threads = 1
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

    def output_width(self) -> int | None:
        """Values per item of the first output as the model declares it (None when not a fixed number)."""
        shape = self.session.get_outputs()[0].shape
        return shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run one batch; returns the first output."""
        return self.session.run([self.output_name], {self.input_name: x})[0]

