"""Which backend runs the image encoder on a device, and which file: the profile's order, probed, each
fallback explained.

Every backend is a row of ``edgeclip.tables.BACKENDS``; nothing here names one. A profile lists *entries*
(a backend, or ONNX Runtime with one execution provider: ``onnxruntime:cuda``), best first. Each entry is
probed with its module's ``available(variant)``; a backend whose files are built on the device (TensorRT
engines) must also have a file for this machine. The first available entry is chosen and the reason every
earlier one was skipped is logged. The file it runs comes from the precision asked for and the entry's
INT8 recipes, best first (``edgeclip.tables.entry_int8_recipes``).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..bundle import Bundle
from ..errors import BackendError, BundleError, EdgeclipError, OptionError
from ..extras import EXTRAS, missing
from ..options import LoadOptions, resolve
from ..runtime.backends import Backend
from ..tables import BACKENDS, PROVIDERS, entry_int8_recipes, load_module, precisions, split_entry
from .catalog import DeviceProfile

log = logging.getLogger("edgeclip.devices")


@dataclass
class BackendChoice:
    """One entry of the order: its label, whether it can run here, and why (not); ``providers`` for ONNX
    Runtime (the profile's from this entry's on); ``file`` for a backend whose files are built on the device."""

    label: str
    available: bool
    reason: str
    providers: tuple[str, ...] = ()
    file: Path | None = None
    file_precision: str | None = None


def _providers(profile: DeviceProfile, variant: str) -> tuple[str, ...]:
    """The profile's ONNX Runtime providers from ``variant`` on (the CPU stays as the last resort)."""
    names = list(profile.ort_providers)
    return tuple(names[names.index(variant):]) if variant in names else (variant, "cpu")


def built_file(backend_name: str, bundle: Bundle, precision: str) -> tuple[Path, str]:
    """The file a backend that builds its own (``BACKENDS[...].files``) runs at ``precision``, and the
    precision it was built at; an INT8 request falls back to its FP16/FP32 file."""
    finder = load_module(BACKENDS[backend_name].files or "")
    try:
        path = finder.find_file(bundle, precision)
    except EdgeclipError:
        if precision != "int8":
            raise
        path = finder.find_file(bundle, "fp32")
    return path, str(bundle.manifest["files"].get(path.name, {}).get("precision", precision))


def probe(entry: str, profile: DeviceProfile, bundle: Bundle | None = None, precision: str = "fp32",
          probes: Mapping[str, Mapping[str, Any]] | None = None) -> BackendChoice:
    """Whether one backend entry can run here (and, with a bundle, its built file), and why (not).

    ``probes``: keyword arguments for a backend module's ``available`` by backend name, letting callers and
    tests state what the machine has (``{"onnxruntime": {"providers": [...]}, "openvino": {"installed": True}}``).
    """
    backend, provider = split_entry(entry)
    variant = provider.name if provider is not None else None
    ok, reason = backend.load().available(variant, **dict((probes or {}).get(backend.name, {})))
    providers = _providers(profile, variant) if variant is not None else ()
    if ok and backend.files is not None and bundle is None:  # the device itself may not be ready (an NPU)
        ready = getattr(load_module(backend.files), "readiness", lambda: {"ready": True})()
        if not ready["ready"]:
            return BackendChoice(entry, False, ready["summary"], providers)
    if not ok or backend.files is None or bundle is None:
        return BackendChoice(entry, ok, reason, providers)
    try:
        path, built = built_file(backend.name, bundle, precision)
    except EdgeclipError as exc:
        return BackendChoice(entry, False, str(exc), providers)
    return BackendChoice(entry, True, f"{path.parent.name}/{path.name}", providers, path, built)


def backend_order(profile: DeviceProfile, bundle: Bundle | None = None, precision: str = "fp32",
                  probes: Mapping[str, Mapping[str, Any]] | None = None) -> list[BackendChoice]:
    """The profile's backend entries in order, each probed on this machine; logs the choice and every fallback."""
    out = [probe(entry, profile, bundle, precision, probes) for entry in profile.backends]
    _log_choice(profile, out)
    return out


