"""Batch classification on Ray Data: the same runtime, one Classifier per actor, on one machine or many.

The input paths become a Ray dataset; ``map_batches`` runs :class:`ClassifyActor` on ``workers`` actors,
each holding one Classifier made once by a factory (``edgeclip.batch.classify_ray`` passes
``functools.partial(edgeclip.load, bundle, ...)``); each actor reads, decodes and classifies its batches
with the runtime's own :meth:`Classifier.classify_files`, so bad files are error rows, as locally. Rows come
back in input order. Paths travel as bytes (``os.fsencode``), so any file name the OS allows works.

Needs the ``ray`` extra (``ray[data]``). Ray serialises the factory to its workers (Ray's own transport;
nothing is written for users to load).
"""
from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..api import load
from ..errors import BackendError, EdgeclipError, OptionError
from ..options import LoadOptions
from ..runtime.classifier import FileResult, Prediction

log = logging.getLogger("edgeclip.batch")

#: columns of the result dataset (and of the Parquet shards)
COLUMNS = ("path", "path_bytes", "label", "score", "top_labels", "top_scores", "error", "engine")


def require_ray(loopback: bool = False) -> Any:
    """The ``ray`` module with Ray Data, or MissingExtraError naming the pip command.

    ``loopback``: a Ray started by this process will listen on 127.0.0.1 only. Ray otherwise advertises
    the machine's network address and its gRPC servers listen on every interface; its single-machine
    mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, the default on macOS and Windows) keeps everything on
    the loopback address, for this process and the Ray processes it starts.
    """
    from ..extras import require

    require("ray", what="a Ray Data run")
    if loopback:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    import ray._private.ray_constants as ray_constants

    if loopback:  # read when ray was first imported: set it here as well
        ray_constants.ENABLE_RAY_CLUSTER = False
    import ray.data

    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Connect to Ray: the cluster at ``address``, else a Ray already started in this process, else a new
    local Ray bound to 127.0.0.1 without a dashboard."""
    if not address and "ray" not in sys.modules:
        # token authentication on, as Ray's default is, but asked for (read when ray is imported): Ray then
        # prints no banner about it
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    ray = require_ray()
    if ray.is_initialized():
        return ray
    common = {"configure_logging": False, "log_to_driver": False, "ignore_reinit_error": True}
    try:
        if address:
            ray.init(address=address, **common)
        else:
            require_ray(loopback=True)
            ray.init(include_dashboard=False, num_cpus=num_cpus, **common)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at address={address!r}" if address else "a local Ray"
        raise BackendError(f"cannot start or reach {where}: {exc}") from exc
    return ray


class ClassifyActor:
    """A Ray Data actor: one Classifier (made once by ``factory``) classifying batches of paths."""

    def __init__(self, factory: Callable[[], Any], top_k: int, exact_decode: bool, decode_threads: int,
                 max_pixels: int | None, max_bytes: int | None) -> None:
        from ..runtime import images

        images.set_limits(max_pixels, max_bytes)  # this worker process's defaults
        self.clf = factory()
        self.top_k, self.exact, self.threads = top_k, exact_decode, decode_threads

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [Path(os.fsdecode(bytes(b))) for b in batch["path_bytes"]]
        results = list(self.clf.classify_files(paths, batch_size=max(1, len(paths)), workers=self.threads,
                                               top_k=self.top_k, exact_decode=self.exact))
        return result_columns(results, self.clf.choice.describe() if self.clf.choice else self.clf.encoder.name)


def _display(raw: bytes) -> str:
    """A path as UTF-8 text (undecodable bytes as \\xNN escapes): Arrow strings must be valid UTF-8."""
    return raw.decode("utf-8", "backslashreplace")


def result_columns(results: Sequence[FileResult], engine: str = "") -> dict[str, np.ndarray]:
    """FileResults -> the columns of :data:`COLUMNS` (error rows: empty label, NaN score); ``engine``: which
    image encoder the actor ran, where, and why (``EncoderChoice.describe``)."""
    raws = [os.fsencode(r.path) for r in results]

    def obj(values: list) -> np.ndarray:
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out

    return {"path": obj([_display(b) for b in raws]), "path_bytes": obj(raws),
            "label": obj([r.prediction.label if r.prediction else "" for r in results]),
            "score": np.array([r.prediction.score if r.prediction else np.nan for r in results], np.float64),
            "top_labels": obj([list(r.prediction.labels) if r.prediction else [] for r in results]),
            "top_scores": obj([[float(s) for s in r.prediction.scores] if r.prediction else [] for r in results]),
            "error": obj([r.error or "" for r in results]), "engine": obj([engine] * len(results))}


def row_result(row: dict[str, Any]) -> FileResult:
    """One result row back to a FileResult (what the local run's writers take)."""
    path = Path(os.fsdecode(bytes(row["path_bytes"])))
    if row["error"]:
        return FileResult(path, error=str(row["error"]))
    return FileResult(path, Prediction([str(x) for x in row["top_labels"]], [float(x) for x in row["top_scores"]]))


def classify_dataset(paths: Sequence[str | os.PathLike[str]], factory: Callable[[], Any], *, workers: int = 2,
                     batch_size: int = 32, top_k: int = 1, exact_decode: bool = False, cpus_per_worker: float = 1,
                     decode_threads: int = 0, max_pixels: int | None = None, max_bytes: int | None = None) -> Any:
    """The lazy Ray dataset of result rows (:data:`COLUMNS`) for ``paths``, in input order. Ray must be
    initialised (:func:`init_ray`)."""
    ray = require_ray()
    if workers < 1:
        raise OptionError(f"workers must be >= 1, got {workers}")
    if batch_size < 1:
        raise OptionError(f"batch_size must be >= 1, got {batch_size}")
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # rows in input order, as a local run writes them
    ctx.enable_progress_bars = False  # the caller shows progress
    if not log.isEnabledFor(logging.DEBUG):  # Ray Data's progress reports and notes are log lines
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    items = [{"path_bytes": os.fsencode(p)} for p in paths]
    blocks = max(1, min(len(items) // max(1, batch_size), 4 * workers * 8)) if items else 1
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    return ds.map_batches(ClassifyActor, batch_size=batch_size, batch_format="numpy",
                          compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus_per_worker,
                          fn_constructor_args=(factory, top_k, exact_decode, decode_threads or
                                               max(1, int(cpus_per_worker)), max_pixels, max_bytes))


def iter_results(ds: Any, progress: Callable[[int], None] | None = None,
                 on_open: Callable[[str], None] | None = None) -> Iterator[FileResult]:
    """The rows of a result dataset as FileResults, in order; a failure inside Ray is a BackendError.
    ``on_open`` hears each distinct image encoder the actors ran (what ran where, and why)."""
    ray = require_ray()
    seen: set[str] = set()
    try:
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
            n = len(batch["path_bytes"])
            for engine in set(batch["engine"]) - seen if on_open else ():
                seen.add(engine)
                on_open(str(engine))
            for i in range(n):
                yield row_result({k: batch[k][i] for k in ("path_bytes", "error", "top_labels", "top_scores")})
            if progress:
                progress(n)
    except ray.exceptions.RayError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, EdgeclipError):
            raise type(cause)(str(cause)) from None
        raise BackendError(f"the Ray Data job failed: {cause or exc}") from exc


def write_parquet(ds: Any, folder: str | os.PathLike[str]) -> None:
    """Write the result rows as Parquet shards into ``folder`` (created; Ray names the files)."""
    ds.write_parquet(os.fspath(folder))


def classify_ray(bundle: str | os.PathLike[str], paths: Sequence[str | os.PathLike[str]],
                 options: LoadOptions | None = None, /, *, workers: int = 2, address: str | None = None,
                 batch_size: int = 32, top_k: int = 1, exact_decode: bool = False,
                 parquet: str | os.PathLike[str] | None = None, max_pixels: int | None = None,
                 max_bytes: int | None = None, progress: Callable[[int], None] | None = None,
                 on_open: Callable[[str], None] | None = None, **load_values: Any) -> Iterator[FileResult]:
    """Classify ``paths`` with ``workers`` Ray Data actors, one Classifier each; FileResults in input order.

    - ``options`` (:class:`edgeclip.LoadOptions`, its fields also as keywords): how each actor runs
      ``edgeclip.load``, unchanged (device, precision, backend, target, providers, hint, cache_dir...).
      ``threads``: ONNX Runtime threads per actor (0: this machine's cores / ``workers`` for a local Ray;
      the backend's default on a cluster). Each actor reserves ``max(1, threads)`` Ray CPUs.
    - ``address``: a Ray cluster to join (``"auto"``, ``"HOST:6379"``, ``"ray://HOST:10001"``); None starts a
      local Ray bound to 127.0.0.1 (no dashboard) unless this process already started one.
    - ``parquet``: also write the result rows as Parquet shards into this folder (columns
      ``edgeclip.batch.ray.COLUMNS``; ``path`` is UTF-8 text, ``path_bytes`` the name's exact bytes).
    - The others are :meth:`Classifier.classify_files`'s; ``max_pixels`` / ``max_bytes`` are the image limits
      applied on the workers; ``on_open`` hears each distinct line saying which image encoder the actors run,
      where and why (as ``edgeclip.load`` logs it).

    Unreadable files are FileResults with ``error``, as in a local run. The rows are computed when the
    iterator is consumed (with ``parquet``, once, before the first row is returned).
    """
    if workers < 1:
        raise OptionError(f"`workers` must be >= 1, got {workers}")
    opts = LoadOptions.build(options, top_k=top_k, **load_values)
    local = address is None
    if local and not opts.threads:
        opts = opts.replace(threads=max(1, (os.cpu_count() or 2) // workers))
    factory = functools.partial(load, os.path.abspath(os.fspath(bundle)), opts)
    threads = opts.threads
    init_ray(address, num_cpus=max(os.cpu_count() or 1, workers * max(1, threads)) if local else None)
    ds = classify_dataset([os.path.abspath(os.fspath(p)) for p in paths],
                                    factory, workers=workers, batch_size=batch_size, top_k=top_k,
                                    exact_decode=exact_decode, cpus_per_worker=max(1, threads),
                                    max_pixels=max_pixels, max_bytes=max_bytes)
    return _results(ds, paths, parquet, progress, on_open)


def _results(ds: Any, paths: Sequence[str | os.PathLike[str]], parquet: str | os.PathLike[str] | None,
             progress: Callable[[int], None] | None, on_open: Callable[[str], None] | None) -> Iterator[FileResult]:
    if not paths:
        return
    if parquet is not None:
        ds = ds.materialize()  # computed once, for both the shards and the rows
        write_parquet(ds, parquet)
    for i, r in enumerate(iter_results(ds, progress, on_open)):
        r.path = type(r.path)(paths[i])  # the path as the caller wrote it (the workers saw it absolute)
        yield r
