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
from ..errors import BackendError, BundleError, EdgeclipError, OptionError
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
                  have_tensorrt: bool | None = None, have_openvino: bool | None = None) -> list[BackendChoice]:
    """The profile's backends in order, each probed on this machine; logs the choice and every fallback.

    ``available_providers`` (ONNX Runtime's, default: asked), ``have_tensorrt`` and ``have_openvino``
    (default: try the imports) let callers and tests state what the machine has.
    """
    if available_providers is None:
        try:
            import onnxruntime

            available_providers = onnxruntime.get_available_providers()
        except ImportError:
            available_providers = []
    out = []
    for label in profile.backends:
        if label == "tensorrt":
            out.append(_probe_tensorrt(bundle, precision, have_tensorrt))
            continue
        if label == "openvino":
            out.append(_probe_openvino(have_openvino))
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


def _probe_openvino(have_openvino: bool | None) -> BackendChoice:
    if have_openvino is False:
        return BackendChoice("openvino", False, "OpenVINO is not installed (the 'openvino' extra)")
    if have_openvino is None:
        from ..runtime.backends.openvino import have_openvino as probe

        ok, why = probe()
        return BackendChoice("openvino", ok, why)
    return BackendChoice("openvino", True, "OpenVINO is installed")


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


#: INT8 recipe files each backend runs, best first: the ``cpu`` recipe (U8S8) is made for ONNX Runtime's CPU
#: kernels, the ``tensorrt`` recipe (symmetric S8S8, per-channel) for TensorRT, the ``openvino`` recipe
#: (U8S8 per-channel, residual adds and pools in INT8 too) for OpenVINO, which runs the ``tensorrt`` file
#: next fastest (measured: docs/quantization.md, "Which INT8 file runs best where").
INT8_FILES = {
    "onnxruntime:cpu": ("cpu", "tensorrt"),
    "onnxruntime:tensorrt": ("tensorrt",),
    "onnxruntime:cuda": ("tensorrt",),
    "openvino": ("openvino", "tensorrt", "cpu"),
}
#: bf16 runs on OpenVINO only (its inference-precision hint), on CPUs with AVX512_BF16 or AMX.
RUNTIME_PRECISIONS = ("auto", "fp32", "int8", "bf16")
BACKEND_NAMES = ("auto", "onnxruntime", "tensorrt", "openvino")


@dataclass
class EncoderChoice:
    """What runs the image encoder: the profile, the backend, the precision, the file, and why."""

    profile: str
    backend: str
    precision: str
    file: Path
    reasons: list[str]

    def describe(self) -> str:
        """One line for logs and command summaries."""
        return f"{self.file.name} on {self.backend} ({self.precision}): " + "; ".join(self.reasons)


def int8_file(bundle: Bundle, label: str, target: str | None, required: bool) -> tuple[Path | None, str]:
    """The INT8 image encoder that ``label`` runs best, and why; ``(None, why)`` where none fits and not required.

    ``target`` names the recipe explicitly. ``required`` (INT8 asked for explicitly) turns a missing file
    into a BundleError saying which ``edgeclip quantize`` to run.
    """
    have = {e.get("target"): n for n, e in bundle.files_with_role("image_encoder").items() if e.get("precision") == "int8"}
    listed = ", ".join(sorted(str(t) for t in have)) or "none"
    if target is not None:
        if target not in have:
            raise BundleError(f"{bundle.path}: no INT8 image encoder for recipe {target!r} (INT8 recipes here: "
                              f"{listed}); run `edgeclip quantize {bundle.path} --target {target}`")
        return bundle.path / have[target], f"recipe {target} as asked"
    prefs = INT8_FILES.get(label, ("tensorrt", "cpu"))
    for rank, recipe in enumerate(prefs):
        if recipe in have:
            why = (f"the {recipe} recipe is the one made for {label}"
                   if rank == 0 else
                   f"the {recipe} recipe (the bundle has no {prefs[0]} recipe, the one made for {label})")
            others = sorted(str(t) for t in have if t != recipe)
            return bundle.path / have[recipe], why + (f"; also here: {', '.join(others)}" if others else "")
    why = f"no INT8 file that {label} runs (wants recipe {' or '.join(prefs)}; the bundle has {listed})"
    if required:
        raise BundleError(f"{bundle.path}: {why}; run `edgeclip quantize {bundle.path} --target {prefs[0]}`")
    return None, why


def check_choice_options(precision: str, target: str | None, backend: str, providers: Sequence[str] | None) -> None:
    """Reject contradictory encoder options, naming the argument to drop."""
    if precision not in RUNTIME_PRECISIONS:
        raise OptionError(f"unknown precision {precision!r}; use one of {', '.join(RUNTIME_PRECISIONS)}")
    if backend not in BACKEND_NAMES:
        raise OptionError(f"unknown backend {backend!r}; use one of {', '.join(BACKEND_NAMES)}")
    if target is not None and precision == "fp32":
        raise OptionError("`target` picks an INT8 recipe but precision is fp32: drop `target`, or pass precision='int8'")
    if providers and backend not in ("auto", "onnxruntime"):
        raise OptionError(f"`providers` are ONNX Runtime's execution providers but the backend is {backend}: "
                          f"drop `providers`, or pass backend='onnxruntime'")
    if backend == "tensorrt" and target not in (None, "tensorrt"):
        raise OptionError(f"TensorRT engines are built from the tensorrt recipe, not {target!r}: drop `target`")
    if precision == "bf16":
        if backend not in ("auto", "openvino"):
            raise OptionError(f"precision='bf16' runs on OpenVINO only, not {backend}: pass backend='openvino', or "
                              f"precision='fp32'")
        if target is not None or providers:
            raise OptionError("precision='bf16' runs the fp32 file on OpenVINO: drop `target` and `providers`")


