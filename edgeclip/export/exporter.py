"""``edgeclip export``: checkpoint -> verified bundle (both towers in ONNX, labels embedded)."""
from __future__ import annotations

import contextlib
import logging
import time
from importlib import metadata as _md
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from .._version import __version__
from ..bundle import BundleDraft, create_bundle
from ..errors import ExportError
from ..runtime.labels import Label, embed_labels, label_prompts
from ..runtime.text import TextEncoder, write_labels
from ..tables import FAMILIES
from .families import needs_reparameterization, reparameterize
from .models import ImageTower, LoadedModel, TextTower
from .onnx_export import DEFAULT_OPSET, Tolerance, check_parity, export_onnx, image_parity_inputs
from .tokenizing import TokenizerSpec, check_tokenizer, write_tokenizer

log = logging.getLogger("edgeclip.export")

PARITY_PROMPTS = ("a photo of a dog.", "itap of a golf ball.", "a bad photo of the garbage truck.",
                  "an über-long prompt, with punctuation!? and numbers 12345 " * 6)


def tool_versions() -> dict[str, str]:
    """Versions of the tools that made a bundle (those installed)."""
    out = {"edgeclip": __version__}
    for dist in ("torch", "onnx", "onnxruntime", "open_clip_torch", "timm", "transformers", "tokenizers", "numpy",
                 "opencv-python-headless"):
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


#: label prompts the tokenizer check covers besides the parity prompts (the first ones of the bundle's labels)
TOKENIZER_CHECK_PROMPTS = 256


@contextlib.contextmanager
def _naming(loaded: LoadedModel) -> Iterator[None]:
    """Export errors name the model and its family."""
    try:
        yield
    except ExportError as exc:
        family = FAMILIES[loaded.family].title if loaded.family in FAMILIES else "an unlisted family"
        if loaded.model_id not in str(exc):
            exc.args = (f"{loaded.model_id} ({family}): {exc}", *exc.args[1:])
        raise


def inference_form(loaded: LoadedModel, draft: BundleDraft | None = None) -> torch.nn.Module:
    """The model as it should run: MobileOne/FastViT towers reparameterized (BatchNorm folded), checked
    against the training form (``manifest.export.reparameterized``); other models unchanged."""
    family = FAMILIES.get(loaded.family)
    if not (family is not None and family.reparameterize) and not needs_reparameterization(loaded.model):
        return loaded.model
    model, record = reparameterize(loaded.model, loaded.image_size, loaded.family)
    if draft is not None:
        draft.manifest["export"]["reparameterized"] = record
    return model


def export_bundle(loaded: LoadedModel, out: Path, labels: Sequence[Label], template_name: str,
                  templates: Sequence[str], overwrite: bool = False, opset: int = DEFAULT_OPSET,
                  tol: Tolerance = Tolerance(), step: Callable[[str], None] | None = None) -> Path:
    """Export both towers, check them against torch, embed the labels and write the bundle atomically."""
    with _naming(loaded):
        return _export_bundle(loaded, out, labels, template_name, templates, overwrite, opset, tol, step)


def _export_bundle(loaded: LoadedModel, out: Path, labels: Sequence[Label], template_name: str,
                   templates: Sequence[str], overwrite: bool, opset: int, tol: Tolerance,
                   step: Callable[[str], None] | None) -> Path:
    step = step or (lambda msg: log.info(msg))
    meta = {"edgeclip.model_id": loaded.model_id, "edgeclip.embed_dim": str(loaded.embed_dim),
            "edgeclip.architecture": loaded.architecture}
    spec = loaded.tokenizer or TokenizerSpec("clip-bpe", loaded.context_length)
    with create_bundle(out, overwrite=overwrite) as draft:
        draft.manifest["model"] = loaded.manifest_section()
        draft.manifest["preprocess"] = {**loaded.preprocess, "color": "RGB", "layout": "NCHW"}
        draft.manifest["versions"] = tool_versions()
        draft.manifest["export"] = {"opset": opset}
        parity = {}

        vocab_size = getattr(getattr(loaded.model, "token_embedding", None), "num_embeddings", None)
        tokenizer, section = write_tokenizer(draft, spec, vocab_size)
        draft.manifest["tokenizer"] = section
        prompts = [p for lab in labels for p in label_prompts(lab, templates)][:TOKENIZER_CHECK_PROMPTS]
        if spec.kind != "clip-bpe" or loaded.tokenizer is not None:
            parity["tokenizer"] = check_tokenizer(tokenizer, spec, [*PARITY_PROMPTS, *prompts])

        t0 = time.perf_counter()
        model = inference_form(loaded, draft)
        image_tower, text_tower = ImageTower(model).eval(), TextTower(model).eval()
        step(f"exporting the image encoder ({loaded.architecture}, {loaded.image_size[0]}x{loaded.image_size[1]})")
        image_inputs = image_parity_inputs(loaded.image_size)
        files = export_onnx(image_tower, image_inputs[0], draft.new_file("image_encoder.onnx"),
                            "pixel_values", "image_embeds", opset, {**meta, "edgeclip.tower": "image"})
        parity["image_encoder"] = check_parity(image_tower, files[0], image_inputs, tol)
        record_onnx(draft, files, "image_encoder", precision="fp32")

        step("exporting the text encoder")
        ids = torch.from_numpy(tokenizer(list(PARITY_PROMPTS)))
        text_files = export_onnx(text_tower, ids[:1], draft.new_file("text_encoder.onnx"),
                                 "input_ids", "text_embeds", opset, {**meta, "edgeclip.tower": "text"})
        parity["text_encoder"] = check_parity(text_tower, text_files[0], [ids[:1], ids], tol)
        record_onnx(draft, text_files, "text_encoder", precision="fp32")
        draft.manifest["parity"] = parity
        draft.manifest["export"]["seconds"] = round(time.perf_counter() - t0, 2)

        step(f"embedding {len(labels)} labels x {len(templates)} templates")
        encoder = TextEncoder(tokenizer, text_files[0])
        matrix = embed_labels(labels, templates, encoder)
        write_labels(draft, labels, template_name, templates, matrix)
    return Path(out)
