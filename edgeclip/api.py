"""The public entry points: open a bundle for this device (``load``), and make one (``export``, ``quantize``,
``relabel``, ``pack``).

``load`` is what apps, the CLI, the service and the batch engine call. It detects the device profile
(or takes the one named), lets the profile pick precision, INT8 recipe and backend order, and lets explicit
arguments override it; a contradiction is an OptionError naming the argument to drop.
"""
from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .bundle import Bundle, load_bundle
from .devices.choice import open_image_encoder
from .tables import PROVIDERS
from .devices.catalog import DeviceProfile, get_profile
from .devices.detect import Detection, detect
from .errors import EdgeclipError, OptionError
from .extras import EXTRAS, missing
from .options import LoadOptions, check_output, resolve
from .export.options import ExportOptions
from .quant.options import QuantizeOptions
from .runtime.classifier import Classifier
from .runtime.labels import Label, check_labels, read_labels_file, resolve_templates
from .runtime.process import configure_threads  # noqa: F401  (public: every command calls it at start)

log = logging.getLogger("edgeclip")


@functools.lru_cache(maxsize=1)
def detect_device() -> Detection:
    """This machine's device profile, detected once per process (``edgeclip.devices.detect``)."""
    found = detect()
    log.info("device: %s (%s)", found.profile.name, "; ".join(found.reasons))
    return found


def resolve_device(device: str | DeviceProfile = "auto") -> DeviceProfile:
    """``"auto"`` (detect this machine), a profile name (``edgeclip devices`` lists them) or a profile."""
    if isinstance(device, DeviceProfile):
        return device
    return detect_device().profile if device == "auto" else get_profile(device)


def load(bundle: str | os.PathLike[str] | Bundle, options: LoadOptions | None = None, /,
         **values: Any) -> Classifier:
    """Open ``bundle`` (verified) for a device and return a ready :class:`Classifier`.

    ``options`` (:class:`edgeclip.LoadOptions`), with any of its fields given as keywords on top:

    - ``device``: ``"auto"`` detects the profile; a profile name overrides detection.
    - ``precision``: ``"auto"`` (the profile's: INT8 where the bundle has a file the backend runs), ``"fp32"``,
      ``"int8"`` (an error if the bundle has no INT8 file that the backend runs) or ``"bf16"`` (OpenVINO).
    - ``backend``: ``"auto"`` (the profile's order, each fallback logged with its reason) or a backend name
      (``edgeclip.tables.BACKENDS``: onnxruntime, openvino, tensorrt).
    - ``target``: the INT8 recipe where the profile's choice is not wanted.
    - ``providers``: ONNX Runtime execution providers in fallback order (implies ONNX Runtime).
    - ``threads``: intra-op threads (0 = all cores); ``top_k``: labels per prediction.
    - OpenVINO only: ``hint`` (``"auto"``, ``"latency"`` or ``"throughput"``; default the profile's) and
      ``cache_dir`` (compiled-model cache; default ``~/.cache/edgeclip/openvino``).

    An unknown keyword is an OptionError naming the closest option. ``classifier.choice.describe()`` says
    which file runs where, and why (also logged).
    """
    opts = LoadOptions.build(options, **values)
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    profile = resolve_device(opts.device)
    encoder, choice = open_image_encoder(b, profile, opts)
    resolved = resolve(opts, profile.load_defaults())
    text_providers = [p for p in resolved.providers or () if p in PROVIDERS and PROVIDERS[p].text] or ["cpu"]
    clf = Classifier(b, opts, encoder=encoder, precision=choice.precision, text_providers=text_providers)
    clf.choice = choice
    return clf


def _labels(labels: Sequence[str | Label] | None, labels_file: str | os.PathLike[str] | None,
            default: Sequence[str] | None = None) -> list[Label]:
    if labels is not None and labels_file is not None:
        raise OptionError("give labels either as `labels` or as `labels_file`, not both")
    if labels_file is not None:
        return read_labels_file(labels_file)
    if labels is None:
        if not default:
            raise OptionError("no labels: pass labels=['cat', 'dog', ...] or labels_file='labels.txt'")
        labels = list(default)
    return check_labels([lab if isinstance(lab, Label) else Label(str(lab)) for lab in labels], "labels")


