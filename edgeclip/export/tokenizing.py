"""Which tokenizer a model's text tower reads, found offline, written into the bundle and checked.

open_clip tokenizes a model with CLIP's BPE unless its config names a Hugging Face tokenizer
(``text_cfg.hf_tokenizer_name``: SigLIP's SentencePiece, SigLIP2's Gemma, BERT, XLM-R...). The device
reads the first with ``edgeclip.runtime.tokenizer`` and the second with ``edgeclip.runtime.hf_tokenizer``
(the checkpoint's own ``tokenizer.json``). Here, at export:

* :func:`resolve_tokenizer` finds the tokenizer open_clip would use, without the hub: the folder given as
  ``tokenizer``, the model's own folder, or the Hugging Face cache; otherwise a ModelLoadError that says how
  to pass one;
* :func:`write_tokenizer` puts the device's tokenizer files into the bundle and returns the runtime
  tokenizer and its manifest section;
* :func:`check_tokenizer` compares the runtime tokenizer with open_clip's on the parity prompts and the
  labels' prompts (same ids, or an ExportError).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..bundle import BundleDraft
from ..errors import ExportError, ModelLoadError, OptionError
from ..runtime.hf_tokenizer import CLEANERS, HfTokenizer
from ..runtime.tokenizer import DEFAULT_VOCAB, ClipTokenizer

#: files of a Hugging Face tokenizer folder that say how to load it (besides tokenizer.json)
_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")


@dataclass
class TokenizerSpec:
    """The tokenizer of a model: its kind (a row of ``edgeclip.tables.TOKENIZERS``), the local folder of a
    Hugging Face one, and the open_clip settings it is used with."""

    kind: str
    context_length: int
    name: str = ""  # the config's hf_tokenizer_name
    folder: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # open_clip's tokenizer_kwargs

    def reference(self) -> Callable[[list[str]], np.ndarray]:
        """open_clip's own tokenizer for this model (what the torch model was trained and is checked with)."""
        from open_clip.tokenizer import SimpleTokenizer

        if self.kind == "clip-bpe":
            simple = SimpleTokenizer(context_length=self.context_length, **self.settings)
            return lambda texts: simple(texts).numpy()
        hf = self.hf()
        return lambda texts: hf(texts).numpy()

    def hf(self) -> Any:
        """open_clip's ``HFTokenizer`` on the local folder."""
        from open_clip.tokenizer import HFTokenizer

        return HFTokenizer(str(self.folder), context_length=self.context_length, **self.settings)


def _is_tokenizer_folder(path: Path) -> bool:
    return (path / "tokenizer.json").is_file() or any((path / f).is_file() for f in _CONFIG_FILES)


