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
from pathlib import Path
from typing import Any, Callable, Sequence

from .bundle import Bundle, load_bundle
from .devices.choice import open_image_encoder
from .devices.catalog import DeviceProfile, get_profile
from .devices.detect import Detection, detect
from .errors import OptionError
from .runtime.classifier import Classifier
from .runtime.labels import Label, check_labels, read_labels_file, resolve_templates

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


def load(bundle: str | os.PathLike[str] | Bundle, device: str | DeviceProfile = "auto", precision: str = "auto",
         backend: str = "auto", *, target: str | None = None, providers: Sequence[str] | None = None,
         threads: int = 0, top_k: int = 5, hint: str | None = None,
         cache_dir: str | os.PathLike[str] | None = None) -> Classifier:
    """Open ``bundle`` (verified) for a device and return a ready :class:`Classifier`.

    - ``device``: ``"auto"`` detects the profile; a profile name overrides detection.
    - ``precision``: ``"auto"`` (the profile's: INT8 where the bundle has a file the backend runs), ``"fp32"``,
      ``"int8"`` (an error if the bundle has no INT8 file that the backend runs) or ``"bf16"`` (OpenVINO).
    - ``backend``: ``"auto"`` (the profile's order, each fallback logged with its reason), ``"onnxruntime"``,
      ``"openvino"`` or ``"tensorrt"`` (an engine from ``edgeclip build``).
    - ``target``: the INT8 recipe (``"cpu"``, ``"tensorrt"`` or ``"openvino"``) where the profile's choice is not wanted.
    - ``providers``: ONNX Runtime execution providers in fallback order (implies ONNX Runtime).
    - ``threads``: intra-op threads (0 = all cores); ``top_k``: labels per prediction.
    - OpenVINO only: ``hint`` (``"auto"``, ``"latency"`` or ``"throughput"``; default the profile's) and ``cache_dir``
      (compiled-model cache; default ``~/.cache/edgeclip/openvino``). ``precision="bf16"`` runs there too.

    ``classifier.choice.describe()`` says which file runs where, and why.
    """
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    profile = resolve_device(device)
    encoder, choice = open_image_encoder(b, profile, precision, target, backend, providers, threads, hint, cache_dir)
    text_providers = [p for p in profile.ort_providers if p != "tensorrt"] or ["cpu"]
    clf = Classifier(b, precision=choice.precision, top_k=top_k, encoder=encoder, text_providers=text_providers)
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


def export(out: str | os.PathLike[str], model: str | None = None, labels: Sequence[str | Label] | None = None, *,
           labels_file: str | os.PathLike[str] | None = None, templates: str | Sequence[str] | None = None,
           pretrained: str | None = None, config: str | None = None, overwrite: bool = False,
           opset: int | None = None, parity_atol: float | None = None, seed: int = 0,
           step: Callable[[str], None] | None = None, tokenizer: str | os.PathLike[str] | None = None) -> Bundle:
    """Export a CLIP checkpoint to a verified bundle at ``out`` (needs ``edgeclip[export]``).

    ``model``: a built-in name (default: the proxy model), an open_clip architecture with ``pretrained``
    (a tag, a file or ``"none"``), a folder, a checkpoint with ``config``, or a Hugging Face id or folder.
    ``templates``: a template set name (``short``, ``imagenet80``, ``photo``, ``none``), a file, or a list.
    ``tokenizer``: a local Hugging Face tokenizer folder for models whose text tower is not CLIP's (SigLIP).
    """
    from .export.defaults import DEFAULT_MODEL, PROXY_LABELS, PROXY_MODELS
    from .export.models import load_model
    from .export.onnx_export import DEFAULT_OPSET, Tolerance
    from .export.exporter import export_bundle

    default = PROXY_LABELS if (model or DEFAULT_MODEL) in PROXY_MODELS else None
    items = _labels(labels, labels_file, default)
    tname, chosen = _templates(templates)
    loaded = load_model(model, pretrained, config, seed, str(tokenizer) if tokenizer else None)
    tol = Tolerance() if parity_atol is None else Tolerance(max_abs=parity_atol)
    path = export_bundle(loaded, Path(out), items, tname, chosen, overwrite=overwrite,
                         opset=opset or DEFAULT_OPSET, tol=tol, step=step)
    return load_bundle(path)


