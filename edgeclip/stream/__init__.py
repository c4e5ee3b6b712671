"""Streaming: classify a camera, network stream, video file or image folder live (torch-free).

    import edgeclip

    with edgeclip.stream("bundle", "video.mp4", threshold=0.3) as live:   # a Stream
        for r in live:                                # one FrameResult per classified frame
            if r.decision.changed:
                print(r.frame.index, r.decision.label, r.decision.score)
    print(live.end)                                   # reason, totals, latency percentiles

    edgeclip.stream(clf, "rtsp://cam/stream").run(edgeclip.StreamOutputs(jsonl="events.jsonl"))

``edgeclip.stream(...)`` is :func:`open_stream` (this package is callable); its keywords are the fields of
:class:`StreamOptions` and ``edgeclip.sources.SourceOptions``. A capture thread keeps only the newest
frames (a slow model classifies the present; drops are counted), lost live sources are reopened with
exponential backoff, probabilities are smoothed and labels change with hysteresis (``decisions``). The
pieces: ``loop`` (the pipeline), ``decisions``, ``outputs`` (JSON lines, annotated video, window),
``relabel`` (a watched labels file re-embedded on the device).
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import types
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..api import load
from ..bundle import Bundle
from ..errors import OptionError
from ..extras import require
from ..options import LoadOptions
from ..runtime.classifier import Classifier
from ..sources import SourceOptions, SourceSpec, parse_source
from ..tables import closest
from .loop import CLEAN_END, FrameResult, StreamPipeline
from .options import StreamOptions, StreamOutputs
from .outputs import AnnotatedVideo, JsonLinesSink, Window
from .relabel import LabelReloader

__all__ = ["CLEAN_END", "FrameResult", "SourceOptions", "Stream", "StreamOptions", "StreamOutputs", "open_stream"]

_DONE = object()


class Stream:
    """A source classified live by a classifier.

    Iterate it for one :class:`FrameResult` per classified frame (the pipeline runs on a thread; a slow
    consumer makes the newest-frame mailbox drop frames, never queue them), or :meth:`run` it in the calling
    thread with outputs. ``end`` is the final record once it has ended.
    """

    #: end reasons of a stream that ended as asked (the CLI exits 0 after them)
    CLEAN_END = CLEAN_END

    def __init__(self, classifier: Classifier, source: SourceSpec, options: StreamOptions | None = None,
                 outputs: StreamOutputs | None = None) -> None:
        self.classifier, self.source = classifier, source
        self.options = options or StreamOptions()
        self.outputs = outputs
        self.end: dict[str, Any] | None = None
        self.pipeline: StreamPipeline | None = None
        self._reloader: LabelReloader | None = None
        self._stop: str | None = None
        self._thread: threading.Thread | None = None

    # -- running -----------------------------------------------------------------------------------------
    def run(self, outputs: StreamOutputs | None = None, *, sink: Any = None,
            observers: Sequence[Callable[[FrameResult], None]] = ()) -> dict[str, Any]:
        """Stream in this thread until the source ends, a limit is hit or :meth:`stop`; returns the end record.

        ``outputs``: JSON lines (``jsonl="-"`` is stdout), annotated video, a window, a watched labels file;
        ``sink`` replaces the JSON-lines sink (anything with ``emit(event, **fields)``); ``observers`` are
        called with every FrameResult.
        """
        out = outputs or self.outputs or StreamOutputs(jsonl="")
        window = Window() if out.show else None
        video = AnnotatedVideo(out.video_out, out.video_fps) if out.video_out else None
        own_sink = sink is None and bool(out.jsonl)
        sink = JsonLinesSink(out.jsonl, append=out.append) if own_sink else sink
        self._reloader = (LabelReloader(self.classifier.bundle, out.labels_watch, out.templates, out.watch_interval,
                                        providers=self.classifier.text_providers) if out.labels_watch else None)
        self.pipeline = StreamPipeline(self.classifier, self.source, self.options, sink=sink, video=video,
                                       window=window, reloader=self._reloader, observers=observers)
        if self._stop is not None:
            self.pipeline.request_stop(self._stop)
        try:
            self.end = self.pipeline.run()
        finally:
            for part in (video, window, sink if own_sink else None):
                if part is not None:
                    part.close()
        return self.end

    def __iter__(self) -> Iterator[FrameResult]:
        """Classified frames as they come; leaving the loop early stops the stream."""
        results: queue.Queue[Any] = queue.Queue(maxsize=max(2, self.options.batch))

        def put(item: Any) -> None:
            while self._stop is None or item is _DONE:
                try:
                    results.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        def work() -> None:
            try:
                self.run(StreamOutputs(jsonl=""), observers=[put])
            finally:
                results.put(_DONE)

        self._thread = threading.Thread(target=work, name="edgeclip-stream", daemon=True)
        self._thread.start()
        try:
            while True:
                item = results.get()
                if item is _DONE:
                    return
                yield item
        finally:
            self.stop()
            while self._thread.is_alive():  # let the pipeline finish its batch and close its outputs
                try:
                    results.get(timeout=0.1)
                except queue.Empty:
                    pass
            self._thread.join()

    # -- control -----------------------------------------------------------------------------------------
    def stop(self, reason: str = "stopped") -> None:
        """Stop after the current batch (safe from a signal handler or another thread)."""
        self._stop = self._stop or reason
        if self.pipeline is not None:
            self.pipeline.request_stop(reason)

    @property
    def stop_requested(self) -> bool:
        return self._stop is not None

    def reload_labels(self, reason: str = "sighup") -> bool:
        """Re-read the watched labels file (``StreamOutputs.labels_watch``) at the next batch; False without one."""
        if self._reloader is None:
            return False
        self._reloader.request(reason)
        return True

    def relabel(self, names: Sequence[str], matrix: np.ndarray, reason: str = "api") -> None:
        """Swap in a new label set (names and their [N, D] embeddings) between two batches."""
        if self.pipeline is None:
            raise OptionError("the stream is not running: relabel the classifier before starting it")
        self.pipeline.queue_relabel(names, matrix, reason)

    def metrics(self) -> dict[str, Any]:
        """Totals so far (frames, drops, reconnects, memory)."""
        return self.pipeline.metrics() if self.pipeline is not None else {}

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout=5.0)


def split_values(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keywords split into StreamOptions and SourceOptions fields; OptionError for any other, naming the closest."""
    ours, theirs = StreamOptions.names(), SourceOptions.names()
    unknown = [k for k in values if k not in ours and k not in theirs]
    if unknown:
        raise OptionError("; ".join(f"unknown stream option {k!r}{closest(k, ours + theirs)}" for k in unknown))
    return ({k: v for k, v in values.items() if k in ours}, {k: v for k, v in values.items() if k in theirs})


