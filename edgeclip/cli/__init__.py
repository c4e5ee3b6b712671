"""The ``edgeclip`` console entry point: one parser, one subcommand per module of this package.

Command modules import heavy dependencies (torch, onnx) inside their handlers, so ``edgeclip classify``
never loads torch. Exit status: 0 success, 1 some inputs failed (reported per item), 2 usage or
user-facing error, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from typing import Sequence

from .._version import __version__
from ..errors import ConfigError, EdgeclipError
from .options import flag_wording

#: Modules under ``edgeclip.cli`` that each define ``register(subparsers)``.
COMMAND_MODULES = ("export", "classify", "evaluate", "quantize", "pack", "models", "bench", "stream", "devices",
                   "serve", "watch", "cache")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(prog="edgeclip", description="CLIP zero-shot classification on edge devices.")
    parser.add_argument("--version", action="version", version=f"edgeclip {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log what edgeclip decides and why (-vv: debug); by default only warnings and errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"edgeclip.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"edgeclip.cli.{name}":
                continue  # a command not in this build
            raise
        module.register(sub)
    for command in sub.choices.values():  # -v/-q are accepted after the subcommand too
        command.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        command.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be so that a run stops the same clean way."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else 2
    # one line per fact, once: the commands print what matters (which file runs where, and why); the log
    # says more with -v
    level = logging.WARNING if args.quiet or not args.verbose else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    # third-party libraries log at WARNING and above; edgeclip's own loggers at the chosen level
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("edgeclip").setLevel(level)
    from ..api import configure_threads

    configure_threads()  # BLAS, OpenCV and encoder thread counts set here, never inherited (runtime/process.py)
    if threading.current_thread() is threading.main_thread():
        # `kill`/`timeout` end a run like Ctrl-C: temporary files and bundle swaps are cleaned up on the way out
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.handler(args) or 0)
    except EdgeclipError as exc:  # a configuration file's error names its keys, not flags
        text = str(exc) if isinstance(exc, ConfigError) else flag_wording(str(exc))
        print(f"edgeclip {args.command}: error: {text}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # an optional part that no up-front check caught: still one line, exit 2
        from ..extras import extra_for_module, install_command, onnxruntime_help

        extra = extra_for_module(exc.name or "")
        if extra is None:
            raise
        hint = onnxruntime_help() if extra == "cpu" else (f"{exc.name} is not installed; add the '{extra}' extra: "
                                                          f"{install_command(extra)}")
        print(f"edgeclip {args.command}: error: {hint}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        # point stdout at /dev/null so the interpreter's final flush does not fail again (Python docs' recipe)
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a real file (embedded use)
            pass
        return 0
    except KeyboardInterrupt as exc:
        hint = getattr(args, "interrupted", None)
        after = hint(args) if hint else None
        print(f"edgeclip {args.command}: {'terminated' if isinstance(exc, Terminated) else 'interrupted'}"
              + (f"; {after}" if after else ""), file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130

