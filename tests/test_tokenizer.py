"""The torch-free CLIP tokenizer must give open_clip's token ids exactly."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgeclip.errors import BundleError, OptionError
from edgeclip.runtime.tokenizer import DEFAULT_VOCAB, ClipTokenizer

REPO = Path(__file__).resolve().parents[1]

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100 = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish",
    "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk",
    "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
)

#: Hand-written hard cases: unicode, mojibake, HTML, punctuation, numbers, whitespace, special-token text.
TRICKY = (
    "", " ", "   \t\n  ", "a", "A", "I", ".", "...", "!!!???", "a photo of a {}.", "{}", "<>", "</w>",
    "café", "Café au lait", "naïve résumé", "Crème Brûlée", "São Paulo", "Ærøskøbing", "Ångström", "Straße",
    "e\u0301cole", "cafe\u0301", "a\u0308\u0304", "Z\u0351\u0352a\u0353l\u0354g\u0355o\u0356",  # combining marks
    "東京タワー", "北京烤鸭", "한국어 텍스트", "日本語とEnglishの混在", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ１２３",
    "שלום עולם", "مرحبا بالعالم", "قطة جميلة cat", "Привет, мир!", "Ελληνικά γράμματα", "हिन्दी पाठ", "ไทย",
    "🐶", "a photo of a 🐱.", "👩‍👩‍👧‍👦 family", "🇫🇷🇯🇵", "✨ sparkle ✨", "heart ❤️ emoji", "1️⃣ keycap",
    "cafÃ©", "Ã©tÃ© Ã  Paris", "donâ€™t stop", "â€œquotedâ€\x9d", "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.",
    "&amp;", "&lt;b&gt;bold&lt;/b&gt;", "Tom &amp; Jerry", "&amp;amp;", "&quot;hi&quot; &#39;there&#39;",
    "&#x1F600; smile", "5 &gt; 3 &amp;&amp; 2 &lt; 4", "&nbsp;non&nbsp;breaking", "&copy; 2024",
    "don't", "DON'T", "we're", "they've", "I'm", "you'll", "he'd", "it's", "o'clock", "rock 'n' roll",
    "hello, world!", "hello...world", "(parenthesised) [bracketed] {braced}", "snake_case_name", "kebab-case-name",
    "e-mail: someone@example.com", "https://example.com/path?q=1&r=2#frag", "C:\\Windows\\System32",
    "#hashtag @mention $dollar %percent ^caret *star", "~tilde `backtick` |pipe| \\backslash",
    "--double--dash--", "a/b/c", "½ ¾ ¼", "™ ® ©", "«guillemets» „quotes“", "smart “quotes” and ‘apostrophes’",
    "0", "7", "42", "3.14159", "1,000,000", "2024-01-01", "12:30pm", "1st 2nd 3rd 4th", "0x1F", "1e10",
    "²³ superscripts", "٣ arabic-indic digit", "४ devanagari digit", "Ⅻ roman", "①②③",
    "  leading and trailing spaces  ", "multiple     internal     spaces", "tabs\tand\nnewlines\r\nmixed",
    "non\u00a0breaking\u2003em\u2009thin spaces", "zero\u200bwidth\u200cjoiner\u200d", "\ufeffbom at start",
    "UPPER CASE LABEL", "MiXeD cAsE", "ALLCAPSWORDTHATISLONG", "supercalifragilisticexpialidocious",
    "pneumonoultramicroscopicsilicovolcanoconiosis", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "<start_of_text>", "<end_of_text>", "a <start_of_text> b <end_of_text> c", "<START_OF_TEXT>x",
    "foo<end_of_text>bar", "<start_of_text><end_of_text>", "\x00\x01 control \x7f chars", "\u2028line sep",
    "ﬁ ligature ﬂ", "Ǆemal", "İstanbul", "ǅ titlecase", "\U0001d400\U0001d401 math bold",
)


def _long_strings() -> list[str]:
    """Over-long strings (> 77 tokens) that exercise open_clip's truncation."""
    words = "the quick brown fox jumps over the lazy dog".split()
    out = [" ".join(words[i % len(words)] for i in range(n)) for n in (75, 76, 77, 78, 80, 100, 300)]
    out += ["a " * 74 + "b", "a " * 75 + "b", "a " * 76 + "b", "word " * 1000]
    out += ["🐶" * 40, "東京" * 60, "!?" * 200 + " end", "1234567890" * 12, "x" * 5000]
    out += ["café " * 80, "&amp; " * 90, "<end_of_text> " * 100]
    return out


