"""Device profiles: one JSON file per device class in ``edgeclip/devices/profiles/``.

A profile says how edgeclip should run on a class of machine: the backend order, the precision and the
INT8 recipe target, the batch range, the TensorRT workspace and DLA use, the Rockchip NPU's platform and
cores, the ONNX Runtime providers, and the fixed GPU compute capability (SM) where the hardware has one.
Adding a device is adding a file.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from ..errors import DeviceError
from ..tables import INT8_RECIPES, OPENVINO_HINTS, RKNN_CORE_MASKS, backend_entries, precisions

KINDS = ("jetson", "gpu", "npu", "cpu")


@dataclass(frozen=True)
class DeviceProfile:
    """How to run on one class of device (loaded from a profile JSON file)."""

    name: str
    title: str
    kind: str
    backends: tuple[str, ...]
    precision: str
    int8_target: str | None
    opt_batch: int
    max_batch: int
    workspace_mb: int
    ort_providers: tuple[str, ...]
    sm: str | None = None
    tensorrt: str | None = None
    dla_cores: int = 0
    dla_core: int | None = None
    int8_cpu_flags: tuple[str, ...] = ()
    openvino_hint: str = "auto"
    rknn_platform: str | None = None  # Rockchip NPU: the RKNN-Toolkit2 target platform its .rknn files are built for
    core_mask: str = "auto"  # Rockchip NPU cores to run on (edgeclip.runtime.backends.rknn.CORE_MASKS)
    match: dict[str, Any] = field(default_factory=dict, compare=False)
    notes: str = ""

    @property
    def uses_gpu(self) -> bool:
        """True for profiles whose first backend needs an NVIDIA GPU."""
        return self.kind in ("jetson", "gpu")

    def with_changes(self, **changes: Any) -> "DeviceProfile":
        """A copy with some fields replaced (e.g. the SM read from this machine's GPU)."""
        return dataclasses.replace(self, **changes)

    def load_defaults(self) -> dict[str, Any]:
        """What the profile says for the load options left at ``auto`` (``edgeclip.options.resolve``)."""
        return {"precision": self.precision, "hint": self.openvino_hint, "providers": self.ort_providers,
                "core_mask": self.core_mask}

    def to_dict(self) -> dict[str, Any]:
        """The profile as plain JSON-able data."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def profile_from_dict(data: dict[str, Any], where: str = "profile") -> DeviceProfile:
    """Validate and build a profile; raises DeviceError naming the bad field."""
    names = {f.name for f in dataclasses.fields(DeviceProfile)}
    unknown = set(data) - names
    if unknown:
        raise DeviceError(f"{where}: unknown profile field(s) {', '.join(sorted(unknown))}")
    missing = [f.name for f in dataclasses.fields(DeviceProfile)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data]
    if missing:
        raise DeviceError(f"{where}: missing profile field(s) {', '.join(missing)}")
    entries, profile_precisions = backend_entries(), precisions("profile")
    checks = [("kind", data["kind"] in KINDS, KINDS),
              ("precision", data["precision"] in profile_precisions, profile_precisions),
              ("int8_target", data["int8_target"] in (None, *INT8_RECIPES), tuple(INT8_RECIPES)),
              ("backends", bool(data["backends"]) and all(b in entries for b in data["backends"]), entries),
              ("openvino_hint", data.get("openvino_hint", "auto") in OPENVINO_HINTS, OPENVINO_HINTS),
              ("core_mask", data.get("core_mask", "auto") in RKNN_CORE_MASKS, RKNN_CORE_MASKS)]
    for key, ok, allowed in checks:
        if not ok:
            raise DeviceError(f"{where}: {key}={data[key]!r} is not valid; use {', '.join(allowed)}")
    if ("rknn" in data["backends"]) != bool(data.get("rknn_platform")):
        raise DeviceError(f"{where}: the rknn backend and rknn_platform come together (the chip its .rknn files are "
                          f"built for)")
    if not 1 <= int(data["opt_batch"]) <= int(data["max_batch"]):
        raise DeviceError(f"{where}: need 1 <= opt_batch <= max_batch (got {data['opt_batch']}, {data['max_batch']})")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return DeviceProfile(**values)


def load_profiles() -> dict[str, DeviceProfile]:
    """Every built-in profile by name: Jetsons, then desktop GPUs, then CPUs, each by name."""
    folder = resources.files("edgeclip.devices") / "profiles"
    out = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            try:
                data = json.loads(entry.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise DeviceError(f"profile {entry.name}: not valid JSON ({exc})") from exc
            p = profile_from_dict(data, f"profile {entry.name}")
            out[p.name] = p
    order = {k: i for i, k in enumerate(KINDS)}
    return dict(sorted(out.items(), key=lambda kv: (order[kv[1].kind], kv[0])))


def get_profile(name: str) -> DeviceProfile:
    """The built-in profile ``name``; raises DeviceError listing the names."""
    profiles = load_profiles()
    if name not in profiles:
        raise DeviceError(f"unknown device profile {name!r}; use auto or one of {', '.join(profiles)}")
    return profiles[name]
