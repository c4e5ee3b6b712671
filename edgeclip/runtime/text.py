"""On-device text encoding and relabelling: the torch-free tokenizer plus ``text_encoder.onnx``."""
from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

from ..bundle import LABELS_JSON, LABELS_NPY, Bundle, load_bundle, update_bundle
from ..errors import BundleError
from .backends.onnxruntime import OrtBackend
from .labels import Label, embed_labels, labels_document
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
        if "tokenizer" not in bundle.manifest:
            raise BundleError(f"{bundle.path}: the manifest has no tokenizer section; re-export the bundle")
        return cls(ClipTokenizer.from_manifest(bundle.path, bundle.manifest["tokenizer"]), bundle.encoder("text"),
                   providers, threads)

    def __call__(self, texts: list[str]) -> np.ndarray:
        """Raw text embeddings [n, D] for ``texts``."""
        return self.backend.run(self.tokenizer(texts))


def relabel_bundle(path: str | os.PathLike[str], labels: Sequence[Label], template_name: str,
                   templates: Sequence[str], providers: Sequence[str] | None = None,
                   progress: Callable[[int], None] | None = None) -> tuple[list[str], np.ndarray]:
    """Re-embed a new label set inside an existing bundle (atomically) and return (names, matrix)."""
    bundle = load_bundle(path)
    matrix = embed_labels(labels, templates, TextEncoder.from_bundle(bundle, providers), progress=progress)
    with update_bundle(bundle) as draft:  # verified by load_bundle above
        write_labels(draft, labels, template_name, templates, matrix)
    return [lab.name for lab in labels], matrix


def write_labels(draft, labels: Sequence[Label], template_name: str, templates: Sequence[str],
                 matrix: np.ndarray) -> None:
    """Write ``labels.json`` and ``labels.npy`` into a bundle draft and record them in its manifest."""
    draft.write_json(LABELS_JSON, labels_document(labels, template_name, templates), role="labels")
    with open(draft.new_file(LABELS_NPY), "wb") as f:
        np.save(f, np.ascontiguousarray(matrix, dtype=np.float32), allow_pickle=False)
    draft.add_file(LABELS_NPY, "label_embeddings", shape=list(matrix.shape), dtype="float32")
    draft.manifest["labels"] = {"count": len(labels), "template_set": template_name,
                                "templates": len(templates)}
