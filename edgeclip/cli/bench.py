"""``edgeclip bench``: image-encoder latency and throughput per backend and precision, side by side."""
from __future__ import annotations

import argparse
import sys

from .options import add_options, options_from_args, progress_bar


#: the load options every variant runs with
BENCH_LOAD_OPTIONS = ("threads", "providers", "hint", "cache_dir")


def register(sub: argparse._SubParsersAction) -> None:
    from ..bench import BenchOptions
    from ..options import LoadOptions
    from ..tables import BACKENDS

    p = sub.add_parser("bench", help="benchmark the bundle's image encoders (latency p50/p95, throughput)",
                       description="Time PyTorch eager fp32 (when torch is installed) and every backend that runs "
                                   "here at every precision it runs the bundle's files at (ONNX Runtime fp32 and "
                                   "INT8 per recipe, OpenVINO fp32, bf16 and INT8, TensorRT engines) at each batch "
                                   "size, in interleaved rounds so machine noise hits all alike; prints a table "
                                   "with paired speed-ups vs ONNX Runtime fp32 and vs torch.")
    p.add_argument("bundle", help="bundle directory")
    add_options(p, BenchOptions)
    add_options(p, LoadOptions, BENCH_LOAD_OPTIONS,
                defaults={"providers": ("cpu",), "hint": "auto"})
    for name in list(BACKENDS)[1:]:  # the first is the reference (``edgeclip.bench.REFERENCE``): it always runs
        p.add_argument(f"--no-{name}", dest="skip", action="append_const", const=name,
                       help=f"skip {name} even where it runs")
    p.set_defaults(skip=[])
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import BenchOptions, bench, format_table, write_json, write_png
    from ..extras import require, require_onnxruntime
    from ..options import LoadOptions

    require_onnxruntime("edgeclip bench")
    opts = options_from_args(BenchOptions, args)
    if opts.png:
        require("report", what="bench --png")
    lopts = options_from_args(LoadOptions, args, BENCH_LOAD_OPTIONS)

    def plan(variants: list, skipped: list[str]) -> None:
        if not args.quiet:
            print(f"[bench] {len(variants)} variants x batch {', '.join(map(str, sorted(set(opts.batch_sizes))))}, "
                  f"{opts.rounds} rounds (interleaved); {'; '.join(skipped) or 'nothing skipped'}", file=sys.stderr)

    with progress_bar(args, opts.rounds, "bench", unit="round") as bar:
        rep = bench(args.bundle, opts, lopts, args.skip, bar.update, plan)
    machine = rep["machine"]
    print(f"{rep['model']} image encoder, {machine.get('cpu', '?')} ({machine.get('cpus')} CPUs, load "
          f"{machine.get('loadavg', ['?'])[0]})")
    print(format_table(rep))
    if opts.json:
        write_json(rep, opts.json)
    if opts.png:
        write_png(rep, opts.png, f"{rep['model']}: image encoder throughput")
    return 0
