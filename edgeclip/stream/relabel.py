"""Live relabelling for ``edgeclip stream``: re-embed a labels file when it changes, without restarting.

:class:`LabelReloader` watches a labels file (``.txt``, ``.csv`` or ``.json``, see
:func:`edgeclip.runtime.labels.read_labels_file`) by polling its modification time, size and inode, and
also reloads on request (``SIGHUP``). The new labels are embedded with the bundle's own text encoder and
torch-free tokenizer on a background thread; the stream loop picks the result up between two batches and
calls ``Classifier.set_labels``, so inference never waits for the text tower.

A change is read once the file has stopped changing for ``settle`` seconds, so an editor or ``echo >``
writing it in several steps is not read half-written (writing a temporary file and renaming it over the
watched one is the safest way to update it).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..bundle import Bundle
from ..errors import EdgeclipError
from ..runtime.labels import embed_labels, read_labels_file, resolve_templates
from ..runtime.text import TextEncoder, bundle_templates

log = logging.getLogger("edgeclip.runtime")


@dataclass
class Relabel:
    """The outcome of one reload: new names and matrix, or the error that kept the old labels."""

    reason: str
    names: list[str] = field(default_factory=list)
    matrix: np.ndarray | None = None
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None




def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class LabelReloader:
    """Watches a labels file and re-embeds it off the inference thread; ``poll()`` hands results over."""

    def __init__(self, bundle: Bundle, path: str | os.PathLike[str], templates: str | None = None,
                 interval: float = 1.0, settle: float = 0.2, providers: Sequence[str] | None = None,
                 threads: int = 1) -> None:
        self.path = Path(path)
        self.interval, self.settle = max(0.01, float(interval)), max(0.0, float(settle))
        self.template_name, self.templates = (resolve_templates(templates) if templates
                                              else bundle_templates(bundle))
        self.encoder = TextEncoder.from_bundle(bundle, providers, threads)  # fails now if the bundle has no text tower
        self._seen = _stat_key(self.path)
        self._changed_at: float | None = None
        self._changed_key: tuple[int, int, int] | None = None
        self._next_check = time.monotonic() + self.interval
        self._requested: str | None = None
        self._thread: threading.Thread | None = None
        self._result: Relabel | None = None
        self._lock = threading.Lock()

    # -- loading ---------------------------------------------------------------------------------------
    def load(self, reason: str = "start") -> Relabel:
        """Read and embed the labels file now (on the calling thread); errors are returned, not raised."""
        t0 = time.monotonic()
        key = _stat_key(self.path)
        try:
            labels = read_labels_file(self.path)
            matrix = embed_labels(labels, self.templates, self.encoder)
        except EdgeclipError as exc:
            return Relabel(reason, error=str(exc), seconds=time.monotonic() - t0)
        except Exception as exc:  # a crash in the text tower must not end a stream that runs for days
            return Relabel(reason, error=f"{type(exc).__name__}: {exc}", seconds=time.monotonic() - t0)
        finally:
            self._seen = key
        return Relabel(reason, [lab.name for lab in labels], matrix, time.monotonic() - t0)

    def request(self, reason: str = "sighup") -> None:
        """Ask for a reload at the next ``poll`` (safe to call from a signal handler)."""
        self._requested = reason

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _work(self, reason: str) -> None:
        result = self.load(reason)
        with self._lock:
            self._result = result

    # -- watching --------------------------------------------------------------------------------------
    def _check_file(self, now: float) -> None:
        if now < self._next_check:
            return
        key = _stat_key(self.path)
        if key is None or key == self._seen:
            self._changed_at = None
            self._next_check = now + self.interval
            return
        if key != self._changed_key:  # (still) changing: wait until it has been quiet for `settle`
            self._changed_key, self._changed_at = key, now
        if now - (self._changed_at or now) >= self.settle:
            self._changed_at = self._changed_key = None
            if self._requested is None:
                self._requested = "watch"
            self._next_check = now + self.interval
        else:
            self._next_check = now + min(self.interval, max(self.settle / 2, 0.01))

    def poll(self) -> Relabel | None:
        """Check the file (at most every ``interval`` s), start a reload if due; a finished one is returned."""
        self._check_file(time.monotonic())
        if self._requested is not None and not self.busy:
            reason, self._requested = self._requested, None
            self._thread = threading.Thread(target=self._work, args=(reason,), name="edgeclip-relabel",
                                            daemon=True)
            self._thread.start()
        with self._lock:
            result, self._result = self._result, None
        return result
