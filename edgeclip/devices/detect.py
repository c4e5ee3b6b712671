"""What is this machine? Read device files and ``nvidia-smi`` and pick a device profile, saying why.

Every path is read under ``root`` and every command goes through ``run``, so tests point detection at
fixture trees (``tests/fixtures/devices/<name>/``) and a runner that reads a saved command output.
"""
from __future__ import annotations

import logging
import platform
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..runtime.cpu import VNNI_FLAGS, parse_cpuinfo
from .catalog import DeviceProfile, load_profiles

log = logging.getLogger("edgeclip.devices")

#: ``run(argv) -> stdout`` or None when the command is missing or fails.
Runner = Callable[[Sequence[str]], "str | None"]

DEVICE_TREE_MODEL = "proc/device-tree/model"
DEVICE_TREE_COMPATIBLE = "proc/device-tree/compatible"
TEGRA_RELEASE = "etc/nv_tegra_release"
CPUINFO = "proc/cpuinfo"
NVIDIA_SMI = ("nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader")
NVIDIA_SMI_NAMES = ("nvidia-smi", "--query-gpu=name", "--format=csv,noheader")

#: L4T release prefix -> (JetPack, TensorRT it ships); first match wins.
L4T_RELEASES = (
    ("32.7", "4.6.1+", "8.2"), ("32.6", "4.6", "8.0"), ("32.", "4.x", "7.1"),
    ("34.", "5.0 DP", "8.4"), ("35.1", "5.0.2", "8.4"), ("35.", "5.1", "8.5"),
    ("36.2", "6.0 DP", "8.6"), ("36.3", "6.0", "8.6"), ("36.4", "6.1/6.2", "10.3"), ("36.", "6.x", "10.3"),
)


def run_command(argv: Sequence[str], timeout: float = 10.0) -> str | None:
    """Run a command; its stdout, or None if it is not installed, fails or hangs."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


@dataclass
class Facts:
    """What was read from the machine (None or empty where a source was missing)."""

    model: str | None = None
    compatible: tuple[str, ...] = ()
    l4t: str | None = None
    gpus: list[tuple[str, str | None]] = field(default_factory=list)
    arch: str | None = None
    cpu_model: str | None = None
    cpu_flags: frozenset[str] = frozenset()
    notes: list[str] = field(default_factory=list)

    @property
    def is_jetson(self) -> bool:
        return self.l4t is not None or "jetson" in (self.model or "").lower()


@dataclass
class Detection:
    """The chosen profile (adjusted to this machine), whether it fits exactly, and why."""

    profile: DeviceProfile
    exact: bool
    reasons: list[str]
    facts: Facts


def _read(root: Path, rel: str) -> str | None:
    try:
        return (root / rel).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def parse_tegra_release(text: str) -> str | None:
    """``# R36 (release), REVISION: 4.0, ...`` -> ``"36.4.0"``."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def l4t_software(l4t: str) -> tuple[str, str] | None:
    """(JetPack, TensorRT) that the L4T release ``l4t`` ships, if known."""
    for prefix, jetpack, trt in L4T_RELEASES:
        if l4t.startswith(prefix):
            return jetpack, trt
    return None




def parse_nvidia_smi(text: str) -> list[tuple[str, str | None]]:
    """``name, compute_cap`` lines -> [(name, "8.9" or None)]."""
    gpus = []
    for line in text.strip().splitlines():
        name, _, cap = (p.strip() for p in line.partition(","))
        if name:
            gpus.append((name, cap if re.fullmatch(r"\d+\.\d+", cap) else None))
    return gpus


def query_gpus(run: Runner = run_command) -> list[tuple[str, str | None]]:
    """[(name, compute capability or None)] from nvidia-smi; empty if it is missing or fails."""
    smi = run(NVIDIA_SMI)
    if smi is None:  # drivers older than 510 lack compute_cap
        smi = run(NVIDIA_SMI_NAMES)
    return parse_nvidia_smi(smi) if smi else []


def read_facts(root: str | Path = "/", run: Runner = run_command, machine: str | None = None) -> Facts:
    """Read device-tree model, L4T release, nvidia-smi and /proc/cpuinfo under ``root``."""
    root = Path(root)
    facts = Facts()
    model = _read(root, DEVICE_TREE_MODEL)
    if model is not None:
        facts.model = model.replace("\x00", "").strip() or None
    compatible = _read(root, DEVICE_TREE_COMPATIBLE)
    if compatible is not None:
        facts.compatible = tuple(c.strip() for c in compatible.split("\x00") if c.strip())
    release = _read(root, TEGRA_RELEASE)
    if release is not None:
        facts.l4t = parse_tegra_release(release) or "unknown"
    facts.gpus = query_gpus(run)
    cpuinfo = _read(root, CPUINFO)
    if cpuinfo is not None:
        facts.arch, facts.cpu_model, facts.cpu_flags = parse_cpuinfo(cpuinfo)
    if facts.arch is None and machine:
        facts.arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine.lower(), machine.lower())
        facts.notes.append(f"architecture {facts.arch} from the platform (no usable /proc/cpuinfo)")
    return facts


