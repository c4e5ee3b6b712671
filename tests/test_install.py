"""The device install: Pillow decoding without OpenCV, numpy without cv2, up-front extras checks, the Jetson plan.

The runtime-only install itself (a fresh venv with `pip install '.[cpu]'`, no torch, no onnx, no OpenCV) is
exercised end to end by scripts/check_runtime_install.sh, which .ci/run calls.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from edgeclip.cli import main
from edgeclip.errors import ImageReadError, MissingExtraError
from edgeclip.extras import install_command, require, require_onnxruntime
from edgeclip.runtime import images
from edgeclip.runtime import preprocess as pre_mod
from edgeclip.runtime.decode_pillow import decode_pillow
from edgeclip.runtime.preprocess import PreprocessConfig, Preprocessor

REPO = Path(__file__).resolve().parents[1]


def _opencv(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


@pytest.fixture()
def without(monkeypatch: pytest.MonkeyPatch):
    """Hide top-level modules from imports and find_spec (as if not installed) for one test."""
    def hide(*names: str) -> None:
        for n in names:
            monkeypatch.setitem(sys.modules, n, None)
        images._decoder.cache_clear()

    yield hide
    images._decoder.cache_clear()


# ---------------------------------------------------------------------------------------------------------
# decoding without OpenCV
# ---------------------------------------------------------------------------------------------------------
def test_pillow_decodes_real_jpegs_to_the_same_pixels_as_opencv(imagenette_train: Path) -> None:
    files = sorted(imagenette_train.rglob("*.JPEG"))[::190][:50]
    assert len(files) == 50
    for f in files:
        data = f.read_bytes()
        np.testing.assert_array_equal(decode_pillow(data, str(f)), _opencv(data), err_msg=str(f))


def test_pillow_path_applies_exif_orientation_and_matches_opencv(tmp_path: Path) -> None:
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, :40] = 255  # left half white
    photo = Image.fromarray(pixels)
    for orientation in range(1, 9):
        exif = photo.getexif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.jpg"
        photo.save(path, exif=exif.tobytes(), quality=95)
        data = path.read_bytes()
        ours, theirs = decode_pillow(data, str(path)), _opencv(data)
        assert ours.shape == theirs.shape, orientation
        assert np.abs(ours.astype(int) - theirs).max() <= 1, orientation
    six = decode_pillow((tmp_path / "o6.jpg").read_bytes())
    assert six.shape == (80, 40, 3) and six[:30].mean() > 200 and six[-30:].mean() < 50  # turned upright


def test_pillow_path_modes_match_opencv(tmp_path: Path, imagenette_train: Path) -> None:
    rgb = np.asarray(Image.open(next(imagenette_train.rglob("*.JPEG"))).convert("RGB"))
    cases = {
        "gray.png": Image.fromarray(rgb[:, :, 0]),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])),
        "rgb.png": Image.fromarray(rgb),
        "rgb.bmp": Image.fromarray(rgb),
        "deep.png": Image.fromarray((rgb[:, :, 1].astype(np.uint16) * 257 + 3)),
    }
    for name, img in cases.items():
        path = tmp_path / name
        img.save(path)
        data = path.read_bytes()
        np.testing.assert_array_equal(decode_pillow(data, name), _opencv(data), err_msg=name)
    with pytest.raises(ImageReadError, match="not a decodable image"):
        decode_pillow(b"this is not an image", "notes.txt")


def test_decoder_falls_back_to_pillow_without_opencv(without, tmp_path: Path, imagenette_train: Path) -> None:
    f = next(imagenette_train.rglob("*.JPEG"))
    assert images._decoder() == "opencv"
    want = images.read_image(f)
    without("cv2")
    assert images._decoder() == "pillow"
    np.testing.assert_array_equal(images.read_image(f), want)
    (tmp_path / "cut.jpg").write_bytes(f.read_bytes()[:2000])
    with pytest.raises(ImageReadError, match="truncated"):
        images.read_image(tmp_path / "cut.jpg")


# ---------------------------------------------------------------------------------------------------------
# preprocessing without OpenCV: bit for bit the same
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,dtype", [((37, 53, 3), np.uint8), ((41, 29, 3), np.float32), ((17, 23, 1), np.uint8),
                                         ((300, 4000, 3), np.float32)])
def test_numpy_pixel_transpose_equals_opencv(shape, dtype) -> None:
    x = (np.random.default_rng(0).random(shape) * 255).astype(dtype)
    np.testing.assert_array_equal(pre_mod._swap01_numpy(x) if shape[2] != 1 else np.ascontiguousarray(
        x[:, :, 0].T)[:, :, None], pre_mod._swap01(x))
    bgra = np.dstack([x, x[:, :, :1]]) if shape[2] == 3 else None
    if bgra is not None:  # a strided view (BGRA with alpha dropped), as _as_image passes it
        np.testing.assert_array_equal(pre_mod._swap01_numpy(bgra[:, :, :3]), cv2.transpose(bgra[:, :, :3]))


def test_preprocessing_without_opencv_is_identical(monkeypatch: pytest.MonkeyPatch, imagenette_train: Path) -> None:
    files = sorted(imagenette_train.rglob("*.JPEG"))[::400][:20]
    imgs = [cv2.imread(str(f)) for f in files]
    imgs.append(cv2.resize(imgs[0], (3000, 2000), interpolation=cv2.INTER_LINEAR))  # a photo-sized image
    configs = [PreprocessConfig(size=(224, 224)), PreprocessConfig(size=(64, 48), resize_mode="longest"),
               PreprocessConfig(size=(96, 96), interpolation="bilinear", resize_mode="squash")]
    want = [[Preprocessor(c)(im) for im in imgs] for c in configs]
    monkeypatch.setattr(pre_mod, "cv2", None)
    for c, expected in zip(configs, want):
        p = Preprocessor(c)
        for im, e in zip(imgs, expected):
            np.testing.assert_array_equal(p(im), e)


# ---------------------------------------------------------------------------------------------------------
# extras: one line, exit 2, before any work
# ---------------------------------------------------------------------------------------------------------
def test_require_names_the_extra_and_the_pip_line(without) -> None:
    without("matplotlib")
    with pytest.raises(MissingExtraError) as err:
        require("report", what="bench --png")
    text = str(err.value)
    assert "'report' extra" in text and "matplotlib" in text and "-m pip install" in text and "[report]" in text
    assert "\n" not in text
    assert sys.executable in install_command("cpu")
    require("report", ["json"])  # present: no error
    with pytest.raises(MissingExtraError, match=r"needs onnxruntime >= 99\.0 \(this one is"):
        require_onnxruntime("edgeclip quantize", minimum=(99, 0))
    without("onnxruntime")
    with pytest.raises(MissingExtraError, match=r"onnxruntime is not installed: add the 'cpu' extra"):
        require_onnxruntime()


def _one_line_exit_2(capsys: pytest.CaptureFixture, argv: list[str], extra: str) -> str:
    assert main(argv) == 2
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1, cap.err
    assert f"'{extra}' extra" in lines[0] or f"[{extra}]" in lines[0], lines[0]
    assert "-m pip install" in lines[0] and f"[{extra}]" in lines[0], lines[0]
    assert cap.out == ""
    return lines[0]


def test_export_and_quantize_without_the_export_extra(without, capsys, tmp_path: Path, bundle_copy: Path) -> None:
    before = sorted(p.name for p in bundle_copy.iterdir())
    without("torch", "open_clip")
    _one_line_exit_2(capsys, ["export", "--out", str(tmp_path / "b")], "export")
    assert not (tmp_path / "b").exists()
    _one_line_exit_2(capsys, ["quantize", str(bundle_copy), "--target", "cpu"], "export")
    assert sorted(p.name for p in bundle_copy.iterdir()) == before  # nothing written
    _one_line_exit_2(capsys, ["eval", str(bundle_copy), str(tmp_path), "--engine", "torch"], "export")


def test_runtime_commands_check_their_extras_first(without, capsys, tiny_vit_bundle: Path, tmp_path: Path,
                                                   imagenette_train: Path) -> None:
    without("matplotlib")
    line = _one_line_exit_2(capsys, ["bench", str(tiny_vit_bundle), "--png", str(tmp_path / "b.png")], "report")
    assert "bench --png" in line  # before the benchmark ran: nothing on stdout
    video = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(3):
        w.write(np.full((48, 64, 3), 40 * i, np.uint8))
    w.release()
    without("cv2")
    assert "file source" in _one_line_exit_2(capsys, ["stream", str(tiny_vit_bundle), "--source", str(video)],
                                             "opencv")
    _one_line_exit_2(capsys, ["eval", str(tiny_vit_bundle), str(tmp_path), "--confusion", str(tmp_path / "c.png")],
                     "opencv")
    # an image folder streams without OpenCV (Pillow decodes)
    folder = tmp_path / "frames"
    folder.mkdir()
    for f in sorted(imagenette_train.rglob("*.JPEG"))[:3]:
        (folder / f.name).write_bytes(f.read_bytes())
    events = tmp_path / "events.jsonl"
    assert main(["-q", "stream", str(tiny_vit_bundle), "--source", str(folder), "--jsonl", str(events)]) == 0
    assert events.read_text().strip()
    without("onnxruntime")
    line = _one_line_exit_2(capsys, ["classify", str(tiny_vit_bundle), str(folder)], "cpu")
    assert "onnxruntime is not installed" in line


# ---------------------------------------------------------------------------------------------------------
# Jetson: the documented install keeps JetPack's OpenCV and onnxruntime-gpu
# ---------------------------------------------------------------------------------------------------------
def _stand_in(site: Path, dist: str, version: str, module: str | None) -> None:
    """A tiny installed distribution (metadata, optionally an importable module) in ``site``."""
    if module:
        (site / module).mkdir(parents=True, exist_ok=True)
        (site / module / "__init__.py").write_text(f"__version__ = {version!r}\n")
    if dist:
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("pip\n")
        (info / "RECORD").write_text("")


@pytest.mark.slow
def test_jetson_install_plans_no_second_opencv_and_no_cpu_onnxruntime(tmp_path: Path) -> None:
    """JetPack 6's system site: cv2 from apt (no pip metadata), onnxruntime-gpu from a wheel, numpy 1.21 and
    Pillow 9.0 from apt. The README's Jetson line, dry-run in a venv made with --system-site-packages (the
    stand-ins on PYTHONPATH play the system site), must install no OpenCV, no onnxruntime, and no numpy 2
    (JetPack's cv2 and onnxruntime-gpu are built against numpy 1.x). Needs PyPI for numpy's metadata."""
    system = tmp_path / "system-site"
    _stand_in(system, "", "4.8.0", "cv2")  # apt's python3-opencv: importable, invisible to pip
    _stand_in(system, "onnxruntime-gpu", "1.20.0", "onnxruntime")
    _stand_in(system, "numpy", "1.21.5", None)
    _stand_in(system, "Pillow", "9.0.1", None)
    wheels = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(wheels.glob("edgeclip-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PYTHONPATH=str(system), PIP_DISABLE_PIP_VERSION_CHECK="1")

    def plan(*reqs: str) -> dict[str, str]:
        report = tmp_path / "report.json"
        proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--dry-run", "--quiet",
                               "--report", str(report), *reqs], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return {i["metadata"]["name"].lower(): i["metadata"]["version"]
                for i in json.loads(report.read_text())["install"]}

    got = plan(str(wheel), "numpy<2")  # the README's Jetson line
    assert "edgeclip" in got
    assert not [n for n in got if n.startswith(("opencv", "onnxruntime"))], got
    assert int(got.get("numpy", "1.21.5").split(".")[0]) < 2, got
    assert "pillow" not in got, got  # JetPack's Pillow 9.0 is kept
    # why the line carries no extra: pip cannot see apt's cv2, so [opencv] would install a second OpenCV
    assert any(n.startswith("opencv") for n in plan(f"{wheel}[opencv]", "numpy<2")), "stand-in cv2 seen by pip?"


@pytest.mark.slow
def test_install_lines_of_the_docs_resolve_as_written(tmp_path: Path) -> None:
    """Every ``pip install`` of the docs, dry-run from the source tree (the built wheel for the wheel line)
    against the package index: each resolves. Needs PyPI."""
    from test_docs_install import install_lines

    wheels = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    failed = []
    for where, args in install_lines():
        args = [str(wheels / a[len("dist/"):]) if a.startswith("dist/") else a for a in args if a not in ("-e", "-q")]
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
                               *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            failed.append(f"{where}: pip install {' '.join(args)}: {proc.stderr.strip()[-400:]}")
    assert failed == []
