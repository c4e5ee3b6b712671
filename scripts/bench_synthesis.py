#!/usr/bin/env python
"""Synthetic calibration speed and quality: full-size steps vs the coarse-to-fine plan (docs/quantization.md).

Three parts, each optional:

``--steps-of BUNDLE ...``  time per optimisation step (one batch of 16, text-guided objective) of the old
    schedule (every step at full size), of the coarse-to-fine plan and of the coarser plan (their phases'
    steps weighted by their share), interleaved round by round so machine load hits all alike; wall and CPU
    seconds, load average.
``--full-run BUNDLE ...``  64 text-guided images with the planner at ``--time-budget`` (default 600 s) and
    ``--resolution`` (default auto): wall and CPU seconds, steps planned and run per batch, the schedule and
    ladder per batch, whether the plan was cut, threads per batch and the cores other processes kept busy.
``--quality PROXY_BUNDLE ...``  on a proxy bundle that already holds INT8 files made by today's defaults
    (``edgeclip quantize B --target cpu|tensorrt``), make the calibration set with ``--resolution``
    (default coarse-to-fine; ``coarser`` for the coarser ladder), quantize both
    targets with it, and evaluate old and new INT8 against fp32 on CIFAR-10 test and held-out Imagenette
    (same decoded inputs for every model: top-1, top-1 agreement with fp32, mean embedding cosine).

    python scripts/bench_synthesis.py --steps-of /tmp/vitb32 /tmp/rn50 --rounds 3 --json steps.json
    python scripts/bench_synthesis.py --full-run /tmp/vitb32 --time-budget 600
    python scripts/bench_synthesis.py --quality /tmp/proxy-vit /tmp/proxy-rn --json quality.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _load() -> float:
    return round(os.getloadavg()[0], 2)


# ---------------------------------------------------------------------------------------------------------
def steps_of(bundles: list[str], rounds: int, threads: int) -> list[dict]:
    import torch

    from edgeclip.bundle import load_bundle
    from edgeclip.quant.budget import spread
    from edgeclip.quant.calibration import text_targets
    from edgeclip.quant.priors import BatchNormStats, PatchDiversity, l2_prior, total_variation, vit_blocks
    from edgeclip.quant.resolution import COARSER, at_resolution, ladder
    from edgeclip.quant.synthesis import SynthesisConfig, load_torch_tower, text_guided_objective

    torch.set_num_threads(threads)
    rows = []
    for path in bundles:
        bundle = load_bundle(path)
        tower = load_torch_tower(bundle)
        cfg = SynthesisConfig()
        targets, _ = text_targets(bundle, cfg.batch_size, 0, cfg.generic_fraction)
        obj = text_guided_objective(tower, targets)
        tgt = torch.from_numpy(obj.targets)
        bn = BatchNormStats(tower.visual) if obj.batchnorm else None
        div = PatchDiversity(vit_blocks(tower.visual)) if obj.diversity else None
        full = tuple(tower.size)
        phases = spread(ladder(tower.visual, full), cfg.steps)
        coarser = spread(ladder(tower.visual, full, COARSER), cfg.steps)
        sizes = sorted({p.size for p in phases + coarser} | {full}, key=lambda s: s[0] * s[1])

        def step(size: tuple[int, int]) -> tuple[float, float]:
            x = torch.zeros(cfg.batch_size, 3, *size, requires_grad=True)
            w0, c0 = time.perf_counter(), _cpu()
            with at_resolution(tower.visual, full, size, div.blocks if div else None):
                for h in (bn, div):
                    if h:
                        h.reset()
                emb = tower.encode(x).float()
                loss = 1 - torch.nn.functional.cosine_similarity(emb, tgt, dim=-1).mean()
                if bn:
                    loss = loss + cfg.bn_weight * bn.loss()
                if div:
                    loss = loss + cfg.diversity_weight * div.loss()
                loss = loss + cfg.tv_weight * total_variation(x) + cfg.l2_weight * l2_prior(x)
                loss.backward()
            return time.perf_counter() - w0, _cpu() - c0

        for h in (bn, div):
            if h:
                h.__enter__()
        step(sizes[0])  # warm-up
        per = {s: [] for s in sizes}
        loads = []
        for _ in range(rounds):  # interleaved: every size once per round
            for s in sizes:
                per[s].append(step(s))
            loads.append(_load())
        med = {s: (float(np.median([w for w, _ in v])), float(np.median([c for _, c in v]))) for s, v in per.items()}
        old_w, old_c = med[full]
        new_w = sum(p.steps * med[p.size][0] for p in phases) / cfg.steps
        new_c = sum(p.steps * med[p.size][1] for p in phases) / cfg.steps
        coarser_w = sum(p.steps * med[p.size][0] for p in coarser) / cfg.steps
        coarser_c = sum(p.steps * med[p.size][1] for p in coarser) / cfg.steps
        n_batches = 4  # 64 images in batches of 16
        row = {"bundle": path, "architecture": tower.architecture, "threads": threads, "rounds": rounds,
               "schedule": [p.record() for p in phases],
               "step_seconds": {f"{s[0]}x{s[1]}": {"wall": round(w, 3), "cpu": round(c, 3)} for s, (w, c) in med.items()},
               "old_step": {"wall": round(old_w, 3), "cpu": round(old_c, 3)},
               "new_step": {"wall": round(new_w, 3), "cpu": round(new_c, 3)},
               "speedup_cpu": round(old_c / new_c, 2),
               "old_64_images": {"wall": round(old_w * cfg.steps * n_batches), "cpu": round(old_c * cfg.steps * n_batches)},
               "new_64_images": {"wall": round(new_w * cfg.steps * n_batches), "cpu": round(new_c * cfg.steps * n_batches)},
               "coarser_schedule": [p.record() for p in coarser],
               "coarser_step": {"wall": round(coarser_w, 3), "cpu": round(coarser_c, 3)},
               "coarser_64_images": {"wall": round(coarser_w * cfg.steps * n_batches),
                                     "cpu": round(coarser_c * cfg.steps * n_batches)},
               "load": loads}
        print(json.dumps(row), flush=True)
        rows.append(row)
        for h in (bn, div):
            if h:
                h.__exit__(None, None, None)
    return rows


# ---------------------------------------------------------------------------------------------------------
def full_run(bundles: list[str], budget: float, resolution: str = "auto") -> list[dict]:
    from edgeclip.bundle import load_bundle
    from edgeclip.quant.calibration import calibration_set
    from edgeclip.quant.synthesis import SynthesisConfig

    rows = []
    for path in bundles:
        bundle = load_bundle(path)
        l0, w0, c0 = _load(), time.perf_counter(), _cpu()
        cs = calibration_set(bundle, "text-guided", images=64, seed=0, time_budget=budget,
                             config=SynthesisConfig(resolution=resolution),
                             cache=False, progress=False, step=lambda m: print(m, file=sys.stderr, flush=True))
        row = {"bundle": path, "budget": budget, "wall": round(time.perf_counter() - w0, 1),
               "cpu": round(_cpu() - c0, 1), "load_start": l0, "load_end": _load(),
               **{k: cs.info.get(k) for k in ("steps", "steps_planned", "steps_run", "plan_cut", "truncated",
                                              "schedule", "plan", "summary", "threads", "threads_per_batch",
                                              "busy_elsewhere", "seconds", "start", "end")}}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------
def _unpack(tmp: Path, name: str) -> Path:
    with tarfile.open(DATA / name) as tar:
        tar.extractall(tmp, filter="data")
    return tmp


def _inputs(bundle: str, dataset, cache: Path) -> np.ndarray:
    """The model input of every file, decoded exactly as ``edgeclip eval`` decodes it (cached as .npy)."""
    from edgeclip.runtime.classifier import Classifier

    if cache.is_file():
        return np.load(cache)
    clf = Classifier.from_bundle(bundle) if hasattr(Classifier, "from_bundle") else None
    if clf is None:
        import edgeclip

        clf = edgeclip.load(bundle, precision="fp32")
    min_size = clf.decode_min_size()
    x = np.stack([clf.load_file(f, min_size)[1] for f in dataset.files]).astype(np.float32)
    np.save(cache, x)
    return x


def _embed(onnx_path: Path, x: np.ndarray, threads: int) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    out = np.concatenate([sess.run(None, {name: x[i:i + 256]})[0] for i in range(0, len(x), 256)])
    return out / np.linalg.norm(out, axis=-1, keepdims=True).clip(1e-12)


def quality(bundles: list[str], threads: int, work: Path, limit: int | None,
            resolution: str = "coarse-to-fine") -> list[dict]:
    import edgeclip
    from edgeclip.bundle import load_bundle
    from edgeclip.quant import resolution
    from edgeclip.quant.calibration import calibration_set
    from edgeclip.quant.quantizer import quantize_images
    from edgeclip.quant.recipes import recipe_for
    from edgeclip.quant.synthesis import SynthesisConfig
    from edgeclip.evaluate import load_dataset, read_class_map
    from edgeclip.runtime.labels import resolve_templates

    work.mkdir(parents=True, exist_ok=True)
    if not (work / "cifar10").is_dir():
        _unpack(work, "cifar10-test.tar")
    if not (work / "imagenette").is_dir():
        _unpack(work, "imagenette-train.tar")
    cmap = read_class_map(DATA / "imagenette-classes.tsv")
    _, templates = resolve_templates("imagenet80")
    rows = []
    for path in bundles:
        bundle = load_bundle(path)
        held = Path(edgeclip.__file__).resolve().parents[1] / "packages" / "edgeclip-models" / "edgeclip_models" / \
            bundle.model["id"] / "heldout_imagenette.txt"
        sets = {"cifar10-test": load_dataset(work / "cifar10" / "test", None, None, limit, 0),
                "imagenette-heldout": load_dataset(work / "imagenette" / "train", cmap, held, limit, 0)}
        # the coarse-to-fine calibration set: on a 64 px ResNet (2x2 grid) the coarse phase is 32 px (1x1)
        resolution.MIN_GRID = 1 if bundle.model.get("architecture") == "modified-resnet" else resolution.MIN_GRID
        w0, c0 = time.perf_counter(), _cpu()
        cs = calibration_set(bundle, "text-guided", images=64, seed=0, time_budget=None,
                             config=SynthesisConfig(resolution=resolution), cache=False, progress=False)
        synth = {"wall": round(time.perf_counter() - w0, 1), "cpu": round(_cpu() - c0, 1), "load": _load(),
                 "schedule": cs.info.get("schedule", [[]])[0]}
        _, label_matrix = bundle.labels()
        files = {"fp32": bundle.encoder("image", "fp32")}
        for target in ("cpu", "tensorrt"):
            files[f"old-{target}"] = bundle.encoder("image", "int8", target)
            out = work / f"{bundle.model['id']}-new-{target}.onnx"
            quantize_images(files["fp32"], out, recipe_for(target), cs, labels=label_matrix,
                            logit_scale=bundle.logit_scale, progress=False)
            files[f"new-{target}"] = out
        clf = edgeclip.load(path, precision="fp32")
        for set_name, ds in sets.items():
            x = _inputs(path, ds, work / f"{bundle.model['id']}-{set_name}-{len(ds.files)}.npy")
            matrix = clf.embed_labels(ds.names, templates)
            emb = {k: _embed(f, x, threads) for k, f in files.items()}
            ref = (emb["fp32"] @ matrix.T).argmax(1)
            for k, e in emb.items():
                pred = (e @ matrix.T).argmax(1)
                row = {"model": bundle.model["id"], "dataset": set_name, "images": len(x), "variant": k,
                       "top1": round(float((pred == ds.targets).mean() * 100), 2),
                       "agreement": round(float((pred == ref).mean() * 100), 2),
                       "cosine": round(float((e * emb["fp32"]).sum(1).mean()), 5), "synthesis": synth}
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps-of", nargs="*", default=[], metavar="BUNDLE")
    ap.add_argument("--full-run", nargs="*", default=[], metavar="BUNDLE")
    ap.add_argument("--quality", nargs="*", default=[], metavar="BUNDLE")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--time-budget", type=float, default=600.0)
    ap.add_argument("--resolution", default=None, choices=("auto", "full", "coarse-to-fine", "coarser"),
                    help="synthesis resolution mode (default: auto for --full-run, coarse-to-fine for --quality)")
    ap.add_argument("--limit", type=int, default=0, help="images per dataset (a fixed subset sampled with seed 0)")
    ap.add_argument("--work", default=None, help="folder for unpacked data and decoded inputs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    report: dict = {"load_start": _load(), "cpus": os.cpu_count()}
    if args.steps_of:
        report["steps"] = steps_of(args.steps_of, args.rounds, args.threads)
    if args.full_run:
        report["full_run"] = full_run(args.full_run, args.time_budget, args.resolution or "auto")
    if args.quality:
        work = Path(args.work or tempfile.mkdtemp(prefix="bench-synthesis-"))
        report["quality"] = quality(args.quality, args.threads, work, args.limit,
                                    args.resolution or "coarse-to-fine")
    report["load_end"] = _load()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
