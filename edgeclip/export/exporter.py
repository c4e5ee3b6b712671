"""``edgeclip export``: checkpoint -> verified bundle (both towers in ONNX, labels embedded)."""
from __future__ import annotations

import logging
import shutil
import time
from importlib import metadata as _md
from pathlib import Path
from typing import Callable, Sequence

import torch

from .._version import __version__
from ..bundle import BundleDraft, create_bundle
from ..runtime.labels import Label, embed_labels
from ..runtime.text import TextEncoder, write_labels
from ..runtime.tokenizer import DEFAULT_VOCAB, ClipTokenizer
from .models import LoadedModel
from .onnx_export import DEFAULT_OPSET, Tolerance, check_parity, export_onnx, image_parity_inputs

log = logging.getLogger("edgeclip.export")

PARITY_PROMPTS = ("a photo of a dog.", "itap of a golf ball.", "a bad photo of the garbage truck.",
                  "an über-long prompt, with punctuation!? and numbers 12345 " * 6)


def tool_versions() -> dict[str, str]:
    """Versions of the tools that made a bundle (those installed)."""
    out = {"edgeclip": __version__}
    for dist in ("torch", "onnx", "onnxruntime", "open_clip_torch", "transformers", "numpy", "opencv-python-headless"):
        try:
            out[dist] = _md.version(dist)
        except _md.PackageNotFoundError:
            pass
    return out


def record_onnx(draft: BundleDraft, files: Sequence[Path], role: str, **info: str) -> None:
    """Record an ONNX file (and its external-data file, if any) in a bundle draft."""
    draft.add_file(files[0].name, role, format="onnx", **info)
    for extra in files[1:]:
        draft.add_file(extra.name, "external_data", of=files[0].name)


def export_bundle(loaded: LoadedModel, out: Path, labels: Sequence[Label], template_name: str,
                  templates: Sequence[str], overwrite: bool = False, opset: int = DEFAULT_OPSET,
                  tol: Tolerance = Tolerance(), step: Callable[[str], None] | None = None) -> Path:
    """Export both towers, check them against torch, embed the labels and write the bundle atomically."""
    step = step or (lambda msg: log.info(msg))
    meta = {"edgeclip.model_id": loaded.model_id, "edgeclip.embed_dim": str(loaded.embed_dim),
            "edgeclip.architecture": loaded.architecture}
    tokenizer = ClipTokenizer(context_length=loaded.context_length)
    with create_bundle(out, overwrite=overwrite) as draft:
        draft.manifest["model"] = loaded.manifest_section()
        draft.manifest["preprocess"] = {**loaded.preprocess, "color": "RGB", "layout": "NCHW"}
        draft.manifest["versions"] = tool_versions()
        draft.manifest["export"] = {"opset": opset}
        parity = {}

        t0 = time.perf_counter()
        step(f"exporting the image encoder ({loaded.architecture}, {loaded.image_size[0]}x{loaded.image_size[1]})")
        image_inputs = image_parity_inputs(loaded.image_size)
        files = export_onnx(loaded.image_tower, image_inputs[0], draft.new_file("image_encoder.onnx"),
                            "pixel_values", "image_embeds", opset, {**meta, "edgeclip.tower": "image"})
        parity["image_encoder"] = check_parity(loaded.image_tower, files[0], image_inputs, tol)
        record_onnx(draft, files, "image_encoder", precision="fp32")

        step("exporting the text encoder")
        ids = torch.from_numpy(tokenizer(list(PARITY_PROMPTS)))
        text_files = export_onnx(loaded.text_tower, ids[:1], draft.new_file("text_encoder.onnx"),
                                 "input_ids", "text_embeds", opset, {**meta, "edgeclip.tower": "text"})
        parity["text_encoder"] = check_parity(loaded.text_tower, text_files[0], [ids[:1], ids], tol)
        record_onnx(draft, text_files, "text_encoder", precision="fp32")
        draft.manifest["parity"] = parity
        draft.manifest["export"]["seconds"] = round(time.perf_counter() - t0, 2)

        vocab = draft.new_file("tokenizer/" + DEFAULT_VOCAB.name)
        shutil.copyfile(DEFAULT_VOCAB, vocab)
        draft.add_file(f"tokenizer/{vocab.name}", "tokenizer")
        draft.manifest["tokenizer"] = tokenizer.manifest_section(f"tokenizer/{vocab.name}")

        step(f"embedding {len(labels)} labels x {len(templates)} templates")
        encoder = TextEncoder(tokenizer, text_files[0])
        matrix = embed_labels(labels, templates, encoder)
        write_labels(draft, labels, template_name, templates, matrix)
    return Path(out)