def _corpus() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    texts: list[str] = []
    classes = [*IMAGENET_CLASSNAMES, *CIFAR10, *(c.replace("_", " ") for c in CIFAR100), *CIFAR100]
    texts += classes
    # Every template, each with a class name chosen deterministically, plus every class in a few templates.
    for i, template in enumerate(OPENAI_IMAGENET_TEMPLATES):
        for j in range(6):
            texts.append(template(classes[(i * 37 + j * 101) % len(classes)]))
    for k, name in enumerate(classes):
        texts.append(OPENAI_IMAGENET_TEMPLATES[k % len(OPENAI_IMAGENET_TEMPLATES)](name))
    texts += TRICKY
    texts += [t.upper() for t in TRICKY] + [f"a photo of {t}." for t in TRICKY]
    texts += _long_strings()
    seen: dict[str, None] = dict.fromkeys(texts)
    return list(seen)


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    open_clip = pytest.importorskip("open_clip")
    return open_clip.tokenizer


@pytest.fixture(scope="module")
def tok() -> ClipTokenizer:
    return ClipTokenizer()


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    pytest.importorskip("open_clip")
    return _corpus()


def test_corpus_is_large_and_distinct(corpus: list[str]) -> None:
    assert len(set(corpus)) == len(corpus) >= 1000
    assert any(len(t) > 1000 for t in corpus) and "" in corpus


def test_matches_open_clip_default_tokenizer(tok: ClipTokenizer, open_clip_tokenizer, corpus: list[str]) -> None:
    import open_clip

    expected = open_clip_tokenizer.tokenize(corpus).numpy()
    via_factory = open_clip.get_tokenizer("ViT-B-32")(corpus).numpy()
    np.testing.assert_array_equal(expected, via_factory)

    got = tok(corpus)
    assert got.dtype == np.int64 and got.shape == (len(corpus), 77)
    mismatched = [corpus[i] for i in np.flatnonzero((got != expected).any(axis=1))]
    assert not mismatched, f"{len(mismatched)} strings differ from open_clip, e.g. {mismatched[:5]!r}"

    ref = open_clip_tokenizer._tokenizer
    for text in corpus:
        assert tok.encode(text) == ref.encode(text), text
    assert (tok.sot_token_id, tok.eot_token_id) == (ref.sot_token_id, ref.eot_token_id) == (49406, 49407)
    assert tok.vocab_size == ref.vocab_size == 49408


def test_truncation_keeps_eot_last(tok: ClipTokenizer, open_clip_tokenizer) -> None:
    for text in _long_strings():
        n_ids = len(tok.encode(text))
        row = tok(text)[0]
        np.testing.assert_array_equal(row, open_clip_tokenizer.tokenize(text).numpy()[0])
        if n_ids + 2 > 77:
            # (no "row != 0" check: id 0 is the real token "!", the same number as the padding)
            assert row[-1] == tok.eot_token_id
            assert row[:76].tolist() == [tok.sot_token_id, *tok.encode(text)[:75]]
        else:
            assert row[n_ids + 1] == tok.eot_token_id and (row[n_ids + 2:] == 0).all()


@pytest.mark.parametrize("context_length", [32, 1, 2, 100])
def test_other_context_length(context_length: int, open_clip_tokenizer, corpus: list[str]) -> None:
    texts = corpus[::7] + _long_strings()
    ours = ClipTokenizer(context_length=context_length)
    assert ours.context_length == context_length
    expected = open_clip_tokenizer.tokenize(texts, context_length=context_length).numpy()
    np.testing.assert_array_equal(ours(texts), expected)


def test_single_string_and_empty_list(tok: ClipTokenizer) -> None:
    one = tok("a photo of a dog.")
    assert one.shape == (1, 77) and one.dtype == np.int64
    assert one[0, 0] == tok.sot_token_id
    assert tok([]).shape == (0, 77)
    np.testing.assert_array_equal(tok(""), [[tok.sot_token_id, tok.eot_token_id] + [0] * 75])


@pytest.mark.parametrize("text", [
    "a photo of a dog.", "itap of my golden retriever", "the quick brown fox jumps over the lazy dog",
    "a bad photo of the 3 red cars, 12 bikes and one truck!", "don't stop", "x",
])
def test_decode_round_trips_plain_lowercase(tok: ClipTokenizer, text: str, open_clip_tokenizer) -> None:
    ids = tok.encode(text)
    decoded = tok.decode(ids)
    assert decoded == open_clip_tokenizer._tokenizer.decode(ids)
    # Every word ends in "</w>" -> space, so punctuation comes back space-separated.
    assert decoded.strip() == " ".join(open_clip_tokenizer._tokenizer.decode(ids).split())
    assert tok.encode(decoded) == ids
    if all(c.isalpha() or c == " " for c in text):
        assert decoded.strip() == text


