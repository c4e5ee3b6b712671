"""Zero-shot classification with a bundle: image embeddings against the label matrix (torch-free)."""
from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from ..bundle import Bundle, load_bundle
from ..errors import EdgeclipError, OptionError
from .backends import Backend, create_backend
from .images import iter_batches, read_image
from .preprocess import PreprocessConfig, Preprocessor

log = logging.getLogger("edgeclip.runtime")

PRECISIONS = ("fp32", "int8")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def softmax(z: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class Prediction:
    """Top-k labels (best first) with their probabilities."""

    labels: list[str]
    scores: list[float]

    @property
    def label(self) -> str:
        return self.labels[0]

    @property
    def score(self) -> float:
        return self.scores[0]


@dataclass
class FileResult:
    """The outcome for one input file: a prediction, or the reason it failed."""

    path: Path
    prediction: Prediction | None = None
    error: str | None = None
    embedding: np.ndarray | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None


def open_image_encoder(bundle: Bundle, precision: str = "fp32", target: str | None = None,
                       backend: str = "auto", providers: Sequence[str] | None = None,
                       threads: int = 0) -> Backend:
    """The bundle's image encoder at ``precision`` on the chosen backend."""
    if precision not in PRECISIONS:
        raise OptionError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if backend == "tensorrt":
        from ..devices.engines import find_engine  # TensorRT engines are keyed per device

        return create_backend(find_engine(bundle, precision), "tensorrt")
    return create_backend(bundle.encoder("image", precision, target), backend, providers, threads)


class Classifier:
    """Classifies BGR images (OpenCV arrays) or image files against a bundle's labels."""

    def __init__(self, bundle: Bundle | str | os.PathLike[str], precision: str = "fp32",
                 target: str | None = None, backend: str = "auto", providers: Sequence[str] | None = None,
                 threads: int = 0, top_k: int = 5, encoder: Backend | None = None) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.precision = precision
        self.encoder = encoder or open_image_encoder(self.bundle, precision, target, backend, providers, threads)
        self.preprocessor = Preprocessor(PreprocessConfig.from_manifest(self.bundle.preprocess))
        self.logit_scale = self.bundle.logit_scale
        self.top_k = top_k
        self.max_batch = int(getattr(self.encoder, "max_batch", 0) or 0)
        names, matrix = self.bundle.labels()
        self.set_labels(names, matrix)

    def set_labels(self, names: Sequence[str], matrix: np.ndarray) -> None:
        """Replace the label set (e.g. after on-device relabelling)."""
        matrix = l2_normalize(matrix)
        if matrix.shape != (len(names), int(self.bundle.model["embed_dim"])):
            raise OptionError(f"label matrix shape {matrix.shape} does not match {len(names)} labels x "
                              f"embed_dim {self.bundle.model['embed_dim']}")
        self.label_names = list(names)
        self.label_matrix = matrix

    # -- numeric core ----------------------------------------------------------------------------------
    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """L2-normalised image embeddings for a preprocessed float32 [B, 3, H, W] batch."""
        step = self.max_batch or len(pixels)
        outs = [self.encoder.run(np.ascontiguousarray(pixels[i:i + step], dtype=np.float32))
                for i in range(0, len(pixels), step)]
        return l2_normalize(np.concatenate(outs, axis=0))

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """L2-normalised embeddings of BGR uint8 images."""
        return self.embed_pixels(self.preprocessor.batch(images))

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """softmax(logit_scale * cosine) over the labels, [B, N]."""
        return softmax(self.logit_scale * (embeddings @ self.label_matrix.T))

    def predictions(self, probs: np.ndarray, top_k: int | None = None) -> list[Prediction]:
        """Top-k predictions from a [B, N] probability matrix."""
        k = min(top_k or self.top_k, probs.shape[1])
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [Prediction([self.label_names[j] for j in row], [float(p[j]) for j in row])
                for p, row in zip(probs, order)]

    def classify(self, images: Sequence[np.ndarray], top_k: int | None = None) -> list[Prediction]:
        """Top-k predictions for BGR uint8 images."""
        return self.predictions(self.probabilities(self.embed(images)), top_k)

    # -- files -----------------------------------------------------------------------------------------
    def _load(self, path: Path) -> tuple[Path, np.ndarray | None, str | None]:
        try:
            return path, self.preprocessor(read_image(path)), None
        except EdgeclipError as exc:
            return path, None, str(exc)
        except Exception as exc:  # a decoder crash on one file must not end a batch of thousands
            return path, None, f"{path}: {type(exc).__name__}: {exc}"

    def classify_files(self, paths: Iterable[Path], batch_size: int = 32, workers: int = 0,
                       top_k: int | None = None, keep_embeddings: bool = False,
                       progress: Callable[[int], None] | None = None) -> Iterator[FileResult]:
        """Classify files in input order; unreadable files yield a FileResult with ``error`` set.

        Decoding and preprocessing run on ``workers`` threads (default: CPU count) one batch ahead of
        inference. ``paths`` is consumed lazily, one batch ahead, so it may be a generator of any length.
        """
        workers = workers or min(8, os.cpu_count() or 2)
        batches = iter_batches(paths, batch_size)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            def load_next() -> list[Future] | None:
                batch = next(batches, None)
                return None if batch is None else [pool.submit(self._load, p) for p in batch]

            pending = load_next()
            while pending is not None:
                loaded = [f.result() for f in pending]
                pending = load_next()  # decode the next batch while this one runs on the encoder
                yield from self._run_loaded(loaded, top_k, keep_embeddings)
                if progress:
                    progress(len(loaded))

    def _run_loaded(self, loaded: list, top_k: int | None, keep: bool) -> Iterator[FileResult]:
        good = [i for i, (_, _, err) in enumerate(loaded) if err is None]
        results: dict[int, FileResult] = {}
        if good:
            emb = self.embed_pixels(np.stack([loaded[i][1] for i in good]))
            for i, pred, e in zip(good, self.predictions(self.probabilities(emb), top_k), emb):
                results[i] = FileResult(loaded[i][0], pred, embedding=e if keep else None)
        for i, (p, _, err) in enumerate(loaded):
            yield results[i] if err is None else FileResult(p, error=err)
