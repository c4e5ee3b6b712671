"""What a new user sees on a first run: one line per fact, once; ``-q`` quiet; no warning for an extra they did
not ask for; plain files; an install without deprecation boxes."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def edgeclip(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m edgeclip ARGS`` in a fresh process (what a user's shell runs)."""
    return subprocess.run([sys.executable, "-m", "edgeclip", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


@pytest.mark.parametrize("pyproject", ["pyproject.toml", "packages/edgeclip-models/pyproject.toml"])
def test_the_package_metadata_is_read_without_a_deprecation_warning(pyproject: str) -> None:
    """What pip prints as the ``project.license`` box, taken from setuptools itself."""
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_configuration(Distribution(), str(ROOT / pyproject))
    assert not [str(w.message) for w in caught if "deprecat" in str(w.message).lower()]


def test_classify_says_each_thing_once_and_quiet_says_nothing(tiny_vit_bundle: Path, cifar_test: Path,
                                                              tmp_path: Path) -> None:
    photos = [str(p) for p in sorted((cifar_test / "cat").glob("*.jpg"))[:6]]
    out = tmp_path / "rows.csv"
    run = edgeclip("classify", str(tiny_vit_bundle), *photos, "-o", str(out))
    assert run.returncode == 0, run.stderr
    lines = [line.strip() for line in run.stderr.replace("\r", "\n").splitlines() if line.strip()]
    said = [line for line in lines if "%|" not in line]  # progress bar frames repeat by design
    twice = [line for line, n in Counter(said).items() if n > 1]
    assert not twice, f"said more than once: {twice}"
    assert sum("image encoder:" in line for line in lines) == 1, run.stderr
    assert not [line for line in said if line.startswith(("INFO", "DEBUG"))], "the log is for -v"
    assert b"\r\n" not in out.read_bytes(), "CSV rows end in LF"
    quiet = edgeclip("-q", "classify", str(tiny_vit_bundle), *photos, "-o", str(tmp_path / "q.csv"))
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_a_backend_whose_extra_is_not_installed_is_no_warning(tiny_vit_bundle: Path, cifar_test: Path,
                                                            tmp_path: Path) -> None:
    """A laptop without the openvino extra: the command runs on ONNX Runtime and says nothing about OpenVINO
    (the extra is a choice, not a fault); the API loads without a warning either."""
    blocked = tmp_path / "site"
    blocked.mkdir()
    (blocked / "sitecustomize.py").write_text('import sys\nsys.modules["openvino"] = None  # as if not installed\n')
    env = {"PYTHONPATH": os.pathsep.join([str(blocked), os.environ.get("PYTHONPATH", "")])}
    photo = str(sorted((cifar_test / "dog").glob("*.jpg"))[0])
    run = edgeclip("classify", str(tiny_vit_bundle), photo, env=env)
    assert run.returncode == 0, run.stderr
    assert "openvino" not in run.stderr.lower() and "warning" not in run.stderr.lower(), run.stderr
    assert "onnxruntime" in run.stderr, run.stderr
    api = subprocess.run([sys.executable, "-W", "error", "-c", "import edgeclip, sys; "
                          f"print(repr(edgeclip.load({str(tiny_vit_bundle)!r})))"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, **env}, cwd=ROOT)
    assert api.returncode == 0 and api.stderr == "", api.stderr
    assert "onnxruntime" in api.stdout and "10 labels" in api.stdout, "the repr says what runs and why"


def test_every_command_explains_itself_with_only_the_base_install(tiny_vit_bundle: Path, tmp_path: Path) -> None:
    """A device with '.[cpu]' alone: every optional package blocked, ``--help`` of every command still works, and
    a command whose extra is absent exits 2 with the pip line, before any work."""
    from edgeclip.cli import build_parser
    from edgeclip.extras import EXTRAS

    optional = sorted({m for extra, (mods, _) in EXTRAS.items() if extra not in ("cpu", "gpu") for m in mods})
    blocked = tmp_path / "site"
    blocked.mkdir()
    (blocked / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in optional))
    env = {"PYTHONPATH": os.pathsep.join([str(blocked), os.environ.get("PYTHONPATH", "")])}
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    commands = sorted(sub.choices)
    assert {"classify", "serve", "watch", "stream", "export", "quantize"} <= set(commands)
    for command in [[], *([c] for c in commands)]:
        run = edgeclip(*command, "--help", env=env)
        assert run.returncode == 0 and run.stderr == "", (command, run.stderr[-2000:])
    config = tmp_path / "watch.yaml"
    config.write_text("cameras: {}\n")
    for args, extra in ((["serve", str(tiny_vit_bundle)], "serve"),
                        (["watch", str(config), "--bundle", str(tiny_vit_bundle)], "watch")):
        run = edgeclip(*args, env=env)
        assert run.returncode == 2 and run.stdout == "", (args, run.stderr)
        assert f"[{extra}]" in run.stderr and "pip install" in run.stderr and "Traceback" not in run.stderr, run.stderr
