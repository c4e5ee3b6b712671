"""``edgeclip watch CONFIG``: many cameras, zero-shot states of their regions, events on change."""
from __future__ import annotations

import argparse
import signal
import sys
import textwrap
from typing import Any

from .options import add_load_options, add_options, load_options, options_from_args

EPILOG = """\
configuration (YAML; docs/watch.md has a worked example):
  cameras:
    garage:
      source: rtsp://user:pass@192.168.1.20/stream1      # anything `edgeclip stream --source` takes
      regions:
        door:
          rect: [0.10, 0.20, 0.35, 0.60]                 # x, y, w, h: fractions (or integer pixels)
          states: {{open: an open garage door, closed: a closed garage door}}
          on: motion                                     # {on} ; or every: 5s
  outputs:
    jsonl: events.jsonl
    mqtt: {{host: 127.0.0.1, prefix: edgeclip, discovery: homeassistant}}

{events}
A configuration error is exit status 2 naming the file, line and key.

signals: SIGINT/SIGTERM stop cleanly (exit 0); SIGHUP re-reads CONFIG (so does a change to the file)
without dropping the streams.
"""


def _epilog() -> str:
    from ..tables import WATCH_EVENTS, watch_schedules

    events = textwrap.fill("events (JSON lines): " + ", ".join(WATCH_EVENTS) + ".", width=104)
    return EPILOG.format(on=" | ".join(watch_schedules("on")), events=events)


def register(sub: argparse._SubParsersAction) -> None:
    from ..watch import WatchOptions

    p = sub.add_parser("watch", help="watch many cameras: zero-shot states of regions, events on change",
                       description="Watch many cameras in one process: each region's state (written as text) is "
                                   "classified on motion, on every frame or every N seconds, with one encoder "
                                   "call per tick for every due region, and sent on change to JSON lines, MQTT "
                                   "(Home Assistant discovery) and webhooks.",
                       epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="the YAML configuration file")
    p.add_argument("--bundle", default=None, help="bundle directory (default: the configuration's bundle:)")
    p.add_argument("--check", action="store_true", help="only read and check the configuration, then exit")
    add_options(p, WatchOptions, groups={None: "watching (override the configuration's options:)",
                                         "outputs": "outputs (override the configuration's outputs:)"})
    add_load_options(p)
    p.set_defaults(handler=run_watch)


def run_watch(args: argparse.Namespace) -> int:
    from .. import load
    from ..errors import OptionError
    from ..extras import require, require_onnxruntime
    from ..options import resolve
    from ..watch import CLEAN_END, Watcher, WatchOptions, load_config, plan_threads
    from ..watch.watcher import camera_spec

    flags = options_from_args(WatchOptions, args)  # the flags' outputs are checked before anything is read
    require("watch", ["yaml"], what="edgeclip watch (its YAML configuration)")
    config = load_config(args.config)
    # one precedence rule: a flag given, else the file's options: and outputs:, else the default
    options = WatchOptions.build(resolve(flags, {k: getattr(config.options, k) for k in config.options.given()}))
    if args.threads:
        options = options.replace(encoder_threads=args.threads)
    if args.check:
        for cam in config.cameras:
            camera_spec(cam)  # each source parsed with its options, as the run will
        print(f"edgeclip watch: {args.config}: {len(config.cameras)} cameras, {config.regions} regions: "
              + "; ".join(f"{c.name} ({', '.join(r.name for r in c.regions)})" for c in config.cameras))
        return 0
    bundle = args.bundle or config.bundle
    if not bundle:
        raise OptionError("no bundle: pass `bundle` (or write bundle: PATH in the configuration)")
    require_onnxruntime("edgeclip watch")
    if config.outputs.mqtt is not None:
        require("watch", ["paho"], what="MQTT output (outputs.mqtt)")
    if not (options.jsonl or config.outputs.mqtt or config.outputs.webhooks):
        options = options.replace(jsonl="-")
    budget = plan_threads(len(config.cameras), options)
    clf = load(bundle, load_options(args, threads=budget.encoder))
    if not args.quiet:
        print(f"edgeclip watch: image encoder {clf.choice.describe()}; {budget.cores} cores: encoder "
              f"{budget.encoder} threads, {budget.decoders} decoders x {budget.decode_threads}", file=sys.stderr)
    watcher = Watcher(clf, config, options)

    def on_stop(signum: int, _frame: Any) -> None:
        if watcher.stop_requested:  # a second signal: stop now
            raise KeyboardInterrupt
        watcher.request_stop(signal.Signals(signum).name)

    handlers = {signal.SIGINT: on_stop, signal.SIGTERM: on_stop}
    if hasattr(signal, "SIGHUP"):
        handlers[signal.SIGHUP] = lambda *_: watcher.request_reload("sighup")
    previous = {sig: signal.signal(sig, h) for sig, h in handlers.items()}
    try:
        end = watcher.run()
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
    if not args.quiet:
        print(f"edgeclip watch: {end['reason']}: {end['crops']} crops in {end['encoder_calls']} encoder calls "
              f"({end['motion_skipped']} skipped without motion, {end['dropped']} dropped), "
              f"{end['reconnects']} reconnects", file=sys.stderr)
    return 0 if end["reason"] in CLEAN_END else 1

