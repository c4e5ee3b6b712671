"""User-facing errors: one small hierarchy, each message names the thing and the fix."""
from __future__ import annotations


class EdgeclipError(Exception):
    """Base class of every error edgeclip reports to a user (exit status 2 from the CLI)."""


class OptionError(EdgeclipError):
    """Contradictory or invalid options; the message says what to pass instead."""


class ModelLoadError(EdgeclipError):
    """A checkpoint could not be found or loaded."""


class ExportError(EdgeclipError):
    """Exporting a tower to ONNX failed."""


class ParityError(ExportError):
    """An exported model disagrees with its source model beyond tolerance."""

    def __init__(self, message: str, numbers: dict | None = None) -> None:
        super().__init__(message)
        self.numbers = dict(numbers or {})


class BundleError(EdgeclipError):
    """A bundle is missing, incomplete, corrupt or of an unknown schema."""


class LabelsError(EdgeclipError):
    """A labels file or label list is malformed."""


class ImageReadError(EdgeclipError):
    """An input image could not be read or decoded."""


class BackendError(EdgeclipError):
    """No inference backend could load or run the model."""


class QuantizationError(EdgeclipError):
    """Calibration or quantization failed."""


class SourceError(EdgeclipError):
    """A camera, stream or video source could not be opened or read."""


class DeviceError(EdgeclipError):
    """Device detection, profiles or TensorRT engine building failed."""
