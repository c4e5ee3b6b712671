"""``edgeclip devices`` (profiles and what this machine is) and ``edgeclip build`` (TensorRT engines)."""
from __future__ import annotations

import argparse
import json
import sys

from ..tables import precisions


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devices", help="list device profiles and show what this machine is detected as",
                       description="List the device profiles (backend order, precision, batch, workspace, DLA) "
                                   "and detect this machine's profile from /proc, /etc and nvidia-smi.")
    p.add_argument("--bundle", default=None, help="also show which backend would run this bundle here")
    p.add_argument("--json", action="store_true", help="print profiles and detection as JSON")
    p.set_defaults(handler=run_devices)

    p = sub.add_parser("build", help="build (or reuse) a TensorRT engine for this device inside a bundle",
                       description="Turn the bundle's image encoder ONNX into a TensorRT engine for this GPU and "
                                   "cache it in BUNDLE/engines/. With --check, only report what would block a build "
                                   "(needs no TensorRT; exit status 1 if something does).")
    p.add_argument("bundle", help="bundle directory (with --check also a single .onnx file)")
    p.add_argument("--device", default="auto", help="device profile name, or auto (default) to detect it")
    p.add_argument("--precision", choices=precisions("engine"), default=None,
                   help="engine precision (default: the profile's; INT8 needs `edgeclip quantize --target tensorrt`)")
    p.add_argument("--batch", default=None, metavar="MIN,OPT,MAX",
                   help="batch range of the optimization profile (default: 1,<profile opt>,<profile max>)")
    p.add_argument("--workspace-mb", type=int, default=None, help="TensorRT workspace limit (default: the profile's)")
    p.add_argument("--dla-core", type=int, default=None, help="build for this DLA core (Xavier/Orin), GPU fallback on")
    p.add_argument("--force", action="store_true", help="rebuild even if a valid cached engine exists")
    p.add_argument("--check", action="store_true",
                   help="only check the ONNX's TensorRT readiness (needs no TensorRT)")
    p.add_argument("--tensorrt", default=None, metavar="VERSION",
                   help="TensorRT version to check against (default: installed, else the profile's, else 10.0)")
    p.set_defaults(handler=run_build)


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
    if info["order"]:
        print(f"backends for {args.bundle}:")
        for c in info["order"]:
            print(f"  {'*' if c['available'] else ' '} {c['label']:<21} {c['reason']}")
    return 0


def _batch(text: str | None) -> tuple[int, int, int] | None:
    from ..errors import OptionError

    if text is None:
        return None
    try:
        lo, opt, hi = (int(v) for v in text.split(","))
    except ValueError as exc:
        raise OptionError(f"--batch {text!r}: give three integers MIN,OPT,MAX, e.g. 1,4,16") from exc
    if not 1 <= lo <= opt <= hi:
        raise OptionError(f"--batch {text!r}: need 1 <= MIN <= OPT <= MAX")
    return lo, opt, hi


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

    result = build(args.bundle, args.device, precision=args.precision, batch=_batch(args.batch),
                   workspace_mb=args.workspace_mb, dla_core=args.dla_core, force=args.force)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for name in result.pruned:
        print(f"removed stale engine {name}", file=sys.stderr)
    how = f"built in {result.seconds:.1f} s" if result.built else "cached, reused"
    k = result.key
    print(f"{result.path}: {k.precision} TensorRT {k.tensorrt} engine for SM {k.sm}, batch {k.batch[0]}-{k.batch[2]} "
          f"(opt {k.batch[1]}) from {k.source} ({how})")
    return 0
