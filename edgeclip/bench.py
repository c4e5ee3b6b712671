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
import sys
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from .bundle import Bundle, load_bundle
from .errors import BundleError, EdgeclipError, OptionError
from .options import LoadOptions, Options, option
from .runtime.cpu import BF16_FLAGS, VNNI_FLAGS, read_cpuinfo
from .tables import BACKENDS, INT8_RECIPES, Backend as TableBackend, load_module, precisions

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


def _files(backend: TableBackend, bundle: Bundle) -> list[tuple[str, Path, str | None]]:
    """(precision, file, INT8 recipe) of every file ``backend`` can run from the bundle: its built files,
    or the fp32 ONNX at each float precision it runs and every INT8 ONNX."""
    if backend.files is not None:
        out: dict[Path, tuple[str, Path, str | None]] = {}
        for wanted in (p for p in precisions("load") if p in backend.precisions):
            try:
                path = load_module(backend.files).find_file(bundle, wanted)
            except EdgeclipError:
                continue
            # named by the precision it was built at (an FP16 engine answers an fp32 request), each file once
            built = str(bundle.manifest["files"].get(path.name, {}).get("precision", wanted))
            out.setdefault(path, (built, path, backend.int8_recipes[0] if built == "int8" else None))
        return list(out.values())
    fp32 = bundle.encoder("image", "fp32")
    return ([(p, fp32, None) for p in backend.precisions if p != "int8"]
            + [("int8", path, target) for _, path, target in int8_files(bundle)])


def backend_variants(bundle: Bundle, options: LoadOptions, skip: Sequence[str] = ()) -> tuple[list[Variant], list[str]]:
    """Every backend of ``edgeclip.tables.BACKENDS`` that runs here (but ``skip``), at every precision it
    runs the bundle's files at: ``"<backend> <precision>"`` / ``"<backend> int8/<recipe>"``; and what was
    skipped, why. ``options``: threads, ONNX Runtime providers, OpenVINO hint and cache for every variant."""
    variants: list[Variant] = []
    skipped: list[str] = []
    for backend in BACKENDS.values():
        if backend.name in skip:
            continue
        module = backend.load()
        ok, why = module.available((options.providers or (None,))[0] if "providers" in backend.options else None)
        files = _files(backend, bundle) if ok else []
        if not files:
            skipped.append(f"{backend.name}: {why if not ok else 'no file it runs in the bundle'}")
        for precision, path, target in files:
            name = f"{backend.name} {precision}" + (f"/{target}" if target else "")
            try:
                enc = module.open_encoder(path, options, precision, bundle=bundle)
            except (EdgeclipError, ImportError, OSError) as exc:
                skipped.append(f"{name}: {exc}")
                continue
            variants.append(Variant(name, backend.name, precision, enc.run, target, _note(backend, target, enc)))
    return variants, skipped


def _note(backend: TableBackend, target: str | None, encoder: Any) -> str:
    """What a variant's row should say: compile time and cache (where the backend tells), a recipe made for
    another backend."""
    parts = []
    if getattr(encoder, "start_seconds", None) is not None:
        parts.append(f"{getattr(encoder, 'hint', '')} hint, compiled in {encoder.start_seconds:.1f} s"
                     + (" (cached)" if getattr(encoder, "from_cache", False) else ""))
    if getattr(encoder, "rest_precision", None) and target:
        parts.append(f"other layers {encoder.rest_precision}")
    made_for = INT8_RECIPES[target].made_for if target in INT8_RECIPES else backend.name
    if made_for.split(":")[0] != backend.name:
        parts.append(f"the {target} recipe is made for {made_for}")
    return ", ".join(parts)


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
        raise OptionError(f"`rounds` must be >= 1 and `warmup` >= 0, got {rounds} and {warmup}")
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
    p.write_text(json.dumps(rep, indent=2, default=float) + "\n", encoding="utf-8")
    return p


