"""The batch classification job (``edgeclip classify``): inputs -> result rows in a file or a stream, locally or
on Ray Data, resumable.

    from edgeclip.batch import BatchOptions, plan, run
    job = plan(["photos/"], BatchOptions(output="results.csv", resume=True))
    rows, failed, engine = run("bundle", job)

:func:`plan` expands the inputs and reads back a result file to resume (everything that can be refused is
refused there, before any work); :func:`run` classifies what is left and writes the rows in input order,
flushing after every batch.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, ClassVar, Iterator, Sequence

from ..api import load
from ..errors import OptionError
from ..options import LoadOptions, Options, option, parse_size, positive_int
from ..runtime.images import IMAGE_EXTENSIONS, MAX_FILE_BYTES, MAX_IMAGE_PIXELS, expand_inputs, set_limits
from .resume import RESUMABLE_FORMATS, ResumeState, resume_output
from .rows import FORMATS, write_results

#: the row format an output file's suffix names
_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "table"}
_RAY = "Ray Data (the 'ray' extra; see the README's batch section)"
_LIMITS = "input limits (docs/limits.md)"


@dataclass(frozen=True)
class BatchOptions(Options):
    """How a batch run reads its inputs and writes its rows."""

    WHAT: ClassVar[str] = "classify option"

    top_k: int = option(1, "labels per image")
    batch_size: int = option(32, "images per inference batch")
    workers: int = option(0, "decoding threads (0 = number of CPUs); with `ray`: Ray workers, one classifier each "
                             "(default 2)")
    format: str | None = option(None, "output format (default: table on a terminal, else by `output` suffix, else "
                                      "csv)", choices=FORMATS)
    output: str | None = option(None, "write results to this file instead of stdout (.csv, .jsonl or .txt: the "
                                      "format by its suffix unless `format` says)", alias="o", output="file")
    resume: bool = option(False, "keep the rows already in `output` (csv or jsonl), classify only the inputs without "
                                 "a row and append them (a partial last row is cut off first)")
    exact_decode: bool = option(False, "decode every JPEG at full size (default: a photo at least twice the model "
                                       "input decodes at a reduced DCT scale, 1/2 to 1/8, several times faster)")
    ray: bool = option(False, "run on Ray Data: `workers` actors, one classifier each", group=_RAY)
    ray_address: str | None = option(None, "join this Ray cluster (e.g. 10.0.0.5:6379 or auto; default: start a "
                                           "local Ray on 127.0.0.1)", metavar="ADDR", group=_RAY)
    parquet: str | None = option(None, "with `ray`: also write the rows as Parquet shards into DIR", metavar="DIR",
                                 group=_RAY, output="folder")
    max_image_pixels: int | None = option(None, f"refuse images whose header states more pixels (default "
                                                f"{MAX_IMAGE_PIXELS:,})", metavar="N", parse=positive_int,
                                          group=_LIMITS)
    max_file_size: int | None = option(None, f"refuse files larger than this (default {MAX_FILE_BYTES // 2**20}M)",
                                       metavar="SIZE", parse=parse_size, group=_LIMITS)

    def problems(self) -> list[str]:
        """Values out of range and contradictions, each naming the option."""
        out = [f"`{name}` must be >= 1, got {getattr(self, name)}" for name in ("top_k", "batch_size")
               if getattr(self, name) < 1]
        if self.workers < 0:
            out.append(f"`workers` must be >= 0, got {self.workers}")
        if self.ray_address and not self.ray:
            out.append("`ray_address` joins a Ray cluster for a `ray` run: add `ray`")
        if self.parquet and not self.ray:
            out.append("`parquet` writes Ray Data's shards: add `ray` (or use format csv/jsonl without it)")
        if self.resume and not self.output:
            out.append("`resume` needs `output`: the csv or jsonl file of the run to resume")
        suffix = Path(self.output).suffix.lower() if self.output else ""
        if self.output and not self.format and suffix not in _SUFFIXES:
            out.append(f"`output` {self.output}: no format is named {suffix or 'by a file without a suffix'}; name "
                       f"it .csv, .jsonl or .txt, or pass format='csv' (or jsonl, table)")
        return out

    def row_format(self, interactive: bool = False) -> str:
        """The format asked for, else by the output's suffix, else a table on a terminal, else CSV."""
        if self.format:
            return self.format
        if self.output:
            return _SUFFIXES[Path(self.output).suffix.lower()]
        return "table" if interactive else "csv"


