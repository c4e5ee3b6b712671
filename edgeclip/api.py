"""The public entry point: open a bundle for this device and get a :class:`Classifier`.

``load`` is what apps, the CLI, the service and the batch engine call. It detects the device profile
(or takes the one named), lets the profile pick precision, INT8 recipe and backend order, and lets explicit
arguments override it; a contradiction is an OptionError naming the argument to drop.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Sequence

from .bundle import Bundle, load_bundle
from .devices.backends import open_image_encoder
from .devices.catalog import DeviceProfile, get_profile
from .devices.detect import Detection, detect
from .runtime.classifier import Classifier

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
         threads: int = 0, top_k: int = 5) -> Classifier:
    """Open ``bundle`` (verified) for a device and return a ready :class:`Classifier`.

    - ``device``: ``"auto"`` detects the profile; a profile name overrides detection.
    - ``precision``: ``"auto"`` (the profile's: INT8 where the bundle has a file the backend runs), ``"fp32"``
      or ``"int8"`` (an error if the bundle has no INT8 file that the backend runs).
    - ``backend``: ``"auto"`` (the profile's order, each fallback logged with its reason), ``"onnxruntime"``
      or ``"tensorrt"`` (an engine from ``edgeclip build``).
    - ``target``: the INT8 recipe (``"cpu"`` or ``"tensorrt"``) where the profile's choice is not wanted.
    - ``providers``: ONNX Runtime execution providers in fallback order (implies ONNX Runtime).
    - ``threads``: intra-op threads (0 = all cores); ``top_k``: labels per prediction.

    ``classifier.choice.describe()`` says which file runs where, and why.
    """
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    profile = resolve_device(device)
    encoder, choice = open_image_encoder(b, profile, precision, target, backend, providers, threads)
    text_providers = [p for p in profile.ort_providers if p != "tensorrt"] or ["cpu"]
    clf = Classifier(b, precision=choice.precision if choice.precision in ("fp32", "int8") else "fp32",
                     top_k=top_k, encoder=encoder, text_providers=text_providers)
    clf.choice = choice
    return clf
