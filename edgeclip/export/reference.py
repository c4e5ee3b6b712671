"""The torch reference path for evaluation: the source model with open_clip's own PIL transform and
tokenizer, to check that a bundle (ONNX + OpenCV preprocessing + torch-free tokenizer) reproduces it."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..bundle import Bundle
from ..runtime.labels import Label, embed_labels
from .models import load_source_model


class TorchReference:
    """Embeds images and label prompts with the bundle's source model in PyTorch (eager, fp32)."""

    def __init__(self, bundle: Bundle, threads: int = 0) -> None:
        import open_clip

        if threads:
            torch.set_num_threads(threads)
        self.loaded = load_source_model(bundle)
        self.model = self.loaded.model.eval()
        pre = bundle.preprocess
        self.transform = open_clip.image_transform(
            tuple(pre["size"]), is_train=False, mean=tuple(pre["mean"]), std=tuple(pre["std"]),
            resize_mode=pre["resize_mode"], interpolation=pre["interpolation"], fill_color=pre.get("fill_color", 0))
        ctx = self.loaded.context_length
        spec = self.loaded.tokenizer  # open_clip's own tokenizer for the model (SigLIP's, or CLIP's BPE)
        reference = spec.reference() if spec is not None else None
        self.tokenize: Callable[[list[str]], Any] = (
            (lambda texts: torch.from_numpy(reference(texts))) if reference is not None
            else (lambda texts: open_clip.tokenizer.tokenize(texts, ctx)))

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.loaded.text_tower(self.tokenize(texts)).float().numpy()

    def label_matrix(self, labels: Sequence[Label], templates: Sequence[str]) -> np.ndarray:
        return embed_labels(labels, templates, self.encode_texts)

    @torch.no_grad()
    def embed_files(self, files: Sequence[Path], batch_size: int = 64,
                    progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, list[dict], np.ndarray]:
        """L2-normalised embeddings of readable files, failures, and the readable mask."""
        from PIL import Image

        out, failed, ok = [], [], np.zeros(len(files), bool)
        tower = self.loaded.image_tower
        for start in range(0, len(files), batch_size):
            xs = []
            for i in range(start, min(start + batch_size, len(files))):
                try:
                    with Image.open(files[i]) as im:
                        xs.append(self.transform(im.convert("RGB")))
                    ok[i] = True
                except Exception as exc:  # PIL raises many types for bad files
                    failed.append({"path": str(files[i]), "error": f"{type(exc).__name__}: {exc}"})
            if xs:
                e = tower(torch.stack(xs)).float()
                out.append(torch.nn.functional.normalize(e, dim=-1).numpy())
            if progress:
                progress(min(batch_size, len(files) - start))
        dim = self.loaded.embed_dim
        return (np.concatenate(out) if out else np.zeros((0, dim), np.float32)), failed, ok
