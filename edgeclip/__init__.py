"""edgeclip: CLIP zero-shot classification on edge devices.

The public API (imported lazily, so ``import edgeclip`` stays cheap and never loads torch)::

    import edgeclip
    clf = edgeclip.load("bundle")                  # device, precision and backend chosen for this machine
    print(clf.classify("photo.jpg"))               # one image in, one Prediction out; a list in, a list out

    for r in edgeclip.stream("bundle", "rtsp://cam/stream"):   # live decisions, one per classified frame
        ...

Options objects (``LoadOptions``, ``ExportOptions``, ``QuantizeOptions``, ``SourceOptions``,
``StreamOptions``, ``BatchOptions``, ``EvalOptions``) hold each job's defaults once; functions take one and
its fields as keywords. The vocabularies (backends, precisions, INT8 recipes, source kinds, tokenizers,
scoring) are tables in ``edgeclip.tables``. Layers: docs/architecture.md.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from ._version import __version__

#: public name -> module that defines it (a name equal to its module's last part is that module: ``stream``)
_EXPORTS = {
    "load": "edgeclip.api",
    "export": "edgeclip.api",
    "quantize": "edgeclip.api",
    "relabel": "edgeclip.api",
    "pack": "edgeclip.api",
    "runs_on": "edgeclip.api",
    "models": "edgeclip.api",
    "resolve_device": "edgeclip.api",
    "list_devices": "edgeclip.api",
    "build": "edgeclip.api",
    "check_build": "edgeclip.api",
    "cache_info": "edgeclip.api",
    "clear_cache": "edgeclip.api",
    "stream": "edgeclip.stream",
    "Stream": "edgeclip.stream",
    "classify_ray": "edgeclip.batch",
    "load_bundle": "edgeclip.bundle",
    "Bundle": "edgeclip.bundle",
    "Classifier": "edgeclip.runtime.classifier",
    "Prediction": "edgeclip.runtime.classifier",
    "FileResult": "edgeclip.runtime.classifier",
    "TextEncoder": "edgeclip.runtime.text",
    "Label": "edgeclip.runtime.labels",
    "LoadOptions": "edgeclip.options",
    "ExportOptions": "edgeclip.export.options",
    "QuantizeOptions": "edgeclip.quant.options",
    "SourceOptions": "edgeclip.sources",
    "StreamOptions": "edgeclip.stream.options",
    "StreamOutputs": "edgeclip.stream.options",
    "BatchOptions": "edgeclip.batch",
    "EvalOptions": "edgeclip.evaluate",
    "PackOptions": "edgeclip.quant.pack",
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

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from . import stream
    from .api import (build, cache_info, check_build, clear_cache, export, list_devices, load, models, pack,
                      quantize, relabel, resolve_device, runs_on)
    from .batch import BatchOptions, classify_ray
    from .bundle import Bundle, load_bundle
    from .errors import (BackendError, BundleError, DeviceError, EdgeclipError, ExportError, ImageReadError,
                         LabelsError, ModelLoadError, OptionError, ParityError, ParityShapeError,
                         ParityToleranceError, QuantizationError, SourceError)
    from .evaluate import EvalOptions
    from .export.options import ExportOptions
    from .quant.pack import PackOptions
    from .options import LoadOptions
    from .quant.options import QuantizeOptions
    from .runtime.classifier import Classifier, FileResult, Prediction
    from .runtime.labels import Label
    from .runtime.text import TextEncoder
    from .sources import SourceOptions
    from .stream import Stream
    from .stream.options import StreamOptions, StreamOutputs


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeclip' has no attribute {name!r}")
    imported = importlib.import_module(module)
    value = imported if module.rsplit(".", 1)[-1] == name else getattr(imported, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


class _Facade(types.ModuleType):
    """This package's module object. A public function named like a subpackage (``export``) stays the
    function when the subpackage is imported: the import system sets the parent's attribute to a subpackage
    it imports, which would hide the function. The subpackage stays importable (``sys.modules``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _EXPORTS and not _EXPORTS[name].endswith("." + name):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Facade