@dataclass
class BatchPlan:
    """What a run will do: the inputs, those left to classify, what the folders held that is not an image,
    the result file read back (``resume``) and the row format."""

    options: BatchOptions
    paths: list[Path]
    todo: list[Path]
    fmt: str
    skipped: list[Path] = field(default_factory=list)
    state: ResumeState | None = None

    def notes(self) -> list[str]:
        """What a user should hear before the run: non-image entries skipped, what resuming found."""
        out = []
        if self.skipped:
            kinds = Counter(p.suffix.lower() or "(no extension)" for p in self.skipped)
            shown = ", ".join(f"{k} x{n}" for k, n in kinds.most_common(6)) + (", ..." if len(kinds) > 6 else "")
            out.append(f"skipped {len(self.skipped)} entries in the folders that are not image files by name "
                       f"({shown}); name a file explicitly to classify it")
        if self.state is not None:
            done = len(self.paths) - len(self.todo)
            out.append(f"resuming {self.options.output}: {done} of {len(self.paths)} inputs already have a row; "
                       f"classifying the other {len(self.todo)}"
                       + (f" (cut off a partial last row of {self.state.truncated} bytes)" if self.state.truncated
                          else ""))
        return out


def plan(inputs: Sequence[str | os.PathLike[str]], options: BatchOptions | None = None,
         interactive: bool = False) -> BatchPlan:
    """Expand ``inputs`` (files, folders searched recursively, glob patterns) and, with ``resume``, read the
    result file back; ``interactive``: rows go to a terminal (the default format is then a table)."""
    opts = options or BatchOptions()
    fmt = opts.row_format(interactive)
    skipped: list[Path] = []
    paths = expand_inputs(inputs, missing="keep", skipped=skipped)
    if not paths:  # only folders were named, and none holds an image file: nothing to do is an error
        what = "the folder holds no" if len(inputs) == 1 else "none of these folders holds an"
        raise OptionError(f"{', '.join(map(str, inputs))}: {what} image file (by extension: "
                          f"{', '.join(sorted(IMAGE_EXTENSIONS))}" + (f"; {len(skipped)} other entries" if skipped
                                                                      else "")
                          + "); pass image files or a folder that holds some")
    state = None
    if opts.resume:
        if fmt not in RESUMABLE_FORMATS:
            raise OptionError(f"`resume` reads the rows back, which a {fmt} file does not allow: use format='csv' or "
                              f"format='jsonl' (or an `output` name ending in .csv or .jsonl)")
        state = resume_output(opts.output or "", fmt)
    return BatchPlan(opts, paths, state.remaining(paths) if state else paths, fmt, skipped, state)


@contextlib.contextmanager
def image_limits(max_pixels: int | None, max_bytes: int | None) -> Iterator[None]:
    """The image limits of a run, restored afterwards."""
    previous = set_limits(max_pixels, max_bytes)
    try:
        yield
    finally:
        set_limits(*previous)


@contextlib.contextmanager
def _output(path: str | None, append: bool = False) -> Iterator[IO[str]]:
    """The results stream: the output file, or stdout switched to pass file names' bytes through unchanged."""
    if path:
        with open(path, "a" if append else "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
            yield f
        return
    out = sys.stdout
    errors = getattr(out, "errors", None)
    switch = errors == "strict" and hasattr(out, "reconfigure")
    if switch:
        out.reconfigure(errors="surrogateescape")
    try:
        yield out
    finally:
        if switch:
            with contextlib.suppress(ValueError, OSError):
                out.reconfigure(errors=errors)


def run(bundle: str | os.PathLike[str], job: BatchPlan, load_options: LoadOptions | None = None, *,
        progress: Callable[[int], None] | None = None,
        on_open: Callable[[str], None] | None = None) -> tuple[int, int, str]:
    """Classify ``job.todo`` and write their rows; returns (rows, failed rows, what ran them).

    ``progress`` is called with the rows each batch wrote (after they reached the file); ``on_open`` with
    one line saying which image encoder runs where, and why (once per distinct line the Ray actors report).
    """
    opts = job.options
    width = max((len(str(p)) for p in job.paths), default=8)
    header = not (job.state and job.state.has_header)
    with _output(opts.output, append=job.state is not None) as out:
        def done(n: int) -> None:  # a row reaches the file by the end of its batch
            out.flush()
            if progress:
                progress(n)

        if opts.ray:
            from .ray import classify_ray

            workers = opts.workers or 2
            results = classify_ray(bundle, job.todo, load_options, workers=workers, address=opts.ray_address,
                                   batch_size=opts.batch_size, top_k=opts.top_k, exact_decode=opts.exact_decode,
                                   parquet=opts.parquet, max_pixels=opts.max_image_pixels,
                                   max_bytes=opts.max_file_size, progress=done, on_open=on_open)
            rows, failed = write_results(results, out, job.fmt, opts.top_k, width, header)
            return rows, failed, f"Ray Data ({workers} worker{'s' if workers != 1 else ''})"
        clf = load(bundle, load_options, top_k=opts.top_k)
        if on_open is not None:
            on_open(clf.choice.describe())
        with image_limits(opts.max_image_pixels, opts.max_file_size):
            results = clf.classify_files(job.todo, batch_size=opts.batch_size, workers=opts.workers,
                                         top_k=opts.top_k, progress=done, exact_decode=opts.exact_decode)
            rows, failed = write_results(results, out, job.fmt, opts.top_k, width, header)
    return rows, failed, f"{clf.encoder.name} ({clf.precision})"