def _jetson(facts: Facts, profiles: list[DeviceProfile]) -> tuple[DeviceProfile | None, bool, list[str]]:
    reasons = []
    if facts.model:
        reasons.append(f"/{DEVICE_TREE_MODEL}: {facts.model!r}")
    if facts.l4t:
        sw = l4t_software(facts.l4t)
        reasons.append(f"/{TEGRA_RELEASE}: L4T R{facts.l4t}"
                       + (f" (JetPack {sw[0]}, ships TensorRT {sw[1]})" if sw else ""))
    hits = [(len(pat), p, pat) for p in profiles for pat in p.match.get("model", ())
            if facts.model and pat.lower() in facts.model.lower()]
    if hits:
        _, best, pat = max(hits, key=lambda h: h[0])
        reasons.append(f"the model names {pat!r}: profile {best.name}")
        return best, True, reasons
    major = f"R{facts.l4t.split('.')[0]}" if facts.l4t else None
    guess = next((p for p in profiles if major and major in p.match.get("l4t_fallback", ())), None)
    if guess:
        reasons.append(f"no profile names this Jetson model; L4T {major} suggests {guess.name} "
                       f"(closest, conservative); pass `device` (a profile name) to choose another")
    return guess, False, reasons


def _npu(facts: Facts, profiles: list[DeviceProfile]) -> tuple[DeviceProfile | None, list[str]]:
    """The NPU profile whose ``match.compatible`` names a string of the device tree's ``compatible``."""
    for p in profiles:
        hit = next((c for c in facts.compatible if c in p.match.get("compatible", ())), None)
        if hit:
            return p, [f"/{DEVICE_TREE_COMPATIBLE}: {', '.join(map(repr, facts.compatible))}; {hit!r}: profile {p.name}"]
    return None, []


def _cpu(facts: Facts, profiles: list[DeviceProfile]) -> tuple[DeviceProfile | None, bool, list[str]]:
    flags = facts.cpu_flags
    fits = []
    for p in profiles:
        m = p.match
        if m.get("arch") != facts.arch:
            continue
        if m.get("cpu_flags_any") and not flags.intersection(m["cpu_flags_any"]):
            continue
        if m.get("cpu_flags_all") and not flags.issuperset(m["cpu_flags_all"]):
            continue
        fits.append((m.get("priority", 0), p))
    where = f"/{CPUINFO}: {facts.arch or 'unknown architecture'}" + (f" ({facts.cpu_model})" if facts.cpu_model else "")
    shown = [f for f in ("avx2", *VNNI_FLAGS, "asimddp") if f in flags]
    reasons = [where + (f" with {', '.join(shown)}" if shown else "")]
    if not fits:
        same_arch = [p for p in profiles if p.match.get("arch") == facts.arch]
        if not same_arch:
            return None, False, reasons
        fallback = min(same_arch, key=lambda p: p.match.get("priority", 0))
        reasons.append(f"no CPU profile fits exactly; using {fallback.name} (expect it to be slow)")
        return fallback, False, reasons
    best = max(fits, key=lambda f: f[0])[1]
    if facts.arch == "x86_64" and best.name != "x86-avx512-vnni":
        reasons.append(f"no VNNI flag ({'/'.join(VNNI_FLAGS)})")
    return best, True, reasons


def detect(root: str | Path = "/", run: Runner = run_command, machine: str | None = None) -> Detection:
    """Detect this machine's device profile; ``reasons`` say which files and commands decided it."""
    if machine is None and Path(root) == Path("/"):
        machine = platform.machine()
    facts = read_facts(root, run, machine)
    by_name = load_profiles()
    profiles = list(by_name.values())
    reasons: list[str] = []
    profile, exact = None, False
    if facts.compatible and not facts.is_jetson:
        profile, reasons = _npu(facts, [p for p in profiles if p.kind == "npu"])
        exact = profile is not None
    if profile is None and (facts.is_jetson or facts.model):
        profile, exact, reasons = _jetson(facts, [p for p in profiles if p.kind == "jetson"])
    if profile is None:
        if not facts.is_jetson:
            reasons.append(f"not a Jetson (no /{DEVICE_TREE_MODEL} naming one, no /{TEGRA_RELEASE})")
        if facts.gpus:
            name, cap = facts.gpus[0]
            profile = next(p for p in profiles if p.match.get("nvidia_smi"))
            exact = True
            reasons.append(f"nvidia-smi: {name}" + (f", compute capability {cap}" if cap else "")
                           + (f" (+{len(facts.gpus) - 1} more; GPU 0 is used)" if len(facts.gpus) > 1 else ""))
            if cap:
                profile = profile.with_changes(sm=cap)
        else:
            reasons.append("no NVIDIA GPU (nvidia-smi missing or failed)")
            profile, exact, cpu_reasons = _cpu(facts, [p for p in profiles if p.kind == "cpu"])
            reasons += cpu_reasons
    if profile is None:
        fallback = "x86-avx2" if (facts.arch or "").startswith("x86") else "arm64-cpu"
        profile = by_name[fallback]
        reasons.append(f"nothing identified this machine; using {fallback}")
    if profile.kind == "cpu" and profile.int8_cpu_flags and not facts.cpu_flags.intersection(profile.int8_cpu_flags):
        profile = profile.with_changes(precision="fp32")
        reasons.append(f"no {'/'.join(profile.int8_cpu_flags)}: INT8 gains little here, precision set to fp32")
    reasons += facts.notes
    return Detection(profile, exact, reasons, facts)


def cuda_compute_capability(run: Runner = run_command) -> str | None:
    """GPU 0's compute capability (``"8.7"``) from CUDA (cuda-python), else nvidia-smi; None if no GPU."""
    from ..errors import BackendError
    from ..runtime.backends.tensorrt import import_cudart

    try:
        cudart = import_cudart()
    except BackendError:
        cudart = None
    if cudart is not None:
        attr = cudart.cudaDeviceAttr
        err, major = cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, 0)
        err2, minor = cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, 0)
        if int(err) == 0 and int(err2) == 0:
            return f"{major}.{minor}"
    gpus = query_gpus(run)
    return gpus[0][1] if gpus else None
