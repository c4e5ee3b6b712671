"""Torch-free CLIP byte-pair-encoding tokenizer for the device runtime.

Reproduces open_clip's default tokenizer (``open_clip.tokenizer.SimpleTokenizer`` with ``clean="lower"``)
token for token, using only numpy, ``regex``, ``ftfy`` and the standard library:

* cleaning: ``ftfy.fix_text``, HTML unescaped twice, whitespace runs collapsed, stripped, lowercased;
* pre-tokenization: the special tokens, English contractions, runs of letters, single digits, runs of
  other non-space characters;
* each piece is UTF-8 encoded, mapped byte-by-byte to printable unicode characters and merged with the
  first ``49152 - 256 - 2`` BPE merges of the vocabulary file (the last symbol carries ``</w>``);
* ``__call__`` wraps ids as ``<start_of_text> ids <end_of_text>``, pads with 0 to the context length, and
  truncates an over-long sequence to the context length with its last kept token replaced by
  ``<end_of_text>`` (so the text encoder's argmax-over-eot pooling still finds it).
"""
from __future__ import annotations

import gzip
import html
import posixpath
import zlib
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

import ftfy
import numpy as np
import regex

from ..errors import BundleError, OptionError

__all__ = ["DEFAULT_VOCAB", "TOKENIZER_TYPE", "ClipTokenizer"]

#: The vocabulary (BPE merges) shipped with edgeclip: the same file as open_clip's ``bpe_simple_vocab_16e6``.
DEFAULT_VOCAB: Path = Path(__file__).resolve().parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"

#: The manifest's ``tokenizer.type`` value this module understands.
TOKENIZER_TYPE = "clip-bpe"

DEFAULT_CONTEXT_LENGTH = 77
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
END_OF_WORD = "</w>"
#: CLIP's vocabulary size; the merges used are what remains after the 256 byte symbols (counted twice: with
#: and without ``</w>``) and the 2 special tokens, i.e. lines 1 .. 48894 of the file (line 0 is a header).
_VOCAB_SIZE = 49152
_NUM_MERGES = _VOCAB_SIZE - 256 - 2
_BPE_CACHE_SIZE = 1 << 16
#: The decompressed vocabulary file is read up to this size (CLIP's is 1.6 MB).
_MAX_VOCAB_BYTES = 64 << 20
#: Texts longer than ``_CHARS_PER_TOKEN * context_length`` characters are tokenized from a prefix that is
#: grown until it yields a full context: any text length costs about the same.
_CHARS_PER_TOKEN = 8
#: When a prefix has to be cut inside a word, tokens from its last bytes (which the cut may change) are dropped.
_CUT_MARGIN_BYTES = 256


def _bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable unicode character (printable latin-1 bytes map to themselves)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    # Keep open_clip's ordering: printable bytes first, then the shifted ones (the vocabulary ids depend on it).
    seen = set(printable)
    order = printable + [b for b in range(256) if b not in seen]
    return {b: table[b] for b in order}


_BYTE_ENCODER: dict[int, str] = _bytes_to_unicode()
_BYTE_DECODER: dict[str, int] = {c: b for b, c in _BYTE_ENCODER.items()}


