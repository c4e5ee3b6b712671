"""Micro-batching for ``edgeclip serve``: concurrent requests share one encoder call.

Like Triton's dynamic batcher: a worker thread takes the first waiting item, then waits at most
``max_wait`` seconds (the queue delay) for more, up to ``max_batch`` items, and runs them as one batch.
It waits only while more items are on their way (``pending()``, e.g. requests still being decoded): a lone
request runs at once, and under many clients batches fill and throughput grows with the encoder's batch
efficiency. The queue is bounded: when ``max_queue`` items wait, ``submit``
raises :class:`QueueFull` so the service answers 503 instead of queueing without end. A cancelled future
(its client went away) is skipped before the batch runs.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Sequence

from ..errors import EdgeclipError, OptionError

log = logging.getLogger("edgeclip.serve")


class QueueFull(EdgeclipError):
    """The batcher's queue holds ``max_queue`` items: the service is overloaded (retry later)."""


_STOP = object()


class MicroBatcher:
    """Collects items from many threads into batches run by ``run_batch`` on one worker thread.

    ``run_batch(items) -> results`` gets a list of at most ``max_batch`` items and returns one result per
    item, in order; an exception fails every item of that batch (the worker keeps running).
    ``on_batch(size, seconds)`` is called after each batch (metrics). ``pending()`` says how many items are
    about to be submitted; when it is 0 and the queue is empty a batch starts without waiting (None: always
    wait up to ``max_wait``, as Triton does).
    """

    def __init__(self, run_batch: Callable[[list[Any]], Sequence[Any]], max_batch: int = 8,
                 max_wait: float = 0.005, max_queue: int = 256,
                 on_batch: Callable[[int, float], None] | None = None,
                 pending: Callable[[], int] | None = None) -> None:
        if max_batch < 1:
            raise OptionError(f"`max_batch` must be >= 1, got {max_batch}")
        if not 0 <= max_wait <= 1.0:
            raise OptionError(f"`batch_wait_ms` must be between 0 and 1000, got {max_wait * 1000:g}")
        if max_queue < 1:
            raise OptionError(f"`max_queue` must be >= 1, got {max_queue}")
        self.run_batch, self.max_batch, self.max_wait = run_batch, int(max_batch), float(max_wait)
        self.on_batch, self.pending = on_batch, pending
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.closed = False
        self.batches = self.items = 0

    @property
    def depth(self) -> int:
        """Items waiting (not yet in a running batch)."""
        return self._queue.qsize()

    def start(self) -> None:
        """Start the worker thread (idempotent; ``submit`` calls it)."""
        with self._start_lock:
            if self._thread is None and not self.closed:
                self._thread = threading.Thread(target=self._work, name="edgeclip-batcher", daemon=True)
                self._thread.start()

    def submit(self, item: Any) -> Future:
        """Queue one item; the future resolves to its result (or the batch's exception)."""
        if self.closed:
            raise QueueFull("the service is shutting down")
        self.start()
        fut: Future = Future()
        try:
            self._queue.put_nowait((item, fut))
        except queue.Full:
            raise QueueFull(f"{self._queue.maxsize} requests are already waiting; retry later") from None
        return fut

    def close(self, timeout: float = 5.0) -> None:
        """Finish the queued items, then stop the worker."""
        if self.closed:
            return
        self.closed = True
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)

    # -- worker ----------------------------------------------------------------------------------------
    def _collect(self, first: Any) -> tuple[list[Any], bool]:
        batch, stop = [first], False
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            if self.pending is not None and self._queue.empty() and self.pending() <= 0:
                break  # nothing else on its way: do not make this batch wait
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _work(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stop = self._collect(first)
            live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
            if not live:
                continue
            t0 = time.perf_counter()
            try:
                results = list(self.run_batch([item for item, _ in live]))
                if len(results) != len(live):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(live)} items")
            except Exception as exc:  # fail this batch's requests, keep serving
                if not isinstance(exc, EdgeclipError):
                    log.exception("a batch of %d failed", len(live))
                for _, fut in live:
                    fut.set_exception(exc)
                continue
            finally:
                seconds = time.perf_counter() - t0
                self.batches += 1
                self.items += len(live)
                if self.on_batch is not None:
                    self.on_batch(len(live), seconds)
            for (_, fut), result in zip(live, results):
                fut.set_result(result)
