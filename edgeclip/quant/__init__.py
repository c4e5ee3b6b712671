"""INT8 quantization of image models: synthetic calibration, recipes, sensitivity (see docs/quantization.md).

``quantize_model`` quantizes any fp32 ONNX image model; ``edgeclip quantize`` (``pipeline.quantize_bundle``)
is the same engine applied to a bundle's image encoder.
"""
from __future__ import annotations

from .calibration import CalibrationSet, CalibSource
from .quantizer import QuantRecord, make_calibration, quantize_images, quantize_model

__all__ = ["CalibSource", "CalibrationSet", "QuantRecord", "make_calibration", "quantize_images", "quantize_model"]
