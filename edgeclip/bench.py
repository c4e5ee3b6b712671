"""Latency and throughput of image-encoder variants, measured side by side (torch-free).

A *variant* is a name plus a ``run(batch)`` callable (ONNX Runtime fp32, ONNX Runtime INT8 per target,
TensorRT, or a PyTorch eager peer built by the caller). Measurement is fair on a shared, noisy machine:

* warm-up runs are excluded;
* rounds are *interleaved*: every round times every variant at every batch size, in an order that rotates
  from round to round, so a burst of load from another process hits all variants alike;
* ratios are *paired*: per round, the reference's median latency over the variant's, and the median of
  those per-round ratios is reported (so slow drift of the machine's load cancels out).

Latency is per call (one batch); throughput is ``batch / median latency`` in images per second.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .runtime.cpu import BF16_FLAGS, VNNI_FLAGS, read_cpuinfo
from .bundle import Bundle
from .errors import EdgeclipError, OptionError

#: CPU flags that decide INT8 and fp32 speed, reported with the numbers.
CPU_FLAGS = frozenset({"avx2", "avx512f", "amx_int8", "asimddp", "i8mm", "sve", *VNNI_FLAGS, *BF16_FLAGS})


@dataclass
class Variant:
    """One thing to time: ``run`` takes a float32 [B, 3, H, W] batch."""

    name: str
    backend: str
    precision: str
    run: Callable[[np.ndarray], Any]
    target: str | None = None
    note: str = ""


@dataclass
class Measurement:
    """Timings (seconds) of one variant at one batch size, grouped by round."""

    variant: str
    batch: int
    rounds: list[list[float]] = field(default_factory=list)

    @property
    def times(self) -> np.ndarray:
        return np.asarray([t for r in self.rounds for t in r], dtype=np.float64)

    def summary(self) -> dict[str, float]:
        t = self.times * 1000.0
        p50 = float(np.percentile(t, 50))
        return {"p50_ms": p50, "p95_ms": float(np.percentile(t, 95)), "mean_ms": float(t.mean()),
                "min_ms": float(t.min()), "runs": int(t.size), "throughput": 1000.0 * self.batch / p50,
                "ms_per_image": p50 / self.batch}


def int8_files(bundle: Bundle) -> list[tuple[str, Path, str | None]]:
    """(file name, path, recipe target) of every INT8 image encoder in the bundle, by name."""
    return [(name, bundle.path / name, entry.get("target"))
            for name, entry in sorted(bundle.files_with_role("image_encoder").items())
            if entry.get("precision") == "int8"]


def onnxruntime_variants(bundle: Bundle, providers: Sequence[str], threads: int = 0) -> list[Variant]:
    """ONNX Runtime fp32 (named ``onnxruntime fp32``, the usual reference) and every INT8 file of the bundle."""
    from .runtime.backends.onnxruntime import OrtBackend

    fp32 = OrtBackend(bundle.encoder("image", "fp32"), list(providers), threads)
    out = [Variant("onnxruntime fp32", "onnxruntime", "fp32", fp32.run)]
    for _, path, target in int8_files(bundle):
        backend = OrtBackend(path, list(providers), threads)
        note = "TensorRT's Q/DQ recipe on ONNX Runtime (not what it is made for)" if target == "tensorrt" else ""
        out.append(Variant(f"onnxruntime int8/{target}", "onnxruntime", "int8", backend.run, target, note))
    return out


def openvino_variants(bundle: Bundle, threads: int = 0, hint: str = "auto", cache_dir: str | None = None,
                      cpu_flags: frozenset[str] | None = None) -> tuple[list[Variant], list[str]]:
    """OpenVINO on the CPU: fp32, bf16 (where the CPU has it) and every INT8 file; and what was skipped, why."""
    from .runtime.backends.openvino import OpenVinoBackend, check_bf16, have_openvino

    ok, why = have_openvino()
    if not ok:
        return [], [f"openvino: {why}"]
    files = bundle.manifest["files"]
    fp32 = bundle.encoder("image", "fp32")
    todo = [("openvino fp32", fp32, "fp32", None), ("openvino bf16", fp32, "bf16", None)]
    todo += [(f"openvino int8/{target}", path, "int8", target) for _, path, target in int8_files(bundle)]
    variants, skipped = [], []
    for name, path, precision, target in todo:
        try:
            if precision == "bf16":
                check_bf16("CPU", cpu_flags)
            enc = OpenVinoBackend(path, "CPU", precision, hint, threads, cache_dir,
                                  key=files.get(path.name, {}).get("sha256"))
        except EdgeclipError as exc:
            skipped.append(f"{name}: {exc}")
            continue
        note = f"{hint} hint, compiled in {enc.start_seconds:.1f} s" + (" (cached)" if enc.from_cache else "")
        if precision == "int8":
            note += f", other layers {enc.rest_precision}"
        variants.append(Variant(name, "openvino", precision, enc.run, target, note))
    return variants, skipped


def paired_ratio(variant: Measurement, reference: Measurement) -> float:
    """Median over rounds of (reference median latency / variant median latency): the speed-up."""
    ratios = [float(np.median(r)) / float(np.median(v)) for v, r in zip(variant.rounds, reference.rounds) if v and r]
    return float(np.median(ratios)) if ratios else float("nan")


def machine_facts() -> dict[str, Any]:
    """Where the numbers were taken: CPU model and flags of interest, cores, load, library versions."""
    facts: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                             "cpus": os.cpu_count()}
    try:
        facts["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    _, model, flags = read_cpuinfo()
    if model:
        facts["cpu"] = model
    if flags:
        facts["cpu_flags"] = sorted(flags & CPU_FLAGS)
    try:
        import onnxruntime

        facts["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        import openvino

        facts["openvino"] = openvino.get_version().split("-")[0]
    except ImportError:
        pass
    return facts


def measure(variants: Sequence[Variant], inputs: dict[int, np.ndarray], rounds: int = 10, warmup: int = 2,
            min_round_seconds: float = 0.0, progress: Callable[[int], None] | None = None) -> list[Measurement]:
    """Time every variant at every batch size in interleaved rounds; returns one Measurement per pair.

    Each round runs every (variant, batch) ``reps`` times, ``reps`` chosen once after warm-up so that one
    round of one pair takes about ``min_round_seconds`` (at least 1 run).
    """
    if rounds < 1 or warmup < 0:
        raise OptionError("--rounds must be >= 1 and --warmup >= 0")
    if not variants:
        raise OptionError("nothing to benchmark")
    pairs = [(v, b) for b in inputs for v in variants]
    reps: dict[tuple[str, int], int] = {}
    for v, b in pairs:
        elapsed = 0.0
        for _ in range(max(1, warmup)):
            t = time.perf_counter()
            v.run(inputs[b])
            elapsed = time.perf_counter() - t
        reps[(v.name, b)] = max(1, int(min_round_seconds / max(elapsed, 1e-6))) if min_round_seconds else 1
    out = {(v.name, b): Measurement(v.name, b) for v, b in pairs}
    for r in range(rounds):
        shift = r % len(pairs)
        for v, b in pairs[shift:] + pairs[:shift]:
            times = []
            for _ in range(reps[(v.name, b)]):
                t = time.perf_counter()
                v.run(inputs[b])
                times.append(time.perf_counter() - t)
            out[(v.name, b)].rounds.append(times)
        if progress:
            progress(1)
    return [out[(v.name, b)] for v, b in pairs]


def report(variants: Sequence[Variant], results: Sequence[Measurement], reference: str | None,
           peer: str | None, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-able report: per (variant, batch) summary plus paired ratios vs ``reference`` and ``peer``."""
    by = {(m.variant, m.batch): m for m in results}
    info = {v.name: v for v in variants}
    rows = []
    for m in results:
        v = info[m.variant]
        row: dict[str, Any] = {"variant": m.variant, "backend": v.backend, "precision": v.precision,
                               "target": v.target, "batch": m.batch, **m.summary()}
        for key, ref in (("vs_reference", reference), ("vs_peer", peer)):
            if ref and (ref, m.batch) in by:
                row[key] = paired_ratio(m, by[(ref, m.batch)])
        if v.note:
            row["note"] = v.note
        rows.append(row)
    return {"reference": reference, "peer": peer, "results": rows, "machine": machine_facts(), **(meta or {})}


