#!/usr/bin/env python3
"""Speed of every model family, fp32 and INT8, on ONNX Runtime and OpenVINO: one interleaved run.

For one full-size model per family (random weights: speed does not depend on them, accuracy does and is not
measured here) the image tower is exported as ``edgeclip export`` exports it (MobileCLIP reparameterized,
BatchNorm folded), quantized with each INT8 recipe (``cpu``, ``tensorrt``, ``openvino``; noise calibration,
which gives the same graph as synthetic calibration) and timed at batch 1: ONNX Runtime (CPU provider) on
fp32 and each INT8 file, OpenVINO (CPU) on fp32 and each INT8 file, every variant of every model interleaved
round by round (``edgeclip.bench.measure``), so a burst of load from other processes hits all alike.
MobileCLIP2-S0's training form (its MobileOne branches and BatchNorms as trained) is timed beside its
reparameterized form, and the two are compared on 64 inputs.

    flock /work/locks/cpu.lock python scripts/bench_families.py --json families.json   # ~45 min on 2 cores
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: one full-size model per family (the smaller SigLIP2: B/32 at 256 px)
MODELS = ("ViT-B-32", "RN50", "convnext_base", "MobileCLIP2-S0", "ViT-B-16-SigLIP", "ViT-B-32-SigLIP2-256",
          "EVA02-B-16")
RECIPES = ("cpu", "tensorrt", "openvino")


def prepare(name: str, work: Path, say: Any) -> dict[str, Any]:
    """Export and quantize ``name``'s image tower into ``work/name`` (files kept: a rerun reuses them)."""
    import onnx
    import torch

    from edgeclip.export.catalog import _random_weights, count_macs
    from edgeclip.export.exporter import inference_form
    from edgeclip.export.models import ImageTower, _open_clip
    from edgeclip.export.onnx_export import export_onnx
    from edgeclip.quant.quantizer import quantize_model

    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    info_file = folder / "info.json"
    if info_file.is_file() and all((folder / f"int8.{r}.onnx").is_file() for r in RECIPES):
        return json.loads(info_file.read_text())
    say(f"{name}: loading (random weights)")
    loaded = _random_weights(_open_clip(), name)
    h, w = loaded.image_size
    model = inference_form(loaded)
    info: dict[str, Any] = {"name": name, "family": loaded.family, "size": [h, w],
                            "image_params": sum(p.numel() for p in model.visual.parameters()),
                            "preprocess": loaded.preprocess}
    say(f"{name}: exporting the image tower")
    export_onnx(ImageTower(model).eval(), torch.zeros(1, 3, h, w), folder / "fp32.onnx", "pixel_values",
                "image_embeds")
    if model is not loaded.model:  # the training form too, to compare
        from edgeclip.export.families import reparameterize

        _, record = reparameterize(loaded.model, (h, w), loaded.family)
        export_onnx(ImageTower(loaded.model).eval(), torch.zeros(1, 3, h, w), folder / "train.onnx", "pixel_values",
                    "image_embeds")
        ops = {k: [n.op_type for n in onnx.load(str(folder / k)).graph.node] for k in ("train.onnx", "fp32.onnx")}
        info["reparameterized"] = {**record, **{f"{k.split('.')[0]}_{op}": v.count(op) for k, v in ops.items()
                                                for op in ("Conv", "BatchNormalization")}}
    info["gmac"] = count_macs(folder / "fp32.onnx", (1, 3, h, w)) / 1e9
    for recipe in RECIPES:
        say(f"{name}: quantizing for {recipe}")
        made = quantize_model(folder / "fp32.onnx", folder / f"int8.{recipe}.onnx", recipe, "noise",
                              preprocess={"size": [h, w], "mean": loaded.preprocess["mean"],
                                          "std": loaded.preprocess["std"]}, images=16, progress=False)
        info.setdefault("agreement", {})[recipe] = made.record["agreement"]
        info.setdefault("kept_fp32", {})[recipe] = made.record.get("kept_fp32", {})
    if info["family"] == "convnext":  # the channels-last LayerNorm rule: the same recipe as for a transformer
        from edgeclip.quant import recipes

        saved = recipes.is_convolutional
        recipes.is_convolutional = lambda model: False
        try:
            made = quantize_model(folder / "fp32.onnx", folder / "int8.openvino-as-transformer.onnx", "openvino",
                                  "noise", preprocess={"size": [h, w], "mean": loaded.preprocess["mean"],
                                                       "std": loaded.preprocess["std"]}, images=16, progress=False)
            info["agreement"]["openvino-as-transformer"] = made.record["agreement"]
        finally:
            recipes.is_convolutional = saved
    info_file.write_text(json.dumps(info, indent=1))
    return info


