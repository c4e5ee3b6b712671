#!/usr/bin/env python
"""Does ``--time-budget`` bound the whole ``edgeclip quantize`` command? (docs/quantization.md, "Time budget")

For every bundle and budget, runs ``edgeclip quantize BUNDLE --time-budget B --no-cache`` as a separate process
on a fresh copy of the bundle (its INT8 files and calibration cache removed), rounds interleaved so machine
load hits every budget alike, and prints the command's wall time over its budget (the target: <= 1.1), how the
budget was split (loading, synthesis's share, the estimate kept for quantizing and checking) and whether the
plan was cut, with the load average.

    python scripts/bench_quantize_budget.py /work/bundles/vitb32 --budgets 60,180 --rounds 2 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def fresh_copy(bundle: Path, into: Path) -> Path:
    """The bundle without its INT8 encoders and its work folder (so every run synthesises)."""
    dst = into / bundle.name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(bundle, dst, ignore=shutil.ignore_patterns(".work", "*.int8.*", "reports"))
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if (dst / k).exists()}
    manifest.pop("quantization", None)
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dst


def run_once(bundle: Path, budget: float, target: str, images: int) -> dict:
    cmd = [sys.executable, "-m", "edgeclip", "quantize", str(bundle), "--time-budget", str(budget), "--no-cache",
           "--target", target, "--images", str(images)]
    load = os.getloadavg()[0]
    t = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    manifest = json.loads((bundle / "manifest.json").read_text())
    rec = manifest["quantization"][target]
    calib = rec["calibration"]
    said = [line.split("] ", 1)[-1] for line in done.stderr.splitlines() if line.startswith("[quantize]")]
    split = next((line for line in said if line.startswith("time budget")), "")
    plan = next((line for line in said if line.startswith("plan: ")), "")
    return {"bundle": bundle.name, "budget": budget, "wall": round(wall, 1), "ratio": round(wall / budget, 3),
            "synthesis_budget": calib["plan"]["budget"], "synthesis_seconds": calib["seconds"],
            "plan_cut": calib.get("plan_cut"), "truncated": calib.get("truncated"),
            "steps_run": calib.get("steps_run"), "split": split, "plan": plan, "load": round(load, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--budgets", default="60,180", help="comma-separated seconds")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--target", default="openvino")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeclip-bench-budget-") as tmp:
        for r in range(args.rounds):
            for bundle in args.bundles:
                for budget in budgets:
                    row = run_once(fresh_copy(bundle, Path(tmp)), budget, args.target, args.images)
                    rows.append({"round": r, **row})
                    print(f"{row['bundle']:>12} budget {budget:6.0f} s  wall {row['wall']:7.1f} s  ratio "
                          f"{row['ratio']:.3f}  synthesis {row['synthesis_seconds']:.0f} of {row['synthesis_budget']:.0f} s"
                          f"  cut={row['plan_cut']}  load {row['load']}\n{'':14}{row['split']}\n{'':14}{row['plan']}", flush=True)
    worst = max(r["ratio"] for r in rows)
    print(f"worst wall/budget: {worst:.3f} (target <= 1.1)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "worst_ratio": worst}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
