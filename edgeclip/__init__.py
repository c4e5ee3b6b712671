"""edgeclip: CLIP zero-shot classification on edge devices.

The public API (imported lazily, so ``import edgeclip`` stays cheap and never loads torch)::

    import edgeclip
    clf = edgeclip.load("bundle")                  # device, precision and backend chosen for this machine
    print(clf.classify("photo.jpg"))               # one image in, one Prediction out; a list in, a list out

Parts: ``export`` (torch side), ``quant`` (synthetic INT8 calibration), ``runtime`` (torch-free inference),
``devices`` (device profiles, backend choice, TensorRT engines), ``bundle`` (the artifact contract).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

#: public name -> module that defines it
_EXPORTS = {
    "load": "edgeclip.api",
    "export": "edgeclip.api",
    "quantize": "edgeclip.api",
    "relabel": "edgeclip.api",
    "pack": "edgeclip.api",
    "resolve_device": "edgeclip.api",
    "classify_ray": "edgeclip.batch",
    "load_bundle": "edgeclip.bundle",
    "Bundle": "edgeclip.bundle",
    "Classifier": "edgeclip.runtime.classifier",
    "Prediction": "edgeclip.runtime.classifier",
    "FileResult": "edgeclip.runtime.classifier",
    "TextEncoder": "edgeclip.runtime.text",
    "Label": "edgeclip.runtime.labels",
    "EdgeclipError": "edgeclip.errors",
    "OptionError": "edgeclip.errors",
    "ModelLoadError": "edgeclip.errors",
    "ExportError": "edgeclip.errors",
    "ParityError": "edgeclip.errors",
    "ParityShapeError": "edgeclip.errors",
    "ParityToleranceError": "edgeclip.errors",
    "BundleError": "edgeclip.errors",
    "LabelsError": "edgeclip.errors",
    "ImageReadError": "edgeclip.errors",
    "BackendError": "edgeclip.errors",
    "QuantizationError": "edgeclip.errors",
    "SourceError": "edgeclip.errors",
    "DeviceError": "edgeclip.errors",
}

__all__ = [
    "__version__", "load", "export", "quantize", "relabel", "pack", "resolve_device", "classify_ray", "load_bundle", "Bundle", "Classifier", "Prediction", "FileResult",
    "TextEncoder", "Label", "EdgeclipError", "OptionError", "ModelLoadError", "ExportError", "ParityError",
    "ParityShapeError", "ParityToleranceError", "BundleError", "LabelsError", "ImageReadError", "BackendError",
    "QuantizationError", "SourceError", "DeviceError",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from .api import export, load, pack, quantize, relabel, resolve_device
    from .batch import classify_ray
    from .bundle import Bundle, load_bundle
    from .errors import (BackendError, BundleError, DeviceError, EdgeclipError, ExportError, ImageReadError,
                         LabelsError, ModelLoadError, OptionError, ParityError, ParityShapeError,
                         ParityToleranceError, QuantizationError, SourceError)
    from .runtime.classifier import Classifier, FileResult, Prediction
    from .runtime.labels import Label
    from .runtime.text import TextEncoder


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeclip' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
