"""Calibration sources: deterministic given the seed, each doing what it claims, cached outside the manifest."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeclip.bundle import load_bundle
from edgeclip.errors import OptionError
from edgeclip.quant.calibration import CalibSource, calibration_set, contact_sheet, text_targets, write_contact_sheet
from edgeclip.quant.synthesis import (SynthesisConfig, bn_statistics_loss, bn_stats_objective, load_torch_tower,
                                      noise_images, pixel_bounds, synthesise, text_cosine, text_guided_objective)

FAST = SynthesisConfig(batch_size=4, steps=25)


@pytest.fixture(scope="module")
def vit_tower(tiny_vit_bundle: Path):
    return load_torch_tower(load_bundle(tiny_vit_bundle))


@pytest.fixture(scope="module")
def rn_tower(tiny_rn_bundle: Path):
    """The tiny ResNet with BatchNorm running statistics of smooth, colourful images (as a trained net has):
    fresh BatchNorms (mean 0, var 1) are not reachable by any image of a random-weight tower."""
    import torch

    from edgeclip.quant.priors import batchnorm_layers

    tower = load_torch_tower(load_bundle(tiny_rn_bundle))
    layers = batchnorm_layers(tower.visual)
    g = torch.Generator().manual_seed(0)
    low = torch.rand(64, 3, 4, 4, generator=g) * 3.0 - 1.5
    images = torch.nn.functional.interpolate(low, size=tower.size, mode="bilinear", align_corners=False)
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        m.train()
    with torch.no_grad():
        tower.encode(images)
    for m in layers:
        m.eval()
    return tower


def test_parse_sources() -> None:
    assert CalibSource.parse("noise") == CalibSource("noise", "gaussian")
    assert str(CalibSource.parse("noise:uniform")) == "noise:uniform"
    assert CalibSource.parse("text-guided").kind == "text-guided"
    for bad in ("", "zeroq", "real", "real:/no/such/dir", "noise:pink", "bn-stats:x"):
        with pytest.raises(OptionError):
            CalibSource.parse(bad)


def test_noise_is_deterministic_and_in_range() -> None:
    mean, std = (0.48, 0.45, 0.40), (0.27, 0.26, 0.27)
    lo, hi = pixel_bounds(mean, std)
    for kind in ("gaussian", "uniform"):
        a = noise_images(6, (16, 16), mean, std, seed=1, kind=kind)
        assert a.shape == (6, 3, 16, 16) and a.dtype == np.float32
        np.testing.assert_array_equal(a, noise_images(6, (16, 16), mean, std, seed=1, kind=kind))
        assert not np.array_equal(a, noise_images(6, (16, 16), mean, std, seed=2, kind=kind))
        assert (a >= lo - 1e-6).all() and (a <= hi + 1e-6).all()


def test_text_guided_is_deterministic_and_raises_text_cosine(vit_tower, tiny_vit_bundle: Path) -> None:
    bundle = load_bundle(tiny_vit_bundle)
    targets, prompts = text_targets(bundle, 8, seed=0, generic_fraction=0.25)
    assert len(prompts) == 8 and sum(p in bundle.labels()[0] for p in prompts) == 6
    objective = text_guided_objective(vit_tower, targets)
    assert objective.diversity and not objective.batchnorm  # ViT: patch diversity, no BatchNorm
    a = synthesise(vit_tower, 8, objective, seed=5, config=FAST)
    b = synthesise(vit_tower, 8, objective, seed=5, config=FAST)
    c = synthesise(vit_tower, 8, objective, seed=6, config=FAST)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.allclose(a.images, c.images)
    assert a.info["end"]["text_cosine"] > a.info["start"]["text_cosine"] + 0.02, a.info
    start = synthesise(vit_tower, 8, objective, seed=5, config=SynthesisConfig(batch_size=4, steps=1, lr=1e-9))
    assert text_cosine(vit_tower, a.images, targets).mean() > text_cosine(vit_tower, start.images, targets).mean()
    lo, hi = pixel_bounds(vit_tower.mean, vit_tower.std)
    assert (a.images >= lo - 1e-5).all() and (a.images <= hi + 1e-5).all(), "valid pixels only"


def test_bn_stats_matches_batchnorm_statistics_better_than_noise(rn_tower) -> None:
    objective = bn_stats_objective(rn_tower)
    cfg = SynthesisConfig(batch_size=8, steps=60, lr=0.2)
    result = synthesise(rn_tower, 8, objective, seed=0, config=cfg)
    again = synthesise(rn_tower, 8, objective, seed=0, config=cfg)
    np.testing.assert_array_equal(result.images, again.images)
    noise = noise_images(8, rn_tower.size, rn_tower.mean, rn_tower.std, seed=0)
    synth_loss = bn_statistics_loss(rn_tower, result.images, batch_size=8)
    noise_loss = bn_statistics_loss(rn_tower, noise, batch_size=8)
    assert synth_loss < 0.6 * noise_loss, (synth_loss, noise_loss)
    assert result.info["end"]["bn_loss"] < result.info["start"]["bn_loss"]


def test_bn_stats_refuses_a_vit(vit_tower) -> None:
    with pytest.raises(OptionError, match="text-guided"):
        bn_stats_objective(vit_tower)


def test_text_guided_on_a_resnet_adds_bn_statistics(rn_tower, tiny_rn_bundle: Path) -> None:
    targets, _ = text_targets(load_bundle(tiny_rn_bundle), 4, 0, 0.25)
    objective = text_guided_objective(rn_tower, targets)
    assert objective.batchnorm and not objective.diversity
    r = synthesise(rn_tower, 4, objective, seed=0, config=SynthesisConfig(batch_size=4, steps=5))
    assert {"text_cosine", "bn_loss"} <= set(r.info["end"])


def test_time_budget_stops_synthesis(vit_tower) -> None:
    targets = np.eye(16, dtype=np.float32)[:8]
    r = synthesise(vit_tower, 8, text_guided_objective(vit_tower, targets), config=SynthesisConfig(batch_size=4,
                   steps=10_000), time_budget=0.5)
    assert r.info["plan_cut"] and sum(r.info["steps_run"]) < 20_000 and r.info["seconds"] < 5


def test_calibration_set_is_cached_outside_the_manifest(tmp_path: Path, tiny_vit_bundle: Path) -> None:
    path = tmp_path / "b"
    shutil.copytree(tiny_vit_bundle, path)
    bundle = load_bundle(path)
    first = calibration_set(bundle, "text-guided", images=4, seed=1, config=FAST, progress=False)
    again = calibration_set(bundle, "text-guided", images=4, seed=1, config=FAST, progress=False)
    other = calibration_set(bundle, "text-guided", images=4, seed=2, config=FAST, progress=False)
    assert not first.cached and again.cached and not other.cached
    np.testing.assert_array_equal(first.images, again.images)
    assert (path / ".work" / f"calib-{first.key}.npy").is_file() and first.key != other.key
    loaded = load_bundle(path)  # hash verification ignores the cache
    assert not any(name.startswith(".work") for name in loaded.manifest["files"])
    rec = first.record()
    assert rec["source"] == "text-guided" and rec["images"] == 4 and rec["seed"] == 1


def test_real_images_go_through_the_bundle_preprocessing(cifar_test: Path, tiny_vit_bundle: Path,
                                                         tmp_path: Path) -> None:
    from edgeclip.runtime.images import read_image
    from edgeclip.runtime.preprocess import PreprocessConfig, Preprocessor

    folder = tmp_path / "few"
    for cls in ("cat", "ship"):
        (folder / cls).mkdir(parents=True)
        for f in sorted((cifar_test / cls).iterdir())[:3]:
            shutil.copy(f, folder / cls / f.name)
    bundle = load_bundle(tiny_vit_bundle)
    cs = calibration_set(bundle, f"real:{folder}", images=4, seed=0, cache=False, progress=False)
    assert cs.images.shape == (4, 3, 32, 32) and cs.source.kind == "real"
    pre = Preprocessor(PreprocessConfig.from_manifest(bundle.preprocess))
    expected = {pre(read_image(f)).tobytes() for f in sorted(folder.rglob("*.jpg"))}
    assert all(img.tobytes() in expected for img in cs.images)


def test_contact_sheet(tmp_path: Path) -> None:
    import cv2

    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    images = noise_images(10, (32, 32), mean, std, seed=0)
    sheet = contact_sheet(images, mean, std, columns=4)
    assert sheet.dtype == np.uint8 and sheet.shape == (3 * 98 + 2, 4 * 98 + 2, 3)  # 32 px tiles shown at 96
    png = write_contact_sheet(images, {"mean": mean, "std": std}, tmp_path / "sheet.png", columns=4)
    assert cv2.imread(str(png)).shape == sheet.shape
