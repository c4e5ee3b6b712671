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

from .job import BatchOptions, BatchPlan, plan, run
from .ray import classify_ray
from .resume import ResumeState, resume_output
from .rows import FORMATS, RowWriter, json_line, write_results

__all__ = ["BatchOptions", "BatchPlan", "FORMATS", "ResumeState", "RowWriter", "classify_ray", "json_line", "plan",
           "resume_output", "run", "write_results"]