def clean_text(text: str) -> str:
    """open_clip's ``lower`` cleaning: fix mojibake, unescape HTML (twice), collapse whitespace, lowercase."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).strip().lower()


def _read_merges(path: Path) -> list[tuple[str, str]]:
    """Read the BPE merge list from a gzipped vocabulary file; raise BundleError naming the path."""
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read(_MAX_VOCAB_BYTES + 1)
        if len(raw) > _MAX_VOCAB_BYTES:
            raise BundleError(f"tokenizer vocabulary {path} decompresses to more than {_MAX_VOCAB_BYTES} bytes; "
                              "expected a CLIP BPE merges file such as bpe_simple_vocab_16e6.txt.gz")
        lines = raw.decode("utf-8").split("\n")
    except FileNotFoundError:
        raise BundleError(f"tokenizer vocabulary not found: {path}") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise BundleError(f"tokenizer vocabulary {path} is unreadable ({exc}); "
                          "expected a gzipped CLIP BPE merges file such as bpe_simple_vocab_16e6.txt.gz") from exc
    merges: list[tuple[str, str]] = []
    for lineno, line in enumerate(lines[1:_NUM_MERGES + 1], start=2):
        parts = line.split()
        if len(parts) != 2:
            if not parts and lineno == len(lines):  # trailing newline of a short file
                continue
            raise BundleError(f"tokenizer vocabulary {path} is malformed at line {lineno}: "
                              f"expected two symbols, got {line!r}")
        merges.append((parts[0], parts[1]))
    if not merges:
        raise BundleError(f"tokenizer vocabulary {path} holds no BPE merges")
    return merges


def _merge_pair(word: list[str], first: str, second: str) -> list[str]:
    """Replace every non-overlapping occurrence of (first, second), left to right, with the merged symbol."""
    merged: list[str] = []
    i, n = 0, len(word)
    while i < n:
        if i < n - 1 and word[i] == first and word[i + 1] == second:
            merged.append(first + second)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return merged


class ClipTokenizer:
    """CLIP BPE tokenizer equal to open_clip's default ``SimpleTokenizer``, without torch."""

    def __init__(self, vocab_path: str | Path | None = None, context_length: int = DEFAULT_CONTEXT_LENGTH) -> None:
        if isinstance(context_length, bool) or not isinstance(context_length, (int, np.integer)) \
                or context_length < 1:
            raise OptionError(f"context_length must be a positive integer, got {context_length!r}")
        self.vocab_path: Path = Path(vocab_path) if vocab_path is not None else DEFAULT_VOCAB
        self.context_length: int = int(context_length)

        merges = _read_merges(self.vocab_path)
        byte_symbols = list(_BYTE_ENCODER.values())
        vocab = byte_symbols + [s + END_OF_WORD for s in byte_symbols]
        vocab += [a + b for a, b in merges]
        vocab += [SOT_TOKEN, EOT_TOKEN]
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.decoder: dict[int, str] = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks: dict[tuple[str, str], int] = {pair: i for i, pair in enumerate(merges)}
        self.vocab_size: int = len(self.encoder)
        self.sot_token_id: int = self.encoder[SOT_TOKEN]
        self.eot_token_id: int = self.encoder[EOT_TOKEN]
        self._special = {SOT_TOKEN: [self.sot_token_id], EOT_TOKEN: [self.eot_token_id]}
        # Special tokens written in the text are kept whole, like open_clip does.
        self._pattern = regex.compile(
            "|".join(regex.escape(t) for t in self._special)
            + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        # Per-instance LRU cache: byte-mapped word -> its BPE ids.
        self._bpe_ids: Callable[[str], tuple[int, ...]] = lru_cache(maxsize=_BPE_CACHE_SIZE)(self._bpe_ids_uncached)

    # ------------------------------------------------------------------ manifest
    @classmethod
    def from_manifest(cls, bundle_dir: Path, section: dict) -> ClipTokenizer:
        """Build the tokenizer a bundle manifest's ``tokenizer`` section describes (vocab relative to the bundle)."""
        if not isinstance(section, dict):
            raise BundleError(f"manifest 'tokenizer' section must be an object, got {type(section).__name__}")
        kind = section.get("type")
        if kind != TOKENIZER_TYPE:
            raise BundleError(f"unknown tokenizer type {kind!r} in the bundle manifest at {bundle_dir}; "
                              f"this module reads {TOKENIZER_TYPE!r}")
        rel = section.get("vocab")
        if not isinstance(rel, str) or not rel:
            raise BundleError(f"manifest 'tokenizer' section in {bundle_dir} has no 'vocab' path")
        context_length: Any = section.get("context_length", DEFAULT_CONTEXT_LENGTH)
        if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 1:
            raise BundleError(f"manifest 'tokenizer.context_length' in {bundle_dir} must be a positive integer, "
                              f"got {context_length!r}")
        normalized = PurePosixPath(posixpath.normpath(rel.replace("\\", "/")))
        if normalized.is_absolute() or normalized.parts[:1] == ("..",):
            raise BundleError(f"manifest 'tokenizer.vocab' must be a path inside the bundle {bundle_dir}, got {rel!r}")
        return cls(Path(bundle_dir) / normalized, context_length=context_length)

    def manifest_section(self, vocab_relpath: str = "tokenizer/bpe_simple_vocab_16e6.txt.gz") -> dict:
        """The manifest's ``tokenizer`` object for this tokenizer, its vocab stored at ``vocab_relpath``."""
        return {"type": TOKENIZER_TYPE, "vocab": vocab_relpath, "context_length": self.context_length}

    # ------------------------------------------------------------------ BPE
    def _bpe_ids_uncached(self, token: str) -> tuple[int, ...]:
        """BPE-merge one byte-mapped word (greedy by merge rank) and return its vocabulary ids."""
        special = self._special.get(token)
        if special is not None:
            return tuple(special)
        word = [*token[:-1], token[-1] + END_OF_WORD]
        ranks = self.bpe_ranks
        while len(word) > 1:
            best: tuple[str, str] | None = None
            best_rank = len(ranks)
            for pair in zip(word, word[1:]):
                rank = ranks.get(pair)
                if rank is not None and rank < best_rank:
                    best, best_rank = pair, rank
            if best is None:
                break
            word = _merge_pair(word, *best)
        return tuple(self.encoder[symbol] for symbol in word)

    # ------------------------------------------------------------------ public API
    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` after cleaning, without start/end tokens."""
        if not isinstance(text, str):
            raise OptionError(f"the tokenizer takes strings, got {type(text).__name__}")
        ids: list[int] = []
        for piece in self._pattern.findall(clean_text(text)):
            mapped = "".join(_BYTE_ENCODER[b] for b in piece.encode("utf-8"))
            ids.extend(self._bpe_ids(mapped))
        return ids

    def _encode_cut(self, prefix: str) -> list[int]:
        """Ids of a prefix cut inside a word, without those from its last ``_CUT_MARGIN_BYTES`` bytes."""
        pieces = [p.encode("utf-8") for p in self._pattern.findall(clean_text(prefix))]
        keep_until = sum(len(p) for p in pieces) - _CUT_MARGIN_BYTES
        ids: list[int] = []
        pos = 0
        for piece in pieces:
            for token in self._bpe_ids("".join(_BYTE_ENCODER[b] for b in piece)):
                pos += len(self.decoder[token].replace(END_OF_WORD, ""))
                if pos > keep_until:
                    return ids
                ids.append(token)
        return ids

    def encode_head(self, text: str, limit: int) -> list[int]:
        """``encode(text)[:limit]``, with work bounded by ``limit`` rather than by the text's length.

        A long text is tokenized from a prefix ending at whitespace (or, inside one huge word, without the
        tokens near the cut), grown 4x until it yields ``limit`` ids.
        """
        if not isinstance(text, str):
            raise OptionError(f"the tokenizer takes strings, got {type(text).__name__}")
        budget = max(256, _CHARS_PER_TOKEN * limit)
        while len(text) > budget:
            cut = next((i for i in range(budget, budget // 2, -1) if text[i].isspace()), 0)
            ids = self.encode(text[:cut]) if cut else self._encode_cut(text[:budget])
            if len(ids) >= limit:
                return ids[:limit]
            budget *= 4
        return self.encode(text)[:limit]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids; word ends become spaces, invalid UTF-8 becomes U+FFFD (like open_clip)."""
        try:
            symbols = "".join(self.decoder[int(i)] for i in ids)
        except KeyError as exc:
            raise OptionError(f"token id {exc.args[0]} is outside the vocabulary (size {self.vocab_size})") from None
        except (TypeError, ValueError):
            raise OptionError("token ids must be integers") from None
        raw = bytes(_BYTE_DECODER[c] for c in symbols)
        return raw.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """Token matrix int64 [n, context_length]: sot + ids + eot, 0-padded; over-long rows end in eot."""
        if isinstance(texts, str):
            texts = [texts]
        n = self.context_length
        out = np.zeros((len(texts), n), dtype=np.int64)
        for row, text in enumerate(texts):
            tokens = [self.sot_token_id, *self.encode_head(text, n), self.eot_token_id]
            if len(tokens) > n:
                tokens = tokens[:n]
                tokens[-1] = self.eot_token_id
            out[row, :len(tokens)] = tokens
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(vocab_path={str(self.vocab_path)!r}, "
                f"context_length={self.context_length})")


def from_manifest(bundle_dir: Path, section: dict) -> ClipTokenizer:
    """The tokenizer of a bundle whose manifest names ``clip-bpe`` (``edgeclip.tables.TOKENIZERS``)."""
    return ClipTokenizer.from_manifest(bundle_dir, section)
