#!/usr/bin/env python
"""Fuzz campaign for image inputs: malformed images through ``decode_image`` and ``edgeclip classify``.

Generates N cases with tests/image_fuzz.py (truncated, bit-flipped, lying headers, decompression bombs,
empty, random bytes, wrong extensions, trailing garbage, plus valid images), then prints per campaign and
per kind: tried / clean (an error row or a prediction) / traceback / lost rows, with the CLI's exit status,
wall time and peak RSS, and the peak RSS of classifying each bomb alone.

    python scripts/fuzz_images.py --n 1000 [--bundle BUNDLE] [--seed 12]

Without --bundle it exports the built-in tiny ViT (needs the export extra) into a temporary folder.
"""
from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from image_fuzz import KINDS, cases, jpeg_bomb, png_bomb  # noqa: E402

from edgeclip.errors import ImageReadError  # noqa: E402
from edgeclip.runtime.images import decode_image  # noqa: E402


def run_cli(args: list[str], timeout: float) -> tuple[int, str, float, int | None]:
    """(exit status, stderr, seconds, peak RSS in kB read from the CLI process itself, Linux only)."""
    code = ("import sys\nfrom edgeclip.cli import main\n"
            f"rc = main({args!r})\n"
            "try:\n    hwm = open('/proc/self/status').read().split('VmHWM:')[1].split()[0]\n"
            "except OSError:\n    hwm = ''\n"
            "print('PEAK_KB', hwm, file=sys.stderr)\nsys.exit(rc)\n")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          errors="replace")
    seconds = time.perf_counter() - t0
    peak = proc.stderr.rsplit("PEAK_KB", 1)[-1].split() if "PEAK_KB" in proc.stderr else []
    return proc.returncode, proc.stderr, seconds, int(peak[0]) if peak and peak[0].isdigit() else None


def decode_campaign(made: list) -> dict[str, collections.Counter]:
    stats: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for c in made:
        s = stats[c.kind]
        s["tried"] += 1
        try:
            decode_image(c.data, c.name)
            s["decoded"] += 1
            s["clean"] += 1
        except ImageReadError:
            s["error"] += 1
            s["clean"] += 1
        except Exception:  # anything else is a failure of the hardening
            s["traceback"] += 1
    return stats


def cli_campaign(bundle: Path, folder: Path, made: list, timeout: float) -> tuple[dict, dict]:
    out = folder.parent / "rows.jsonl"
    rc, err, seconds, peak = run_cli(["-q", "classify", str(bundle), str(folder), "-o", str(out)], timeout)
    rows = {}
    invalid = 0
    for line in out.read_text(encoding="utf-8").splitlines() if out.exists() else []:
        try:
            r = json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
            rows[Path(r["path"]).name] = r
        except ValueError:
            invalid += 1
    stats: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for c in made:
        s = stats[c.kind]
        s["tried"] += 1
        r = rows.get(c.name)
        if r is None:
            s["lost"] += 1
        elif (r.get("label") is None) == ("error" not in r):
            s["malformed_row"] += 1
        else:
            s["clean"] += 1
            s["error" if "error" in r else "predicted"] += 1
    info = {"exit": rc, "seconds": round(seconds, 1), "peak_rss_mb": None if peak is None else round(peak / 1024, 1),
            "tracebacks": err.count("Traceback"), "invalid_json_lines": invalid}
    return stats, info


def table(title: str, stats: dict[str, collections.Counter], columns: list[str]) -> None:
    print(f"\n{title}")
    print(f"  {'kind':<18}" + "".join(f"{c:>11}" for c in columns))
    total: collections.Counter = collections.Counter()
    for kind in KINDS:
        if kind in stats:
            total.update(stats[kind])
            print(f"  {kind:<18}" + "".join(f"{stats[kind][c]:>11}" for c in columns))
    print(f"  {'TOTAL':<18}" + "".join(f"{total[c]:>11}" for c in columns))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeclip-fuzz-") as tmp:
        work = Path(tmp)
        bundle = args.bundle
        if bundle is None:
            bundle = work / "bundle"
            subprocess.run([sys.executable, "-m", "edgeclip.cli", "-q", "export", "--model", "edgeclip-tiny-vit",
                            "--labels", "cat", "dog", "ship", "--out", str(bundle)], check=True)
        made = cases(args.n, args.seed)
        folder = work / "fuzz"
        folder.mkdir()
        for c in made:
            c.write(folder)
        print(f"{len(made)} cases (seed {args.seed}), {sum(len(c.data) for c in made) / 1e6:.1f} MB")
        table("decode_image (in process)", decode_campaign(made), ["tried", "clean", "decoded", "error", "traceback"])
        stats, info = cli_campaign(bundle, folder, made, args.timeout)
        table("edgeclip classify (one run over the folder)", stats,
              ["tried", "clean", "predicted", "error", "lost", "malformed_row"])
        print("  " + ", ".join(f"{k} {v}" for k, v in info.items()))
        print("\nbombs, each classified alone")
        for name, data in (("jpeg_30000x30000.jpg", jpeg_bomb()), ("png_30000x30000.png", png_bomb())):
            path = work / name
            path.write_bytes(data)
            out = work / (name + ".jsonl")
            rc, err, seconds, peak = run_cli(["-q", "classify", str(bundle), str(path), "-o", str(out)], 600)
            row = json.loads(out.read_text().splitlines()[0])
            print(f"  {name:<22} {len(data):>8,} bytes  exit {rc}  {seconds:5.1f} s  peak RSS "
                  f"{peak / 1024 if peak else float('nan'):.0f} MB  error row: {'error' in row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
