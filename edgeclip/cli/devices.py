"""``edgeclip devices`` (profiles and what this machine is) and ``edgeclip build`` (TensorRT engines)."""
from __future__ import annotations

import argparse
import json
import sys


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
    p.add_argument("--precision", choices=("fp16", "fp32", "int8"), default=None,
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


def _profile(name: str, quiet: bool) -> object:
    from ..devices.catalog import get_profile
    from ..devices.detect import detect

    if name != "auto":
        return get_profile(name)
    found = detect()
    if not quiet:
        print(f"device: {found.profile.name} ({'; '.join(found.reasons)})", file=sys.stderr)
    return found.profile


def run_devices(args: argparse.Namespace) -> int:
    from ..devices.catalog import load_profiles
    from ..devices.detect import detect
    from ..runtime.backends.openvino import have_openvino, openvino_devices

    profiles = load_profiles()
    found = detect()
    ov_ok, ov_why = have_openvino()
    ov_devices = openvino_devices() if ov_ok else []
    order = None
    if args.bundle:
        from ..bundle import load_bundle
        from ..devices.choice import backend_order

        order = backend_order(found.profile, load_bundle(args.bundle))
    if args.json:
        print(json.dumps({"profiles": [p.to_dict() for p in profiles.values()],
                          "detected": {"profile": found.profile.to_dict(), "exact": found.exact,
                                       "reasons": found.reasons},
                          "backends": [vars(c) for c in order] if order else None,
                          "openvino": {"installed": ov_ok, "reason": ov_why, "devices": ov_devices}},
                         indent=2, default=str))
        return 0
    print(f"{'profile':<17} {'kind':<6} {'SM':<4} {'TRT':<5} {'prec':<5} {'int8':<9} {'batch':<6} "
          f"{'ws MB':>6} {'DLA':<5} backends")
    for p in profiles.values():
        dla = "-" if not p.dla_cores else f"{'off' if p.dla_core is None else p.dla_core}/{p.dla_cores}"
        print(f"{p.name:<17} {p.kind:<6} {p.sm or '-':<4} {p.tensorrt or '-':<5} {p.precision:<5} "
              f"{p.int8_target or '-':<9} {f'{p.opt_batch}/{p.max_batch}':<6} {p.workspace_mb or '-':>6} {dla:<5} "
              f"{' > '.join(p.backends)}")
    p = found.profile
    print(f"\nthis machine: {p.name} ({p.title}){'' if found.exact else ' [closest match]'}")
    print(f"  precision {p.precision}" + (f", SM {p.sm}" if p.sm else ""))
    for reason in found.reasons:
        print(f"  - {reason}")
    if ov_ok:
        print(f"OpenVINO devices ({ov_why}):")
        for d in ov_devices:
            print(f"  {d['device']:<8} {d.get('name', '?')}  [{d.get('capabilities', '')}]")
    else:
        print(f"OpenVINO: {ov_why}")
    if order:
        print(f"backends for {args.bundle}:")
        for c in order:
            print(f"  {'*' if c.available else ' '} {c.label:<21} {c.reason}")
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
    from pathlib import Path

    from ..extras import require

    require("tensorrt", ["onnx"], what="edgeclip build --check")
    from ..devices.engines import engine_source, resolve_precision, tensorrt_version
    from ..devices.readiness import check_model, errors, format_findings

    target = Path(args.bundle)
    profile = _profile(args.device, args.quiet)
    version = args.tensorrt or tensorrt_version() or profile.tensorrt or "10.0"
    if target.suffix == ".onnx":
        onnx_path = target
    else:
        from ..bundle import load_bundle

        bundle = load_bundle(target)
        if args.precision:
            precision = args.precision
        elif profile.uses_gpu:
            precision, notes = resolve_precision(bundle, profile, None)
            for note in notes:
                print(f"note: {note}", file=sys.stderr)
        else:
            precision = "fp16"
        onnx_path = bundle.path / engine_source(bundle, precision)
    findings = check_model(onnx_path, version)
    print(format_findings(findings, f"{onnx_path} (TensorRT {version})"))
    return 1 if errors(findings) else 0


def run_build(args: argparse.Namespace) -> int:
    if args.check:
        return run_check(args)
    from ..extras import require

    require("tensorrt", ["onnx"], what="edgeclip build")
    from ..devices.engines import build_engine

    profile = _profile(args.device, args.quiet)
    changes = {}
    if args.workspace_mb is not None:
        changes["workspace_mb"] = args.workspace_mb
    result = build_engine(args.bundle, profile.with_changes(**changes) if changes else profile,
                          precision=args.precision, batch=_batch(args.batch), dla_core=args.dla_core,
                          force=args.force)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for name in result.pruned:
        print(f"removed stale engine {name}", file=sys.stderr)
    how = f"built in {result.seconds:.1f} s" if result.built else "cached, reused"
    k = result.key
    print(f"{result.path}: {k.precision} TensorRT {k.tensorrt} engine for SM {k.sm}, batch {k.batch[0]}-{k.batch[2]} "
          f"(opt {k.batch[1]}) from {k.source} ({how})")
    return 0