def test_decode_unknown_id_raises(tok: ClipTokenizer) -> None:
    with pytest.raises(OptionError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])
    assert tok.decode([tok.sot_token_id, tok.eot_token_id]) == "<start_of_text><end_of_text>"
    assert tok.decode(np.array(tok.encode("hello world"), dtype=np.int64)) == "hello world "


def test_manifest_round_trip(tmp_path: Path, tok: ClipTokenizer) -> None:
    section = ClipTokenizer(context_length=32).manifest_section()
    assert section == {"type": "clip-bpe", "vocab": "tokenizer/bpe_simple_vocab_16e6.txt.gz", "context_length": 32}
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / DEFAULT_VOCAB.name).write_bytes(DEFAULT_VOCAB.read_bytes())
    loaded = ClipTokenizer.from_manifest(tmp_path, json.loads(json.dumps(section)))
    assert loaded.context_length == 32
    assert loaded.vocab_path == tmp_path / "tokenizer" / DEFAULT_VOCAB.name
    np.testing.assert_array_equal(loaded(["a photo of a cat."]), ClipTokenizer(context_length=32)("a photo of a cat."))


def test_from_manifest_missing_vocab_raises(tmp_path: Path) -> None:
    section = {"type": "clip-bpe", "vocab": "tokenizer/bpe_simple_vocab_16e6.txt.gz", "context_length": 77}
    with pytest.raises(BundleError, match="bpe_simple_vocab_16e6.txt.gz"):
        ClipTokenizer.from_manifest(tmp_path, section)


@pytest.mark.parametrize("section, message", [
    ({"type": "sentencepiece", "vocab": "tokenizer/x.model"}, "unknown tokenizer type 'sentencepiece'"),
    ({"vocab": "tokenizer/bpe_simple_vocab_16e6.txt.gz"}, "unknown tokenizer type None"),
    ({"type": "clip-bpe"}, "no 'vocab' path"),
    ({"type": "clip-bpe", "vocab": "v.gz", "context_length": 0}, "positive integer"),
    ({"type": "clip-bpe", "vocab": "../outside.gz"}, "inside the bundle"),
    ({"type": "clip-bpe", "vocab": "/etc/passwd"}, "inside the bundle"),
])
def test_from_manifest_rejects_bad_sections(tmp_path: Path, section: dict, message: str) -> None:
    with pytest.raises(BundleError, match=message.replace("(", r"\(")):
        ClipTokenizer.from_manifest(tmp_path, section)


def test_unreadable_vocab_raises_bundle_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt.gz"
    with pytest.raises(BundleError, match="nope.txt.gz"):
        ClipTokenizer(missing)
    not_gzip = tmp_path / "plain.txt.gz"
    not_gzip.write_text("not gzipped")
    with pytest.raises(BundleError, match="plain.txt.gz"):
        ClipTokenizer(not_gzip)
    malformed = tmp_path / "bad.txt.gz"
    malformed.write_bytes(gzip.compress(b"#version\na b c\n"))
    with pytest.raises(BundleError, match="bad.txt.gz"):
        ClipTokenizer(malformed)
    with pytest.raises(BundleError, match="vocabulary"):
        ClipTokenizer(tmp_path)  # a directory


def test_packaged_vocab_is_open_clips(open_clip_tokenizer) -> None:
    from open_clip.tokenizer import default_bpe

    assert DEFAULT_VOCAB.is_file()
    assert DEFAULT_VOCAB.read_bytes() == Path(default_bpe()).read_bytes()


def test_import_does_not_load_torch() -> None:
    code = (
        "import sys\n"
        "import edgeclip.runtime.tokenizer as t\n"
        "ids = t.ClipTokenizer()(['a photo of a dog.'])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip', 'torchvision'))\n"
        "assert not bad, bad\n"
        "print(ids[0, :6].tolist())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[49406, 320, 1125, 539, 320, 1929]"


def test_speed_of_1000_strings(corpus: list[str]) -> None:
    """Not a timing assertion (shared CI cores): prints the figure so regressions are visible with -s."""
    texts = corpus[:1000]
    fresh = ClipTokenizer()
    start = time.perf_counter()
    out = fresh(texts)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    fresh(texts)
    warm = time.perf_counter() - start
    assert out.shape == (1000, 77)
    print(f"\ntokenized 1000 strings: cold cache {cold * 1e3:.0f} ms, warm cache {warm * 1e3:.0f} ms")
