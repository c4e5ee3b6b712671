"""Resuming an interrupted batch run: which inputs a result file (JSON lines or CSV) already holds.

A run writes one complete row per input, in input order, and flushes after every batch; an interrupted
run leaves a file whose rows are a prefix of the full run's, possibly followed by part of one row (a crash
in the middle of a write). :func:`resume_output` cuts that partial row off and returns the inputs that
have a row, so a resumed run classifies only the rest and appends them: the result holds exactly the rows
of an uninterrupted run. Error rows count as done (a file that failed is not retried).
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OptionError

#: formats whose rows can be read back
RESUMABLE_FORMATS = ("jsonl", "csv")


@dataclass
class ResumeState:
    """What an existing result file holds."""

    path: Path
    fmt: str
    done: set[str] = field(default_factory=set)  # input paths (``os.fspath`` form) that have a row
    rows: int = 0
    truncated: int = 0  # bytes of a partial last row that were cut off
    has_header: bool = False  # CSV: the header row is there (an empty file needs one)

    def remaining(self, paths: list) -> list:
        """The paths without a row, in their order."""
        return [p for p in paths if os.fspath(p) not in self.done]


def complete_prefix(data: bytes, fmt: str) -> int:
    """Length of the longest prefix of ``data`` that ends at a row boundary.

    JSON lines end at a newline (JSON strings cannot hold one). A CSV row ends at a newline outside
    quotes: the number of ``"`` before it is even (an escaped quote is doubled). Both bytes are ASCII,
    so they never occur inside a UTF-8 sequence.
    """
    pos = data.rfind(b"\n")
    if fmt == "jsonl":
        return pos + 1
    while pos >= 0:
        if data.count(b'"', 0, pos) % 2 == 0:
            return pos + 1
        pos = data.rfind(b"\n", 0, pos)
    return 0


def resume_output(path: str | os.PathLike[str], fmt: str) -> ResumeState:
    """Read a result file to resume: cut a partial last row off (in place) and list the inputs it holds.

    A missing or empty file is a fresh start. A file that is not a result file of this format raises
    OptionError naming the line (nothing is changed then).
    """
    p = Path(path)
    if fmt not in RESUMABLE_FORMATS:
        raise OptionError(f"only {' and '.join(RESUMABLE_FORMATS)} result files can be resumed, not {fmt!r}")
    state = ResumeState(p, fmt)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return state
    except OSError as exc:
        raise OptionError(f"{p}: cannot read the result file to resume ({exc.strerror or exc})") from exc
    keep = complete_prefix(data, fmt)
    text = data[:keep].decode("utf-8", "surrogateescape")
    if fmt == "jsonl":
        _read_jsonl(p, text, state)
    else:
        _read_csv(p, text, state)
    if keep < len(data):  # only once the rest parsed: a file of another kind is never changed
        with open(p, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        state.truncated = len(data) - keep
    return state


def _not_results(p: Path, line: int, what: str) -> OptionError:
    return OptionError(f"{p}:{line}: {what}; this is not a result file of the same format, so it cannot be "
                       f"resumed: choose another output file, or delete this one to start again")


def _read_jsonl(p: Path, text: str, state: ResumeState) -> None:
    for i, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise _not_results(p, i, "not a JSON line") from None
        if not isinstance(row, dict) or not isinstance(row.get("path"), str):
            raise _not_results(p, i, 'a JSON line without a "path"')
        state.done.add(row["path"])
        state.rows += 1


def _read_csv(p: Path, text: str, state: ResumeState) -> None:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        return
    if header[:2] != ["path", "label"]:
        raise _not_results(p, 1, f"the CSV header is {','.join(header)[:80]!r}, not path,label,...")
    state.has_header = True
    for row in reader:
        if row:
            state.done.add(row[0])
            state.rows += 1