def export(out: str | os.PathLike[str], options: ExportOptions | None = None, /,
           labels: Sequence[str | Label] | None = None, *, labels_file: str | os.PathLike[str] | None = None,
           templates: str | Sequence[str] | None = None, step: Callable[[str], None] | None = None,
           **values: Any) -> Bundle:
    """Export a CLIP checkpoint to a verified bundle at ``out`` (needs ``edgeclip[export]``).

    ``options`` (:class:`edgeclip.ExportOptions`), with any of its fields as keywords on top: ``model`` (a
    built-in name (default: the proxy model), an open_clip architecture with ``pretrained`` (a tag, a file or
    ``"none"``), a folder, a checkpoint with ``config``, or a Hugging Face id or folder), ``overwrite``,
    ``opset``, ``parity_atol``, ``seed``, ``tokenizer`` (a local Hugging Face tokenizer folder for models whose
    text tower is not CLIP's, SigLIP's). ``labels`` (names or :class:`Label`) or ``labels_file``; a built-in
    proxy model defaults to the classes it was trained on. ``templates``: a template set name (``short``,
    ``imagenet80``, ``photo``, ``none``), a file, or a list.
    """
    from .export.defaults import DEFAULT_MODEL, PROXY_LABELS, PROXY_MODELS
    from .export.exporter import export_bundle
    from .export.models import load_model
    from .export.onnx_export import Tolerance

    opts = ExportOptions.build(options, **values)
    problem = check_output(out, "out", "folder")
    if problem:
        raise OptionError(problem)
    default = PROXY_LABELS if (opts.model or DEFAULT_MODEL) in PROXY_MODELS else None
    items = _labels(labels, labels_file, default)
    tname, chosen = _templates(templates)
    if step is not None:
        step(f"loading {opts.model or DEFAULT_MODEL}")
    loaded = load_model(opts.model, opts.pretrained, opts.config, opts.seed, opts.tokenizer)
    path = export_bundle(loaded, Path(out), items, tname, chosen, overwrite=opts.overwrite, opset=opts.opset,
                         tol=Tolerance(max_abs=opts.parity_atol), step=step)
    return load_bundle(path)


def _templates(templates: str | Sequence[str] | None) -> tuple[str, list[str]]:
    if templates is None or isinstance(templates, str):
        return resolve_templates(templates)
    return "custom", list(templates)


def quantize(bundle: str | os.PathLike[str], options: QuantizeOptions | None = None, /, *, progress: bool = False,
             step: Callable[[str], None] | None = None, **values: Any) -> dict[str, Any]:
    """Write an INT8 image encoder into the bundle (needs ``edgeclip[export]``); returns the manifest's
    quantization record.

    ``options`` (:class:`edgeclip.QuantizeOptions`), with any of its fields as keywords on top: ``target``
    (the INT8 recipe: ``edgeclip.tables.INT8_RECIPES``), ``calib`` (``text-guided``, ``bn-stats``, ``noise``
    or ``real:DIR``), ``images``, ``seed``, ``calib_method``, ``max_drop``, ``time_budget``, ``steps``,
    ``device``, ``synthesis_resolution``, ``synthesis_precision``, ``synthesis_threads``, ``cache``. Every
    problem is reported at once, before any work.
    """
    from .quant.quantize import quantize_bundle

    started = time.monotonic()  # ``time_budget`` bounds the whole job, choosing the target included
    opts = QuantizeOptions.build(options, **values)
    if opts.target == "auto":
        target, why = best_int8_recipe()
        opts = opts.replace(target=target)
        if step is not None:
            step(f"target {target}: {why}")
    return quantize_bundle(bundle, opts, progress=progress, step=step, started=started)


def best_int8_recipe(device: str | DeviceProfile = "auto") -> tuple[str, str]:
    """The INT8 recipe that the backend this device runs first (its profile's order, probed here) runs best,
    and why: what ``quantize`` makes for ``target="auto"``."""
    from .devices.choice import backend_order
    from .tables import entry_int8_recipes

    profile = resolve_device(device)
    order = backend_order(profile)
    entry = next((c.label for c in order if c.available), profile.backends[-1])
    return (entry_int8_recipes(entry)[0],
            f"the recipe {entry} runs best, the first backend of device profile {profile.name} that runs here")


def relabel(bundle: str | os.PathLike[str], labels: Sequence[str | Label] | None = None, *,
            labels_file: str | os.PathLike[str] | None = None, templates: str | Sequence[str] | None = None,
            providers: Sequence[str] | None = None) -> Bundle:
    """Re-embed a new label set inside the bundle, on this device (the text encoder; no torch), atomically."""
    from .runtime.text import relabel_bundle

    items = _labels(labels, labels_file)
    tname, chosen = _templates(templates)
    relabel_bundle(bundle, items, tname, chosen, providers)
    return load_bundle(bundle)


