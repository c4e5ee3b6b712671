"""Torch-free Hugging Face tokenizer for the device runtime (SigLIP, SigLIP2 and other non-CLIP text towers).

Reproduces open_clip's ``HFTokenizer`` (what ``open_clip.get_tokenizer`` gives a model whose config names
``hf_tokenizer_name``) token for token, with the ``tokenizers`` library alone (the ``tokenizers`` extra;
no transformers, no torch):

* cleaning as open_clip's ``clean`` setting says: ``canonicalize`` (SigLIP: ftfy, HTML unescaped twice,
  ``_`` to space, ASCII punctuation removed, lowercased, whitespace collapsed), ``lower`` or ``whitespace``;
* the checkpoint's own ``tokenizer.json`` (normalizer, pre-tokenizer, model and the post-processor that adds
  the special tokens), written into the bundle at export from the tokenizer open_clip loads;
* truncated to the context length (special tokens included) and padded with the pad id, on the side the
  tokenizer was configured with; ``strip_sep_id``: that id replaced by 0 (open_clip's ``strip_sep_token``).

Very long texts are tokenized from a prefix that is certain to hold the first ``context_length`` tokens
(``context_length + 2`` times the longest vocabulary piece, cut at whitespace), so any text costs the same.
"""
from __future__ import annotations

import html
import posixpath
import string
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

import ftfy
import numpy as np

from ..errors import BundleError, OptionError

__all__ = ["TOKENIZER_TYPE", "HfTokenizer", "CLEANERS", "from_manifest"]

#: The manifest's ``tokenizer.type`` value this module understands.
TOKENIZER_TYPE = "hf-tokenizer"
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_SIDES = ("right", "left")


def _basic(text: str) -> str:
    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def _whitespace(text: str) -> str:
    return " ".join(text.split()).strip()


def _canonicalize(text: str) -> str:
    return " ".join(_basic(text).replace("_", " ").translate(_PUNCTUATION).lower().split()).strip()


#: open_clip's ``clean`` settings (``open_clip.tokenizer.get_clean_fn``)
CLEANERS: dict[str, Callable[[str], str]] = {
    "canonicalize": _canonicalize,
    "lower": lambda text: _whitespace(_basic(text)).lower(),
    "whitespace": lambda text: _whitespace(_basic(text)),
}


def _library() -> Any:
    from ..extras import require

    require("tokenizers", what="this bundle's tokenizer (a Hugging Face tokenizer.json)")
    import tokenizers

    return tokenizers


