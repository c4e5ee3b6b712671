"""The bundle-hardening campaign: damaged bundles, killed writers, concurrent writers; prints the figures.

    python scripts/fuzz_bundles.py [--damaged N] [--kills N] [--concurrent N] [--work DIR] [--seed S]

Figures per campaign: tried / clean / traceback / data lost (damaged bundles: clean = rejected with exit
2 or accepted and working; "inconsistent" = inspect and classify disagree, counted with data lost). The
kill campaign runs each writing command (export --overwrite, labels, quantize) N times: once killed at
every rename/removal of its swap (both swap forms: the atomic exchange and two renames), the rest at
random moments; then the bundle must load and verify as the old or the new version. Uses the tiny
built-in model; takes about 20-40 minutes on 2 cores with the defaults.
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import bundle_fuzz as bf  # noqa: E402


def tally(fig: dict[str, int], verdict: str, clean: tuple[str, ...] = ()) -> bool:
    """Count one trial in ``fig``: a verdict in ``clean`` as clean and under its own name, ``traceback`` as a
    traceback, any other as data lost. Returns whether the trial was clean."""
    fig["tried"] += 1
    if verdict in clean:
        fig["clean"] += 1
        fig[verdict] += 1
        return True
    fig["traceback" if verdict == "traceback" else "data lost"] += 1
    return False


def damaged_campaign(base: Path, work: Path, n: int, seed: int) -> dict[str, int]:
    outside = work / "outside"
    outside.mkdir(exist_ok=True)
    image = bf.sample_image(work / "photo")
    cases = bf.pick(bf.damages(base, outside), n, seed)
    figures = {"tried": 0, "clean": 0, "rejected": 0, "accepted": 0, "traceback": 0, "data lost": 0}
    for i, case in enumerate(cases):
        b = bf.fresh_copy(base, work / f"d{i % 4}")
        case.apply(b)
        verdict, details = bf.check_damaged(b, image, case.text)
        if not tally(figures, verdict, ("rejected", "accepted")):
            print(f"  {verdict}: {case.name}: {details.strip()[-600:]}", flush=True)
    return figures


def _commands(b: Path) -> dict[str, tuple[list[str], object, object, object]]:
    return {
        "labels": (["-q", "labels", str(b), "--labels", *bf.NEW_LABELS], bf.label_marker,
                   tuple(bf.BASE_LABELS), tuple(bf.NEW_LABELS)),
        "quantize": (["-q", "quantize", str(b), *bf.QUANTIZE],
                     bf.quant_marker, False, True),
        "export": (["-q", "export", "--model", "edgeclip-tiny-vit", "--labels", *bf.NEW_LABELS, "--out", str(b),
                    "--overwrite"], bf.label_marker, tuple(bf.BASE_LABELS), tuple(bf.NEW_LABELS)),
    }


def kill_campaign(base: Path, work: Path, n: int, seed: int) -> dict[str, dict[str, int]]:
    rng = random.Random(seed)
    results: dict[str, dict[str, int]] = {}
    b = work / "k"
    for name in ("labels", "quantize", "export"):
        args, marker, old, new = _commands(b)[name]
        fig = {"tried": 0, "clean": 0, "old": 0, "new": 0, "traceback": 0, "data lost": 0, "at swap": 0}
        # How long a run takes and how many swap events it has.
        bf.fresh_copy(base, b)
        t0 = time.monotonic()
        rc, err = bf.run_killed(args)
        duration = time.monotonic() - t0
        assert rc == 0, err
        events = {"exchange": bf.count_events(err)}
        bf.fresh_copy(base, b)
        rc, err = bf.run_killed(args, env={"EDGECLIP_BUNDLE_SWAP": "rename"})
        assert rc == 0, err
        events["rename"] = bf.count_events(err)
        plan: list[dict] = []
        for mode, count in events.items():
            env = {"EDGECLIP_BUNDLE_SWAP": mode}
            for ev in range(1, count + 1):
                for when in ("before", "after", "during"):
                    plan.append({"event": ev, "when": when, "env": env})
        plan = plan[:n]
        while len(plan) < n:  # random moments: half over the whole run, half over its last 30%
            lo = 0.0 if len(plan) % 2 else 0.7 * duration
            plan.append({"delay": rng.uniform(lo, duration * 1.05),
                         "env": {"EDGECLIP_BUNDLE_SWAP": rng.choice(["exchange", "rename"])}})
        for trial in plan:
            bf.fresh_copy(base, b)
            rc, err = bf.run_killed(args, event=trial.get("event"), when=trial.get("when", "before"),
                                    delay=trial.get("delay"), env=trial["env"])
            fig["at swap"] += "event" in trial
            if rc not in (0, -9):
                tally(fig, "traceback")
                print(f"  {name}: exit {rc} without a kill: {err.strip()[-400:]}", flush=True)
                continue
            verdict, details = bf.outcome_after_kill(b, marker, old, new)
            if not tally(fig, verdict, ("old", "new")):
                print(f"  {name} {trial}: {verdict}: {details.strip()[-400:]}", flush=True)
        results[name] = fig
        print(f"kills {name}: {fig} (a run takes {duration:.1f} s; swap events {events})", flush=True)
    return results


def concurrent_campaign(base: Path, work: Path, n: int) -> dict[str, int]:
    fig = {"tried": 0, "clean": 0, "both succeeded": 0, "one failed cleanly": 0, "traceback": 0, "data lost": 0}
    b = work / "c"
    other = ["boat", "horse"]
    for i in range(n):
        bf.fresh_copy(base, b)
        quantize = i % 2 == 1
        labels_a = ["-q", "labels", str(b), "--labels", *bf.NEW_LABELS]
        second = (["-q", "quantize", str(b), *bf.QUANTIZE] if quantize
                  else ["-q", "labels", str(b), "--labels", *other])
        base_q = bf.quant_marker(bf_load(base))
        (rc_a, err_a), (rc_b, err_b) = bf.run_concurrent([second, labels_a])
        if "Traceback" in err_a + err_b or rc_a not in (0, 2) or rc_b not in (0, 2):
            tally(fig, "traceback")
            print(f"  trial {i}: exits {rc_a} {rc_b}: {(err_a + err_b).strip()[-600:]}", flush=True)
            continue
        try:
            final = bf_load(b)
            names = tuple(final.label_names())
        except Exception as exc:  # noqa: BLE001 - reported as lost
            tally(fig, "data lost")
            print(f"  trial {i}: the bundle does not load: {exc}", flush=True)
            continue
        ok = True
        if rc_a == 0 and rc_b == 0:
            verdict = "both succeeded"
            if quantize:
                ok = names == tuple(bf.NEW_LABELS) and bf.quant_marker(final) and not base_q
            else:
                ok = names in (tuple(bf.NEW_LABELS), tuple(other))
        else:
            verdict = "one failed cleanly"
        if not tally(fig, verdict if ok else "data lost", ("both succeeded", "one failed cleanly")):
            print(f"  trial {i}: an update is missing: labels {names}, quantized {bf.quant_marker(final)}",
                  flush=True)
    return fig


def bf_load(path: Path):
    from edgeclip.bundle import load_bundle

    return load_bundle(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--damaged", type=int, default=10 ** 6, help="damaged bundles to try (default: every case)")
    ap.add_argument("--kills", type=int, default=100, help="kills per writing command")
    ap.add_argument("--concurrent", type=int, default=50, help="concurrent-writer trials")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="edgeclip-fuzz-bundles-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    base = bf.make_base_bundle(work / "base")
    print(f"base bundle {base} ready in {time.monotonic() - t0:.0f} s", flush=True)
    if args.damaged:
        fig = damaged_campaign(base, work, args.damaged, args.seed)
        print(f"damaged bundles: {fig}", flush=True)
    if args.kills:
        kill_campaign(base, work, args.kills, args.seed)
    if args.concurrent:
        print(f"concurrent writers: {concurrent_campaign(base, work, args.concurrent)}", flush=True)
    print(f"done in {time.monotonic() - t0:.0f} s", flush=True)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
