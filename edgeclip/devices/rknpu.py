"""Can this board's Rockchip NPU run a ``.rknn`` file? Each check reads a file and says why not, and the fix.

The checks, in order: a Rockchip chip with an NPU (``/proc/device-tree/compatible``); the NPU enabled in the
device tree (its ``npu@...`` node's ``status``); Rockchip's own NPU driver (``rknpu``: its debugfs version file,
or a DRM device bound to it; mainline Linux's ``rocket`` driver does not serve ``librknnrt``); the runtime
library ``librknnrt.so`` and its version; ``rknn-toolkit-lite2`` (the ``rknn`` extra); and the versions against
each other and against the toolkit a model was built with (a runtime older than the toolkit that built a model
refuses it). Every path is read under ``root`` so tests run the checks on fixture trees
(``tests/fixtures/devices/<name>/``).
"""
from __future__ import annotations

import mmap
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..runtime.backends.rknn import lite_version
from ..extras import release

COMPATIBLE = "proc/device-tree/compatible"
DEVICE_TREE = "proc/device-tree"
DRIVER_VERSION = "sys/kernel/debug/rknpu/version"
DEVICE_UEVENTS = ("sys/class/drm/*/device/uevent", "sys/class/accel/*/device/uevent")
#: where librknnrt.so is looked for ($LIBRKNNRT_PATH first, as RKNN Lite does)
LIB_DIRS = ("usr/lib", "usr/lib64", "usr/lib/aarch64-linux-gnu", "usr/local/lib")
LIB_NAME = "librknnrt.so"
#: Rockchip chips with an RKNPU2 NPU, as the device tree's compatible names them
NPU_SOCS = ("rk3588", "rk3588s", "rk3576", "rk3568", "rk3566", "rk3562")
LIB_SOURCE = ("copy librknnrt.so from rknn-toolkit2's rknpu2/runtime/Linux/librknn_api/aarch64/ (the release "
              "matching the toolkit that builds your .rknn files) to /usr/lib/")
_LIB_VERSION = re.compile(rb"librknnrt version: ([0-9][0-9A-Za-z.+\-]*)")
_DRIVER = re.compile(r"v?([0-9]+\.[0-9]+\.[0-9]+)")


@dataclass(frozen=True)
class Check:
    """One readiness check: passed or not, what was found, and the fix (``blocking=False``: a warning)."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    blocking: bool = True

    def __str__(self) -> str:
        mark = "ok" if self.ok else ("FAIL" if self.blocking else "warn")
        return f"{mark:4} {self.name}: {self.detail}" + (f"; fix: {self.fix}" if self.fix and not self.ok else "")


@dataclass
class NpuReadiness:
    """Every check, and what they found (chip, driver and runtime versions)."""

    checks: list[Check] = field(default_factory=list)
    soc: str | None = None
    driver: str | None = None
    runtime: str | None = None
    lite: str | None = None

    @property
    def ready(self) -> bool:
        """True when no blocking check failed."""
        return all(c.ok for c in self.checks if c.blocking)

    def reasons(self) -> list[str]:
        """The failed checks' lines (blocking first), for logs and backend choices."""
        bad = [c for c in self.checks if not c.ok]
        return [str(c) for c in sorted(bad, key=lambda c: not c.blocking)]

    def describe(self) -> str:
        """One line: ready (with versions), or the first reason it is not."""
        if self.ready:
            return (f"NPU ready ({self.soc}, rknpu driver {self.driver or '?'}, librknnrt {self.runtime}, "
                    f"rknn-toolkit-lite2 {self.lite})")
        first = next(c for c in self.checks if c.blocking and not c.ok)
        return f"NPU not usable: {first.detail}" + (f"; {first.fix}" if first.fix else "")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def read_soc(root: Path) -> tuple[str | None, tuple[str, ...]]:
    """(the NPU chip the device tree's compatible names, e.g. ``rk3588``, or None; the compatible strings)."""
    text = _read(root / COMPATIBLE) or ""
    names = tuple(c.strip() for c in text.split("\x00") if c.strip())
    for name in names:
        vendor, _, chip = name.partition(",")
        if vendor == "rockchip" and chip in NPU_SOCS:
            return ("rk3588" if chip == "rk3588s" else chip), names
    return None, names


def _check_soc(root: Path, out: NpuReadiness) -> None:
    soc, names = read_soc(root)
    out.soc = soc
    if soc:
        out.checks.append(Check("chip", True, f"{soc} (/{COMPATIBLE})"))
    else:
        shown = ", ".join(names) if names else f"no /{COMPATIBLE}"
        out.checks.append(Check("chip", False, f"not a Rockchip chip with an NPU ({shown})",
                                f"the rknn backend runs on {', '.join(NPU_SOCS)} boards only"))


def _check_node(root: Path, out: NpuReadiness) -> None:
    nodes = [n for n in sorted((root / DEVICE_TREE).glob("npu@*"))
             if any(k in (_read(n / "compatible") or "") for k in ("rknpu", "rknn"))]
    if not nodes:
        out.checks.append(Check("device tree", False, f"no NPU node (npu@... with a Rockchip NPU compatible) in "
                                f"/{DEVICE_TREE}", "use a board image whose device tree has the NPU"))
        return
    node = nodes[0]
    status = (_read(node / "status") or "okay").replace("\x00", "").strip()
    where = f"/{node.relative_to(root)}"
    if status in ("okay", "ok"):
        out.checks.append(Check("device tree", True, f"{where} enabled"))
    else:
        out.checks.append(Check("device tree", False, f"the NPU is disabled in the device tree ({where} status "
                                f"{status!r})", "enable the board's NPU overlay (e.g. armbian-config, or the "
                                "vendor image's rknpu overlay) and reboot"))