# ---------------------------------------------------------------------------------------------------------
# devices
# ---------------------------------------------------------------------------------------------------------
def list_devices(bundle: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The device profiles, what this machine is detected as, every backend of ``edgeclip.tables.BACKENDS``
    (whether it runs here, why (not), and its devices where it has several), and with ``bundle`` the profile's
    backend order probed for that bundle."""
    from .devices.catalog import load_profiles
    from .devices.choice import backend_order
    from .tables import BACKENDS, load_module, split_entry

    found = detect_device()
    backends = {}
    for b in BACKENDS.values():
        module = b.load()
        ok, why = module.available()
        backends[b.name] = {"available": ok, "reason": why, "extra": b.extra,
                            "devices": module.devices() if ok and hasattr(module, "devices") else []}
        files = load_module(b.files) if b.files else None
        listed = {split_entry(e)[0].name for e in found.profile.backends}
        if files is not None and hasattr(files, "readiness") and b.name in listed:
            backends[b.name]["readiness"] = files.readiness()  # the device this machine is: why (not) ready
    order = backend_order(found.profile, load_bundle(bundle)) if bundle is not None else None
    return {"profiles": [p.to_dict() for p in load_profiles().values()],
            "detected": {"profile": found.profile.to_dict(), "exact": found.exact, "reasons": found.reasons},
            "backends": backends, "order": [vars(c) for c in order] if order is not None else None}


def builder(device: str | DeviceProfile = "auto") -> Any:
    """The backend row (``edgeclip.tables.BACKENDS``) whose files a device's profile builds from a bundle: the
    first of its order that runs a file of its own (a TensorRT engine, an ``.rknn`` file); DeviceError where
    the device runs the bundle's ONNX files as they are."""
    from .errors import DeviceError
    from .tables import split_entry

    profile = resolve_device(device)
    row = next((b for b in (split_entry(e)[0] for e in profile.backends) if b.files), None)
    if row is None:
        raise DeviceError(f"device profile {profile.name} runs the bundle's ONNX files as they are: nothing to build "
                          f"(`device` with a GPU, Jetson or Rockchip profile builds for that device)")
    return row


def build(bundle: str | os.PathLike[str], device: str | DeviceProfile = "auto", options: Any = None, /, *,
          step: Callable[[str], None] | None = None, **values: Any) -> str:
    """Build (or reuse) the file the device's backend runs, inside the bundle (``edgeclip build``): a TensorRT
    engine for this GPU, or an INT8 ``.rknn`` file for a Rockchip chip. ``options`` (and ``values``) are the
    builder's: ``edgeclip.devices.engines.TensorRTBuildOptions`` or ``edgeclip.devices.rknn.RknnBuildOptions``;
    returns one line saying what was done."""
    from .tables import load_module

    profile = resolve_device(device)
    row = builder(profile)
    module = load_module(row.files or "")
    opts = module.BUILD_OPTIONS.build(options, **values)
    extra = {}
    if hasattr(module, "cached_calibration"):  # calibrated on the bundle's synthetic images: made when missing
        extra["calibrate"] = lambda: _fresh_calibration(bundle, opts.calib, module, step)
    return module.build(bundle, profile, opts, step, **extra)


def _fresh_calibration(bundle: str | os.PathLike[str], source: str, module: Any,
                       step: Callable[[str], None] | None) -> Any:
    """The bundle's cached calibration set of ``source``, else a new one (needs the export extra); None lets
    the builder say what is missing."""
    b = load_bundle(bundle)
    try:
        return module.cached_calibration(b, source)
    except EdgeclipError:
        if missing(EXTRAS["export"][0]):
            return None
    from .quant.calibration import calibration_set

    made = calibration_set(b, source, progress=False, step=step)
    return module.Calibration(made.images, str(made.source), made.key, cached=False)


def check_build(target: str | os.PathLike[str], device: str | DeviceProfile = "auto", *,
                precision: str | None = None, tensorrt: str | None = None) -> Any:
    """What would block a TensorRT build of a bundle (or of one ``.onnx`` file), checked without TensorRT
    (``edgeclip.devices.readiness.BuildCheck``: ``blocked``, ``report()``, ``findings``, ``notes``)."""
    from .devices.engines import engine_source, resolve_precision, tensorrt_version
    from .devices.readiness import BuildCheck, check_model
    from .extras import require

    require("tensorrt", ["onnx"], what="checking a TensorRT build")
    profile = resolve_device(device)
    version = tensorrt or tensorrt_version() or profile.tensorrt or "10.0"
    notes: list[str] = []
    path = Path(target)
    if path.suffix != ".onnx":
        b = load_bundle(path)
        if precision is None:
            precision, notes = resolve_precision(b, profile, None) if profile.uses_gpu else ("fp16", [])
        path = b.path / engine_source(b, precision)
    return BuildCheck(path, version, check_model(path, version), notes)


# ---------------------------------------------------------------------------------------------------------
# the user cache (compiled models)
# ---------------------------------------------------------------------------------------------------------
def cache_info() -> dict[str, Any]:
    """edgeclip's user cache: its root, the size limit of each part, and each part's entries (folder, bytes,
    last used), least recently used first."""
    from .runtime.cache import cache_root, entries, max_bytes

    root = cache_root()
    parts = {p.name: [{"path": str(e.path), "bytes": e.bytes, "used": e.used} for e in entries(p)]
             for p in sorted(root.iterdir()) if p.is_dir()} if root.is_dir() else {}
    return {"root": str(root), "max_bytes": max_bytes(), "parts": parts}


def clear_cache(max_bytes: int = 0) -> int:
    """Remove cached compiled models, least recently used first, until each part of the cache holds at most
    ``max_bytes`` (0: all of them); returns the bytes freed. Bundles are never touched."""
    from .runtime.cache import cache_root, prune

    root = cache_root()
    return sum(e.bytes for part in (sorted(root.iterdir()) if root.is_dir() else []) if part.is_dir()
               for e in prune(part, max_bytes))
def pack(bundle: str | os.PathLike[str] | Bundle, out: str | os.PathLike[str], options: Any = None, /, *,
         step: Callable[[str], None] | None = None, **fields: Any) -> Bundle:
    """A copy of ``bundle`` at ``out`` with only what one device runs (``edgeclip pack``), verified.

    ``options``: an ``edgeclip.PackOptions``, with any of its fields as keywords on top: ``device`` (a profile
    name, default ``"auto"``: this machine), ``text`` (``"int8"``: the text encoder quantized and checked
    against the fp32 label embeddings, ``"fp32"`` or ``"none"``), ``image`` (``"auto"``: the profile's
    precision, ``"int8"`` or ``"fp32"``), ``overwrite``, ``text_min_cosine``. Needs onnx and ONNX Runtime for
    ``text="int8"``. The manifest's ``pack`` section says what was kept, what was left out and why.
    """
    from .devices.packing import image_choice, runs_on
    from .quant.pack import PackOptions, pack_bundle

    opts = PackOptions.build(options, **fields)
    problem = check_output(out, "out", "folder")
    if problem:
        raise OptionError(problem)
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    profile = resolve_device(opts.device)
    choice = image_choice(b, profile, opts.image)
    packed = pack_bundle(b, Path(out), choice.files, choice.record(), opts, step)
    runs_on(packed, profile, choice.precision)  # every backend of the profile finds its file there
    return packed


def runs_on(bundle: str | os.PathLike[str] | Bundle, device: str | DeviceProfile = "auto",
            precision: str = "auto") -> dict[str, str]:
    """What each backend of a device's profile runs from ``bundle`` (a packed one too): backend entry -> file
    name; BundleError naming what is missing."""
    from .devices.packing import runs_on as files_run

    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    profile = resolve_device(device)
    return files_run(b, profile, profile.precision if precision == "auto" else precision)


def models(names: Sequence[str] = (), measure: bool = False, seconds: float = 2.0, threads: int = 0,
           tokenizer: str | None = None, step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The model families and built-in names (``edgeclip models``): ``families`` (rows of
    ``edgeclip.tables.FAMILIES``), ``cards`` (name -> what was measured on this machine, or None), ``cpu``,
    ``cache`` (where measurements are kept). ``measure`` measures ``names`` (default: one per family and size
    class) first; needs the export extra."""
    from .export.catalog import DEFAULT_MEASURE, builtin_names, cache_file, load_cards, save_cards, this_cpu
    from .tables import FAMILIES

    if measure:
        from .export.catalog import measure as measure_one
        from .extras import require, require_onnxruntime

        require("export", what="measuring models")
        require_onnxruntime("measuring models")
        for name in names or DEFAULT_MEASURE:
            save_cards([measure_one(name, seconds, threads, tokenizer, step or log.info)])
    cards = load_cards()
    listed = [(fam, n) for fam, n in builtin_names() if not names or n in names]
    listed += [(cards[n].family, n) for n in names if n in cards and n not in {m for _, m in listed}]
    return {"families": list(FAMILIES.values()), "names": listed, "cards": {n: cards.get(n) for _, n in listed},
            "cpu": this_cpu(), "cache": str(cache_file())}
