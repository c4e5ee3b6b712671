"""``edgeclip devices`` (profiles and what this machine is) and ``edgeclip build`` (TensorRT engines, RKNN
files)."""
from __future__ import annotations

import argparse
import json
import sys

from ..tables import BACKENDS, load_module
from .options import add_options, options_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devices", help="list device profiles and show what this machine is detected as",
                       description="List the device profiles (backend order, precision, batch, workspace, DLA) "
                                   "and detect this machine's profile from /proc, /etc and nvidia-smi.")
    p.add_argument("--bundle", default=None, help="also show which backend would run this bundle here")
    p.add_argument("--json", action="store_true", help="print profiles and detection as JSON")
    p.set_defaults(handler=run_devices)

    p = sub.add_parser("build", help="build (or reuse) the file this device's backend runs, inside a bundle",
                       description="Build the bundle's image encoder into the file the device profile's backend "
                                   "runs, and keep it in BUNDLE/engines/: a TensorRT engine for this GPU (GPU and "
                                   "Jetson profiles), or an INT8 .rknn file for a Rockchip NPU (rk35xx profiles; "
                                   "RKNN-Toolkit2 runs in its own venv, docs/rknn.md). With --check, only report "
                                   "what would block a TensorRT build (needs no TensorRT; exit status 1 if "
                                   "something does).")
    p.add_argument("bundle", help="bundle directory (with --check also a single .onnx file)")
    p.add_argument("--device", default="auto", help="device profile name, or auto (default) to detect it")
    for row in builders():
        add_options(p, load_module(row.files).BUILD_OPTIONS)
    p.add_argument("--check", action="store_true",
                   help="only check the ONNX's TensorRT readiness (needs no TensorRT)")
    p.add_argument("--tensorrt", default=None, metavar="VERSION",
                   help="TensorRT version to check against (default: installed, else the profile's, else 10.0)")
    p.set_defaults(handler=run_build)


def builders() -> list:
    """The backend rows that build their own files from a bundle (``edgeclip.tables.BACKENDS``)."""
    return [b for b in BACKENDS.values() if b.files]


def run_devices(args: argparse.Namespace) -> int:
    from .. import list_devices

    info = list_devices(args.bundle)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"{'profile':<17} {'kind':<6} {'SM':<4} {'TRT':<5} {'prec':<5} {'int8':<9} {'batch':<6} "
          f"{'ws MB':>6} {'DLA':<5} backends")
    for p in info["profiles"]:
        dla = "-" if not p["dla_cores"] else f"{'off' if p['dla_core'] is None else p['dla_core']}/{p['dla_cores']}"
        batch = f"{p['opt_batch']}/{p['max_batch']}"
        print(f"{p['name']:<17} {p['kind']:<6} {p['sm'] or '-':<4} {p['tensorrt'] or '-':<5} {p['precision']:<5} "
              f"{p['int8_target'] or '-':<9} {batch:<6} {p['workspace_mb'] or '-':>6} {dla:<5} "
              f"{' > '.join(p['backends'])}")
    found = info["detected"]
    p = found["profile"]
    print(f"\nthis machine: {p['name']} ({p['title']}){'' if found['exact'] else ' [closest match]'}")
    print(f"  precision {p['precision']}" + (f", SM {p['sm']}" if p["sm"] else ""))
    for reason in found["reasons"]:
        print(f"  - {reason}")
    print("backends here:")
    for name, b in info["backends"].items():
        print(f"  {'*' if b['available'] else ' '} {name:<12} {b['reason']}")
        for d in b["devices"]:
            print(f"      {d['device']:<8} {d.get('name', '?')}  [{d.get('capabilities', '')}]")
        if "readiness" in b:
            print(f"      {b['readiness']['summary']}")
    if info["order"]:
        print(f"backends for {args.bundle}:")
        for c in info["order"]:
            print(f"  {'*' if c['available'] else ' '} {c['label']:<21} {c['reason']}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    """``build --check``: readiness findings for the ONNX a build would use; 1 if any blocks it."""
    from .. import check_build

    check = check_build(args.bundle, args.device, precision=args.precision, tensorrt=args.tensorrt)
    for note in check.notes:
        print(f"note: {note}", file=sys.stderr)
    print(check.report())
    return 1 if check.blocked else 0


def run_build(args: argparse.Namespace) -> int:
    if args.check:
        return run_check(args)
    from .. import build
    from ..api import builder
    from ..errors import OptionError

    row = builder(args.device)
    for other in builders():  # the flags of another device's builder are refused, naming it
        given = options_from_args(load_module(other.files).BUILD_OPTIONS, args).given()
        if other.name != row.name and given:
            flags = ", ".join("--" + n.replace("_", "-") for n in sorted(given))
            raise OptionError(f"{flags}: for {other.name} builds, but this device builds for {row.name}; drop them "
                              f"or pass --device with a profile of that kind")
    opts = options_from_args(load_module(row.files).BUILD_OPTIONS, args)
    step = (lambda m: None) if args.quiet else (lambda m: print(f"note: {m}", file=sys.stderr))
    print(build(args.bundle, args.device, opts, step=step))
    return 0
