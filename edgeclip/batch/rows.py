"""Result rows of a batch run: a table, CSV or JSON lines, one complete row per write."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from typing import IO, Iterable

#: the formats a batch run writes
FORMATS = ("table", "csv", "jsonl")


_SURROGATE = re.compile("[\ud800-\udfff]")


def json_line(row: dict) -> str:
    """One strict-JSON line (no NaN/Infinity) that is valid UTF-8 whatever the file names hold.

    A file name that is not valid UTF-8 reaches Python as surrogate escapes (PEP 383); they are written as
    ``\\udcXX`` JSON escapes, so ``os.fsencode(json.loads(line)["path"])`` gives the name's bytes back.
    """
    text = json.dumps(row, ensure_ascii=False, allow_nan=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


class RowWriter:
    """Writes result rows as a table, CSV or JSON lines, one complete row per ``write``.

    Every row is formatted in full before it is written, so a row is never cut in half. JSON lines are
    strict JSON in UTF-8 (see :func:`json_line`). CSV and table rows carry file names as the OS gives them:
    on a stream opened with ``errors="surrogateescape"`` (what ``edgeclip classify -o`` uses) a name that
    is not valid UTF-8 is written as its original bytes; a stream that cannot take them gets ``\\udcXX``
    escapes instead of an error. A prediction with a non-finite score becomes an error row.
    """

    def __init__(self, out: IO[str], fmt: str, top_k: int, path_width: int = 40, header: bool = True) -> None:
        self.out, self.fmt, self.top_k, self.width = out, fmt, top_k, max(8, min(path_width, 80))
        self._buf = io.StringIO()
        self.csv = csv.writer(self._buf, lineterminator="\n")
        if fmt == "csv" and header:
            self._put(self._csv_row(["path", "label", "score", "top_labels", "top_scores", "error"]))
        elif fmt == "table" and header:
            self._put(f"{'path':<{self.width}}  {'label':<24} {'score':>6}  {'other labels' if top_k > 1 else ''}\n")

    def _csv_row(self, fields: list[str]) -> str:
        self._buf.seek(0)
        self._buf.truncate()
        self.csv.writerow(fields)
        return self._buf.getvalue()

    def _put(self, text: str) -> None:
        try:
            self.out.write(text)
        except UnicodeEncodeError:  # nothing of the row was written: write it with escapes instead
            enc = getattr(self.out, "encoding", None) or "utf-8"
            self.out.write(text.encode(enc, "backslashreplace").decode(enc))

    def write(self, result) -> bool:
        """Write one row for a FileResult; returns True when it is an error row."""
        path, pred, err = os.fspath(result.path), result.prediction, result.error
        if pred is not None and not all(math.isfinite(s) for s in pred.scores):
            pred, err = None, (f"{path}: the model gave a non-finite score (NaN or infinity); check the bundle "
                               f"with `edgeclip inspect`")
        if self.fmt == "jsonl":
            row = {"path": path, "label": pred.label if pred else None, "score": round(pred.score, 6) if pred else None}
            if pred and self.top_k > 1:
                row["top"] = [{"label": l, "score": round(s, 6)} for l, s in zip(pred.labels, pred.scores)]
            if err is not None:
                row["error"] = err
            self._put(json_line(row))
        elif self.fmt == "csv":
            self._put(self._csv_row([path, pred.label if pred else "", f"{pred.score:.6f}" if pred else "",
                                     "|".join(pred.labels) if pred else "",
                                     "|".join(f"{s:.6f}" for s in pred.scores) if pred else "", err or ""]))
        else:
            shown = path if len(path) <= self.width else "..." + path[-(self.width - 3):]
            if pred:
                rest = "  ".join(f"{l} {s:.3f}" for l, s in zip(pred.labels[1:], pred.scores[1:]))
                self._put(f"{shown:<{self.width}}  {pred.label:<24} {pred.score:6.3f}  {rest}\n")
            else:
                self._put(f"{shown:<{self.width}}  ERROR: {err}\n")
        return err is not None


def write_results(results: Iterable, out: IO[str], fmt: str, top_k: int, path_width: int,
                  header: bool = True) -> tuple[int, int]:
    """Write every result; returns (rows, failures)."""
    writer = RowWriter(out, fmt, top_k, path_width, header)
    rows = failed = 0
    for r in results:
        failed += writer.write(r)
        rows += 1
    out.flush()
    return rows, failed
