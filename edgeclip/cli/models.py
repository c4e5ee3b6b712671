"""``edgeclip models``: the model families edgeclip exports, their built-in names, and what each costs here
(parameters, input size, GMAC, ms/img measured on this machine with ``--measure``)."""
from __future__ import annotations

import argparse

from .options import say


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model families and built-in names, with size, GMAC and speed here",
                       description="The model families edgeclip exports and verifies, and per built-in name: image "
                                   "and text parameters, input size, GMAC per image and ms/img on this machine "
                                   "(ONNX Runtime, CPU, batch 1, fp32, random weights: speed does not depend on "
                                   "them; accuracy does). Numbers come from `--measure`, kept per machine.")
    p.add_argument("names", nargs="*", help="only these names (default: every listed name)")
    p.add_argument("--measure", action="store_true",
                   help="measure the names given (default: one per family and size class) here and keep the "
                        "numbers (needs the export extra; a minute or two per full-size model)")
    p.add_argument("--seconds", type=float, default=5.0,
                   help="timing per model, seconds (default 5; the lowest of 5 per-round medians is kept)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = all cores)")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="tokenizer folder for the tiny SigLIP models (only their loading needs one)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from .. import models

    found = models(args.names, args.measure, args.seconds, args.threads, args.tokenizer, say(args, "models"))
    print("| family | what | tokenizer | scoring | calibration | names |")
    print("| --- | --- | --- | --- | --- | --- |")
    for f in found["families"]:
        print(f"| `{f.name}` | {f.title} | {f.tokenizer} | {f.scoring} | {', '.join(f.calibrations)} | "
              f"{', '.join(f.names)} |")
    print(f"\nmeasured on {found['cpu']} (ONNX Runtime CPU, batch 1, fp32; random weights):\n")
    print("| name | family | image params (M) | text params (M) | input | GMAC | ms/img |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    missing = []
    for family, name in found["names"]:
        card = found["cards"][name]
        if card is None:
            missing.append(name)
            print(f"| `{name}` | {family} | - | - | - | - | - |")
        else:
            print(card.row())
    if missing:
        print(f"\nnot measured here yet: {', '.join(missing)}; run `edgeclip models --measure NAME...` "
              f"(kept in {found['cache']})")
    return 0
