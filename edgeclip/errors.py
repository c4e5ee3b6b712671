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
    """An exported model disagrees with its source model; ``numbers`` holds what was measured."""

    def __init__(self, message: str, numbers: dict | None = None) -> None:
        super().__init__(message)
        self.numbers = dict(numbers or {})


class ParityShapeError(ParityError):
    """The exported model's output shape differs from the source model's (``numbers``: both shapes)."""


class ParityToleranceError(ParityError):
    """The outputs differ beyond tolerance (``numbers``: max abs/relative difference, min cosine, limits)."""


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


class MissingExtraError(EdgeclipError):
    """An optional part of edgeclip (a pip extra) is not installed; the message gives the pip command."""


class BundleBusyError(BundleError):
    """Another process held a bundle's write lock for longer than the lock timeout."""


class FrameError(SourceError):
    """One frame of a stream could not be read or decoded (``file``: the image file, for folders); the
    stream goes on with the next frame."""

    def __init__(self, message: str, file: str | None = None) -> None:
        super().__init__(message)
        self.file = file


class ConfigError(OptionError):
    """A configuration file is wrong at one place: ``file``, ``line`` (1-based) and ``key`` (dotted path)
    name it, and the message says what is expected there."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        where = ", ".join(p for p in (file, f"line {line}" if line else None, f"key {key}" if key else None) if p)
        super().__init__(f"{where}: {message}" if where else message)
        self.file, self.line, self.key = file, line, key


class RequestError(EdgeclipError):
    """A request to ``edgeclip serve`` cannot be served; ``status`` is the HTTP status code to answer and
    ``retry_after`` the seconds a client should wait before trying again (429 and 503; None: not said)."""

    def __init__(self, message: str, status: int = 400, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = int(status)
        self.retry_after = retry_after