def format_table(rep: dict[str, Any]) -> str:
    """A plain-text table of the report."""
    ref, peer = rep.get("reference") or "-", rep.get("peer") or "-"
    w = max([28] + [len(r["variant"]) for r in rep["results"]])
    head = (f"{'batch':>5}  {'variant':<{w}} {'p50 ms':>9} {'p95 ms':>9} {'img/s':>8} "
            f"{'vs ' + ref:>22} {'vs ' + peer:>22}")
    lines = [head, "-" * len(head)]
    for r in rep["results"]:
        def ratio(key: str) -> str:
            v = r.get(key)
            return f"{v:.2f}x" if v is not None and np.isfinite(v) else "-"
        lines.append(f"{r['batch']:>5}  {r['variant']:<{w}} {r['p50_ms']:>9.1f} {r['p95_ms']:>9.1f} "
                     f"{r['throughput']:>8.1f} {ratio('vs_reference'):>22} {ratio('vs_peer'):>22}")
    return "\n".join(lines)


def write_json(rep: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Save the report as indented JSON."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(rep, indent=2, default=float) + "\n", encoding="utf-8")
    return p


def write_png(rep: dict[str, Any], path: str | os.PathLike[str], title: str = "") -> Path:
    """A grouped bar chart of throughput per variant and batch size, speed-ups vs the reference on top."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise OptionError("--png needs matplotlib: pip install matplotlib (or 'edgeclip[report]')") from exc
    rows = rep["results"]
    batches = sorted({r["batch"] for r in rows})
    names = list(dict.fromkeys(r["variant"] for r in rows))
    width = 0.8 / max(1, len(names))
    per_batch = max(4.5, 0.5 * len(names) + 1.0)
    fig, axes = plt.subplots(1, len(batches), figsize=(per_batch * len(batches) + 1, 4.2 + 0.22 * len(names)),
                             squeeze=False)
    for ax, b in zip(axes[0], batches):
        for i, name in enumerate(names):
            r = next((x for x in rows if x["variant"] == name and x["batch"] == b), None)
            if r is None:
                continue
            bar = ax.bar(i * width, r["throughput"], width * 0.9, label=name)
            ratio = r.get("vs_reference")
            if ratio is not None and np.isfinite(ratio):
                ax.annotate(f"{ratio:.2f}x", (i * width, r["throughput"]), ha="center", va="bottom", fontsize=8)
            bar[0].set_color(f"C{i}")
        ax.set_title(f"batch {b}")
        ax.set_xticks([])
        ax.set_ylabel("images / s")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=min(3, len(names)), frameon=False)
    fig.suptitle(title or f"image encoder throughput (x = vs {rep.get('reference')})")
    fig.tight_layout(rect=(0, 0.06 * ((len(names) + 2) // 3), 1, 1))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p