def _templates(templates: str | Sequence[str] | None) -> tuple[str, list[str]]:
    if templates is None or isinstance(templates, str):
        return resolve_templates(templates)
    return "custom", list(templates)


def quantize(bundle: str | os.PathLike[str], target: str = "cpu", calib: str | None = None, *,
             progress: bool = False, step: Callable[[str], None] | None = None, **options: Any) -> dict[str, Any]:
    """Write an INT8 image encoder for ``target`` (``cpu``, ``tensorrt`` or ``openvino``) into the bundle (needs ``edgeclip[export]``).

    ``calib``: ``text-guided`` (default), ``bn-stats`` (ResNets), ``noise`` or ``real:DIR``; ``options`` are
    the other fields of ``edgeclip.quant.quantize.QuantizeOptions`` (images, seed, calib_method, max_drop,
    time_budget, cache, steps, device, synthesis_resolution, synthesis_precision, synthesis_threads). Returns the
    manifest's quantization record.
    """
    import dataclasses

    from .quant.quantize import QuantizeOptions, quantize_bundle

    known = {f.name for f in dataclasses.fields(QuantizeOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise OptionError(f"unknown quantize option(s) {', '.join(unknown)}; use {', '.join(sorted(known))}")
    fields = {"target": target, **({"calib": calib} if calib else {}), **options}
    return quantize_bundle(bundle, QuantizeOptions(**fields), progress=progress, step=step)


def relabel(bundle: str | os.PathLike[str], labels: Sequence[str | Label] | None = None, *,
            labels_file: str | os.PathLike[str] | None = None, templates: str | Sequence[str] | None = None,
            providers: Sequence[str] | None = None) -> Bundle:
    """Re-embed a new label set inside the bundle, on this device (the text encoder; no torch), atomically."""
    from .runtime.text import relabel_bundle

    items = _labels(labels, labels_file)
    tname, chosen = _templates(templates)
    relabel_bundle(bundle, items, tname, chosen, providers)
    return load_bundle(bundle)


def pack(bundle: str | os.PathLike[str] | Bundle, out: str | os.PathLike[str], options: Any = None, *,
         step: Callable[[str], None] | None = None, **fields: Any) -> Bundle:
    """A copy of ``bundle`` at ``out`` with only what one device runs (``edgeclip pack``), verified.

    ``options``: an ``edgeclip.export.pack.PackOptions``, or its fields as keywords: ``device`` (a profile
    name, default ``"auto"``: this machine), ``text`` (``"int8"``: the text encoder quantized and checked
    against the fp32 label embeddings, ``"fp32"`` or ``"none"``), ``image`` (``"auto"``: the profile's
    precision, ``"int8"`` or ``"fp32"``), ``overwrite``, ``text_min_cosine``. Needs onnx and ONNX Runtime for
    ``text="int8"``. The manifest's ``pack`` section says what was kept, what was left out and why.
    """
    import dataclasses

    from .devices.packing import image_choice, runs_on
    from .export.pack import PackOptions, pack_bundle

    known = {f.name for f in dataclasses.fields(PackOptions)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise OptionError(f"unknown pack option(s) {', '.join(unknown)}; use {', '.join(sorted(known))}")
    opts = dataclasses.replace(options, **fields) if options is not None else PackOptions(**fields)
    opts.check()
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    profile = resolve_device(opts.device)
    choice = image_choice(b, profile, opts.image)
    packed = load_bundle(pack_bundle(b, Path(out), choice.files, choice.record(), opts, step))
    runs_on(packed, profile, choice.precision)  # every backend of the profile finds its file there
    return packed