def _uevent_drivers(root: Path) -> dict[str, str]:
    """DRM/accel device -> the kernel driver bound to it, from sysfs uevent files."""
    found = {}
    for pattern in DEVICE_UEVENTS:
        for path in sorted(root.glob(pattern)):
            m = re.search(r"^DRIVER=(\S+)", _read(path) or "", re.MULTILINE)
            if m:
                found[f"/{path.parent.parent.relative_to(root)}"] = m.group(1)
    return found


def _check_driver(root: Path, out: NpuReadiness) -> None:
    text = _read(root / DRIVER_VERSION)
    drivers = _uevent_drivers(root)
    rknpu = [dev for dev, drv in drivers.items() if drv.lower() == "rknpu"]
    if text is not None:
        m = _DRIVER.search(text)
        out.driver = m.group(1) if m else text.strip()
        out.checks.append(Check("driver", True, f"rknpu {out.driver} (/{DRIVER_VERSION})"))
    elif rknpu:
        out.checks.append(Check("driver", True, f"rknpu bound to {rknpu[0]} (version unknown: /{DRIVER_VERSION} "
                                f"needs root)"))
    elif any(drv.lower() == "rocket" for drv in drivers.values()):
        dev = next(d for d, drv in drivers.items() if drv.lower() == "rocket")
        out.checks.append(Check("driver", False, f"the NPU is driven by mainline Linux's rocket driver ({dev}); "
                                f"librknnrt needs Rockchip's rknpu driver",
                                "use the board vendor's (BSP) kernel image, which has rknpu"))
    else:
        out.checks.append(Check("driver", False, f"no rknpu driver (no /{DRIVER_VERSION}, no DRM device bound to "
                                "rknpu)", "use a kernel with Rockchip's rknpu driver (the board vendor's image)"))


def find_runtime(root: Path, env: dict[str, str] | None = None) -> Path | None:
    """``librknnrt.so``: ``$LIBRKNNRT_PATH`` (read under ``root``), else the usual library folders."""
    env = os.environ if env is None else env
    given = env.get("LIBRKNNRT_PATH")
    candidates = ([root / given.lstrip("/")] if given else []) + [root / d / LIB_NAME for d in LIB_DIRS]
    return next((p for p in candidates if p.is_file()), None)


def runtime_version(path: Path) -> str | None:
    """The version that ``librknnrt.so`` carries in its ``librknnrt version: X`` string, or None."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            m = _LIB_VERSION.search(data)
            return m.group(1).decode("ascii") if m else None
    except (OSError, ValueError):
        return None


def _check_runtime(root: Path, out: NpuReadiness, env: dict[str, str] | None) -> None:
    path = find_runtime(root, env)
    if path is None:
        out.checks.append(Check("librknnrt.so", False, f"not found (looked in $LIBRKNNRT_PATH and "
                                f"{', '.join('/' + d for d in LIB_DIRS)})", LIB_SOURCE))
        return
    out.runtime = runtime_version(path)
    out.checks.append(Check("librknnrt.so", True, f"/{path.relative_to(root)} version {out.runtime or 'unknown'}"))


def _check_lite(out: NpuReadiness, lite: str | None) -> None:
    from ..extras import install_command

    out.lite = lite
    if lite:
        out.checks.append(Check("rknn-toolkit-lite2", True, f"version {lite}"))
    else:
        out.checks.append(Check("rknn-toolkit-lite2", False, "not installed",
                                f"add the 'rknn' extra: {install_command('rknn')}"))


def _older(a: str, b: str) -> bool:
    return release(a)[:3] < release(b)[:3]


def _check_versions(out: NpuReadiness, model_toolkit: str | None) -> None:
    if out.runtime and out.lite and release(out.runtime)[:2] != release(out.lite)[:2]:
        out.checks.append(Check("versions", False, f"rknn-toolkit-lite2 {out.lite} and librknnrt {out.runtime} are "
                                "from different releases", f"install the librknnrt.so of release {out.lite}, or "
                                f"rknn-toolkit-lite2=={out.runtime}", blocking=False))
    if model_toolkit and out.runtime and _older(out.runtime, model_toolkit):
        out.checks.append(Check("model", False, f"the .rknn file was built with rknn-toolkit2 {model_toolkit}, newer "
                                f"than this librknnrt {out.runtime}", f"install librknnrt.so {model_toolkit} or "
                                f"newer ({LIB_SOURCE}), or rebuild the file with rknn-toolkit2=={out.runtime}"))


def npu_readiness(root: str | os.PathLike[str] = "/", lite: str | None | Callable[[], str | None] = lite_version,
                  model_toolkit: str | None = None, env: dict[str, str] | None = None) -> NpuReadiness:
    """Check whether the NPU under ``root`` can run a ``.rknn`` file.

    ``lite``: the rknn-toolkit-lite2 version, None when it is not installed (default: asked of this Python's
    packages); ``model_toolkit``: the rknn-toolkit2 version a model was built with; ``env``: the environment
    (``LIBRKNNRT_PATH``; default this process's).
    """
    root = Path(root)
    out = NpuReadiness()
    _check_soc(root, out)
    if out.soc is None:
        return out
    _check_node(root, out)
    _check_driver(root, out)
    _check_runtime(root, out, env)
    _check_lite(out, lite() if callable(lite) else lite)
    _check_versions(out, model_toolkit)
    return out
