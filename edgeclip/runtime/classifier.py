"""Zero-shot classification with a bundle: image embeddings against the label matrix (torch-free)."""
from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, Union

import numpy as np

from ..bundle import Bundle, load_bundle
from ..errors import BundleError, EdgeclipError, ImageReadError, OptionError
from ..options import LoadOptions
from .backends import Backend, create_backend
from .cpu import lower_thread_priority
from .images import decode_image, read_image
from .labels import Label, check_labels, embed_labels, resolve_templates
from .preprocess import PreprocessConfig, Preprocessor
from .scoring import probabilities
from .text import TextEncoder, bundle_templates

log = logging.getLogger("edgeclip.runtime")

#: default ``Classifier.decode_ratio``: JPEGs at least twice the model input decode at a reduced DCT scale
DECODE_RATIO = 2.0
#: default ``Classifier.decode_nice``: how much lower the decoding threads' CPU priority is than the encoder's.
#: 0: measured here (bench_batch.py --nice 10,0, 12 MP JPEGs, OpenVINO) nicer decoders gained nothing and lost
#: to any other process on the machine (0.20 vs 0.33 of the encoder's rate with other work running)
DECODE_NICE = 0


_END = object()


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass
class Prediction:
    """Top-k labels (best first) with their probabilities."""

    labels: list[str]
    scores: list[float]

    @property
    def label(self) -> str:
        """The best label."""
        return self.labels[0]

    @property
    def score(self) -> float:
        """The best label's probability."""
        return self.scores[0]

    def to_dict(self) -> dict[str, Any]:
        """``{"label", "score", "top": [{"label", "score"}...]}``, plain JSON types."""
        return {"label": self.label, "score": self.score,
                "top": [{"label": lab, "score": sc} for lab, sc in zip(self.labels, self.scores)]}


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


def check_output_width(bundle: Bundle, encoder: Backend, size: tuple[int, int]) -> None:
    """The image encoder gives [batch, model.embed_dim], or a BundleError at load (not a matmul error later).

    The width is read from the backend (``output_width()``: the declared or inferred output shape); where
    the backend cannot say, one blank image is run through the encoder to see.
    """
    dim = int(bundle.model["embed_dim"])
    width = getattr(encoder, "output_width", lambda: None)()
    shape: tuple[int, ...] = (1, width) if width is not None else ()
    if width is None:
        try:
            shape = tuple(np.shape(encoder.run(np.zeros((1, 3, *size), np.float32))))
        except EdgeclipError:
            raise
        except Exception as exc:  # the engine's own error type, for a model that cannot run at all
            raise BundleError(f"{bundle.path}: the image encoder cannot run a {size[1]}x{size[0]} image "
                              f"({type(exc).__name__}: {exc}); re-export the bundle") from None
    if len(shape) != 2 or shape[1] != dim:
        raise BundleError(f"{bundle.path}: the image encoder gives {list(shape[1:])} values per image where the "
                          f"manifest's model.embed_dim is {dim} (the labels are {dim}-wide); the encoder and the "
                          f"manifest disagree: re-export the bundle")


#: One image: a uint8 array (BGR as OpenCV gives it, unless ``color="rgb"`` says otherwise; gray or BGRA
#: too), a ``PIL.Image.Image``, a file path, or encoded bytes.
ImageInput = Union[np.ndarray, str, os.PathLike, bytes, bytearray, memoryview, Any]
#: the channel orders an array may come in (``color``): OpenCV's BGR, or RGB as Pillow, imageio and
#: matplotlib give
COLORS = ("bgr", "rgb")


def _is_pil(x: Any) -> bool:
    return type(x).__module__.startswith("PIL.") and hasattr(x, "convert")


def to_image(x: ImageInput, min_size: int | None = None, color: str = "bgr") -> np.ndarray:
    """Decode one image input to a BGR uint8 array; anything else is an ImageReadError saying what is accepted.

    ``color``: the channel order of an array given (``bgr``, OpenCV's, or ``rgb``); a ``PIL.Image`` is read
    as its mode says (EXIF orientation is not applied to an Image object: ``ImageOps.exif_transpose`` it
    first); files and bytes are decoded upright. ``min_size`` lets a large JPEG path or bytes decode at a
    reduced DCT scale (see ``decode_image``).
    """
    if color not in COLORS:
        raise ImageReadError(f"unknown color {color!r}; use one of {', '.join(COLORS)} (the order of an array's "
                             f"channels)")
    if isinstance(x, np.ndarray):
        if x.ndim not in (2, 3):
            raise ImageReadError(f"an image array must be HxW (gray) or HxWx3 (BGR, or RGB with color='rgb'), got "
                                 f"shape {x.shape}; pass several images as a list or as one [N, H, W, 3] array")
        return x[:, :, 2::-1] if color == "rgb" and x.ndim == 3 and x.shape[2] in (3, 4) else x
    if _is_pil(x):
        return np.ascontiguousarray(np.asarray(x.convert("RGB"))[:, :, ::-1])
    if isinstance(x, (str, os.PathLike)):
        return read_image(x, min_size=min_size)
    if isinstance(x, (bytes, bytearray, memoryview)):
        return decode_image(bytes(x), min_size=min_size)
    raise ImageReadError(f"cannot classify a {type(x).__name__}: pass an HxWx3 uint8 array (BGR, or RGB with "
                         f"color='rgb'), a PIL.Image, a file path or encoded image bytes, or a list of them")