def open_stream(classifier: Classifier | Bundle | str | os.PathLike[str], source: str | int | SourceSpec,
                options: StreamOptions | None = None, /, *, source_options: SourceOptions | None = None,
                load_options: LoadOptions | None = None, outputs: StreamOutputs | None = None,
                **values: Any) -> Stream:
    """A :class:`Stream` of ``source`` (a camera, URL, file, folder, ``synthetic://WxH``: ``edgeclip.sources``)
    through ``classifier`` (or a bundle, opened with ``edgeclip.load(bundle, load_options)``).

    Keywords are fields of :class:`StreamOptions` or :class:`SourceOptions`, on top of ``options`` and
    ``source_options``; ``outputs`` are what :meth:`Stream.run` writes by default. Everything that can be
    refused is refused now, before the model is loaded: a source that names nothing usable, an option its
    kind does not take (SourceError), a missing extra (OpenCV for cameras, video files and network streams,
    ``video_out`` and ``show``). The source is opened when the stream starts.
    """
    stream_values, source_values = split_values(values)
    opts = StreamOptions.build(options, **stream_values)
    spec = source if isinstance(source, SourceSpec) else parse_source(source, source_options, **source_values)
    spec.require_extra()
    for name in ("video_out", "show"):
        if outputs is not None and getattr(outputs, name):
            require("opencv", what=f"`{name}`")
    clf = classifier if isinstance(classifier, Classifier) else load(classifier, load_options)
    return Stream(clf, spec, opts, outputs)


class _CallableModule(types.ModuleType):
    """``edgeclip.stream(...)`` is :func:`open_stream`: the package is also the public function's name."""

    def __call__(self, *args: Any, **kwargs: Any) -> Stream:
        return open_stream(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
