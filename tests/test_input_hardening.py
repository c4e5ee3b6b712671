"""Hostile and careless inputs to `edgeclip classify`: bombs, special files, odd names, malformed images.

Every input named or found gets exactly one row (a prediction or an error naming the file), nothing hangs
or aborts the run, memory stays bounded, and every output is valid (strict JSON, complete CSV rows).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from image_fuzz import base_images, cases, jpeg_bomb, png_bomb
from edgeclip.cli import main
from edgeclip.batch import RowWriter, json_line
from edgeclip.errors import ImageReadError, OptionError
from edgeclip.runtime import images
from edgeclip.runtime.classifier import FileResult, Prediction
from edgeclip.runtime.image_header import image_header
from edgeclip.runtime.images import decode_image, expand_inputs, read_file, read_image


@pytest.fixture()
def photos(tmp_path: Path, cifar_test: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted((cifar_test / "ship").iterdir())[:3]:
        shutil.copy(p, folder / f"ship_{p.name}")
    return folder


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """The CLI in its own process (a hang is a test failure, not a stuck suite)."""
    return subprocess.run([sys.executable, "-m", "edgeclip.cli", *args], capture_output=True, timeout=timeout)


def strict_json(line: str | bytes) -> dict:
    def refuse(name: str):
        raise ValueError(f"non-strict JSON constant {name}")
    return json.loads(line, parse_constant=refuse)


# -- headers and limits -------------------------------------------------------------------------------------
def test_headers_state_the_size_the_decoder_gives() -> None:
    for fmt, data in base_images().items():
        header = image_header(data, fmt)
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert (header.height, header.width) == img.shape[:2], fmt


def test_bombs_are_refused_from_the_header() -> None:
    for data, fmt in ((jpeg_bomb(), "JPEG"), (png_bomb(), "PNG")):
        t0 = time.perf_counter()
        with pytest.raises(ImageReadError, match=f"{fmt} header states 30000x30000 = 900,000,000 pixels"):
            decode_image(data, "bomb")
        assert time.perf_counter() - t0 < 0.5
    assert len(jpeg_bomb()) < 1000 and len(png_bomb()) < 1_000_000


def test_limits_are_parameters_and_module_defaults(tmp_path: Path) -> None:
    data = base_images()["png"]  # 56 x 40
    assert decode_image(data).shape == (40, 56, 3)
    with pytest.raises(ImageReadError, match="over the limit of 2,000"):
        decode_image(data, max_pixels=2000)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    with pytest.raises(ImageReadError, match="over the file size limit of 100 bytes"):
        read_image(path, max_bytes=100)
    previous = images.set_limits(max_pixels=2000)
    try:
        with pytest.raises(ImageReadError, match="over the limit"):
            read_image(path)
    finally:
        images.set_limits(*previous)
    assert read_image(path).shape == (40, 56, 3)
    with pytest.raises(OptionError):
        images.set_limits(max_bytes=0)


def test_huge_files_are_refused_without_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    with open(big, "wb") as f:
        f.truncate(2**31)  # a sparse 2 GiB file
    t0 = time.perf_counter()
    with pytest.raises(ImageReadError, match="2,147,483,648 bytes, over the file size limit"):
        read_file(big)
    assert time.perf_counter() - t0 < 0.5


def test_special_files_are_errors_and_never_block(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    expected = {str(fifo): "named pipe", str(tmp_path / "dangling.jpg"): "broken symbolic link",
                str(tmp_path / "loop.jpg"): "symbolic link loop", "/dev/zero": "character device",
                str(tmp_path): "a folder", str(tmp_path / "none.jpg"): "no such file"}
    for path, words in expected.items():
        with pytest.raises(ImageReadError, match=words):
            read_image(path)


# -- inputs: every one named or found gets one row ----------------------------------------------------------
def test_expand_inputs_keeps_special_entries_and_reports_skipped(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.JPG").write_bytes(b"x")
    (tmp_path / "anim.gif").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    os.mkfifo(tmp_path / "sub" / "cam.jpg")
    (tmp_path / "sub" / "gone.png").symlink_to(tmp_path / "nothing")
    (tmp_path / "sub" / "back").symlink_to(tmp_path)  # a loop through a folder link: not followed
    skipped: list[Path] = []
    found = expand_inputs([tmp_path], skipped=skipped)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.JPG", "anim.gif", "sub/cam.jpg",
                                                                   "sub/gone.png"]
    assert [p.name for p in skipped] == ["notes.txt"]
    with pytest.raises(OptionError, match="no such file"):
        expand_inputs([tmp_path / "a.JPG", tmp_path / "missing.jpg"])
    kept = expand_inputs([tmp_path / "a.JPG", tmp_path / "missing.jpg", str(tmp_path / "zz*.png")], missing="keep")
    assert [p.name for p in kept] == ["a.JPG", "missing.jpg", "zz*.png"]
    with pytest.raises(OptionError, match="the pattern matches no file"):
        expand_inputs([str(tmp_path / "zz*.png")], missing="keep")


def test_special_files_on_the_command_line_are_error_rows(tiny_vit_bundle: Path, photos: Path,
                                                          tmp_path: Path) -> None:
    odd = tmp_path / "odd"
    odd.mkdir()
    os.mkfifo(odd / "fifo.jpg")
    (odd / "dangling.jpg").symlink_to(odd / "nowhere.jpg")
    (odd / "loop.jpg").symlink_to(odd / "loop.jpg")
    (odd / "notes.txt").write_text("not an image")
    cv2.imwrite(str(odd / "anim.gif"), np.full((20, 20, 3), 128, np.uint8))
    named = [str(photos), "/dev/zero", str(odd / "fifo.jpg"), str(odd / "dangling.jpg"), str(odd / "loop.jpg"),
             str(odd / "missing.jpg"), str(odd / "nothing-*.png"), str(odd / "notes.txt")]
    out = tmp_path / "out.jsonl"
    proc = run_cli("classify", str(tiny_vit_bundle), *named, str(odd), "-o", str(out))
    assert proc.returncode == 1, proc.stderr.decode()[-2000:]
    assert b"Traceback" not in proc.stderr
    rows = [strict_json(line) for line in out.read_text(encoding="utf-8").splitlines()]
    by_path = {r["path"]: r for r in rows}
    assert len(rows) == len(by_path) == 3 + 7 + 1  # photos, the 7 named odd inputs, the GIF found in odd/
    assert all(by_path[str(p)]["label"] for p in photos.iterdir())
    assert by_path[str(odd / "anim.gif")]["label"]  # GIFs are images now
    for path, words in {"/dev/zero": "character device", "fifo.jpg": "named pipe", "dangling.jpg": "broken",
                        "loop.jpg": "loop", "missing.jpg": "no such file", "nothing-*.png": "matches no file",
                        "notes.txt": "not a supported image format"}.items():
        row = by_path[path if path.startswith("/") else str(odd / path)]
        assert row["label"] is None and words in row["error"], row
    assert "skipped 1 entries" in proc.stderr.decode() and ".txt" in proc.stderr.decode()  # odd/notes.txt


def test_only_missing_inputs_is_a_usage_error(tiny_vit_bundle: Path, tmp_path: Path, capsys) -> None:
    assert main(["-q", "classify", str(tiny_vit_bundle), str(tmp_path / "missing.jpg")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_only_folders_without_images_is_a_usage_error(tiny_vit_bundle: Path, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty_dir.png"  # a folder named like an image
    empty.mkdir()
    assert main(["-q", "classify", str(tiny_vit_bundle), str(empty)]) == 2
    assert f"{empty}: the folder holds no image file" in capsys.readouterr().err  # before: exit 0, no row
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("x")
    assert main(["-q", "classify", str(tiny_vit_bundle), str(empty), str(notes)]) == 2
    err = capsys.readouterr().err
    assert "none of these folders holds an image file" in err and "1 other entries" in err


# -- outputs ------------------------------------------------------------------------------------------------
def test_non_utf8_file_names_give_complete_rows(tiny_vit_bundle: Path, photos: Path, tmp_path: Path) -> None:
    raw = os.fsencode(photos) + b"/caf\xe9 \xff.jpg"  # Latin-1 bytes: not UTF-8
    shutil.copy(next(photos.iterdir()), raw)
    name = os.fsdecode(raw)  # surrogate escapes, as os.listdir gives
    for fmt in ("csv", "jsonl"):
        out = tmp_path / f"out.{fmt}"
        assert main(["-q", "classify", str(tiny_vit_bundle), str(photos), "-o", str(out)]) == 0
        data = out.read_bytes()
        if fmt == "jsonl":
            rows = [strict_json(line) for line in data.decode("utf-8").splitlines()]  # valid UTF-8
            assert [os.fsencode(r["path"]) for r in rows if "caf" in r["path"]] == [raw]
        else:
            rows = list(csv.DictReader(io.StringIO(data.decode("utf-8", "surrogateescape"))))
            assert [r["path"] for r in rows if "caf" in r["path"]] == [name]  # the exact bytes of the name
        assert len(rows) == 4 and all(r["label"] for r in rows)
    proc = run_cli("-q", "classify", str(tiny_vit_bundle), str(photos), "--format", "csv")  # to a pipe
    assert proc.returncode == 0 and raw in proc.stdout and len(proc.stdout.splitlines()) == 5, proc.stderr


def test_non_finite_scores_become_error_rows() -> None:
    good = FileResult(Path("a.jpg"), Prediction(["cat", "dog"], [0.75, 0.25]))
    bad = FileResult(Path("b.jpg"), Prediction(["cat", "dog"], [math.nan, 0.5]))
    err = FileResult(Path("c\udcff.jpg"), error="c.jpg: not a decodable image")
    for fmt in ("jsonl", "csv", "table"):
        out = io.StringIO()
        writer = RowWriter(out, fmt, top_k=2)
        assert [writer.write(r) for r in (good, bad, err)] == [False, True, True]
        text = out.getvalue()
        if fmt == "csv":
            rows = list(csv.DictReader(io.StringIO(text)))
            assert [r["score"] for r in rows] == ["0.750000", "", ""] and "non-finite" in rows[1]["error"]
        if fmt == "jsonl":
            rows = [strict_json(line) for line in text.splitlines()]
            assert rows[0]["top"][1] == {"label": "dog", "score": 0.25}
            assert rows[1]["score"] is None and "non-finite" in rows[1]["error"]
            assert os.fsencode(rows[2]["path"]) == b"c\xff.jpg"
    assert json_line({"x": "\udc80"}) == '{"x": "\\udc80"}\n'
    with pytest.raises(ValueError):
        json_line({"score": math.inf})


def test_limit_flags(tiny_vit_bundle: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert main(["-q", "classify", str(tiny_vit_bundle), str(photos), "-o", str(out), "--max-image-pixels", "500"]) == 1
    rows = [strict_json(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all("over the limit of 500" in r["error"] for r in rows)
    assert main(["-q", "classify", str(tiny_vit_bundle), str(photos), "-o", str(out), "--max-file-size", "100"]) == 1
    rows = [strict_json(line) for line in out.read_text().splitlines()]
    assert all("over the file size limit of 100 bytes" in r["error"] for r in rows)
    assert main(["-q", "classify", str(tiny_vit_bundle), str(photos), "-o", str(out)]) == 0  # limits restored


# -- fuzz: malformed images ---------------------------------------------------------------------------------
def _check_decode(case) -> None:
    try:
        img = decode_image(case.data, case.name)
    except ImageReadError as exc:
        assert case.name in str(exc)
        return
    header = image_header(case.data)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape[0] * img.shape[1] <= header.pixels <= images.MAX_IMAGE_PIXELS, (case.name, img.shape, header)
    if case.kind in ("bomb", "empty", "zero_size"):
        pytest.fail(f"{case.name}: decoded although it is a {case.kind}")


def _fuzz_cli(bundle: Path, folder: Path, n: int, seed: int, timeout: float) -> None:
    made = cases(n, seed)
    for c in made:
        c.write(folder)
    out = folder.parent / "fuzz.jsonl"
    proc = run_cli("-q", "classify", str(bundle), str(folder), "-o", str(out), "--batch-size", "16",
                   timeout=timeout)
    assert proc.returncode in (0, 1), proc.stderr.decode()[-3000:]
    assert b"Traceback" not in proc.stderr, proc.stderr.decode()[-3000:]
    rows = [strict_json(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(Path(r["path"]).name for r in rows) == sorted(c.name for c in made)  # one row each
    kind = {c.name: c.kind for c in made}
    for r in rows:
        assert (r["label"] is None) != ("error" not in r), r
        if kind[Path(r["path"]).name] in ("bomb", "empty", "zero_size"):
            assert "error" in r, r
        if kind[Path(r["path"]).name] == "valid":
            assert r["label"], r


def test_fuzz_sample_decodes_or_fails_cleanly() -> None:
    for case in cases(150, seed=1):
        _check_decode(case)


def test_fuzz_sample_through_the_cli(tiny_vit_bundle: Path, tmp_path: Path) -> None:
    folder = tmp_path / "fuzz"
    folder.mkdir()
    _fuzz_cli(tiny_vit_bundle, folder, 40, seed=2, timeout=180)


@pytest.mark.slow
def test_fuzz_campaign(tiny_vit_bundle: Path, tmp_path: Path) -> None:
    """The full campaign: 1,000 malformed images through decode_image and through the CLI."""
    for case in cases(1000, seed=12):
        _check_decode(case)
    folder = tmp_path / "fuzz"
    folder.mkdir()
    _fuzz_cli(tiny_vit_bundle, folder, 1000, seed=12, timeout=900)
