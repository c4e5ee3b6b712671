"""Which backend runs the image encoder on a device: the profile's order, probed, each fallback explained.

Order for a Jetson or desktop GPU: a native TensorRT engine (``tensorrt`` + ``cuda-python`` + an engine
built here), then ONNX Runtime's TensorRT provider, then its CUDA provider, then the CPU. The first
available one is chosen; the reason every earlier one was skipped is logged.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..bundle import Bundle
from ..errors import BackendError, EdgeclipError
from ..runtime.backends import PROVIDER_ALIASES, Backend
from .catalog import DeviceProfile

log = logging.getLogger("edgeclip.devices")


@dataclass
class BackendChoice:
    """One entry of the order: its label, whether it can run here, and why (not); ``engine`` for TensorRT."""

    label: str
    available: bool
    reason: str
    providers: tuple[str, ...] = ()
    engine: Path | None = None


def _ort_providers(profile: DeviceProfile, label: str) -> tuple[str, ...]:
    """The profile's ONNX Runtime providers from ``label``'s provider on (keeps the CPU as the last resort)."""
    short = label.split(":", 1)[1]
    names = list(profile.ort_providers)
    return tuple(names[names.index(short):]) if short in names else (short, "cpu")


def backend_order(profile: DeviceProfile, bundle: Bundle | None = None, precision: str = "fp32",
                  available_providers: Sequence[str] | None = None,
                  have_tensorrt: bool | None = None) -> list[BackendChoice]:
    """The profile's backends in order, each probed on this machine; logs the choice and every fallback.

    ``available_providers`` (ONNX Runtime's, default: asked) and ``have_tensorrt`` (default: try the
    imports) let callers and tests state what the machine has.
    """
    if available_providers is None:
        import onnxruntime

        available_providers = onnxruntime.get_available_providers()
    out = []
    for label in profile.backends:
        if label == "tensorrt":
            out.append(_probe_tensorrt(bundle, precision, have_tensorrt))
            continue
        wanted = PROVIDER_ALIASES[label.split(":", 1)[1]]
        ok = wanted in available_providers
        reason = (f"{wanted} is available" if ok else
                  f"{wanted} is not in this onnxruntime build (has {', '.join(available_providers)})")
        out.append(BackendChoice(label, ok, reason, _ort_providers(profile, label)))
    _log_choice(profile, out)
    return out


def _engine(bundle: Bundle, precision: str) -> Path:
    """The engine for ``precision``; an INT8 request falls back to the FP16/FP32 engine."""
    from .engines import find_engine

    try:
        return find_engine(bundle, precision)
    except EdgeclipError:
        if precision != "int8":
            raise
        return find_engine(bundle, "fp32")


def _probe_tensorrt(bundle: Bundle | None, precision: str, have_tensorrt: bool | None) -> BackendChoice:
    if have_tensorrt is False:
        return BackendChoice("tensorrt", False, "TensorRT is not installed")
    if have_tensorrt is None:
        from ..runtime.backends.tensorrt import import_cudart, import_tensorrt

        try:
            import_tensorrt(BackendError)
            import_cudart()
        except BackendError as exc:
            return BackendChoice("tensorrt", False, str(exc))
    if bundle is None:
        return BackendChoice("tensorrt", True, "tensorrt and cuda-python import")
    try:
        path = _engine(bundle, precision)
    except EdgeclipError as exc:
        return BackendChoice("tensorrt", False, str(exc))
    return BackendChoice("tensorrt", True, f"engine {path.name}", engine=path)


def _log_choice(profile: DeviceProfile, order: list[BackendChoice]) -> None:
    skipped = []
    for choice in order:
        if choice.available:
            if skipped:
                log.warning("device %s: falling back to %s; %s", profile.name, choice.label, "; ".join(skipped))
            else:
                log.info("device %s: using %s (%s)", profile.name, choice.label, choice.reason)
            return
        skipped.append(f"{choice.label} skipped: {choice.reason}")
    log.warning("device %s: none of %s can run here; %s", profile.name, ", ".join(c.label for c in order),
                "; ".join(skipped))


def _ort_model(bundle: Bundle, profile: DeviceProfile, label: str, precision: str) -> Path:
    """INT8 only where the profile's recipe matches the backend (the CPU recipe on the CPU); else FP32."""
    if precision == "int8" and label == "onnxruntime:cpu" and profile.int8_target == "cpu":
        try:
            return bundle.encoder("image", "int8", "cpu")
        except EdgeclipError as exc:
            log.info("device %s: %s; using the FP32 encoder", profile.name, exc)
    return bundle.encoder("image", "fp32")


def open_for_profile(bundle: Bundle, profile: DeviceProfile, precision: str | None = None,
                     threads: int = 0) -> Backend:
    """Open the bundle's image encoder on the first backend of the profile's order that works here."""
    from ..runtime.backends import create_backend
    from ..runtime.backends.onnxruntime import OrtBackend

    precision = precision or ("int8" if profile.precision == "int8" else "fp32")
    errors = []
    for choice in backend_order(profile, bundle, precision):
        if not choice.available:
            continue
        try:
            if choice.label == "tensorrt":
                return create_backend(choice.engine, "tensorrt")
            return OrtBackend(_ort_model(bundle, profile, choice.label, precision), list(choice.providers), threads)
        except EdgeclipError as exc:
            log.warning("device %s: %s failed (%s); falling back", profile.name, choice.label, exc)
            errors.append(f"{choice.label}: {exc}")
    raise BackendError(f"no backend of profile {profile.name} could open {bundle.path}: " + "; ".join(errors))