def _not_installed(entry: str) -> bool:
    """Whether a backend entry is unavailable only because its optional extra is not installed here."""
    backend = split_entry(entry)[0]
    return bool(backend.extra and missing(EXTRAS[backend.extra][0]))


def _log_choice(profile: DeviceProfile, order: list[BackendChoice]) -> None:
    skipped = []
    for choice in order:
        if choice.available:
            if skipped:  # on a CPU, a backend that is not installed is a choice of the install, not a problem;
                # on a GPU or an NPU, running on the CPU instead is worth a warning whatever the reason
                quiet = profile.kind == "cpu" and all(_not_installed(c.label) for c in order[:order.index(choice)])
                (log.info if quiet else log.warning)("device %s: falling back to %s; %s", profile.name,
                                                     choice.label, "; ".join(skipped))
            else:
                log.info("device %s: using %s (%s)", profile.name, choice.label, choice.reason)
            return
        skipped.append(f"{choice.label} skipped: {choice.reason}")
    log.warning("device %s: none of %s can run here; %s", profile.name, ", ".join(c.label for c in order),
                "; ".join(skipped))


@dataclass
class EncoderChoice:
    """What runs the image encoder: the profile, the backend, the precision, the file, and why."""

    profile: str
    backend: str
    precision: str
    file: Path
    reasons: list[str]

    settings: str = ""

    def describe(self) -> str:
        """One line for logs and command summaries."""
        settings = f" [{self.settings}]" if self.settings else ""
        return f"{self.file.name} on {self.backend} ({self.precision}){settings}: " + "; ".join(self.reasons)


def int8_file(bundle: Bundle, entry: str, target: str | None, required: bool) -> tuple[Path | None, str]:
    """The INT8 image encoder that backend ``entry`` runs best, and why; ``(None, why)`` where none fits and
    not required.

    ``target`` names the recipe explicitly. ``required`` (INT8 asked for explicitly) turns a missing file
    into a BundleError saying which quantization to run.
    """
    have = {e.get("target"): n for n, e in bundle.files_with_role("image_encoder").items() if e.get("precision") == "int8"}
    listed = ", ".join(sorted(str(t) for t in have)) or "none"
    if target is not None:
        if target not in have:
            raise BundleError(f"{bundle.path}: no INT8 image encoder for recipe {target!r} (INT8 recipes here: "
                              f"{listed}); quantize it first: `edgeclip quantize` with target='{target}'")
        return bundle.path / have[target], f"recipe {target} as asked"
    prefs = entry_int8_recipes(entry)
    for rank, recipe in enumerate(prefs):
        if recipe in have:
            why = (f"the {recipe} recipe is the one made for {entry}"
                   if rank == 0 else
                   f"the {recipe} recipe (the bundle has no {prefs[0]} recipe, the one made for {entry})")
            others = sorted(str(t) for t in have if t != recipe)
            return bundle.path / have[recipe], why + (f"; also here: {', '.join(others)}" if others else "")
    why = f"no INT8 file that {entry} runs (wants recipe {' or '.join(prefs)}; the bundle has {listed})"
    if required:
        raise BundleError(f"{bundle.path}: {why}; quantize it first: `edgeclip quantize` with target='{prefs[0]}'")
    return None, why


def _candidates(profile: DeviceProfile, bundle: Bundle, options: LoadOptions, explicit: LoadOptions,
                precision: str) -> list[BackendChoice]:
    """The entries to try, in order: the profile's (probed) among the backends the options allow."""
    allowed = explicit.backends()
    if "providers" in explicit.given():  # ONNX Runtime with the providers asked for, the first one it has
        backend = next(b for b in BACKENDS.values() if "providers" in b.options)
        module = backend.load()
        first = next((p for p in options.providers or () if p in PROVIDERS and module.available(p)[0]), "cpu")
        return [BackendChoice(f"{backend.name}:{first}", True, "asked for", tuple(options.providers or ()))]
    entries = [e for e in profile.backends if split_entry(e)[0].name in allowed]
    if not entries:  # the profile does not list the backend asked for: it alone (ONNX Runtime on the CPU)
        entries = [f"{allowed[0]}:cpu" if "providers" in BACKENDS[allowed[0]].options else allowed[0]]
    order = [probe(e, profile, bundle, precision) for e in entries]
    if explicit.backend == "auto" and len(allowed) > 1:
        _log_choice(profile, order)
    return order


