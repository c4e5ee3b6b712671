"""On-device text encoding and relabelling: the torch-free tokenizer plus ``text_encoder.onnx``."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..bundle import LABELS_JSON, LABELS_NPY, Bundle, BundleDraft, load_bundle, update_bundle
from ..errors import BundleError, EdgeclipError, LabelsError
from .backends.onnxruntime import OrtBackend
from .labels import Label, check_labels, check_template, embed_labels, labels_document, resolve_templates
from ..tables import TOKENIZERS, pick
from .tokenizer import ClipTokenizer


class TextEncoder:
    """Encodes strings to raw (unnormalised) CLIP text embeddings with the bundle's text tower."""

    def __init__(self, tokenizer: ClipTokenizer, onnx_path: str | os.PathLike[str],
                 providers: Sequence[str] | None = None, threads: int = 0) -> None:
        self.tokenizer = tokenizer
        self.backend = OrtBackend(onnx_path, list(providers or ["cpu"]), threads)

    @classmethod
    def from_bundle(cls, bundle: Bundle, providers: Sequence[str] | None = None, threads: int = 0) -> TextEncoder:
        """The bundle's tokenizer and fp32 ``text_encoder.onnx``."""
        pack = bundle.manifest.get("pack")
        if isinstance(pack, dict) and pack.get("text") == "none":
            raise BundleError(f"{bundle.path}: the bundle was packed for device profile {pack.get('profile')} "
                              f"without its text encoder, so labels cannot be embedded on the device; pack it with "
                              f"a text encoder (`edgeclip pack` with text='int8'), or relabel the full bundle")
        if bundle.info.tokenizer is None:
            raise BundleError(f"{bundle.path}: the manifest has no tokenizer section, so labels cannot be embedded "
                              f"on the device; re-export the bundle")
        kind = pick(TOKENIZERS, bundle.info.tokenizer.type, "tokenizer type")
        return cls(kind.load().from_manifest(bundle.path, bundle.manifest["tokenizer"]), text_encoder_file(bundle),
                   providers, threads)

    def __call__(self, texts: list[str]) -> np.ndarray:
        """Raw text embeddings [n, D] for ``texts``."""
        return self.backend.run(self.tokenizer(texts))


def text_encoder_file(bundle: Bundle) -> Path:
    """The bundle's text encoder: the fp32 one, else the INT8 one a packed bundle carries."""
    entries = bundle.info.with_role("text_encoder")
    if not any((e.precision or "fp32") == "fp32" for e in entries.values()) and entries:
        return bundle.encoder("text", "int8")
    return bundle.encoder("text")


def bundle_templates(bundle: Bundle) -> tuple[str, list[str]]:
    """The prompt templates the bundle's labels were embedded with (the default template set otherwise)."""
    try:
        doc = json.loads(bundle.file(LABELS_JSON).read_text(encoding="utf-8"))
        templates = doc.get("templates")
        if isinstance(templates, list) and templates:
            return str(doc.get("template_set", "bundle")), [check_template(t) for t in templates]
    except (EdgeclipError, OSError, ValueError):
        pass
    return resolve_templates(None)


def relabel_bundle(path: str | os.PathLike[str], labels: Sequence[Label], template_name: str,
                   templates: Sequence[str], providers: Sequence[str] | None = None,
                   progress: Callable[[int], None] | None = None) -> tuple[list[str], np.ndarray]:
    """Re-embed a new label set inside an existing bundle (atomically) and return (names, matrix).

    The embedding runs without the bundle's lock; the write takes it and starts from the manifest on disk
    then, so a concurrent writer's changes (e.g. a new INT8 encoder) are kept.
    """
    bundle = load_bundle(path)
    matrix = embed_labels(labels, templates, TextEncoder.from_bundle(bundle, providers), progress=progress)
    with update_bundle(bundle) as draft:  # verified by load_bundle above
        write_labels(draft, labels, template_name, templates, matrix)
    return [lab.name for lab in labels], matrix


def write_labels(draft: BundleDraft, labels: Sequence[Label], template_name: str, templates: Sequence[str],
                 matrix: np.ndarray) -> None:
    """Write ``labels.json`` and ``labels.npy`` into a bundle draft and record them in its manifest."""
    labels = check_labels(labels, "labels")  # valid text only: the file must be UTF-8
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != len(labels) or len(labels) == 0:
        raise LabelsError(f"label matrix shape {matrix.shape} does not match {len(labels)} labels")
    if not np.isfinite(matrix).all():
        raise LabelsError("the label embeddings hold NaN or infinite values (the text encoder's output); "
                          "check the text encoder, nothing was written")
    draft.write_json(LABELS_JSON, labels_document(labels, template_name, templates), role="labels")
    with open(draft.new_file(LABELS_NPY), "wb") as f:
        np.save(f, np.ascontiguousarray(matrix, dtype=np.float32), allow_pickle=False)
    draft.add_file(LABELS_NPY, "label_embeddings", shape=list(matrix.shape), dtype="float32")
    draft.manifest["labels"] = {"count": len(labels), "template_set": template_name,
                                "templates": len(templates)}
