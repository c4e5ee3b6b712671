"""Writing a bundle: drafts in a temporary sibling, one writer at a time, a swap that never empties the path.

``create_bundle`` and ``update_bundle`` hold the bundle's lock (``lock.py``) for the whole
read-modify-write and run ``recover`` first. An update re-reads the manifest from disk *after* taking the
lock, so two writers never lose each other's changes. The draft (``.NAME.tmp-*``) is complete and checked
before the switch, which is one ``renameat2(RENAME_EXCHANGE)`` on Linux: the bundle path always holds the
old or the new version. Where the exchange is unavailable (or ``EDGECLIP_BUNDLE_SWAP=rename``), the switch
is two renames through ``.NAME.old-PID`` and ``recover`` rolls back a writer killed between them.
Before the switch every file and folder of the draft is flushed to disk, and the parent folder after it,
so a power cut right after a write leaves the new version whole, not files the system had not written yet.

A new bundle gets the mode ``0o777 & ~umask`` (like ``mkdir``); an update keeps the bundle's mode.
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import errno
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import BundleError
from . import store
from .jsonfile import dumps_strict
from .lock import _remove_tree, bundle_lock, recover
from .manifest import MANIFEST, ROLES, SCHEMA_VERSION, Manifest
from .store import Bundle, now_iso, real_path, sha256_file


@dataclass
class BundleDraft:
    """A bundle being written in a temporary directory; ``commit`` records files in the manifest."""

    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    def add_file(self, name: str, role: str, **info: Any) -> Path:
        """Record an existing file of the draft (hash and size are computed now)."""
        p = self.path / name
        if not p.is_file():
            raise BundleError(f"{p}: cannot record a file that was not written")
        if role not in ROLES:
            raise BundleError(f"unknown file role {role!r}; expected one of {', '.join(ROLES)}")
        self.manifest.setdefault("files", {})[name] = {
            "role": role, "sha256": sha256_file(p), "bytes": p.stat().st_size, **info}
        return p

    def new_file(self, name: str) -> Path:
        """A path to write a new file at; an existing (possibly hard-linked) file there is unlinked first."""
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists() or p.is_symlink():
            p.unlink()
        return p

    def remove_file(self, name: str) -> None:
        """Drop a file from the draft and from the manifest."""
        self.manifest.get("files", {}).pop(name, None)
        p = self.path / name
        if p.exists() or p.is_symlink():
            p.unlink()

    def write_json(self, name: str, data: Any, role: str, **info: Any) -> Path:
        """Write a JSON file (strict: no NaN or infinity; UTF-8, indented) and record it."""
        text = dumps_strict(data)
        p = self.new_file(name)
        p.write_text(text, encoding="utf-8")
        return self.add_file(name, role, **info)


# ---------------------------------------------------------------------------------------------------------
# The switch
# ---------------------------------------------------------------------------------------------------------
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux ``renameat2``); False where the system cannot."""
    global _renameat2
    if os.environ.get("EDGECLIP_BUNDLE_SWAP") == "rename":
        return False
    if _renameat2 is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            fn = libc.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _renameat2 = fn
        except (OSError, AttributeError):
            _renameat2 = False
    if _renameat2 is False:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # this filesystem or kernel cannot exchange
    raise OSError(err, os.strerror(err), str(b))


def _rename(src: Path, dst: Path) -> None:
    os.rename(src, dst)


_told_fallback = False


def _note_rename_fallback(target: Path) -> None:
    global _told_fallback
    if not _told_fallback:
        _told_fallback = True
        import logging

        logging.getLogger("edgeclip.bundle").info(
            "%s: this system cannot exchange two paths atomically (renameat2); swapping the bundle with two "
            "renames (readers in between wait for the writer; see docs/bundle.md)", target.parent)


def _swap_in(tmp: Path, target: Path) -> None:
    """Make the finished directory ``tmp`` the bundle at ``target``; the path is never left empty."""
    if not os.path.lexists(target):
        _rename(tmp, target)
        return
    if _exchange(tmp, target):
        _remove_tree(tmp)  # now the old version
        return
    if os.environ.get("EDGECLIP_BUNDLE_SWAP") != "rename":
        _note_rename_fallback(target)
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if os.path.lexists(old):
        _remove_tree(old)
    _rename(target, old)
    try:
        _rename(tmp, target)
    except BaseException:
        _rename(old, target)
        raise
    _remove_tree(old)