def as_images(x: ImageInput | Sequence[ImageInput], min_size: int | None = None,
              color: str = "bgr") -> tuple[list[np.ndarray], bool]:
    """(decoded BGR images, whether ``x`` was a single image rather than a list or a 4-D batch array)."""
    if isinstance(x, np.ndarray) and x.ndim == 4:
        return [to_image(i, min_size, color) for i in x], False
    if isinstance(x, (np.ndarray, str, os.PathLike, bytes, bytearray, memoryview)) or _is_pil(x):
        return [to_image(x, min_size, color)], True
    if isinstance(x, Sequence) or isinstance(x, Iterable):
        return [to_image(i, min_size, color) for i in x], False
    return [to_image(x, min_size, color)], True


class Classifier:
    """Zero-shot classifier over a bundle: images in, label probabilities out (torch-free).

    Build one with :func:`edgeclip.load`, which picks the device's backend and precision. Constructed
    directly it runs ONNX Runtime on the encoder file that ``precision``/``target`` name, or on the
    ``encoder`` backend given.
    """

    def __init__(self, bundle: Bundle | str | os.PathLike[str], options: LoadOptions | None = None, *,
                 encoder: Backend | None = None, precision: str | None = None,
                 text_providers: Sequence[str] | None = None) -> None:
        """Constructed directly (``encoder=None``) it opens the bundle's ONNX file that ``options.precision``
        and ``options.target`` name (``auto``: fp32) with ``options.backend`` (``auto``: ONNX Runtime);
        :func:`edgeclip.load` picks them for the device and passes the opened ``encoder`` and its
        ``precision``. ``text_providers``: ONNX Runtime providers of the text encoder (default: the CPU)."""
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.options = options or LoadOptions()
        if encoder is None:
            precision = "fp32" if self.options.precision == "auto" else self.options.precision
            encoder = create_backend(self.bundle.encoder("image", "int8" if precision == "int8" else "fp32",
                                                         self.options.target), self.options, precision, self.bundle)
        self.precision = precision or "fp32"
        self.encoder = encoder
        self._warmed = 0  # the largest batch size warm_up ran
        self.choice: Any = None  # how edgeclip.load chose the encoder (devices.backends.EncoderChoice)
        self.preprocessor = Preprocessor(PreprocessConfig.from_manifest(self.bundle.preprocess))
        self.logit_scale = self.bundle.logit_scale
        self.logit_bias = self.bundle.info.model.logit_bias
        self.scoring = self.bundle.info.model.scoring
        self.top_k = self.options.top_k
        self.max_batch = int(getattr(self.encoder, "max_batch", 0) or 0)
        #: a JPEG whose short side is at least this many times the model input is decoded at the largest
        #: reduced DCT scale that keeps it so (0: always decode at full size); see ``decode_min_size``
        self.decode_ratio = DECODE_RATIO
        #: decoding threads of :meth:`classify_files` run this much nicer than the encoder (Linux; 0, the
        #: default: same priority); nicer decoders take only the cycles the encoder leaves
        self.decode_nice = DECODE_NICE
        self.text_providers = list(text_providers or ["cpu"])
        self._text_encoder: TextEncoder | None = None
        check_output_width(self.bundle, self.encoder, self.preprocessor.config.size)
        names, matrix = self.bundle.labels()
        self.set_label_matrix(names, matrix)

    def __repr__(self) -> str:
        what = self.choice.describe() if self.choice is not None else f"{self.encoder.name} ({self.precision})"
        return f"<Classifier {self.bundle.path}: {len(self.label_names)} labels; {what}>"

    # -- labels ----------------------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        """The current label names, in the order of the probability columns."""
        return list(self.label_names)

    @property
    def text_encoder(self) -> TextEncoder:
        """The bundle's text encoder (opened on first use)."""
        if self._text_encoder is None:
            self._text_encoder = TextEncoder.from_bundle(self.bundle, self.text_providers)
        return self._text_encoder

    def embed_labels(self, labels: Sequence[str | Label], templates: Sequence[str] | str | None = None) -> np.ndarray:
        """The L2-normalised [N, D] matrix of ``labels``, embedded on this device with the bundle's text encoder.

        ``templates`` is a template set name or file (see ``resolve_templates``), a list of templates, or
        None for the ones the bundle's labels were embedded with.
        """
        items = check_labels([lab if isinstance(lab, Label) else Label(str(lab)) for lab in labels], "labels")
        if templates is None:
            _, chosen = bundle_templates(self.bundle)
        elif isinstance(templates, str):
            _, chosen = resolve_templates(templates)
        else:
            chosen = list(templates)
        return embed_labels(items, chosen, self.text_encoder)

    def set_labels(self, labels: Sequence[str | Label], templates: Sequence[str] | str | None = None) -> None:
        """Replace the label set, re-embedding it on the device through the bundle's text encoder.

        The bundle on disk is unchanged (``edgeclip labels`` / ``relabel_bundle`` write one).
        """
        matrix = self.embed_labels(labels, templates)
        self.set_label_matrix([lab.name if isinstance(lab, Label) else str(lab) for lab in labels], matrix)

    def set_label_matrix(self, names: Sequence[str], matrix: np.ndarray) -> None:
        """Replace the label set with names and their precomputed [N, D] embeddings (normalised here)."""
        matrix = l2_normalize(matrix)
        dim = int(self.bundle.model["embed_dim"])
        if matrix.ndim != 2 or matrix.shape != (len(names), dim):
            raise OptionError(f"label matrix shape {matrix.shape} does not match {len(names)} labels x "
                              f"embed_dim {dim}")
        if not np.isfinite(matrix).all():
            raise OptionError("the label matrix holds NaN or infinite values; re-embed the labels")
        self.label_names = list(names)
        self.label_matrix = matrix

    # -- numeric core ----------------------------------------------------------------------------------
    def warm_up(self, max_batch: int) -> float:
        """Run the encoder once at every batch size up to ``max_batch`` not run this way before (backends compile
        and allocate per shape), so no later call pays for it and memory is at its plateau from the start (a
        service and the watcher it runs warm up once); returns seconds."""
        t = time.perf_counter()
        th, tw = self.preprocessor.config.size
        done = self._warmed
        pixels = np.zeros((max_batch, 3, th, tw), np.float32)
        for n in range(done + 1, max_batch + 1):
            self.embed_pixels(pixels[:n])
        self._warmed = max(done, max_batch)
        return time.perf_counter() - t

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """L2-normalised image embeddings for a preprocessed float32 [B, 3, H, W] batch."""
        step = self.max_batch or len(pixels)
        outs = [self.encoder.run(np.ascontiguousarray(pixels[i:i + step], dtype=np.float32))
                for i in range(0, len(pixels), step)]
        emb = np.concatenate(outs, axis=0)
        dim = int(self.bundle.model["embed_dim"])
        if emb.ndim != 2 or emb.shape[1] != dim:  # a model whose declared shape is not what it computes
            raise BundleError(f"{self.bundle.path}: the image encoder gave {list(emb.shape[1:])} values per image "
                              f"where the manifest's model.embed_dim is {dim}; re-export the bundle")
        return l2_normalize(emb)

    def embed(self, x: ImageInput | Sequence[ImageInput], color: str = "bgr") -> np.ndarray:
        """L2-normalised image embeddings: [D] for one image, [N, D] for a list (see :meth:`classify`)."""
        images, single = as_images(x, self.decode_min_size(), color)
        emb = self.embed_pixels(self.preprocessor.batch(images)) if images else self._no_embeddings()
        return emb[0] if single else emb

    def _no_embeddings(self) -> np.ndarray:
        return np.zeros((0, int(self.bundle.model["embed_dim"])), np.float32)

    def probabilities(self, embeddings: np.ndarray, label_matrix: np.ndarray | None = None) -> np.ndarray:
        """Label probabilities [B, N] of L2-normalised image embeddings, scored as the bundle says
        (``scoring(logit_scale * cosine + logit_bias)``); ``label_matrix`` defaults to the current labels'."""
        matrix = self.label_matrix if label_matrix is None else label_matrix
        return probabilities(embeddings @ matrix.T, self.logit_scale, self.logit_bias, self.scoring)

    def predictions(self, probs: np.ndarray, top_k: int | None = None) -> list[Prediction]:
        """Top-k predictions from a [B, N] probability matrix."""
        k = min(top_k or self.top_k, probs.shape[1])
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [Prediction([self.label_names[j] for j in row], [float(p[j]) for j in row])
                for p, row in zip(probs, order)]

    def classify(self, x: ImageInput | Sequence[ImageInput], top_k: int | None = None,
                 color: str = "bgr") -> Prediction | list[Prediction]:
        """Top-k predictions: one image (array, PIL.Image, path or bytes) gives one Prediction, a list a list.

        An array is one image when it is HxW or HxWx3 uint8, a batch when it is [N, H, W, 3]; its channels
        are BGR, as OpenCV decodes (``color="rgb"`` for RGB arrays, as Pillow, imageio or matplotlib give:
        an RGB array read as BGR is classified wrong without any error). Any other shape or dtype is an
        ImageReadError.
        """
        images, single = as_images(x, self.decode_min_size(), color)
        if not images:
            return []
        preds = self.predictions(self.probabilities(self.embed(images)), top_k)
        return preds[0] if single else preds

    # -- files -----------------------------------------------------------------------------------------
    def decode_min_size(self, exact: bool = False) -> int | None:
        """The short side a reduced JPEG decode must keep: ``decode_ratio`` x the model input's larger side
        (224 px input, ratio 2: 448 px, so a 4000x3000 photo decodes at 1/4 scale); None with ``exact`` or
        ``decode_ratio`` 0 (full-size decoding)."""
        if exact or not self.decode_ratio:
            return None
        if self.decode_ratio < 1:
            raise OptionError(f"decode_ratio must be 0 (full-size decoding) or >= 1, got {self.decode_ratio!r}")
        return math.ceil(self.decode_ratio * max(self.preprocessor.config.size))

    def load_file(self, path: Path, min_size: int | None = None) -> tuple[Path, np.ndarray | None, str | None]:
        """(path, float32 [3, H, W] model input, None), or (path, None, the reason) for a file that fails."""
        try:
            return path, self.preprocessor(read_image(path, min_size=min_size)), None
        except EdgeclipError as exc:
            return path, None, str(exc)
        except Exception as exc:  # a decoder crash on one file must not end a batch of thousands
            return path, None, f"{path}: {type(exc).__name__}: {exc}"

    def classify_files(self, paths: Iterable[Path], batch_size: int = 32, workers: int = 0,
                       top_k: int | None = None, keep_embeddings: bool = False,
                       progress: Callable[[int], None] | None = None, exact_decode: bool = False,
                       prefetch: int = 0) -> Iterator[FileResult]:
        """Classify files in input order; unreadable files yield a FileResult with ``error`` set.

        Decoding and preprocessing run on ``workers`` threads (default: CPU count, at most 8), overlapped
        with inference: while the encoder runs one batch, the threads work on up to ``prefetch`` further
        files (default one batch). OpenCV's decoder, the resampler's matrix products and the encoder
        release the GIL. ``paths`` is consumed lazily, that far ahead, so it may be a generator of any
        length. Large JPEGs decode at a reduced DCT scale (see :meth:`decode_min_size`) unless
        ``exact_decode``. ``progress`` is called after each batch's results were consumed.
        """
        if batch_size < 1:
            raise OptionError(f"batch size must be >= 1 (got {batch_size})")
        workers = workers or min(8, os.cpu_count() or 2)
        ahead = max(prefetch or batch_size, batch_size)
        min_size = self.decode_min_size(exact_decode)
        todo = iter(paths)
        window: deque[Future] = deque()
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgeclip-decode",
                                  initializer=lower_thread_priority, initargs=(self.decode_nice,))

        def fill() -> None:
            while len(window) < ahead:
                path = next(todo, _END)
                if path is _END:
                    return
                window.append(pool.submit(self.load_file, path, min_size))

        try:
            fill()
            while window:
                loaded = [window.popleft().result() for _ in range(min(batch_size, len(window)))]
                fill()  # keep the threads busy while this batch runs on the encoder
                yield from self._run_loaded(loaded, top_k, keep_embeddings)
                if progress:
                    progress(len(loaded))
        finally:  # interrupted or closed early: drop what is queued, wait only for files being decoded
            pool.shutdown(wait=True, cancel_futures=True)

    def _run_loaded(self, loaded: list, top_k: int | None, keep: bool) -> Iterator[FileResult]:
        good = [i for i, (_, _, err) in enumerate(loaded) if err is None]
        results: dict[int, FileResult] = {}
        if good:
            emb = self.embed_pixels(np.stack([loaded[i][1] for i in good]))
            for i, pred, e in zip(good, self.predictions(self.probabilities(emb), top_k), emb):
                results[i] = FileResult(loaded[i][0], pred, embedding=e if keep else None)
        for i, (p, _, err) in enumerate(loaded):
            yield results[i] if err is None else FileResult(p, error=err)