def _open(choice: BackendChoice, bundle: Bundle, options: LoadOptions, explicit: LoadOptions,
          engine_precision: str, want_int8: bool, reasons: list[str]) -> tuple[Backend, Path, str]:
    """Open one entry's backend on the file it runs: (encoder, file, precision)."""
    backend, provider = split_entry(choice.label)
    if backend.files is not None:  # a file built on the device
        path, used = (choice.file, choice.file_precision) if choice.file else built_file(backend.name, bundle,
                                                                                         engine_precision)
        if want_int8 and used != "int8":
            if explicit.precision_given():
                raise BackendError(f"{bundle.path}: no INT8 {backend.name} file for this machine; build one with "
                                   f"precision='int8' (`edgeclip build`)")
            reasons.append(f"no INT8 {backend.name} file for this machine: the {used} one")
    else:
        path, used = None, "fp32"
        if want_int8:
            found, why = int8_file(bundle, choice.label, explicit.target, required=explicit.precision_given())
            reasons.append(why + ("" if found else ": FP32"))
            if found is not None:
                path, used = found, "int8"
        if path is None:  # a packed bundle may hold INT8 files only: the fp32 one is looked up when needed
            path = bundle.encoder("image", "fp32")
        if explicit.precision in backend.precisions and explicit.precision not in precisions("file"):
            used = explicit.precision  # bf16: the fp32 file with bf16 arithmetic
    run_options = dataclasses.replace(options, providers=choice.providers) if choice.providers else options
    variant = provider.name if provider is not None else None
    return backend.load().open_encoder(Path(path), run_options, used, variant, bundle), Path(path), used


def open_image_encoder(bundle: Bundle, profile: DeviceProfile,
                       options: LoadOptions | None = None) -> tuple[Backend, EncoderChoice]:
    """Open the bundle's image encoder for a device: the one path from options to a running backend.

    ``precision="auto"`` takes the profile's (INT8 where the bundle has a file the backend runs, FP32
    otherwise, saying why); ``backend="auto"`` walks the profile's backend order, logging every fallback.
    Explicit options override the profile (:func:`edgeclip.options.resolve`); contradictory ones raise
    OptionError.
    """
    explicit = options or LoadOptions()
    explicit.check()
    resolved = resolve(explicit, profile.load_defaults())
    want_int8 = resolved.precision == "int8"
    engine_precision = "int8" if want_int8 else (resolved.precision if resolved.precision == "fp16" else "fp32")
    strict = explicit.backend != "auto" or len(explicit.backends()) == 1  # no other backend to fall back to
    skipped, errors = [], []
    for choice in _candidates(profile, bundle, resolved, explicit, engine_precision):
        if not choice.available:
            skipped.append(f"{choice.label} cannot run here: {choice.reason}")
            continue
        reasons = [f"device profile {profile.name}"]
        try:
            encoder, path, used = _open(choice, bundle, resolved, explicit, engine_precision, want_int8, reasons)
        except EdgeclipError as exc:
            if strict or isinstance(exc, (BundleError, OptionError)):
                raise
            log.warning("device %s: %s failed (%s); falling back", profile.name, choice.label, exc)
            errors.append(f"{choice.label}: {exc}")
            continue
        settings = encoder.settings() if hasattr(encoder, "settings") else ""
        result = EncoderChoice(profile.name, encoder.name, used, path, reasons, settings)
        log.info("image encoder: %s", result.describe())
        return encoder, result
    if strict and skipped:
        raise BackendError("; ".join(skipped))
    raise BackendError(f"no backend of profile {profile.name} could open {bundle.path}: " + "; ".join(errors or
                       ["none of its backends is available here"]))
