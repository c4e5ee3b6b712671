"""`edgeclip classify`: real JPEGs, bad files as error rows, output formats, and no torch in the process."""
from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeclip.cli import main
from edgeclip.errors import ImageReadError
from edgeclip.runtime.classifier import Classifier
from edgeclip.runtime.images import read_image


@pytest.fixture()
def photo_folder(tmp_path: Path, cifar_test: Path) -> Path:
    """12 real JPEGs, one truncated JPEG and one text file named .jpg."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for cls in ("cat", "ship", "truck"):
        for p in sorted((cifar_test / cls).iterdir())[:4]:
            shutil.copy(p, folder / f"{cls}_{p.name}")
    good = (cifar_test / "dog" / "0000.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "notes.jpg").write_text("this is not an image\n")
    return folder


def test_bad_files_become_error_rows(tiny_vit_bundle: Path, photo_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    rc = main(["-q", "classify", str(tiny_vit_bundle), str(photo_folder), "--format", "jsonl", "-o", str(out),
               "--batch-size", "5", "--top-k", "3"])
    assert rc == 1  # some files failed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 14
    errors = {Path(r["path"]).name: r["error"] for r in rows if "error" in r}
    assert set(errors) == {"truncated.jpg", "notes.jpg"}
    assert "truncated" in errors["truncated.jpg"] and "notes.jpg" in errors["notes.jpg"]
    good = [r for r in rows if "error" not in r]
    assert all(len(r["top"]) == 3 and r["top"][0]["label"] == r["label"] for r in good)
    expected = Classifier(tiny_vit_bundle).classify([Path(r["path"]) for r in good], top_k=3)
    assert [[t["label"] for t in r["top"]] for r in good] == [p.labels for p in expected]
    assert np.allclose([[t["score"] for t in r["top"]] for r in good], [p.scores for p in expected], atol=1e-5)


def test_rows_match_the_classifier_on_the_same_images(tiny_vit_bundle: Path, photo_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    assert main(["-q", "classify", str(tiny_vit_bundle), str(photo_folder / "cat_*.jpg"), "-o", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    files = sorted(photo_folder.glob("cat_*.jpg"))
    assert [Path(r["path"]) for r in rows] == files
    preds = Classifier(tiny_vit_bundle).classify([read_image(f) for f in files])
    assert [r["label"] for r in rows] == [p.label for p in preds]
    assert np.allclose([float(r["score"]) for r in rows], [p.score for p in preds], atol=1e-5)


def test_classify_files_reads_a_generator_lazily(tiny_vit_bundle: Path, photo_folder: Path) -> None:
    files = sorted(photo_folder.glob("*.jpg"))
    pulled: list[Path] = []

    def source():
        for f in files:
            pulled.append(f)
            yield f

    results = Classifier(tiny_vit_bundle).classify_files(source(), batch_size=3, workers=2)
    first = next(results)
    assert first.path == files[0] and len(pulled) <= 6  # this batch and the one decoding ahead
    rest = list(results)
    assert [r.path for r in [first, *rest]] == files
    assert {r.path.name for r in rest if r.error} == {"notes.jpg", "truncated.jpg"}


def test_table_output_and_contradictions(tiny_vit_bundle: Path, photo_folder: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["-q", "classify", str(tiny_vit_bundle), str(photo_folder / "ship_*"), "--format", "table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("path") and len(lines) == 5
    assert main(["classify", str(tiny_vit_bundle), str(photo_folder), "--target", "cpu", "--precision", "fp32"]) == 2
    assert "--precision int8" in capsys.readouterr().err
    assert main(["classify", str(tiny_vit_bundle), str(photo_folder), "--target", "cpu"]) == 2  # precision auto
    assert "no INT8 image encoder for recipe 'cpu'" in capsys.readouterr().err
    assert main(["classify", str(tiny_vit_bundle), str(photo_folder / "nothing-*.png")]) == 2
    assert "matches no file" in capsys.readouterr().err


def test_ten_thousand_images_without_torch(tiny_vit_bundle: Path, cifar_test: Path, tmp_path: Path) -> None:
    out = tmp_path / "cifar.csv"
    code = ("import sys\nfrom edgeclip.cli import main\n"
            f"rc = main(['-q', 'classify', {str(tiny_vit_bundle)!r}, {str(cifar_test)!r}, '-o', {str(out)!r},"
            " '--batch-size', '128'])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "assert not any(m.startswith(('torchvision', 'open_clip')) for m in sys.modules)\n"
            "sys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 10_000
    assert len({r["path"] for r in rows}) == 10_000
    assert all(r["label"] and not r["error"] for r in rows)


def test_photos_are_turned_upright_by_their_exif_orientation(tmp_path: Path) -> None:
    """Phone photos: the runtime decodes them as displayed (EXIF orientation 6 = rotate 90 degrees clockwise)."""
    from PIL import Image

    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, :40] = 255  # left half white
    photo = Image.fromarray(pixels)
    exif = photo.getexif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.jpg"
    photo.save(path, exif=exif.tobytes(), quality=95)
    upright = read_image(path)
    assert upright.shape == (80, 40, 3)
    assert upright[:30].mean() > 200 and upright[-30:].mean() < 50  # the white half is now on top


def test_output_into_a_closed_pipe_is_not_an_error(tiny_vit_bundle: Path, cifar_test: Path) -> None:
    """`edgeclip classify ... | head -1`: exit 0, nothing on stderr about the broken pipe."""
    code = ("import sys\nfrom edgeclip.cli import main\n"
            f"sys.exit(main(['-q', 'classify', {str(tiny_vit_bundle)!r}, {str(cifar_test / 'cat')!r}]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"path")
    proc.stdout.close()  # like `head -1` exiting
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Broken pipe" not in err and "Exception ignored" not in err, err


def test_a_broken_pipe_leaves_stderr_usable(tiny_vit_bundle: Path, photo_folder: Path,
                                            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    class ClosedPipe(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["-q", "classify", str(tiny_vit_bundle), str(photo_folder / "cat_*.jpg")]) == 0
    print("still usable", file=sys.stderr)
    assert "still usable" in capsys.readouterr().err


def test_every_command_runs_the_best_file_the_bundle_has_by_default(both_int8: Path, cifar_test: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """One default for the CLI and the API (precision auto): after `quantize`, INT8, said in one line."""
    ship = cifar_test / "ship" / "000[0-4].jpg"
    args = ["--device", "x86-avx512-vnni", "--backend", "onnxruntime"]
    assert main(["classify", str(both_int8), str(ship), "--format", "csv", *args]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "image encoder: " in line]
    assert len(lines) == 1 and "image_encoder.int8.cpu.onnx on onnxruntime:cpu (int8)" in lines[0]
    import edgeclip

    assert edgeclip.load(both_int8, device="x86-avx512-vnni", backend="onnxruntime").precision == "int8"


def test_rgb_arrays_and_pil_images_are_classified_as_the_photo(tiny_vit_bundle: Path, cifar_test: Path) -> None:
    from PIL import Image

    clf = Classifier(tiny_vit_bundle)
    files = sorted((cifar_test / "ship").glob("00[0-9][0-9].jpg"))[:40]
    bgr = [read_image(f) for f in files]
    expected = clf.embed(bgr)
    rgb = [np.ascontiguousarray(b[:, :, ::-1]) for b in bgr]
    assert np.allclose(clf.embed(rgb, color="rgb"), expected, atol=1e-6)
    assert np.allclose(clf.embed([Image.fromarray(a) for a in rgb]), expected, atol=1e-6)
    assert clf.classify(Image.fromarray(rgb[0])).label == clf.classify(bgr[0]).label
    wrong = clf.embed(rgb)  # an RGB array read as BGR: another image to the model
    assert not np.allclose(wrong, expected, atol=1e-3)
    with pytest.raises(ImageReadError, match="unknown color 'hsv'"):
        clf.classify(bgr[0], color="hsv")