def write_png(rep: dict[str, Any], path: str | os.PathLike[str], title: str = "") -> Path:
    """A grouped bar chart of throughput per variant and batch size, speed-ups vs the reference on top."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        from .extras import install_command

        raise OptionError(f"a PNG chart needs matplotlib: {install_command('report')}") from exc
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
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


# ---------------------------------------------------------------------------------------------------------
# the bench job (``edgeclip bench``)
# ---------------------------------------------------------------------------------------------------------
#: the reference variant: the first backend of the table (it runs everywhere) on the fp32 file
REFERENCE = f"{next(iter(BACKENDS))} fp32"
PEER = "torch eager fp32"


@dataclass(frozen=True)
class BenchOptions(Options):
    """What ``edgeclip bench`` times and how."""

    WHAT: ClassVar[str] = "bench option"

    batch_sizes: tuple[int, ...] = option((1, 8), "batch sizes", metavar="B")
    rounds: int = option(10, "interleaved rounds")
    warmup: int = option(2, "untimed runs per variant and batch first")
    round_seconds: float = option(0.3, "aim for about this long per variant and batch in each round")
    torch: bool = option(True, "time the PyTorch eager reference peer (when torch is installed)")
    seed: int = option(0, "seed of the random input batch")
    json: str | None = option(None, "save the report as JSON", metavar="FILE", output="file")
    png: str | None = option(None, "save a throughput chart as PNG", metavar="FILE", output="file")

    def problems(self) -> list[str]:
        """Values out of range, each naming the option."""
        out = [f"`{name}` must be >= {low}, got {getattr(self, name)}"
               for name, low in (("rounds", 1), ("warmup", 0)) if getattr(self, name) < low]
        if any(b < 1 for b in self.batch_sizes):
            out.append(f"`batch_sizes` must be >= 1, got {list(self.batch_sizes)}")
        return out


def torch_variant(bundle: Bundle, threads: int) -> tuple[Variant | None, str | None]:
    """The PyTorch eager peer, or (None, why not).

    OpenMP threads that spin collapse when another process holds the cores (measured on the shared 2-core
    machine: ViT-B/32 at batch 1 took 1.85 s with 2 spinning threads, 0.30 s passive, 0.21 s on 1 thread),
    so unless the caller set it, torch runs with ``OMP_WAIT_POLICY=PASSIVE``: generous to the peer.
    """
    if "torch" not in sys.modules and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    try:
        from .export.models import load_source_model

        loaded = load_source_model(bundle)
    except BundleError:
        return None, "the manifest does not say how to reload the torch model (model.load)"
    except (EdgeclipError, ImportError) as exc:
        return None, f"cannot reload the torch model: {exc}"
    tower = loaded.image_tower.eval()
    torch.set_num_threads(threads or os.cpu_count() or 1)

    def run(x: Any) -> Any:
        with torch.inference_mode():
            return tower(torch.from_numpy(x))

    note = f"torch {torch.__version__}, eager, {torch.get_num_threads()} threads" + (
        ", OMP_WAIT_POLICY=PASSIVE" if os.environ.get("OMP_WAIT_POLICY") == "PASSIVE" else "")
    return Variant(PEER, "torch", "fp32", run, note=note), None


def bench(bundle: str | os.PathLike[str], options: BenchOptions | None = None,
          load_options: LoadOptions | None = None, skip: Sequence[str] = (),
          progress: Callable[[int], None] | None = None,
          on_plan: Callable[[list[Variant], list[str]], None] | None = None) -> dict[str, Any]:
    """Time every backend that runs here (but those in ``skip``) on the bundle's files, side by side, and the
    torch peer; returns the report (``format_table`` prints it). ``load_options``: threads, ONNX Runtime
    providers, OpenVINO hint and cache for every variant; ``on_plan(variants, skipped)`` is called before the
    timing starts; ``progress`` after every round."""
    opts, lopts = options or BenchOptions(), load_options or LoadOptions(providers=("cpu",))
    b = load_bundle(bundle)
    variants: list[Variant] = []
    skipped: list[str] = []
    if opts.torch:
        peer, why = torch_variant(b, lopts.threads)
        variants += [peer] if peer is not None else []
        skipped += [] if peer is not None else [f"torch: {why}"]
    found, why_not = backend_variants(b, lopts, skip)
    variants += found
    skipped += why_not
    if on_plan is not None:
        on_plan(variants, skipped)
    h, w = b.preprocess["size"]
    rng = np.random.default_rng(opts.seed)
    inputs = {n: rng.standard_normal((n, 3, h, w), dtype=np.float32) for n in sorted(set(opts.batch_sizes))}
    results = measure(variants, inputs, opts.rounds, opts.warmup, opts.round_seconds, progress)
    names = {v.name for v in variants}
    return report(variants, results, REFERENCE, PEER if PEER in names else None,
                  {"bundle": str(b.path), "model": b.model.get("id"), "rounds": opts.rounds, "warmup": opts.warmup,
                   "threads": lopts.threads, "skipped": skipped})