def _candidates(profile: DeviceProfile, bundle: Bundle, engine_precision: str, backend: str,
                providers: Sequence[str] | None, precision: str = "auto") -> list[BackendChoice]:
    """The backends to try, in order: the profile's (probed), or the one asked for."""
    if backend == "openvino" or precision == "bf16":
        return [_probe_openvino(None)]
    if backend == "auto" and not providers:
        return backend_order(profile, bundle, engine_precision)
    if backend == "tensorrt":
        return [_probe_tensorrt(bundle, engine_precision, None)]
    from ..runtime.backends.onnxruntime import import_onnxruntime

    wanted = list(providers) if providers else list(profile.ort_providers)
    available = import_onnxruntime().get_available_providers()
    first = next((p for p in wanted if PROVIDER_ALIASES.get(p.lower(), p) in available), "cpu")
    return [BackendChoice(f"onnxruntime:{first.lower()}", True, "asked for", tuple(wanted))]


def _open_openvino(bundle: Bundle, profile: DeviceProfile, file: Path, precision: str, hint: str | None,
                   threads: int, cache_dir: str | Path | None) -> Backend:
    """OpenVINO on the CPU with the profile's hint (or ``hint``), cached under the file's manifest sha256."""
    from ..runtime.backends.openvino import OpenVinoBackend

    key = bundle.manifest["files"].get(Path(file).name, {}).get("sha256")
    return OpenVinoBackend(file, "CPU", precision, hint or profile.openvino_hint, threads, cache_dir, key=key)


def open_image_encoder(bundle: Bundle, profile: DeviceProfile, precision: str = "auto", target: str | None = None,
                       backend: str = "auto", providers: Sequence[str] | None = None,
                       threads: int = 0, hint: str | None = None,
                       cache_dir: str | Path | None = None) -> tuple[Backend, EncoderChoice]:
    """Open the bundle's image encoder for a device: the one path from options to a running backend.

    ``precision="auto"`` takes the profile's (INT8 where the bundle has a file the backend runs, FP32
    otherwise, saying why); ``backend="auto"`` walks the profile's backend order, logging every fallback.
    ``precision="bf16"`` runs the fp32 file on OpenVINO with bf16 arithmetic (CPUs with AVX512_BF16/AMX).
    OpenVINO only: ``hint`` (latency or throughput; default the profile's) and ``cache_dir`` (compiled
    models; default the user's cache folder). Explicit arguments override the profile; contradictory ones
    raise OptionError.
    """
    from ..runtime.backends import create_backend
    from ..runtime.backends.onnxruntime import OrtBackend

    check_choice_options(precision, target, backend, providers)
    want_int8 = precision == "int8" or (precision == "auto" and profile.precision == "int8")
    explicit = precision != "auto"
    engine_precision = "int8" if want_int8 else ("fp16" if profile.precision == "fp16" and not explicit else "fp32")
    errors = []
    for choice in _candidates(profile, bundle, engine_precision, backend, providers, precision):
        if not choice.available:
            if backend != "auto" or precision == "bf16":
                raise BackendError(f"{choice.label} cannot run here: {choice.reason}")
            continue
        reasons = [f"device profile {profile.name}"]
        try:
            if choice.label == "tensorrt":
                path = choice.engine if choice.engine is not None else _engine(bundle, engine_precision)
                entry = bundle.manifest["files"].get(path.name, {})
                used = str(entry.get("precision", engine_precision))
                if want_int8 and used != "int8":
                    if explicit:
                        raise BackendError(f"{bundle.path}: no INT8 TensorRT engine for this machine; run "
                                           f"`edgeclip build {bundle.path} --precision int8`")
                    reasons.append("no INT8 engine for this machine: the FP16/FP32 one")
                encoder, file, used_precision = create_backend(path, "tensorrt"), path, used
            else:
                file, used_precision = None, "fp32"
                if want_int8:
                    found, why = int8_file(bundle, choice.label, target, required=explicit)
                    reasons.append(why + ("" if found else ": FP32"))
                    if found is not None:
                        file, used_precision = found, "int8"
                if file is None:  # a packed bundle may hold INT8 files only: looked up when needed
                    file = bundle.encoder("image", "fp32")
                if choice.label == "openvino":
                    used_precision = "bf16" if precision == "bf16" else used_precision
                    encoder = _open_openvino(bundle, profile, file, used_precision, hint, threads, cache_dir)
                else:
                    encoder = OrtBackend(file, list(choice.providers), threads)
        except EdgeclipError as exc:
            if backend != "auto" or precision == "bf16" or isinstance(exc, (BundleError, OptionError)):
                raise
            log.warning("device %s: %s failed (%s); falling back", profile.name, choice.label, exc)
            errors.append(f"{choice.label}: {exc}")
            continue
        result = EncoderChoice(profile.name, encoder.name, used_precision, Path(file), reasons)
        log.info("image encoder: %s", result.describe())
        return encoder, result
    raise BackendError(f"no backend of profile {profile.name} could open {bundle.path}: " + "; ".join(errors or
                       ["none of its backends is available here"]))
