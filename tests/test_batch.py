"""Offline batch: reduced DCT decoding of large JPEGs, and resumable result files (--resume)."""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeclip.cli import main
from edgeclip.errors import OptionError
from edgeclip.batch.resume import complete_prefix, resume_output
from edgeclip.runtime.classifier import Classifier
from edgeclip.runtime.decode_pillow import decode_pillow
from edgeclip.runtime.images import decode_image, jpeg_reduction, read_image

REPO = Path(__file__).resolve().parents[1]


# -- reduced DCT decoding ----------------------------------------------------------------------------------
def _jpeg_with_orientation(width: int, height: int, orientation: int) -> bytes:
    """A JPEG, stored ``width`` x ``height``: left half red, right half blue, a green top-left corner."""
    from PIL import Image

    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 2] = (255, 0, 0)
    a[:, width // 2:] = (0, 0, 255)
    a[: height // 4, : width // 8] = (0, 255, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def test_the_largest_scale_that_keeps_the_short_side() -> None:
    assert jpeg_reduction(4000, 3000, 448) == 4  # 750 >= 448, 375 < 448
    assert jpeg_reduction(4000, 3000, 128) == 8
    assert jpeg_reduction(3000, 4000, 1500) == 2
    assert jpeg_reduction(4000, 3000, 1501) == 1
    assert jpeg_reduction(4000, 3000, None) == 1
    assert jpeg_reduction(1001, 1001, 126) == 8  # libjpeg rounds up: ceil(1001 / 8) = 126


@pytest.mark.parametrize("decoder", ["opencv", "pillow"])
def test_reduced_decoding_applies_the_exif_orientation(decoder: str) -> None:
    data = _jpeg_with_orientation(1600, 800, 6)  # 6: shown rotated 90 degrees clockwise
    if decoder == "opencv":
        full, reduced = decode_image(data), decode_image(data, min_size=200)
    else:
        from PIL import Image, ImageOps

        full = decode_pillow(data)
        reduced = decode_pillow(data, reduce=4)
        assert ImageOps.exif_transpose(Image.open(io.BytesIO(data))).size == (800, 1600)
    assert full.shape == (1600, 800, 3) and reduced.shape == (400, 200, 3)  # upright, 1/4 scale
    small = cv2.resize(full, (200, 400), interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(int) - reduced).mean() < 3
    assert np.abs(reduced[5, -5].astype(int) - (0, 255, 0)).max() < 12  # the green corner is now top right
    assert reduced[-5, 5, 0] > 200 and reduced[5, 5, 2] > 200  # the left (red) half is on top, blue below


def test_opencv_and_pillow_reduced_decodes_are_the_same_pixels() -> None:
    data = _jpeg_with_orientation(1200, 900, 1)
    for r, flag in ((2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4), (8, cv2.IMREAD_REDUCED_COLOR_8)):
        assert np.array_equal(decode_pillow(data, reduce=r), cv2.imdecode(np.frombuffer(data, np.uint8), flag))


def test_png_and_small_jpegs_decode_at_full_size(tmp_path: Path) -> None:
    img = np.random.default_rng(0).integers(0, 255, (600, 800, 3), np.uint8)
    ok, png = cv2.imencode(".png", img)
    assert decode_image(png.tobytes(), min_size=64).shape == (600, 800, 3)
    ok, jpg = cv2.imencode(".jpg", img)
    assert decode_image(jpg.tobytes(), min_size=400).shape == (600, 800, 3)  # 300 < 400: no reduction
    assert decode_image(jpg.tobytes(), min_size=300).shape == (300, 400, 3)


@pytest.fixture(scope="module")
def big_photos(tmp_path_factory: pytest.TempPathFactory, cifar_test: Path) -> list[Path]:
    """Twelve CIFAR-10 photos upscaled to 1024x768 JPEGs (1/8 scale still keeps 96 >= 2 x 32 px)."""
    out = tmp_path_factory.mktemp("big")
    files = []
    for i, src in enumerate(sorted(cifar_test.glob("*/0001.jpg")) + sorted(cifar_test.glob("*/0002.jpg"))[:2]):
        img = cv2.resize(cv2.imread(str(src)), (768, 768), interpolation=cv2.INTER_CUBIC)
        img = cv2.copyMakeBorder(img, 0, 0, 128, 128, cv2.BORDER_REFLECT_101)
        f = out / f"{i:02d}_{src.parent.name}.jpg"
        cv2.imwrite(str(f), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        files.append(f)
    return files


def test_classify_files_decodes_large_photos_reduced_unless_exact(tiny_vit_bundle: Path, big_photos: list[Path]) -> None:
    clf = Classifier(tiny_vit_bundle)
    assert clf.decode_min_size() == 64  # twice the tiny model's 32 px input
    reduced = list(clf.classify_files(big_photos, batch_size=5, keep_embeddings=True))
    exact = list(clf.classify_files(big_photos, batch_size=5, keep_embeddings=True, exact_decode=True))
    want_reduced = clf.embed([read_image(f, min_size=64) for f in big_photos])
    clf.decode_ratio = 0
    want_exact = clf.embed([read_image(f) for f in big_photos])
    assert np.allclose([r.embedding for r in reduced], want_reduced, atol=1e-5)
    assert np.allclose([r.embedding for r in exact], want_exact, atol=1e-5)
    assert not np.allclose(want_reduced, want_exact, atol=1e-5)  # the two paths really differ...
    cosine = (want_reduced * want_exact).sum(1)
    assert cosine.min() > 0.99  # ...by little
    assert clf.classify(big_photos[0]).scores == pytest.approx(exact[0].prediction.scores, abs=1e-5)
    with pytest.raises(OptionError, match="decode_ratio"):
        clf.decode_ratio = 0.5
        clf.decode_min_size()


# -- resumable result files --------------------------------------------------------------------------------
def test_complete_prefix_finds_the_last_whole_row() -> None:
    assert complete_prefix(b'{"path": "a"}\n{"path": "b"}\n{"pa', "jsonl") == 28
    assert complete_prefix(b'{"path": "a"}\n', "jsonl") == 14
    assert complete_prefix(b'{"pa', "jsonl") == 0
    rows = b'path,label\r\n"a\nb.jpg",cat\r\nc.jpg,dog\r\n'
    assert complete_prefix(rows, "csv") == len(rows)
    cut = rows.index(b"b.jpg")  # inside the quoted name, right after its newline
    assert complete_prefix(rows[:cut], "csv") == len(b"path,label\r\n")
    assert complete_prefix(b'path,label\r\n"x ""q"" y",cat\r\nd.j', "csv") == len(b'path,label\r\n"x ""q"" y",cat\r\n')


def _rows(path: Path, fmt: str) -> list[tuple]:
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    assert text.endswith("\n")
    if fmt == "jsonl":
        return [(r["path"], r["label"], r["score"], r.get("error")) for r in map(json.loads, text.splitlines())]
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0][:2] == ["path", "label"] and all(r[0] != "path" for r in rows[1:])  # one header
    return [(r[0], r[1], float(r[2]) if r[2] else None, r[5] or None) for r in rows[1:]]


def _same_rows(a: list[tuple], b: list[tuple]) -> None:
    assert [r[0] for r in a] == [r[0] for r in b]
    assert [(r[1], r[3]) for r in a] == [(r[1], r[3]) for r in b]
    assert np.allclose([r[2] or 0 for r in a], [r[2] or 0 for r in b], atol=2e-6)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_resume_after_a_partial_row_gives_the_uninterrupted_rows(tiny_vit_bundle: Path, cifar_test: Path,
                                                                 tmp_path: Path, fmt: str) -> None:
    inputs = [str(cifar_test / "bird"), str(tmp_path / "broken.jpg")]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    full = tmp_path / f"full.{fmt}"
    assert main(["-q", "classify", str(tiny_vit_bundle), *inputs, "-o", str(full)]) == 1
    data = full.read_bytes()
    cut = data.index(b"0600.jpg") + 3  # 600 whole rows (0000-0599), then part of one
    part = tmp_path / f"part.{fmt}"
    part.write_bytes(data[:cut])
    assert resume_output(part, fmt).rows == 600
    assert main(["-q", "classify", str(tiny_vit_bundle), *inputs, "-o", str(part), "--resume"]) == 1
    _same_rows(_rows(part, fmt), _rows(full, fmt))
    before = part.read_bytes()  # resuming a finished run changes nothing
    assert main(["-q", "classify", str(tiny_vit_bundle), *inputs, "-o", str(part), "--resume"]) == 0
    assert part.read_bytes() == before


def test_resume_refuses_what_it_cannot_read_back(tiny_vit_bundle: Path, cifar_test: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    photos = str(cifar_test / "cat" / "0000.jpg")
    assert main(["classify", str(tiny_vit_bundle), photos, "--resume"]) == 2
    assert "--resume needs --output" in capsys.readouterr().err
    assert main(["classify", str(tiny_vit_bundle), photos, "--resume", "-o", str(tmp_path / "r.txt"),
                 "--format", "table"]) == 2
    assert "--format csv" in capsys.readouterr().err
    other = tmp_path / "notes.jsonl"
    other.write_text("my notes\nnot json")
    assert main(["classify", str(tiny_vit_bundle), photos, "--resume", "-o", str(other)]) == 2
    assert "notes.jsonl:1: not a JSON line" in capsys.readouterr().err
    assert other.read_text() == "my notes\nnot json"  # untouched


def _classify_cmd(bundle: Path, inputs: list[str], out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edgeclip.cli", "-q", "classify", str(bundle), *inputs, "-o", str(out),
            "--batch-size", "16", "--threads", "1", "--workers", "1", *extra]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_resume_after_sigint_gives_the_rows_of_an_uninterrupted_run(tiny_vit_bundle: Path, cifar_test: Path,
                                                                    tmp_path: Path, fmt: str) -> None:
    inputs = [str(cifar_test / "airplane"), str(cifar_test / "automobile")]  # 2,000 photos
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    full, part = tmp_path / f"full.{fmt}", tmp_path / f"part.{fmt}"
    proc = subprocess.Popen(_classify_cmd(tiny_vit_bundle, inputs, part), env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if part.exists() and part.read_bytes().count(b"\n") >= 300:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130
    assert f"interrupted; the rows so far are in {part}; the same command with --resume" in proc.stderr.read().decode()
    written = part.read_bytes().count(b"\n") - (fmt == "csv")
    assert 300 <= written < 2000  # interrupted in the middle; whole batches were flushed
    assert main(["-q", "classify", str(tiny_vit_bundle), *inputs, "-o", str(part), "--resume"]) == 0
    assert subprocess.run(_classify_cmd(tiny_vit_bundle, inputs, full), env=env).returncode == 0
    resumed, uninterrupted = _rows(part, fmt), _rows(full, fmt)
    assert len(resumed) == 2000 and len({r[0] for r in resumed}) == 2000
    _same_rows(resumed, uninterrupted)
