"""Optional parts of edgeclip (pip extras): what each one provides, and the pip line that adds it.

The base install is the device runtime without an inference engine or OpenCV, so a device keeps the
onnxruntime-gpu and OpenCV it already has (JetPack). Commands call :func:`require` before any work; a
missing part is a :class:`~edgeclip.errors.MissingExtraError` (exit status 2) whose one line names the
extra and the exact pip command for *this* installation (its Python, and the folder or wheel it came from).
This module uses the standard library only, so every layer may import it.
"""
from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path
from typing import Sequence
from urllib.parse import unquote, urlparse

from .errors import MissingExtraError

#: extra -> (the modules it provides, what it is for)
EXTRAS: dict[str, tuple[tuple[str, ...], str]] = {
    "cpu": (("onnxruntime",), "ONNX Runtime for CPUs"),
    "gpu": (("onnxruntime",), "ONNX Runtime for NVIDIA GPUs on x86-64"),
    "opencv": (("cv2",), "OpenCV: cameras, video files, network streams, drawing"),
    "export": (("torch", "torchvision", "open_clip", "onnx", "onnxscript", "safetensors", "transformers"),
               "torch, open_clip, onnx"),
    "openvino": (("openvino",), "OpenVINO for Intel CPUs and GPUs"),
    "tokenizers": (("tokenizers",), "Hugging Face tokenizers: the tokenizer.json of SigLIP and other non-CLIP text towers"),
    "report": (("matplotlib",), "matplotlib"),
    "tensorrt": (("onnx",), "onnx; TensorRT itself comes from JetPack or NVIDIA"),
    "serve": (("starlette", "uvicorn", "multipart"), "Starlette, uvicorn, python-multipart"),
    "ray": (("ray", "pyarrow"), "Ray Data for batch runs on many workers or machines"),
    "rknn": (("rknnlite",), "RKNN Toolkit Lite 2 for Rockchip NPUs (aarch64 boards)"),
    "watch": (("yaml", "paho"), "PyYAML and paho-mqtt for edgeclip watch (configuration, MQTT events)"),
    "test": (("pytest",), "pytest"),
}
#: The lowest onnxruntime whose quantize_static accepts calibration_cache_path (edgeclip quantize).
ONNXRUNTIME_FOR_QUANTIZE = (1, 27)
_PROJECT_ROOT = Path(__file__).resolve().parent.parent


def missing(modules: Sequence[str]) -> list[str]:
    """The top-level modules of ``modules`` that cannot be imported here (found without importing them)."""
    out = []
    for m in modules:
        try:
            found = importlib.util.find_spec(m) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(m)
    return out


def _install_source() -> tuple[str, bool]:
    """Where this edgeclip was installed from: (folder, wheel or 'edgeclip', editable)."""
    from importlib import metadata

    dists = list(metadata.distributions(name="edgeclip"))
    if not dists:  # run from a source tree without installing
        return (str(_PROJECT_ROOT), True) if (_PROJECT_ROOT / "pyproject.toml").is_file() else ("edgeclip", False)
    for dist in dists:  # a source tree's egg-info may come first on sys.path: it has no direct_url.json
        try:
            info = json.loads(dist.read_text("direct_url.json") or "{}")
        except (ValueError, OSError):
            continue
        url = info.get("url", "")
        if url.startswith("file://"):
            path = unquote(urlparse(url).path)
            if Path(path).exists():
                return path, bool(info.get("dir_info", {}).get("editable"))
    return "edgeclip", False


def install_command(*extras: str) -> str:
    """The pip command that adds ``extras`` to this installation of edgeclip, for this Python."""
    source, editable = _install_source()
    spec = f"{source}[{','.join(extras)}]"
    return f"{shlex.quote(sys.executable)} -m pip install {'-e ' if editable else ''}{shlex.quote(spec)}"


def require(extra: str, modules: Sequence[str] | None = None, what: str | None = None) -> None:
    """Raise MissingExtraError (one line: the extra and its pip command) when a module of ``extra`` is missing.

    ``modules`` defaults to every module the extra provides; ``what`` names the feature that needs it.
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}")
    gone = missing(modules if modules is not None else EXTRAS[extra][0])
    if gone:
        raise MissingExtraError(f"{what or 'this'} needs the '{extra}' extra ({EXTRAS[extra][1]}; missing here: "
                                f"{', '.join(gone)}); install it with: {install_command(extra)}")


def onnxruntime_help() -> str:
    """One line saying which onnxruntime to install here."""
    return (f"onnxruntime is not installed: add the 'cpu' extra ({install_command('cpu')}), or 'gpu' on an x86-64 "
            f"machine with an NVIDIA GPU; on a Jetson use JetPack's onnxruntime-gpu in a venv made with "
            f"--system-site-packages")


def require_onnxruntime(what: str | None = None, minimum: tuple[int, int] | None = None) -> None:
    """Raise MissingExtraError when onnxruntime is missing (or older than ``minimum``), with the pip line."""
    if missing(["onnxruntime"]):
        raise MissingExtraError((f"{what} needs ONNX Runtime; " if what else "") + onnxruntime_help())
    if minimum is not None:
        from importlib import metadata

        version = None
        for dist in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"):
            try:
                version = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
        if version is not None and release(version) < minimum:
            need = ".".join(map(str, minimum))
            raise MissingExtraError(f"{what or 'this'} needs onnxruntime >= {need} (this one is {version}); "
                                    f"upgrade it with: {shlex.quote(sys.executable)} -m pip install "
                                    f"'onnxruntime>={need}' (or 'onnxruntime-gpu>={need}')")


def release(version: str) -> tuple[int, ...]:
    """``"2.5.0"`` -> ``(2, 5, 0)``: the leading numbers of a version (at most three; stops at the first part
    that is not one)."""
    parts = []
    for p in version.split(".")[:3]:
        digits = "".join(c for c in p if c.isdigit()) if p[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def extra_for_module(name: str) -> str | None:
    """The extra that provides top-level module ``name`` (None when no extra does)."""
    top = name.split(".")[0]
    for extra, (modules, _) in EXTRAS.items():
        if top in modules and extra not in ("gpu", "tensorrt"):
            return extra
    return None
