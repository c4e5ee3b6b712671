"""Prometheus text exposition (format 0.0.4) for ``edgeclip serve``: counters, gauges and histograms.

A few dozen lines instead of a dependency: every metric is a family with fixed label names, values live in
dicts keyed by label values (bounded: callers pass route templates, not raw paths), and ``render()`` writes
the text format that Prometheus scrapes from ``GET /metrics``. Thread-safe.
"""
from __future__ import annotations

import math
import threading
from typing import Callable, Iterable, Sequence

#: Seconds: request and inference latency buckets (1 ms .. 10 s).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Images per micro-batch.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class _Family:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        self.name, self.help, self.labelnames = name, help_text, tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: Sequence[str]) -> tuple[str, ...]:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(v) for v in labels)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Family):
    """A monotonically increasing count per label combination."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        key = self._key(labels)
        with self._lock:
            self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, *labels: str) -> float:
        with self._lock:
            return self.values.get(self._key(labels), 0.0)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self.values.items())
        return [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}" for k, v in items]


class Gauge(_Family):
    """A value read when scraped (``fn``) or set by the caller."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, fn: Callable[[], float | None] | None = None) -> None:
        super().__init__(name, help_text)
        self.fn, self.value = fn, 0.0

    def set(self, value: float) -> None:
        self.value = float(value)

    def lines(self) -> list[str]:
        value = self.fn() if self.fn is not None else self.value
        return [] if value is None else [f"{self.name} {_number(float(value))}"]


class Histogram(_Family):
    """Cumulative buckets, sum and count per label combination."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Iterable[float], labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self.data: dict[tuple[str, ...], list[float]] = {}  # per bucket counts (not cumulative), then sum, count

    def observe(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            row = self.data.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    row[i] += 1
                    break
            row[-2] += value
            row[-1] += 1

    def count(self, *labels: str) -> int:
        with self._lock:
            row = self.data.get(self._key(labels))
            return int(row[-1]) if row else 0

    def lines(self) -> list[str]:
        out = []
        with self._lock:
            items = sorted((k, list(v)) for k, v in self.data.items())
        for key, row in items:
            running = 0.0
            for bound, n in zip(self.buckets, row):
                running += n
                le = 'le="%s"' % _number(bound)
                out.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {_number(running)}")
            le = 'le="+Inf"'
            out.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {_number(row[-1])}")
            out.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_number(row[-2])}")
            out.append(f"{self.name}_count{_labels(self.labelnames, key)} {_number(row[-1])}")
        return out


class Registry:
    """The metric families of one service, rendered in registration order."""

    def __init__(self) -> None:
        self.families: list[_Family] = []

    def add(self, family: _Family) -> _Family:
        self.families.append(family)
        return family

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Counter:
        return self.add(Counter(name, help_text, labelnames))  # type: ignore[return-value]

    def gauge(self, name: str, help_text: str, fn: Callable[[], float | None] | None = None) -> Gauge:
        return self.add(Gauge(name, help_text, fn))  # type: ignore[return-value]

    def histogram(self, name: str, help_text: str, buckets: Iterable[float],
                  labelnames: Sequence[str] = ()) -> Histogram:
        return self.add(Histogram(name, help_text, buckets, labelnames))  # type: ignore[return-value]

    def render(self) -> str:
        """The whole exposition, ``text/plain; version=0.0.4``."""
        out: list[str] = []
        for family in self.families:
            out += family.header() + family.lines()  # type: ignore[attr-defined]
        return "\n".join(out) + "\n"


#: The Content-Type of ``Registry.render()``.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