def _cached_folder(name: str) -> Path | None:
    """The Hugging Face cache's snapshot of tokenizer ``name`` (no download), or None."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(name, local_files_only=True,
                                        allow_patterns=["tokenizer*", "special_tokens_map.json", "*.model",
                                                        "vocab*", "merges.txt"]))
    except Exception:  # not cached, no huggingface_hub, a malformed name: all mean "not here"
        return None
    return folder if _is_tokenizer_folder(folder) else None


def resolve_tokenizer(config: dict[str, Any], model_id: str, context_length: int, family: str = "",
                      given: str | os.PathLike[str] | None = None,
                      model_folder: Path | None = None) -> TokenizerSpec:
    """The tokenizer of an open_clip model ``config``; the Hugging Face one from ``given`` (a folder, or a
    ``tokenizer.json`` inside one), the model's folder or the local cache, never the network.

    ModelLoadError naming the model, its family and the way to pass the tokenizer when it is not here;
    OptionError for a ``given`` tokenizer that the model does not use or that is not a tokenizer folder.
    """
    text = config.get("text_cfg") or {}
    settings = dict(text.get("tokenizer_kwargs") or {})
    name = text.get("hf_tokenizer_name")
    if not name:
        if given:
            raise OptionError(f"{model_id} tokenizes with CLIP's BPE, which edgeclip ships: drop `tokenizer`")
        return TokenizerSpec("clip-bpe", context_length, settings=settings)
    if settings.get("tokenizer_mode"):
        raise ModelLoadError(f"{model_id}: open_clip's tokenizer mode {settings['tokenizer_mode']!r} has no "
                             f"torch-free twin in edgeclip yet; this model cannot be exported")
    if settings.get("clean", "whitespace") not in CLEANERS:
        raise ModelLoadError(f"{model_id}: unknown tokenizer cleaning {settings['clean']!r}")
    folder = None
    if given:
        folder = Path(given).expanduser()
        folder = folder.parent if folder.is_file() else folder
        if not folder.is_dir() or not _is_tokenizer_folder(folder):
            raise OptionError(f"tokenizer={str(given)!r} is not a Hugging Face tokenizer folder: pass the folder "
                              f"that holds tokenizer.json and tokenizer_config.json (the hub snapshot of {name})")
    elif model_folder is not None and _is_tokenizer_folder(model_folder):
        folder = model_folder
    else:
        folder = _cached_folder(name)
    if folder is None:
        what = f"{model_id} ({family} family)" if family else model_id
        raise ModelLoadError(f"{what} tokenizes with the Hugging Face tokenizer {name!r}, which is not available "
                             f"offline here (no model hub, not in the local cache): pass its folder with "
                             f"`tokenizer` (the files tokenizer.json and tokenizer_config.json of {name}, e.g. "
                             f"a copy of its hub snapshot)")
    return TokenizerSpec("hf-tokenizer", context_length, str(name), folder.resolve(), settings)


def _backend_json(hf_tokenizer: Any, where: Path) -> str:
    """The ``tokenizer.json`` of a loaded Hugging Face tokenizer, without any padding/truncation state."""
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelLoadError(f"the tokenizer in {where} loads as {type(hf_tokenizer).__name__}, which has no "
                             f"tokenizer.json (a SentencePiece-only tokenizer): give a folder with the tokenizer's "
                             f"tokenizer.json (its fast version) as `tokenizer`")
    doc = json.loads(backend.to_str())
    doc["truncation"], doc["padding"] = None, None
    return json.dumps(doc, ensure_ascii=False)


def write_tokenizer(draft: BundleDraft, spec: TokenizerSpec,
                    vocab_size: int | None = None) -> tuple[ClipTokenizer | HfTokenizer, dict[str, Any]]:
    """Write the device's tokenizer files into ``draft``; returns the runtime tokenizer and the manifest's
    ``tokenizer`` section. ``vocab_size``: rows of the text tower's token embedding (ids must stay below)."""
    if spec.kind == "clip-bpe":
        tokenizer = ClipTokenizer(context_length=spec.context_length)
        vocab = draft.new_file("tokenizer/" + DEFAULT_VOCAB.name)
        shutil.copyfile(DEFAULT_VOCAB, vocab)
        draft.add_file(f"tokenizer/{vocab.name}", "tokenizer")
        return tokenizer, tokenizer.manifest_section(f"tokenizer/{vocab.name}")
    try:
        hf = spec.hf()
    except ModelLoadError:
        raise
    except Exception as exc:  # transformers raises many types for an unusable folder
        raise ModelLoadError(f"the tokenizer folder {spec.folder} does not load ({type(exc).__name__}: {exc}); "
                             f"pass the folder of {spec.name} with `tokenizer`") from exc
    inner = hf.tokenizer
    if inner.pad_token_id is None:
        raise ModelLoadError(f"the tokenizer in {spec.folder} has no pad token, which open_clip pads with; "
                             f"give a folder whose tokenizer_config.json names pad_token")
    rel = "tokenizer/tokenizer.json"
    path = draft.new_file(rel)
    path.write_text(_backend_json(inner, spec.folder), encoding="utf-8")
    draft.add_file(rel, "tokenizer")
    strip = inner.sep_token_id if spec.settings.get("strip_sep_token") else None
    tokenizer = HfTokenizer(path, spec.context_length, int(inner.pad_token_id), spec.settings.get("clean", "whitespace"),
                            str(getattr(inner, "padding_side", "right")), str(getattr(inner, "truncation_side", "right")),
                            strip)
    if vocab_size is not None and tokenizer.vocab_size > vocab_size:
        raise ModelLoadError(f"the tokenizer in {spec.folder} has {tokenizer.vocab_size} ids but the model's text "
                             f"tower embeds only {vocab_size}: it is not this model's tokenizer")
    return tokenizer, tokenizer.manifest_section(rel, source=spec.name)


def check_tokenizer(tokenizer: Callable[[list[str]], np.ndarray], spec: TokenizerSpec,
                    texts: Sequence[str]) -> dict[str, Any]:
    """The runtime tokenizer against open_clip's on ``texts``: the manifest's ``parity.tokenizer`` record, or
    an ExportError naming the first text whose ids differ."""
    texts = list(dict.fromkeys(texts))
    want, got = spec.reference()(texts), tokenizer(texts)
    if want.shape != got.shape or not np.array_equal(want, got):
        bad = next((i for i in range(min(len(want), len(got))) if not np.array_equal(want[i], got[i])), 0)
        raise ExportError(f"the torch-free {spec.kind} tokenizer disagrees with open_clip's on {texts[bad]!r}: "
                          f"{got[bad].tolist()} instead of {want[bad].tolist()}; report the model")
    return {"kind": spec.kind, "texts": len(texts), "equal": True}
