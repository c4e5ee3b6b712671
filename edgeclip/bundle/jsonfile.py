"""Strict JSON for bundle files: no NaN or infinity, no duplicate keys, bounded size and nesting.

Python's ``json`` module accepts ``NaN``, ``Infinity`` and ``1e999`` (read as infinity), keeps the last of
duplicate keys, and raises ``RecursionError`` on deeply nested input. Bundle files are read and written
here instead, so every such case is a ``BundleError`` naming the file, and everything written is strict
JSON that any other reader accepts.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import BundleError

#: Largest JSON file of a bundle that is read (manifests and label lists are kilobytes).
MAX_JSON_BYTES = 64 << 20


class _Reject(ValueError):
    pass


def _constant(name: str) -> Any:
    raise _Reject(f"{name} is not a JSON number (NaN and infinity are not allowed)")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Reject(f"{text} is out of range (overflows to infinity)")
    return value


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Reject(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def loads_strict(text: str, where: str | Path) -> Any:
    """Parse strict JSON; raises BundleError naming ``where`` (NaN, infinity, duplicate keys, deep nesting)."""
    try:
        return json.loads(text, parse_constant=_constant, parse_float=_float, object_pairs_hook=_pairs)
    except _Reject as exc:
        raise BundleError(f"{where}: invalid JSON value: {exc}; the file is corrupt, restore or re-create it") from None
    except RecursionError:
        raise BundleError(f"{where}: JSON nested too deeply; the file is corrupt, restore or re-create it") from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise BundleError(f"{where}: not valid JSON ({exc}); the file is corrupt, restore or re-create it") from None


def read_json(path: Path, what: str = "file") -> Any:
    """Read a bundle's JSON file strictly; every problem is a BundleError naming the file."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise BundleError(f"{path}: {size} bytes is too large for a bundle {what} "
                              f"(limit {MAX_JSON_BYTES} bytes); the file is corrupt")
        with open(path, "rb") as fh:
            raw = fh.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path}: not UTF-8 text ({exc}); the file is corrupt, restore or re-create it") from None
    return loads_strict(text, path)


def dumps_strict(data: Any) -> str:
    """Strict JSON text (indented, UTF-8 characters kept); NaN or infinity is a BundleError."""
    try:
        return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError as exc:
        raise BundleError(f"cannot write strict JSON: {exc} (a value is NaN or infinite)") from None
