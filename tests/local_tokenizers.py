"""Small Hugging Face tokenizers trained here with the ``tokenizers`` library, standing in for the ones that
SigLIP (a SentencePiece Unigram, T5's layout: ``</s>`` appended and used as padding) and SigLIP2 (a Gemma
byte-fallback BPE: ``<bos>`` first, ``<pad>`` id 0) download from the model hub, which is not reachable here.

Each is written as a folder the way the hub stores one (``tokenizer.json``, ``tokenizer_config.json``,
``special_tokens_map.json``), so transformers' ``AutoTokenizer`` (what open_clip's ``HFTokenizer`` calls) and
edgeclip's export read it as they would the real one.
"""
from __future__ import annotations

import json
from pathlib import Path

from edgeclip.runtime.labels import resolve_templates

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck", "tench",
           "english springer", "cassette player", "chain saw", "church", "french horn", "garbage truck", "gas pump",
           "golf ball", "parachute", "delivery van", "photo", "itap", "over long prompt with punctuation numbers")


def corpus() -> list[str]:
    """Prompts of the eval classes with the 80 ImageNet templates, and the exporter's parity prompts."""
    _, templates = resolve_templates("imagenet80")
    from edgeclip.export.exporter import PARITY_PROMPTS

    return [t.format(c) for t in templates for c in CLASSES] + list(PARITY_PROMPTS)


def _write_folder(tok, folder: Path, config: dict, special: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                              **config}, indent=1))
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=1))
    return folder


def siglip_tokenizer(folder: Path, vocab_size: int = 400) -> Path:
    """A SentencePiece-style Unigram tokenizer laid out as SigLIP's (T5's): Metaspace pieces, ``</s>``
    appended to every text and used as padding, ``<unk>`` for the rest."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("  ", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", shrinking_factor=0.9)
    tok.train_from_iterator(corpus(), trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    special = {"eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}
    return _write_folder(tok, folder, {**special, "model_max_length": 64}, special)


def siglip2_tokenizer(folder: Path, vocab_size: int = 500) -> Path:
    """A Gemma-style byte-fallback BPE: spaces as ``▁`` and no pre-tokenizer (pieces learnt word by word, as
    SentencePiece does), ``<bos>`` before every text, ``<pad>`` (id 0) as padding."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")  # for training only
    tok.train_from_iterator(corpus(), trainer)
    tok.pre_tokenizer = None
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    special = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    return _write_folder(tok, folder, {**special, "model_max_length": 64}, special)
