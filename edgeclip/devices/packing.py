"""Which image encoder file(s) a device profile runs, for ``edgeclip pack``: the bundle cut to one device.

A profile runs its backends in order, falling back when one is not installed (OpenVINO first on x86, then
ONNX Runtime). Every backend of the order must find a file in the packed bundle, so the choice is the INT8
recipe that all of them run (``edgeclip.tables.entry_int8_recipes``), the first backend's best among those;
where no recipe suits them all, each backend's best. Profiles that run fp16 or fp32 (TensorRT engines are
built on the device from the fp32 ONNX) keep the fp32 file. What each backend will then run is read back
from the packed bundle with ``edgeclip.devices.choice.int8_file``, the function ``edgeclip.load`` uses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..bundle import Bundle
from ..errors import BundleError, OptionError
from ..tables import entry_int8_recipes
from .catalog import DeviceProfile
from .choice import int8_file

IMAGE_CHOICES = ("auto", "int8", "fp32")


@dataclass
class PackChoice:
    """The image encoder files a profile runs (bundle file names) and why."""

    profile: str
    precision: str
    files: list[str]
    reasons: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {"profile": self.profile, "precision": self.precision, "image": list(self.files),
                "reasons": list(self.reasons)}


def _int8_files(bundle: Bundle) -> dict[str, str]:
    """INT8 image encoders of ``bundle``: recipe -> file name."""
    return {str(e.get("target")): n for n, e in bundle.files_with_role("image_encoder").items()
            if e.get("precision") == "int8"}


def image_choice(bundle: Bundle, profile: DeviceProfile, image: str = "auto") -> PackChoice:
    """The image encoder file(s) ``profile`` runs from ``bundle``.

    ``image``: ``auto`` (the profile's precision: INT8 where the bundle has a file its backends run, else
    fp32, saying why), ``int8`` (a BundleError naming the quantize command when there is none) or ``fp32``.
    """
    if image not in IMAGE_CHOICES:
        raise OptionError(f"unknown image={image!r}; use one of {', '.join(IMAGE_CHOICES)}")
    fp32 = bundle.encoder("image", "fp32").name
    if image == "fp32" or (image == "auto" and profile.precision != "int8"):
        why = ("asked for fp32" if image == "fp32" else
               f"profile {profile.name} runs {profile.precision}" + (" (TensorRT builds its engine from the fp32 "
                                                                   "ONNX on the device)" if "tensorrt" in profile.backends else ""))
        return PackChoice(profile.name, "fp32", [fp32], [why])
    have = _int8_files(bundle)
    order = list(profile.backends)
    ranked = {entry: entry_int8_recipes(entry) for entry in order}
    common = [r for r in ranked[order[0]] if r in have and all(r in ranked[e] for e in order)]
    if common:
        return PackChoice(profile.name, "int8", [have[common[0]]],
                          [f"the {common[0]} recipe runs on every backend of {profile.name} ({', '.join(order)})"])
    files, reasons = [], []
    for entry in order:
        best = next((r for r in ranked[entry] if r in have), None)
        if best is not None and have[best] not in files:
            files.append(have[best])
            reasons.append(f"{entry} runs the {best} recipe")
    if files:
        return PackChoice(profile.name, "int8", files, reasons + ["no INT8 recipe runs on all of them"])
    want = ranked[order[0]][0] if ranked[order[0]] else "cpu"
    fix = f"quantize it with target='{want}' first (`edgeclip quantize`)"
    if image == "int8":
        raise BundleError(f"{bundle.path}: no INT8 image encoder that profile {profile.name} runs (INT8 recipes "
                          f"here: {', '.join(sorted(have)) or 'none'}); {fix}")
    return PackChoice(profile.name, "fp32", [fp32], [f"no INT8 file that {profile.name} runs ({fix} for one)"])


def runs_on(bundle: Bundle, profile: DeviceProfile, precision: str) -> dict[str, str]:
    """What each backend of ``profile`` runs from (packed) ``bundle``: backend entry -> file name, as
    ``edgeclip.load`` will choose it (``int8_file``); BundleError when a backend finds nothing."""
    out = {}
    for entry in profile.backends:
        if precision == "int8":
            path, why = int8_file(bundle, entry, None, required=False)
            if path is None:
                raise BundleError(f"{bundle.path}: backend {entry} of profile {profile.name} would find no image "
                                  f"encoder in the packed bundle ({why})")
            out[entry] = path.name
        else:
            out[entry] = bundle.encoder("image", "fp32").name
    return out
