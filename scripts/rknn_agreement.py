#!/usr/bin/env python3
"""Top-1 agreement of INT8 ``.rknn`` builds with ONNX Runtime fp32, in RKNN-Toolkit2's simulator (docs/rknn.md).

For each proxy (proxy-vit, proxy-rn), each calibration (``synthetic``: the text-guided set ``edgeclip quantize``
caches; ``real``: real photos through the bundle's preprocessing) and each algorithm (``normal``, ``mmse``,
``kl_divergence``, ``hybrid[:T]`` = normal + the toolkit's automatic hybrid quantization, which keeps the
layers whose output cosine against float falls below T in float16; T defaults to edgeclip's), the bundle's encoder is
built for rk3588 and the eval images are run in the simulator right after the build. Agreement is the share of
images whose zero-shot label (the eval set's class names, imagenet80 templates, as ``edgeclip eval``) is the
same as with ONNX Runtime fp32 on the very same pixels; top-1 accuracy against the ground truth is shown too.

Eval sets: a seeded sample of the CIFAR-10 test set (``--cifar``, default 1,000) and the held-out Imagenette
list shipped with the proxies (1,899 photos; ``--imagenette`` takes a sample). Real calibration: ``--real DIR``,
or 32 CIFAR-10 train + 32 Imagenette train photos outside the held-out list (seed 0).

    flock /work/locks/cpu.lock python scripts/rknn_agreement.py --work /tmp/rknn-agree \\
        --converter-python ~/.venvs/rknn/bin/python --json agreement.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EDGECLIP_DATA", REPO.parent / "shared" / "data"))
MODELS = ("proxy-vit", "proxy-rn")
ALGORITHMS = ("normal", "mmse", "kl_divergence", "hybrid:0.995", "hybrid:0.999")


def options(algo: str):
    """``normal``/``mmse``/``kl_divergence``, or ``hybrid[:THRESHOLD]`` (normal + automatic hybrid quantization)."""
    from edgeclip.devices.rknn import RknnBuildOptions

    name, _, thresh = algo.partition(":")
    if name != "hybrid":
        return RknnBuildOptions(algorithm=name)
    return RknnBuildOptions(algorithm="normal", hybrid=True,
                            **({"hybrid_cos_thresh": float(thresh)} if thresh else {}))


def unpack(data_dir: Path, work: Path) -> Path:
    """The shared archives unpacked under ``work/data`` (once)."""
    root = work / "data"
    for archive, marker in (("cifar10-test.tar", "cifar10/test"), ("cifar10-train.tar", "cifar10/train"),
                            ("imagenette-train.tar", "imagenette/train")):
        if not (root / marker).is_dir():
            print(f"unpacking {archive}", file=sys.stderr)
            with tarfile.open(data_dir / archive) as tar:
                tar.extractall(root, filter="data")
    return root


def real_folder(root: Path, heldout: Path, work: Path, n: int = 64) -> Path:
    """``n`` real calibration photos: half CIFAR-10 train, half Imagenette train outside the held-out list."""
    out = work / "real-calib"
    if out.is_dir() and len(list(out.iterdir())) == n:
        return out
    out.mkdir(parents=True, exist_ok=True)
    held = {ln.strip() for ln in heldout.read_text().splitlines() if ln.strip() and not ln.startswith("#")}
    cifar = sorted((root / "cifar10" / "train").glob("*/*.jpg"))
    inet = sorted(p for p in (root / "imagenette" / "train").glob("*/*.JPEG") if str(p.relative_to(root)) not in held)
    rng = np.random.default_rng(0)
    picks = [cifar[i] for i in rng.choice(len(cifar), n // 2, replace=False)]
    picks += [inet[i] for i in rng.choice(len(inet), n - n // 2, replace=False)]
    for i, p in enumerate(picks):
        shutil.copy(p, out / f"{i:02d}-{p.parent.name}-{p.name}")
    return out


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "edgeclip", "-q", *args], check=True, cwd=REPO)


def prepare_bundle(model: str, work: Path) -> Path:
    """The proxy's bundle with a cached text-guided calibration set (exported and quantized if missing)."""
    path = work / model
    if not (path / "manifest.json").is_file():
        cli("export", "--model", model, "--out", str(path))
    manifest = json.loads((path / "manifest.json").read_text())
    if not any((r.get("calibration") or {}).get("source") == "text-guided"
               for r in (manifest.get("quantization") or {}).values()):
        cli("quantize", str(path), "--calib", "text-guided", "--target", "cpu")
    return path


def eval_sets(root: Path, heldout: Path, n_cifar: int, n_inet: int) -> dict:
    from edgeclip.evaluate import load_dataset, read_class_map

    cmap = read_class_map(REPO / "scripts" / "data" / "imagenette-classes.tsv")
    return {"cifar10": load_dataset(root / "cifar10" / "test", limit=n_cifar, seed=0),
            "imagenette": load_dataset(root / "imagenette" / "train", cmap, heldout, limit=n_inet, seed=0)}


def pixels_of(files: list[Path], preprocess: dict) -> np.ndarray:
    """uint8 [N, H, W, 3] RGB: each file decoded and resized as the runtime does."""
    from edgeclip.runtime.images import read_image
    from edgeclip.runtime.preprocess import PreprocessConfig, Preprocessor

    pre = Preprocessor(PreprocessConfig.from_manifest(preprocess))
    return np.stack([pre.pixels(read_image(f))[:, :, ::-1] for f in files])


