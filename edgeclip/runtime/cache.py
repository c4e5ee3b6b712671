"""edgeclip's folder in the user's cache (compiled models; nothing a bundle needs), its size and its pruning.

The root is ``$EDGECLIP_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgeclip``, else ``~/.cache/edgeclip``. Each
backend that caches keeps a subfolder (``openvino/``) of entries, one folder per model file (named by its
hash). After a backend writes an entry the subfolder is pruned to :func:`max_bytes` (``$EDGECLIP_CACHE_MAX``,
e.g. ``4G``; default 2 GiB), least recently used entries first; ``edgeclip cache`` shows and clears it.
"""
from __future__ import annotations

import logging
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import OptionError
from ..options import parse_size

log = logging.getLogger("edgeclip.runtime")

DEFAULT_MAX_BYTES = 2 * 2**30


def cache_root() -> Path:
    """``$EDGECLIP_CACHE_DIR``, ``$XDG_CACHE_HOME/edgeclip`` or ``~/.cache/edgeclip``."""
    root = os.environ.get("EDGECLIP_CACHE_DIR")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "edgeclip"


def max_bytes() -> int:
    """The size a cache subfolder is pruned to: ``$EDGECLIP_CACHE_MAX`` (``4G``, ``500M``), default 2 GiB."""
    text = os.environ.get("EDGECLIP_CACHE_MAX")
    try:
        return parse_size(text) if text else DEFAULT_MAX_BYTES
    except OptionError as exc:
        raise OptionError(f"EDGECLIP_CACHE_MAX: {exc}") from None


@dataclass(frozen=True)
class Entry:
    """One cached model: its folder, bytes and when it was last used (seconds since the epoch)."""

    path: Path
    bytes: int
    used: float


def _entry(folder: Path) -> Entry:
    """One entry: the bytes of its files and the newest time of anything in it (else its own), one stat each."""
    size, times = 0, []
    for f in folder.rglob("*"):
        st = f.stat()
        times.append(st.st_mtime)
        if stat.S_ISREG(st.st_mode):
            size += st.st_size
    return Entry(folder, size, max(times, default=folder.stat().st_mtime))


def entries(folder: Path) -> list[Entry]:
    """The entries of one cache subfolder, least recently used first."""
    if not folder.is_dir():
        return []
    return sorted((_entry(p) for p in folder.iterdir() if p.is_dir()), key=lambda e: e.used)


def touch(entry: Path) -> None:
    """Mark an entry used now (pruning keeps the recently used)."""
    for f in entry.rglob("*"):
        if f.is_file():
            os.utime(f)


def prune(folder: Path, limit: int | None = None, keep: Path | None = None) -> list[Entry]:
    """Remove the least recently used entries of ``folder`` (never ``keep``) until it holds at most ``limit``
    bytes (default :func:`max_bytes`; 0 clears it); returns what was removed."""
    limit = max_bytes() if limit is None else limit
    found = entries(folder)
    total = sum(e.bytes for e in found)
    removed = []
    for e in found:
        if total <= limit:
            break
        if keep is not None and e.path == keep:
            continue
        shutil.rmtree(e.path, ignore_errors=True)
        total -= e.bytes
        removed.append(e)
    if removed:
        log.info("cache %s: removed %d least recently used entries (%.0f MB) to stay under %.0f MB", folder,
                 len(removed), sum(e.bytes for e in removed) / 2**20, limit / 2**20)
    return removed