def variants(info: dict[str, Any], folder: Path, threads: int, cache: Path) -> list[Any]:
    """The timed variants of one model: each runs its own batch-1 input, whatever the harness passes."""
    from edgeclip.bench import Variant
    from edgeclip.runtime.backends.onnxruntime import OrtBackend
    from edgeclip.runtime.backends.openvino import OpenVinoBackend

    x = np.random.default_rng(0).standard_normal((1, 3, *info["size"])).astype(np.float32)
    files = [("fp32", None, folder / "fp32.onnx")] + [("int8", r, folder / f"int8.{r}.onnx") for r in RECIPES]
    if (folder / "train.onnx").is_file():
        files.append(("fp32", "training-form", folder / "train.onnx"))
    if (folder / "int8.openvino-as-transformer.onnx").is_file():
        files.append(("int8", "openvino-as-transformer", folder / "int8.openvino-as-transformer.onnx"))
    out = []
    for precision, target, path in files:
        tag = precision if target is None else f"{precision}/{target}"
        if target == "training-form":
            tag = "fp32 training form"
        ort = OrtBackend(path, ["cpu"], threads)
        out.append(Variant(f"{info['name']} | onnxruntime {tag}", "onnxruntime", precision,
                           lambda _b, e=ort: e.run(x), target))
        ov = OpenVinoBackend(path, "CPU", precision if precision != "int8" else "int8", "latency", threads, cache)
        out.append(Variant(f"{info['name']} | openvino {tag}", "openvino", precision,
                           lambda _b, e=ov: e.run(x), target))
    return out


#: an INT8 file counts for "best INT8" only when its embeddings keep this mean cosine to fp32 (calibration images)
MIN_COSINE = 0.99


def table(info: dict[str, dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    """The Markdown speed table: per model, fp32 and the fastest INT8 file on each backend among those within
    ``MIN_COSINE`` of fp32 (ms/img, batch 1)."""
    by = {r["variant"]: r["ms_per_image"] for r in rows}
    out = ["| family | model | input | GMAC | ORT fp32 | ORT best INT8 | OpenVINO fp32 | OpenVINO best INT8 |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, i in info.items():
        cells = []
        good = [r for r in RECIPES if i["agreement"][r]["mean_cosine"] >= MIN_COSINE] or list(RECIPES)
        for backend in ("onnxruntime", "openvino"):
            fp32 = by[f"{name} | {backend} fp32"]
            best = min(good, key=lambda r: by[f"{name} | {backend} int8/{r}"])
            int8 = by[f"{name} | {backend} int8/{best}"]
            cells += [f"{fp32:.1f}", f"{int8:.1f} (`{best}`, x{fp32 / int8:.2f})"]
        out.append(f"| {i['family']} | `{name}` | {i['size'][0]} | {i['gmac']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgeclip-bench-families"),
                    help="exported and quantized files, kept between runs")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--round-seconds", type=float, default=0.5, help="time per variant and round")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--from-json", type=Path, help="print the tables of an earlier run's --json, measure nothing")
    args = ap.parse_args()
    from edgeclip.bench import machine_facts, measure

    if args.from_json:
        rep = json.loads(args.from_json.read_text())
        print(table(rep["models"], rep["results"]))
        return 0

    say = lambda m: print(f"[families] {m}", file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.time()
    info = {name: prepare(name, args.work, say) for name in args.models}
    say(f"prepared in {time.time() - t0:.0f} s; compiling and timing")
    cache = args.work / "openvino-cache"
    todo = [v for name in args.models for v in variants(info[name], args.work / name, args.threads, cache)]
    results = measure(todo, {1: np.zeros((1, 3, 8, 8), np.float32)}, rounds=args.rounds, warmup=2,
                      min_round_seconds=args.round_seconds)
    rows = [{"variant": m.variant, **m.summary()} for m in results]
    rep = {"machine": machine_facts(), "rounds": args.rounds, "models": info, "results": rows,
           "table": table(info, rows)}
    print(rep["table"])
    for name, i in info.items():
        rep_ = i.get("reparameterized")
        if rep_:
            by = {r["variant"]: r["ms_per_image"] for r in rows}
            print(f"\n{name}: training form {rep_['train_Conv']} Conv + {rep_['train_BatchNormalization']} "
                  f"BatchNormalization nodes -> reparameterized {rep_['fp32_Conv']} Conv + "
                  f"{rep_['fp32_BatchNormalization']} BatchNormalization; min cosine {rep_['min_cosine']:.7f} on "
                  f"{rep_['inputs']} inputs; ms/img ORT {by[f'{name} | onnxruntime fp32 training form']:.1f} -> "
                  f"{by[f'{name} | onnxruntime fp32']:.1f}, OpenVINO {by[f'{name} | openvino fp32 training form']:.1f}"
                  f" -> {by[f'{name} | openvino fp32']:.1f}")
    for name, i in info.items():
        if "openvino-as-transformer" in i.get("agreement", {}):
            by = {r["variant"]: r["ms_per_image"] for r in rows}
            a, b = i["agreement"]["openvino"], i["agreement"]["openvino-as-transformer"]
            print(f"\n{name} openvino file, convolutional (channels-last LayerNorm rule) vs as a transformer: "
                  f"OpenVINO {by[f'{name} | openvino int8/openvino']:.1f} vs "
                  f"{by[f'{name} | openvino int8/openvino-as-transformer']:.1f} ms/img; mean cosine to fp32 on the "
                  f"calibration images {a['mean_cosine']:.5f} vs {b['mean_cosine']:.5f}")
    print(f"\n{rep['machine']}")
    if args.json:
        args.json.write_text(json.dumps(rep, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
