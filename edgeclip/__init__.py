"""edgeclip: CLIP zero-shot classification on edge devices.

Parts: ``export`` (torch side), ``quant`` (synthetic INT8 calibration), ``runtime`` (torch-free inference),
``devices`` (device profiles, TensorRT engines).
"""
from __future__ import annotations

__version__ = "0.1.0"