def _sync_path(path: str | os.PathLike[str], directory: bool = False) -> None:
    """``fsync`` one file or folder; a file system that cannot sync a folder is let be."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if not (directory and exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP)):
            raise
    finally:
        os.close(fd)


def sync_tree(path: Path) -> None:
    """Flush every regular file and folder under ``path`` to disk."""
    for dirpath, _dirnames, filenames in os.walk(path, followlinks=False):
        for f in filenames:
            p = os.path.join(dirpath, f)
            if stat.S_ISREG(os.lstat(p).st_mode):
                _sync_path(p)
        _sync_path(dirpath, directory=True)


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _finish(draft: BundleDraft, check: bool = True) -> None:
    """Validate the draft's manifest (and contents) and write it, strictly."""
    draft.manifest["schema_version"] = SCHEMA_VERSION
    draft.manifest["updated"] = now_iso()
    manifest = Manifest.parse(draft.manifest, draft.path / MANIFEST)
    data = manifest.to_dict()
    text = dumps_strict(data)
    if check:
        bundle = Bundle(draft.path, data, verified=False, info=manifest)
        store.check_confined(bundle)
        store.validate_contents(bundle)
    (draft.path / MANIFEST).write_text(text, encoding="utf-8")
    draft.manifest = data


def _copy_tree(src: Path, dst: Path) -> None:
    """Hard-link (or copy) every file of ``src`` into ``dst`` except the manifest; symlinks stay links."""
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        rel = Path(dirpath).relative_to(src)
        for d in list(dirnames):
            s = Path(dirpath) / d
            if s.is_symlink():
                dirnames.remove(d)
                os.symlink(os.readlink(s), dst / rel / d)
            else:
                (dst / rel / d).mkdir(exist_ok=True)
                shutil.copymode(s, dst / rel / d)
        for f in filenames:
            if not rel.parts and f == MANIFEST:
                continue
            s, t = Path(dirpath) / f, dst / rel / f
            mode = os.lstat(s).st_mode
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink(s), t)
            elif stat.S_ISREG(mode):
                try:
                    os.link(s, t, follow_symlinks=False)
                except OSError:
                    shutil.copy2(s, t)
            # sockets, FIFOs and devices are never part of a bundle: not carried over


# ---------------------------------------------------------------------------------------------------------
# Public writers
# ---------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def create_bundle(target: str | os.PathLike[str], overwrite: bool = False,
                  lock_timeout: float | None = None) -> Iterator[BundleDraft]:
    """Write a new bundle atomically: yields a draft in a temporary sibling, swapped in on success.

    The bundle's lock is held until the swap; an existing bundle is replaced only with ``overwrite``.
    """
    target = Path(target)

    def refuse() -> None:
        if os.path.lexists(target) and not overwrite:
            raise BundleError(f"{target}: already exists; pass overwrite=True to replace it, or choose another "
                              f"output path")

    refuse()
    target.parent.mkdir(parents=True, exist_ok=True)
    real = real_path(target)
    with bundle_lock(real, lock_timeout):
        recover(real)
        refuse()
        tmp = Path(tempfile.mkdtemp(prefix=f".{real.name}.tmp-", dir=real.parent))
        try:
            os.chmod(tmp, 0o777 & ~_umask())
            draft = BundleDraft(tmp, {"schema_version": SCHEMA_VERSION, "created": now_iso(), "files": {}})
            yield draft
            _finish(draft)
            sync_tree(tmp)
            _swap_in(tmp, real)
            _sync_path(real.parent, directory=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def update_bundle(target: str | os.PathLike[str] | Bundle, verify: bool = True,
                  lock_timeout: float | None = None) -> Iterator[BundleDraft]:
    """Change an existing bundle atomically, one writer at a time.

    ``target`` is a bundle directory or a loaded ``Bundle``. Under the bundle's lock the manifest is read
    again from disk (changes another writer made since ``target`` was loaded are kept) and verified
    (``verify=False`` only for repairs that drop damaged files; a verified ``Bundle`` whose manifest is
    unchanged on disk is not hashed again). The files are hard-linked (or copied) into a temporary sibling,
    changed there, checked and swapped in; a ``Bundle`` passed in then describes the new bundle. Write files
    through ``draft.new_file`` so hard links to the original are never written through.
    """
    given = target if isinstance(target, Bundle) else None
    path = given.path if given is not None else Path(target)
    real = real_path(path)
    if not real.is_dir():
        store.load_bundle(path, verify=False)  # raises the precise error (missing, not a directory...)
    with bundle_lock(real, lock_timeout):
        recover(real)
        current = store._load_once(path, verify=False)
        if verify:
            unchanged = given is not None and given.verified and current.manifest == given.manifest
            if not unchanged:
                store.verify_files(current)
                store.validate_contents(current)
        tmp = Path(tempfile.mkdtemp(prefix=f".{real.name}.tmp-", dir=real.parent))
        try:
            _copy_tree(real, tmp)
            os.chmod(tmp, stat.S_IMODE(os.stat(real).st_mode))
            draft = BundleDraft(tmp, copy.deepcopy(current.manifest))
            yield draft
            _finish(draft, check=verify)
            sync_tree(tmp)
            _swap_in(tmp, real)
            _sync_path(real.parent, directory=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    if given is not None:
        given.manifest = draft.manifest
        given.info = Manifest.parse(draft.manifest, path / MANIFEST)
        given.verified = given.verified or verify
