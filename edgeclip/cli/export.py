"""``edgeclip export``: a CLIP checkpoint to a bundle."""
from __future__ import annotations

import argparse
import sys

from ..export.defaults import DEFAULT_MODEL, PROXY_LABELS, PROXY_MODELS
from .options import add_label_options, labels_from_args



def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a CLIP checkpoint to a bundle (ONNX towers + label embeddings)",
                       description="Export both CLIP towers to ONNX, check them against torch, embed the labels "
                                   "and write a bundle directory.")
    p.add_argument("--model", default=None,
                   help="built-in name (proxy-vit [default], proxy-rn, or an edgeclip-tiny-* test model: `edgeclip "
                        "models`), open_clip architecture (ViT-B-32, MobileCLIP2-S0, ViT-B-16-SigLIP), Hugging Face "
                        "id or folder, or checkpoint file")
    p.add_argument("--pretrained", default=None,
                   help="open_clip pretrained tag (openai, laion2b_s34b_b79k), weights file, or 'none' for random")
    p.add_argument("--config", default=None, help="open_clip model config JSON for a checkpoint file")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="local Hugging Face tokenizer folder (tokenizer.json + tokenizer_config.json) for models "
                        "whose text tower is not CLIP's (SigLIP, SigLIP2), when the model's folder and the local "
                        "cache do not hold it")
    p.add_argument("--out", "-o", required=True, help="bundle directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle (atomically)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    p.add_argument("--parity-atol", type=float, default=1e-4,
                   help="max abs (or relative, for large models) difference allowed between ONNX and torch")
    p.add_argument("--seed", type=int, default=0, help="seed for random-weight models")
    add_label_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..extras import require, require_onnxruntime

    require("export", what="edgeclip export")
    require_onnxruntime("edgeclip export (parity check)")
    from ..api import export

    default = PROXY_LABELS if (args.model or DEFAULT_MODEL) in PROXY_MODELS else None
    labels, _, _ = labels_from_args(args, default)
    say = (lambda m: None) if args.quiet else (lambda m: print(f"[export] {m}", file=sys.stderr))
    say(f"loading {args.model or DEFAULT_MODEL}")
    b = export(args.out, args.model, labels, templates=args.templates, pretrained=args.pretrained,
               config=args.config, overwrite=args.overwrite, opset=args.opset, parity_atol=args.parity_atol,
               seed=args.seed, step=say, tokenizer=args.tokenizer)
    par, model = b.manifest["parity"], b.manifest["model"]
    print(f"wrote {b.path}: {model.get('id')} ({model.get('architecture')}), {len(labels)} labels; parity max abs "
          f"diff image {par['image_encoder']['max_abs_diff']:.2e}, text {par['text_encoder']['max_abs_diff']:.2e}")
    return 0
