"""``edgeclip cache``: what edgeclip keeps in the user's cache (compiled models), and clearing it."""
from __future__ import annotations

import argparse
import time

from .options import parser_type


def register(sub: argparse._SubParsersAction) -> None:
    from ..options import parse_size

    p = sub.add_parser("cache", help="show or clear edgeclip's user cache (compiled models, never bundles)",
                       description="List what edgeclip keeps in the user's cache ($EDGECLIP_CACHE_DIR, else "
                                   "$XDG_CACHE_HOME/edgeclip, else ~/.cache/edgeclip): OpenVINO's compiled models, "
                                   "one folder per model file, pruned to $EDGECLIP_CACHE_MAX (default 2G) least "
                                   "recently used first. A removed entry is compiled again on next use.")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--clear", action="store_true", help="remove every cached entry")
    g.add_argument("--max-size", type=parser_type(parse_size), default=None, metavar="SIZE",
                   help="remove the least recently used entries until each part holds at most SIZE (e.g. 500M)")
    p.set_defaults(handler=run)


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def run(args: argparse.Namespace) -> int:
    from .. import cache_info, clear_cache

    if args.clear or args.max_size is not None:
        freed = clear_cache(0 if args.clear else args.max_size)
        print(f"freed {_mb(freed)}")
    info = cache_info()
    print(f"{info['root']} (each part pruned to {_mb(info['max_bytes'])})")
    for part, found in info["parts"].items():
        print(f"  {part}: {len(found)} entries, {_mb(sum(e['bytes'] for e in found))}")
        for e in found:
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["used"]))
            print(f"    {_mb(e['bytes']):>10}  last used {used}  {e['path']}")
    return 0
