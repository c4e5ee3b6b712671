"""``edgeclip bench``: image-encoder latency and throughput per backend and precision, side by side."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

log = logging.getLogger("edgeclip.bench")

REFERENCE = "onnxruntime fp32"
PEER = "torch eager fp32"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark the bundle's image encoders (latency p50/p95, throughput)",
                       description="Time PyTorch eager fp32 (when torch is installed), ONNX Runtime fp32, ONNX "
                                   "Runtime INT8 per target in the bundle, OpenVINO fp32, bf16 and every INT8 file "
                                   "(when installed) and TensorRT engines (when usable) at each batch size, in "
                                   "interleaved rounds so machine noise hits all alike; prints a table with paired "
                                   "speed-ups vs ONNX Runtime fp32 and vs torch.")
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], metavar="B", help="default: 1 8")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per variant and batch first (default 2)")
    p.add_argument("--round-seconds", type=float, default=0.3,
                   help="aim for about this long per variant and batch in each round (default 0.3)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads for every backend (0 = all cores)")
    p.add_argument("--providers", default="cpu", help="ONNX Runtime providers, comma-separated (default cpu)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager reference peer")
    p.add_argument("--no-tensorrt", action="store_true", help="skip TensorRT engines even where usable")
    p.add_argument("--no-openvino", action="store_true", help="skip OpenVINO even where installed")
    p.add_argument("--hint", choices=("auto", "latency", "throughput"), default="auto",
                   help="OpenVINO performance hint (default auto: latency for batch 1, throughput for batches)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="OpenVINO compiled-model cache (default ~/.cache/edgeclip/openvino)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input batch")
    p.add_argument("--json", default=None, metavar="FILE", help="save the report as JSON")
    p.add_argument("--png", default=None, metavar="FILE", help="save a throughput chart as PNG")
    p.set_defaults(handler=run)


def _tensorrt_variants(bundle: Any) -> tuple[list, list[str]]:
    from ..errors import EdgeclipError
    from ..devices.engines import find_engine
    from ..runtime.backends import create_backend
    from ..bench import Variant

    variants, skipped = [], []
    if not bundle.files_with_role("engine"):
        return variants, ["tensorrt: no engines in the bundle (edgeclip build)"]
    for precision in ("fp32", "int8"):
        try:
            enc = create_backend(find_engine(bundle, precision), "tensorrt")
        except (EdgeclipError, ImportError, OSError) as exc:
            skipped.append(f"tensorrt {precision}: {exc}")
            continue
        variants.append(Variant(f"tensorrt {precision}", "tensorrt", precision, enc.run,
                                "tensorrt" if precision == "int8" else None))
    return variants, skipped


def _torch_variant(bundle: Any, threads: int) -> tuple[Any, str | None]:
    """The PyTorch eager peer, or (None, why not).

    OpenMP threads that spin collapse when another process holds the cores (measured on the shared 2-core
    machine: ViT-B/32 at batch 1 took 1.85 s with 2 spinning threads, 0.30 s passive, 0.21 s on 1 thread),
    so unless the caller set it, torch runs with ``OMP_WAIT_POLICY=PASSIVE``: generous to the peer.
    """
    passive = "torch" not in sys.modules and "OMP_WAIT_POLICY" not in os.environ
    if passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    from ..errors import BundleError, EdgeclipError
    from ..bench import Variant

    try:
        from ..export.models import load_source_model

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


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..bundle import load_bundle
    from ..errors import OptionError
    from ..extras import require, require_onnxruntime
    from ..bench import (format_table, measure, onnxruntime_variants, openvino_variants, report, write_json,
                                     write_png)
    from .options import progress_bar, providers_of

    require_onnxruntime("edgeclip bench")
    if args.png:
        require("report", what="bench --png")
    if any(b < 1 for b in args.batch_sizes):
        raise OptionError("--batch-sizes must be >= 1")
    bundle = load_bundle(args.bundle)
    variants, skipped = [], []
    if not args.no_torch:
        peer, why = _torch_variant(bundle, args.threads)
        if peer is not None:
            variants.append(peer)
        else:
            skipped.append(f"torch: {why}")
    variants += onnxruntime_variants(bundle, providers_of(args) or ["cpu"], args.threads)
    if not args.no_openvino:
        ov, why_not = openvino_variants(bundle, args.threads, args.hint, args.cache_dir)
        variants += ov
        skipped += why_not
    if not args.no_tensorrt:
        trt, why_not = _tensorrt_variants(bundle)
        variants += trt
        skipped += why_not
    h, w = bundle.preprocess["size"]
    rng = np.random.default_rng(args.seed)
    inputs = {b: rng.standard_normal((b, 3, h, w), dtype=np.float32) for b in sorted(set(args.batch_sizes))}
    if not args.quiet:
        print(f"[bench] {len(variants)} variants x batch {', '.join(map(str, inputs))}, {args.rounds} rounds "
              f"(interleaved); {'; '.join(skipped) or 'nothing skipped'}", file=sys.stderr)
    with progress_bar(args, args.rounds, "bench", unit="round") as bar:
        results = measure(variants, inputs, args.rounds, args.warmup, args.round_seconds, bar.update)
    names = {v.name for v in variants}
    rep = report(variants, results, REFERENCE, PEER if PEER in names else None,
                 {"bundle": str(bundle.path), "model": bundle.model.get("id"), "rounds": args.rounds,
                  "warmup": args.warmup, "threads": args.threads, "skipped": skipped})
    print(f"{bundle.model.get('id')} image encoder, {rep['machine'].get('cpu', '?')} ({rep['machine'].get('cpus')} "
          f"CPUs, load {rep['machine'].get('loadavg', ['?'])[0]})")
    print(format_table(rep))
    if args.json:
        write_json(rep, args.json)
    if args.png:
        write_png(rep, args.png, f"{bundle.model.get('id')}: image encoder throughput")
    return 0
