#!/usr/bin/env python3
"""The INT8 text encoder of ``edgeclip pack`` against fp32, on the proxies' eval sets.

For each built-in proxy (trained weights, so the numbers mean something) its text encoder is quantized as
``edgeclip pack --text int8`` does, the eval classes are embedded with the 80 ImageNet templates by the fp32
and by the INT8 encoder, and every image of the eval sets is classified zero-shot against both label
matrices (image embeddings from the fp32 image encoder): top-1 agreement, label-embedding cosine, and top-1
accuracy with each. Eval sets: CIFAR-10 test (10,000) and the held-out Imagenette list of each proxy
(``packages/edgeclip-models``; 1,899 images).

    flock /work/locks/cpu.lock python scripts/check_int8_text.py --json int8-text.json   # ~5 min on 2 cores
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("EDGECLIP_DATA", REPO.parent / "shared" / "data"))


def datasets(data: Path, tmp: Path, model_dir: Path) -> dict[str, Any]:
    from edgeclip.evaluate import load_dataset, read_class_map

    for tar in ("cifar10-test.tar", "imagenette-train.tar"):
        with tarfile.open(data / tar) as t:
            t.extractall(tmp, filter="data")
    cmap = read_class_map(REPO / "scripts" / "data" / "imagenette-classes.tsv")
    return {"cifar10-test": load_dataset(tmp / "cifar10" / "test"),
            "imagenette-heldout": load_dataset(tmp / "imagenette" / "train", cmap,
                                               model_dir / "heldout_imagenette.txt")}


def check(model: str, data: Path, tmp: Path, templates: list[str]) -> dict[str, Any]:
    from edgeclip.api import export
    from edgeclip.evaluate import embed_files_with
    from edgeclip.export.models import MODELS_DIR
    from edgeclip.quant.text import label_agreement, quantize_text_encoder, zero_shot_agreement
    from edgeclip.runtime.classifier import Classifier
    from edgeclip.runtime.labels import Label
    from edgeclip.runtime.text import TextEncoder

    bundle = export(tmp / model, model, ["placeholder"], templates="imagenet80")
    int8_path = tmp / f"{model}-text.int8.onnx"
    made = quantize_text_encoder(bundle.encoder("text"), int8_path)
    fp32_enc = TextEncoder.from_bundle(bundle)
    int8_enc = TextEncoder(fp32_enc.tokenizer, int8_path)
    clf = Classifier(bundle)
    sizes = {"fp32_mb": bundle.encoder("text").stat().st_size / 1e6, "int8_mb": int8_path.stat().st_size / 1e6}
    out: dict[str, Any] = {"model": model, "text_encoder": {**made, **sizes}, "sets": {}}
    for name, ds in datasets(data, tmp / "data", MODELS_DIR / model).items():
        from edgeclip.runtime.labels import embed_labels

        labels = [Label(n) for n in ds.names]
        fp32 = embed_labels(labels, templates, fp32_enc)
        int8 = embed_labels(labels, templates, int8_enc)
        emb, _, ok = embed_files_with(clf, ds.files, batch_size=128)
        targets = ds.targets[ok]
        acc = {k: float(((emb @ m.T).argmax(1) == targets).mean() * 100) for k, m in (("fp32", fp32), ("int8", int8))}
        out["sets"][name] = {**zero_shot_agreement(emb, fp32, int8), "labels": label_agreement(fp32, int8),
                             "top1_fp32": acc["fp32"], "top1_int8": acc["int8"]}
        print(f"{model} {name}: top-1 agreement {out['sets'][name]['top1_agreement'] * 100:.2f}% over "
              f"{out['sets'][name]['images']} images; label cosine min {out['sets'][name]['labels']['min_cosine']:.5f}"
              f"; top-1 fp32 {acc['fp32']:.2f}% / INT8 text {acc['int8']:.2f}%", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["proxy-vit", "proxy-rn"])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from edgeclip.bench import machine_facts
    from edgeclip.runtime.labels import resolve_templates

    _, templates = resolve_templates("imagenet80")
    with tempfile.TemporaryDirectory(prefix="edgeclip-int8-text-") as tmp:
        results = [check(m, args.data, Path(tmp), templates) for m in args.models]
    if args.json:
        args.json.write_text(json.dumps({"results": results, "machine": machine_facts()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
