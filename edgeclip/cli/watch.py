"""``edgeclip watch CONFIG``: many cameras, zero-shot states of their regions, events on change."""
from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from typing import Any

from .options import add_backend_options, providers_of

EPILOG = """\
configuration (YAML; docs/watch.md has a worked example):
  cameras:
    garage:
      source: rtsp://user:pass@192.168.1.20/stream1      # anything `edgeclip stream --source` takes
      regions:
        door:
          rect: [0.10, 0.20, 0.35, 0.60]                 # x, y, w, h: fractions (or integer pixels)
          states: {open: an open garage door, closed: a closed garage door}
          on: motion                                     # motion | always ; or every: 5s
  outputs:
    jsonl: events.jsonl
    mqtt: {host: 127.0.0.1, prefix: edgeclip, discovery: homeassistant}

events (JSON lines): start, state (a region's state changed), summary, source_lost, reconnect, reload,
reload_error, region_error, end. A configuration error is exit status 2 naming the file, line and key.

signals: SIGINT/SIGTERM stop cleanly (exit 0); SIGHUP re-reads CONFIG (so does a change to the file)
without dropping the streams.
"""

#: WatchOptions fields that get no flag of their own (encoder threads: --threads)
_NO_FLAG = ("encoder_threads",)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("watch", help="watch many cameras: zero-shot states of regions, events on change",
                       description="Watch many cameras in one process: each region's state (written as text) is "
                                   "classified on motion, on every frame or every N seconds, with one encoder "
                                   "call per tick for every due region, and sent on change to JSON lines, MQTT "
                                   "(Home Assistant discovery) and webhooks.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="the YAML configuration file")
    p.add_argument("--bundle", default=None, help="bundle directory (default: the configuration's bundle:)")
    p.add_argument("--jsonl", default=None, metavar="FILE",
                   help="also write every event as JSON lines here ('-': stdout; the default when the "
                        "configuration has no outputs)")
    p.add_argument("--check", action="store_true", help="only read and check the configuration, then exit")
    g = p.add_argument_group("watching (override the configuration's options:)")
    _add_option_flags(g)
    add_backend_options(p, precision_default="auto")
    p.set_defaults(handler=run_watch)


def _add_option_flags(g: Any) -> None:
    """One flag per WatchOptions field, help from the field's metadata (default None: the file's value)."""
    from ..watch.config import WatchOptions

    for f in dataclasses.fields(WatchOptions):
        if f.name in _NO_FLAG:
            continue
        g.add_argument("--" + f.name.replace("_", "-"), dest=f"opt_{f.name}", default=None,
                       type=_flag_type(f), metavar=f.name.upper(), help=f"{f.metadata['help']} (default {f.default})")


def _flag_type(f: Any) -> Any:
    parse = f.metadata["parse"]

    def conv(text: str) -> Any:
        try:
            value: Any = text
            if parse.__name__ != "parse_duration":
                value = float(text) if "." in text else int(text)
            return parse(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    conv.__name__ = f.name
    return conv


def _options(args: argparse.Namespace, config: Any) -> Any:
    given = {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}
    if args.threads:
        given["encoder_threads"] = args.threads
    return dataclasses.replace(config.options, **given)


def run_watch(args: argparse.Namespace) -> int:
    from ..errors import OptionError
    from ..extras import require, require_onnxruntime

    require("watch", ["yaml"], what="edgeclip watch (its YAML configuration)")
    from ..watch import CLEAN_END, Watcher, load_config, plan_threads

    config = load_config(args.config)
    options = _options(args, config)
    if args.check:
        print(f"edgeclip watch: {args.config}: {len(config.cameras)} cameras, {config.regions} regions: "
              + "; ".join(f"{c.name} ({', '.join(r.name for r in c.regions)})" for c in config.cameras))
        return 0
    bundle = args.bundle or config.bundle
    if not bundle:
        raise OptionError("no bundle: pass `bundle` (or write bundle: PATH in the configuration)")
    require_onnxruntime("edgeclip watch")
    if config.outputs.mqtt is not None:
        require("watch", ["paho"], what="MQTT output (outputs.mqtt)")
    if args.jsonl:
        config.outputs.jsonl = args.jsonl
    elif not (config.outputs.jsonl or config.outputs.mqtt or config.outputs.webhooks):
        config.outputs.jsonl = "-"
    budget = plan_threads(len(config.cameras), options)
    import edgeclip

    clf = edgeclip.load(bundle, device=args.device, precision=args.precision, backend=args.backend,
                        target=args.target, providers=providers_of(args), threads=budget.encoder, hint=args.hint,
                        cache_dir=args.cache_dir)
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
