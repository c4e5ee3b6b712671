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


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Compiled-model caches (OpenVINO) go to a temporary folder, not the user's ~/.cache; subprocesses inherit it."""
    folder = tmp_path_factory.mktemp("cache")
    previous = os.environ.get("EDGECLIP_CACHE_DIR")
    os.environ["EDGECLIP_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("EDGECLIP_CACHE_DIR", None)
    else:
        os.environ["EDGECLIP_CACHE_DIR"] = previous


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


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _export(tmp_path_factory: pytest.TempPathFactory, model: str) -> Path:
    pytest.importorskip("open_clip", reason="exporting a bundle needs the export extra (open_clip, torch)")
    from edgeclip.cli import main

    out = tmp_path_factory.mktemp("bundles") / model
    assert main(["-q", "export", "--model", model, "--labels", *CIFAR_CLASSES, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_vit_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of the built-in tiny ViT (random weights) with the 10 CIFAR-10 labels. Treat as read-only."""
    return _export(tmp_path_factory, "edgeclip-tiny-vit")


@pytest.fixture(scope="session")
def tiny_rn_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of the built-in tiny ModifiedResNet (BatchNorm, random weights), CIFAR-10 labels. Read-only."""
    return _export(tmp_path_factory, "edgeclip-tiny-rn")


@pytest.fixture()
def bundle_copy(tmp_path: Path, tiny_vit_bundle: Path) -> Path:
    """A private, writable copy of the tiny ViT bundle."""
    import shutil

    dst = tmp_path / "bundle"
    shutil.copytree(tiny_vit_bundle, dst)
    return dst


@pytest.fixture(scope="session")
def quantized_copy(tmp_path_factory: pytest.TempPathFactory):
    """A function ``(bundle, name, targets, images=16) -> Path``: a copy of ``bundle`` in a new folder
    ``name``, quantized for each target with noise calibration (seconds for the tiny bundles)."""
    import shutil

    from edgeclip.cli import main

    def make(src: Path, name: str, targets: tuple[str, ...], images: int = 16) -> Path:
        dst = tmp_path_factory.mktemp(name) / name
        shutil.copytree(src, dst)
        for target in targets:
            args = ["-q", "quantize", str(dst), "--calib", "noise", "--images", str(images), "--target", target]
            assert main(args) == 0
        return dst

    return make


@pytest.fixture(scope="session")
def both_int8(quantized_copy, tiny_vit_bundle: Path) -> Path:
    """The tiny ViT bundle with both INT8 recipes (cpu and tensorrt; noise calibration: seconds). Read-only."""
    return quantized_copy(tiny_vit_bundle, "both", ("cpu", "tensorrt"))


@pytest.fixture(scope="session")
def local_tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tokenizer folders of the tiny SigLIP and SigLIP2 models, trained here (the hub is not reachable)."""
    pytest.importorskip("tokenizers", reason="the SigLIP tokenizers need the tokenizers extra")
    from local_tokenizers import siglip2_tokenizer, siglip_tokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    return {"siglip": siglip_tokenizer(root / "siglip"), "siglip2": siglip2_tokenizer(root / "siglip2")}


@pytest.fixture(scope="session")
def family_bundles(tmp_path_factory: pytest.TempPathFactory, local_tokenizers: dict[str, Path]):
    """``get(family) -> Path``: the family's tiny model exported once per session with the CIFAR-10 labels."""
    pytest.importorskip("open_clip", reason="exporting a bundle needs the export extra (open_clip, torch)")
    from edgeclip.cli import main
    from edgeclip.tables import FAMILIES

    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            out = tmp_path_factory.mktemp("family") / family
            args = ["-q", "export", "--model", FAMILIES[family].tiny, "--labels", *CIFAR_CLASSES, "--out", str(out)]
            if family in local_tokenizers:
                args += ["--tokenizer", str(local_tokenizers[family])]
            assert main(args) == 0
            made[family] = out
        return made[family]

    return get