def normalised(px: np.ndarray, preprocess: dict) -> np.ndarray:
    mean = np.asarray(preprocess["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(preprocess["std"], np.float32).reshape(1, 3, 1, 1)
    return ((px.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)) - mean) / std


def score(ref: np.ndarray, cand: np.ndarray, matrix: np.ndarray, targets: np.ndarray) -> dict:
    from edgeclip.quant.agreement import compare

    agree = compare(ref, cand, matrix, 100.0)
    unit = cand / np.linalg.norm(cand, axis=1, keepdims=True).clip(1e-12)
    return {"agreement": round(100 * agree["top1_agreement"], 2), "mean_cosine": round(agree["mean_cosine"], 4),
            "top1": round(100 * float(((unit @ matrix.T).argmax(1) == targets).mean()), 2)}


def measure(model: str, work: Path, root: Path, args: argparse.Namespace) -> list[dict]:
    from edgeclip.bundle import load_bundle
    from edgeclip.devices.rknn import Calibration, cached_calibration, convert_bundle, probe_converter
    from edgeclip.export.models import MODELS_DIR
    from edgeclip.quant.calibration import calibration_set
    from edgeclip.runtime.classifier import Classifier

    heldout = MODELS_DIR / model / "heldout_imagenette.txt"
    path = prepare_bundle(model, work)
    bundle = load_bundle(path)
    pre = bundle.preprocess
    clf = Classifier(bundle, precision="fp32")  # ONNX Runtime on the CPU
    sets = eval_sets(root, heldout, args.cifar, args.imagenette)
    px = {k: pixels_of(d.files, pre) for k, d in sets.items()}
    fp32 = {k: clf.embed_pixels(normalised(v, pre)) for k, v in px.items()}
    matrices = {k: clf.embed_labels(d.names, "imagenet80") for k, d in sets.items()}
    all_px = np.concatenate([px[k] for k in sets])
    real_dir = Path(args.real) if args.real else real_folder(root, heldout, work)
    real = calibration_set(bundle, f"real:{real_dir}", images=64, progress=False)
    calibs = {"synthetic": cached_calibration(bundle, "text-guided"),
              "real": Calibration(real.images, "real", real.key)}
    converter = probe_converter(args.converter_python)
    rows = []
    for algo in args.algorithms.split(","):
        for cname, calib in calibs.items():
            opts = options(algo)
            out = work / f"{model}-{cname}-{algo}.rknn"
            t0 = time.monotonic()
            built = convert_bundle(bundle, out, opts, calib, all_px, converter)
            row = {"model": model, "calibration": cname, "algorithm": algo, "calib_images": len(calib.images),
                   "build_s": built.result["seconds"], "total_s": round(time.monotonic() - t0, 1),
                   "bytes": built.record["bytes"], "peak_memory_mb": built.result.get("peak_memory_mb"),
                   "layers": built.record.get("layers")}
            start = 0
            for k, d in sets.items():
                got = built.eval_outputs[start:start + len(d.files)]
                start += len(d.files)
                row[k] = {"images": len(d.files), **score(fp32[k], got, matrices[k], d.targets)}
            for k, d in sets.items():
                unit = fp32[k] / np.linalg.norm(fp32[k], axis=1, keepdims=True)
                row[k]["fp32_top1"] = round(100 * float(((unit @ matrices[k].T).argmax(1) == d.targets).mean()), 2)
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
    return rows


def fp16(row: dict) -> int:
    """Layers the build kept in float16 (hybrid quantization)."""
    return int(((row.get("layers") or {}).get("by_dtype") or {}).get("FLOAT16", 0))


def table(rows: list[dict]) -> str:
    lines = ["| model | eval set (images) | algorithm | synthetic agreement | real agreement | synthetic - real | "
             "top-1 fp32 / synthetic / real | float16 layers synthetic / real |",
             "| --- | --- | --- | ---: | ---: | ---: | --- | --- |"]
    keyed = {(r["model"], r["algorithm"], r["calibration"]): r for r in rows}
    for model in dict.fromkeys(r["model"] for r in rows):
        for k in ("cifar10", "imagenette"):
            for algo in dict.fromkeys(r["algorithm"] for r in rows):
                s, r = keyed.get((model, algo, "synthetic")), keyed.get((model, algo, "real"))
                if not s or not r:
                    continue
                lines.append(f"| {model} | {k} ({s[k]['images']}) | {algo} | {s[k]['agreement']:.2f} | "
                             f"{r[k]['agreement']:.2f} | {s[k]['agreement'] - r[k]['agreement']:+.2f} | "
                             f"{s[k]['fp32_top1']:.2f} / {s[k]['top1']:.2f} / {r[k]['top1']:.2f} | "
                             f"{fp16(s)} / {fp16(r)} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="folder for the bundles, unpacked data and .rknn files")
    p.add_argument("--converter-python", default=None,
                   help="RKNN-Toolkit2 venv's Python (default: $EDGECLIP_RKNN_PYTHON)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--algorithms", default=",".join(ALGORITHMS))
    p.add_argument("--cifar", type=int, default=1000, help="CIFAR-10 test images (seeded sample; 0 = all 10,000)")
    p.add_argument("--imagenette", type=int, default=0, help="held-out Imagenette images (0 = all 1,899)")
    p.add_argument("--real", default=None, help="folder of real calibration photos (default: 32 CIFAR + 32 Imagenette)")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    root = unpack(DATA, work)
    load = os.getloadavg()
    rows = [r for m in args.models.split(",") for r in measure(m, work, root, args)]
    meta = {"machine": platform.processor() or platform.machine(), "loadavg_at_start": [round(v, 2) for v in load],
            "loadavg_at_end": [round(v, 2) for v in os.getloadavg()]}
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(table(rows))
    print(f"\nload average at start {meta['loadavg_at_start']}, at end {meta['loadavg_at_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
