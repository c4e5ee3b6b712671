"""This machine's CPU as /proc/cpuinfo describes it: architecture, model name and instruction-set flags.

Device detection (``edgeclip.devices``), the benchmark's machine facts and backend choices read it.
"""
from __future__ import annotations

import os
import threading

#: cpuinfo flags of the INT8 dot-product instructions (VNNI) that make INT8 faster than FP32 on x86.
VNNI_FLAGS = ("avx512_vnni", "avx512vnni", "avx_vnni")
#: cpuinfo flags of bfloat16 arithmetic (AVX512-BF16, AMX).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")

def parse_cpuinfo(text: str) -> tuple[str | None, str | None, frozenset[str]]:
    """(arch, model name, flags) from /proc/cpuinfo (x86 ``flags`` or ARM ``Features``)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    if "flags" in fields:
        arch = "x86_64" if "lm" in fields["flags"].split() else "x86"
        return arch, fields.get("model name"), frozenset(fields["flags"].split())
    if "Features" in fields:
        return "aarch64", fields.get("model name") or fields.get("CPU part"), frozenset(fields["Features"].split())
    return None, None, frozenset()


def read_cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str | None, str | None, frozenset[str]]:
    """(arch, model name, flags) of this machine; all empty where /proc/cpuinfo cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_cpuinfo(f.read())
    except OSError:
        return None, None, frozenset()


def lower_thread_priority(steps: int) -> None:
    """Make the calling thread ``steps`` nicer (lower CPU priority) than it is, on Linux; elsewhere nothing.

    Decoding threads that run beside an inference engine use it so that the engine's threads are never
    preempted by them (a parallel operator waits for its slowest thread), while the decoders still take every
    cycle the engine leaves: the cores stay busy without being oversubscribed.
    """
    if steps <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()  # Linux: a thread id is a valid PRIO_PROCESS target for that thread
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + int(steps)))
    except (AttributeError, OSError):
        pass
