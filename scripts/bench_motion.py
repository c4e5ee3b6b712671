"""Motion gating against classifying every frame, on a long camera-like scene made from real photos.

Writes a 640x480 scene of ``--minutes`` at ``--fps`` (default 10 minutes at 15 fps, 9,000 frames): a
background photo with two regions, a "door" and a "shelf", each showing a real photo; camera noise (+-2
grey levels) and a slow dusk (``--drift``: grey levels lost over the whole scene). In the second scene the door
shows another photo from the middle frame on. Each scene is read as fast as possible (every frame, frame
times from the file's clock) twice: with ``on: always`` and with ``on: motion``. Printed and written
(``--json``): encoder crops per mode and their ratio, the state events of both modes (they must be the same),
and for the change the delay from its first frame to its state event, in frame time, plus the event's
processing latency.

The states name classes the built-in proxy models know, so decisions mean something; by default the
script exports ``proxy-vit`` (torch needed once) unless a bundle is given.

    python scripts/bench_motion.py --json motion.json                 # proxy-vit, 10 minutes
    python scripts/bench_motion.py /work/bundles/vitb32 --minutes 2   # any bundle
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import edgeclip  # noqa: E402
from edgeclip.watch import Watcher, WatchOptions, parse_config  # noqa: E402
from edgeclip.watch.sinks import QueuedSink  # noqa: E402
from watch_scenes import Patch, unpack_imagenette, write_scene  # noqa: E402

DATA = Path(os.environ.get("EDGECLIP_DATA", REPO.parent / "shared" / "data"))
DOOR, SHELF = (40, 60, 200, 300), (380, 240, 220, 200)
#: Imagenette folders: door before / after, shelf, background
CLASSES = {"church": "n03028079", "garbage truck": "n03417042", "golf ball": "n03445777",
           "gas pump": "n03425413"}


class Collect(QueuedSink):
    """Keeps the state events (a sink with no endpoint)."""

    kind = "collect"

    def __init__(self) -> None:
        super().__init__("collect", 10**6)
        self.events: list[dict] = []

    def wants(self, event: dict) -> bool:
        return event.get("event") == "state"

    def deliver(self, event: dict) -> bool:
        self.events.append(event)
        self.sent += 1
        return True


def scene(root: Path, out: Path, frames: int, fps: float, change: bool, drift: float) -> Path:
    pick = {name: sorted((root / wnid).glob("*.JPEG"))[5] for name, wnid in CLASSES.items()}
    door = Patch(DOOR, [pick["church"], pick["garbage truck"]], [0, frames // 2 if change else frames + 1])
    shelf = Patch(SHELF, [pick["golf ball"]])
    return write_scene(out, pick["gas pump"], [door, shelf], frames, fps, drift=drift / (frames / fps), seed=7,
                       quality=85)


def config(video: Path, on: str) -> str:
    return ("options: {summary_every: 0, reload_poll: 0, max_batch: 16}\n"
            f"cameras:\n  cam:\n    source: {video}\n    regions:\n"
            f"      door:\n        rect: {list(DOOR)}\n        states: [a church, a garbage truck, a parachute]\n"
            f"        on: {on}\n"
            f"      shelf:\n        rect: {list(SHELF)}\n        states: [a golf ball, a chain saw, a French horn]\n"
            f"        on: {on}\n")


def run(clf, video: Path, on: str) -> dict:
    sink = Collect()
    t = time.perf_counter()
    end = Watcher(clf, parse_config(config(video, on), "bench"), WatchOptions(summary_every=0, reload_poll=0),
                  sinks=[sink]).run()
    return {"seconds": round(time.perf_counter() - t, 2), "crops": end["crops"], "encoder_calls": end["encoder_calls"],
            "motion_skipped": end["motion_skipped"],
            "events": [{"region": e["region"], "state": e["state"], "previous": e["previous"], "frame": e["frame"],
                        "latency_ms": e["latency_ms"]} for e in sink.events]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", nargs="?", help="bundle (default: export proxy-vit to a temporary folder)")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--drift", type=float, default=30.0, help="grey levels of dusk over the whole scene")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edgeclip-bench-motion-"))
    bundle = args.bundle
    if bundle is None:
        bundle = str(tmp / "proxy-vit")
        subprocess.run([sys.executable, "-m", "edgeclip", "-q", "export", "--out", bundle], check=True, cwd=REPO)
    clf = edgeclip.load(bundle)
    print(f"encoder: {clf.choice.describe()}; load average {os.getloadavg()[0]:.2f}", flush=True)
    root = unpack_imagenette(DATA, tmp)
    frames = int(args.minutes * 60 * args.fps)
    result: dict = {"minutes": args.minutes, "fps": args.fps, "frames": frames, "bundle": str(bundle),
                    "load_average_start": round(os.getloadavg()[0], 2)}
    for name, change in (("static", False), ("change", True)):
        t = time.perf_counter()
        video = scene(root, tmp / f"{name}.avi", frames, args.fps, change, args.drift)
        print(f"{name}: wrote {frames} frames in {time.perf_counter() - t:.0f} s", flush=True)
        always, motion = run(clf, video, "always"), run(clf, video, "motion")
        video.unlink()
        same = [(e["region"], e["state"], e["frame"]) for e in always["events"]] == \
               [(e["region"], e["state"], e["frame"]) for e in motion["events"]]
        row = {"always": always, "motion": motion, "fewer_calls": round(always["crops"] / max(1, motion["crops"]), 1),
               "same_decisions": same}
        if change:
            changes = [e for e in motion["events"] if e["region"] == "door" and e["previous"] is not None]
            if changes:
                first = changes[0]
                row["change_frame"] = frames // 2
                row["reported_after_s"] = round((first["frame"] - frames // 2) / args.fps, 3)
                row["event_latency_ms"] = first["latency_ms"]
        result[name] = row
        print(f"{name}: always {always['crops']} crops, motion {motion['crops']} crops "
              f"({row['fewer_calls']}x fewer), same decisions: {same}"
              + (f", change reported {row.get('reported_after_s')} s (frame time) after it happened" if change else ""),
              flush=True)
        for mode in ("always", "motion"):
            print(f"  {mode} events: {[(e['region'], e['state'], e['frame']) for e in row[mode]['events']]}")
    result["load_average_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps({k: v for k, v in result.items()}, indent=1)[:4000])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