class HfTokenizer:
    """A ``tokenizer.json`` tokenizer with open_clip's cleaning, truncation and padding, without torch."""

    def __init__(self, path: str | Path, context_length: int, pad_id: int, clean: str = "canonicalize",
                 padding_side: str = "right", truncation_side: str = "right", strip_sep_id: int | None = None) -> None:
        if isinstance(context_length, bool) or not isinstance(context_length, (int, np.integer)) or context_length < 1:
            raise OptionError(f"context_length must be a positive integer, got {context_length!r}")
        if clean not in CLEANERS:
            raise OptionError(f"unknown tokenizer cleaning {clean!r}; use one of {', '.join(CLEANERS)}")
        if padding_side not in _SIDES or truncation_side not in _SIDES:
            raise OptionError(f"padding and truncation sides are 'right' or 'left', got {padding_side!r} and "
                              f"{truncation_side!r}")
        self.path = Path(path)
        self.context_length, self.pad_id, self.clean = int(context_length), int(pad_id), clean
        self.padding_side, self.truncation_side, self.strip_sep_id = padding_side, truncation_side, strip_sep_id
        tokenizers = _library()
        try:
            self.tokenizer = tokenizers.Tokenizer.from_file(str(self.path))
        except Exception as exc:  # the Rust side raises plain Exceptions for unreadable or invalid files
            raise BundleError(f"tokenizer file {self.path} is unreadable ({exc}); expected a Hugging Face "
                              f"tokenizer.json") from None
        self.vocab_size = int(self.tokenizer.get_vocab_size(with_added_tokens=True))
        if not 0 <= self.pad_id < self.vocab_size:
            raise BundleError(f"tokenizer {self.path}: pad id {self.pad_id} is outside its vocabulary "
                              f"(size {self.vocab_size})")
        self.tokenizer.enable_truncation(max_length=self.context_length, direction=truncation_side)
        self.tokenizer.enable_padding(direction=padding_side, pad_id=self.pad_id, length=self.context_length,
                                      pad_token=self.tokenizer.id_to_token(self.pad_id) or "")
        self.longest_piece = max((len(t) for t in self.tokenizer.get_vocab(with_added_tokens=True)), default=1)

    # ------------------------------------------------------------------ manifest
    @classmethod
    def from_manifest(cls, bundle_dir: Path, section: dict) -> HfTokenizer:
        """The tokenizer a bundle manifest's ``tokenizer`` section describes (file relative to the bundle)."""
        if not isinstance(section, dict) or section.get("type") != TOKENIZER_TYPE:
            raise BundleError(f"the tokenizer section of {bundle_dir}'s manifest is not of type {TOKENIZER_TYPE!r}")
        rel = section.get("vocab")
        normalized = PurePosixPath(posixpath.normpath(str(rel or "").replace("\\", "/")))
        if not rel or normalized.is_absolute() or normalized.parts[:1] == ("..",):
            raise BundleError(f"manifest 'tokenizer.vocab' must be a path inside the bundle {bundle_dir}, got {rel!r}")
        fields: dict[str, Any] = {}
        for key, kind, default in (("context_length", int, None), ("pad_id", int, None), ("clean", str, "canonicalize"),
                                   ("padding_side", str, "right"), ("truncation_side", str, "right"),
                                   ("strip_sep_id", int, None)):
            value = section.get(key, default)
            if value is None and default is None and key != "strip_sep_id":
                raise BundleError(f"manifest 'tokenizer.{key}' in {bundle_dir} is missing; re-export the bundle")
            if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
                raise BundleError(f"manifest 'tokenizer.{key}' in {bundle_dir} must be a {kind.__name__}, got {value!r}")
            fields[key] = value
        try:
            return cls(Path(bundle_dir) / normalized, **fields)
        except OptionError as exc:
            raise BundleError(f"manifest 'tokenizer' section in {bundle_dir}: {exc}; re-export the bundle") from None

    def manifest_section(self, vocab_relpath: str, **extra: Any) -> dict:
        """The manifest's ``tokenizer`` object for this tokenizer, its file stored at ``vocab_relpath``."""
        out = {"type": TOKENIZER_TYPE, "vocab": vocab_relpath, "context_length": self.context_length,
               "pad_id": self.pad_id, "clean": self.clean, "padding_side": self.padding_side,
               "truncation_side": self.truncation_side, **extra}
        if self.strip_sep_id is not None:
            out["strip_sep_id"] = self.strip_sep_id
        return out

    # ------------------------------------------------------------------ public API
    def clean_text(self, text: str) -> str:
        """``text`` cleaned as open_clip does for this tokenizer, cut to what its first tokens can come from."""
        if not isinstance(text, str):
            raise OptionError(f"the tokenizer takes strings, got {type(text).__name__}")
        text = CLEANERS[self.clean](text)
        if self.truncation_side == "right":
            budget = (self.context_length + 2) * self.longest_piece
            cut = text.find(" ", budget)
            if cut > 0:
                text = text[:cut]
        return text

    def encode(self, text: str) -> list[int]:
        """The ids of one text, with the special tokens, truncated and padded to the context length."""
        return list(self(text)[0])

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """Token matrix int64 [n, context_length], as open_clip's ``HFTokenizer`` makes it."""
        if isinstance(texts, str):
            texts = [texts]
        encoded = self.tokenizer.encode_batch([self.clean_text(t) for t in texts])
        out = np.array([e.ids for e in encoded], dtype=np.int64).reshape(len(texts), self.context_length)
        if self.strip_sep_id is not None:
            out[out == self.strip_sep_id] = 0
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={str(self.path)!r}, context_length={self.context_length})"


def from_manifest(bundle_dir: Path, section: dict) -> HfTokenizer:
    """The tokenizer of a bundle whose manifest names ``hf-tokenizer`` (``edgeclip.tables.TOKENIZERS``)."""
    return HfTokenizer.from_manifest(bundle_dir, section)
