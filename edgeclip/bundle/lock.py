"""One writer at a time per bundle, and recovery from writers that were killed.

Every write of bundle ``DIR/NAME`` holds an advisory lock (``fcntl.flock``) on ``DIR/.NAME.lock`` for its
whole read-modify-write. A second writer waits, logging once who holds the lock, and gives up with a
``BundleBusyError`` after ``lock_timeout()`` seconds (default 600; environment variable
``EDGECLIP_LOCK_TIMEOUT``). The lock file stays beside the bundle (removing it would race).

Temporaries live beside the bundle as ``.NAME.tmp-*`` (a draft, or the old version right after a swap)
and ``.NAME.old-*`` (the old version during a two-rename swap). Only a lock holder creates them, so
whoever holds the lock may treat every one it finds as stale: ``recover`` puts an old version back if the
bundle path is missing (a writer killed between two renames) and removes the rest. Every write runs it
under the lock; every load runs it when stale names are present and no writer holds the lock.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Iterator

from ..errors import BundleBusyError, BundleError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks; writes still swap atomically
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("edgeclip.bundle")

DEFAULT_LOCK_TIMEOUT = 600.0
_POLL = 0.05


def lock_timeout() -> float:
    """Seconds a writer waits for another writer of the same bundle (``EDGECLIP_LOCK_TIMEOUT``)."""
    raw = os.environ.get("EDGECLIP_LOCK_TIMEOUT", "")
    try:
        value = float(raw) if raw else DEFAULT_LOCK_TIMEOUT
    except ValueError:
        raise BundleError(f"EDGECLIP_LOCK_TIMEOUT={raw!r} is not a number of seconds") from None
    return max(0.0, value)


def lock_path(target: Path) -> Path:
    """The lock file of bundle ``target``: ``.NAME.lock`` in the same folder."""
    return target.parent / f".{target.name}.lock"


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return f" ({text})" if text else ""


def _describe_self() -> str:
    import sys

    args = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv[:3]))
    return f"pid {os.getpid()}" + (f": {args}" if args else "")


@contextlib.contextmanager
def bundle_lock(target: Path, timeout: float | None = None, quiet: bool = False) -> Iterator[None]:
    """Hold the write lock of bundle ``target`` (waits up to ``timeout`` seconds; default ``lock_timeout()``)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    path = lock_path(target)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        raise BundleError(f"{path}: cannot create the bundle's lock file ({exc.strerror or exc}); "
                          f"the folder {target.parent} must be writable to change the bundle") from None
    try:
        timeout = lock_timeout() if timeout is None else timeout
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BundleBusyError(
                        f"{target}: another edgeclip process is writing this bundle{_holder(fd)} and has held "
                        f"its lock {path.name} for more than {timeout:g} s; try again when it has finished "
                        f"(the wait is EDGECLIP_LOCK_TIMEOUT seconds)") from None
                if not told and not quiet:
                    log.warning("%s: waiting for another edgeclip process writing this bundle%s", target, _holder(fd))
                    told = True
                time.sleep(_POLL)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, _describe_self().encode("utf-8", "replace"), 0)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


# ---------------------------------------------------------------------------------------------------------
# Recovery
# ---------------------------------------------------------------------------------------------------------
def temporaries(target: Path) -> tuple[list[Path], list[Path]]:
    """(drafts ``.NAME.tmp-*``, old versions ``.NAME.old-*``) beside bundle ``target``."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(tmp|old)-[A-Za-z0-9_]+")
    tmps: list[Path] = []
    olds: list[Path] = []
    try:
        names = os.listdir(target.parent)
    except OSError:
        return tmps, olds
    for name in names:
        m = pattern.fullmatch(name)
        if m:
            (tmps if m.group(1) == "tmp" else olds).append(target.parent / name)
    return tmps, olds


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def recover(target: Path) -> list[str]:
    """Finish an interrupted write of ``target`` (the caller holds its lock); returns what was done."""
    tmps, olds = temporaries(target)
    done: list[str] = []
    if olds and not os.path.lexists(target):
        # Killed between the two renames of a swap: the old version is complete, put it back.
        newest = max(olds, key=lambda p: p.stat().st_mtime_ns)
        os.rename(newest, target)
        olds.remove(newest)
        done.append(f"restored {target.name} from the interrupted update {newest.name}")
        log.warning("%s: restored the bundle from %s (an update was interrupted)", target, newest.name)
    for stale in tmps + olds:
        _remove_tree(stale)
        done.append(f"removed the stale temporary {stale.name}")
    if tmps or olds:
        log.info("%s: removed %d stale temporaries of interrupted writes", target, len(tmps) + len(olds))
    return done


def recover_for_read(target: Path) -> None:
    """Before a load: if an interrupted write left temporaries and no writer is active, recover.

    Waits for the lock only when the bundle path is missing (a swap in progress or interrupted); never
    fails a load for want of a writable folder.
    """
    tmps, olds = temporaries(target)
    if not tmps and not olds:
        return
    # Wait only while the path is missing with an old version beside it: a swap in progress or killed.
    wait = bool(olds) and not os.path.lexists(target)
    try:
        with bundle_lock(target, timeout=lock_timeout() if wait else 0.0, quiet=not wait):
            recover(target)
    except BundleError:  # a live writer owns the temporaries, or the folder is read-only
        if wait:
            raise
