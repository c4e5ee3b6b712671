"""Shared fixtures: real data from ../shared/data, unpacked once per test session."""
from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EDGECLIP_DATA", REPO.parent / "shared" / "data"))


def _unpack(tmp_path_factory: pytest.TempPathFactory, archive: str) -> Path:
    src = DATA / archive
    if not src.is_file():
        pytest.skip(f"{src} not found (set EDGECLIP_DATA to the folder holding the shared data archives)")
    out = tmp_path_factory.mktemp(archive.split(".")[0])
    with tarfile.open(src) as tar:
        tar.extractall(out, filter="data")
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real data archives (../shared/data)."""
    if not DATA.is_dir():
        pytest.skip(f"{DATA} not found")
    return DATA


@pytest.fixture(scope="session")
def cifar_test(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CIFAR-10 test set unpacked: <dir>/<class>/NNNN.jpg (10 classes x 1,000 JPEGs, 32x32)."""
    return _unpack(tmp_path_factory, "cifar10-test.tar") / "cifar10" / "test"


@pytest.fixture(scope="session")
def imagenette_train(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Imagenette train unpacked: <dir>/<wnid>/*.JPEG (natural photos, 224x224)."""
    return _unpack(tmp_path_factory, "imagenette-train.tar") / "imagenette" / "train"


@pytest.fixture(scope="session")
def imagenette_classes() -> Path:
    """The wnid -> class name map (tab-separated)."""
    p = DATA / "imagenette-classes.tsv"
    if not p.is_file():
        pytest.skip(f"{p} not found")
    return p
