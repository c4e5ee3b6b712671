"""Offline batch runs: resumable result files (:func:`resume_output`) and, beyond one process,
:func:`classify_ray`, which runs ``edgeclip.load`` on Ray Data actors (the ``ray`` extra).

    from edgeclip.batch import classify_ray
    for r in classify_ray("bundle", paths, workers=4):          # local Ray on 127.0.0.1
        print(r.path, r.prediction.label if r.ok else r.error)
    rows = list(classify_ray("/shared/bundle", paths, address="auto", workers=32, parquet="/shared/out"))

Each actor loads the bundle once (``edgeclip.load`` with the options given, on the node it runs on), so
the bundle path must be readable on every node (shared storage, or the same path everywhere), as must the
image paths. See the README's batch section for running on a cluster.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Iterator, Sequence

from ..api import load
from ..errors import OptionError
from ..options import LoadOptions
from ..runtime.classifier import FileResult
from . import ray as ray_batch
from .job import BatchOptions, BatchPlan, plan, run
from .resume import ResumeState, resume_output
from .rows import FORMATS, RowWriter, json_line, write_results

__all__ = ["BatchOptions", "BatchPlan", "FORMATS", "ResumeState", "RowWriter", "classify_ray", "json_line", "plan",
           "resume_output", "run", "write_results"]


def classify_ray(bundle: str | os.PathLike[str], paths: Sequence[str | os.PathLike[str]],
                 options: LoadOptions | None = None, /, *, workers: int = 2, address: str | None = None,
                 batch_size: int = 32, top_k: int = 1, exact_decode: bool = False,
                 parquet: str | os.PathLike[str] | None = None, max_pixels: int | None = None,
                 max_bytes: int | None = None, progress: Callable[[int], None] | None = None,
                 **load_values: Any) -> Iterator[FileResult]:
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
      applied on the workers.

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
    ray_batch.init_ray(address, num_cpus=max(os.cpu_count() or 1, workers * max(1, threads)) if local else None)
    ds = ray_batch.classify_dataset([os.path.abspath(os.fspath(p)) for p in paths],
                                    factory, workers=workers, batch_size=batch_size, top_k=top_k,
                                    exact_decode=exact_decode, cpus_per_worker=max(1, threads),
                                    max_pixels=max_pixels, max_bytes=max_bytes)
    return _results(ds, paths, parquet, progress)


def _results(ds: Any, paths: Sequence[str | os.PathLike[str]], parquet: str | os.PathLike[str] | None,
             progress: Callable[[int], None] | None) -> Iterator[FileResult]:
    if not paths:
        return
    if parquet is not None:
        ds = ds.materialize()  # computed once, for both the shards and the rows
        ray_batch.write_parquet(ds, parquet)
    for i, r in enumerate(ray_batch.iter_results(ds, progress)):
        r.path = type(r.path)(paths[i])  # the path as the caller wrote it (the workers saw it absolute)
        yield r
