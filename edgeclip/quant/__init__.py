"""INT8 quantization of image models: synthetic calibration, recipes, sensitivity (see docs/quantization.md).

``quantize_model`` quantizes any fp32 ONNX image model; ``edgeclip quantize`` (``quantize.quantize_bundle``)
is the same engine applied to a bundle's image encoder. ``QuantizeOptions`` (``options``) imports without
torch or onnx; the names below load their modules on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

#: public name -> module that defines it
_EXPORTS = {
    "CalibSource": "calibration", "CalibrationSet": "calibration", "QuantRecord": "quantizer",
    "make_calibration": "quantizer", "quantize_images": "quantizer", "quantize_model": "quantizer",
    "QuantizeOptions": "options",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'edgeclip.quant' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
