"""scripts/train_proxy_clip.py: a few real training steps of each proxy architecture make the loss fall."""
from __future__ import annotations

import importlib.util
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeclip.bundle import sha256_file

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tp():
    spec = importlib.util.spec_from_file_location("train_proxy_clip", REPO / "scripts" / "train_proxy_clip.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # worker processes (decode_images_parallel) find its functions by name
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def cifar64(shared_data, tmp_path_factory):
    """64 real CIFAR-10 training images (the first 7 of every class folder, cut to 64), unpacked alone."""
    archive = shared_data / "cifar10-train.tar"
    if not archive.is_file():
        pytest.skip(f"{archive} not found")
    out = tmp_path_factory.mktemp("cifar64")
    per_class: dict[str, list[tarfile.TarInfo]] = {}
    with tarfile.open(archive) as tar:
        for m in tar:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 4 and parts[1] == "train" and len(per_class.get(parts[2], [])) < 7:
                per_class.setdefault(parts[2], []).append(m)
            if len(per_class) == 10 and all(len(v) == 7 for v in per_class.values()):
                break
        members = [m for c in sorted(per_class) for m in per_class[c]]
        tar.extractall(out, members=members, filter="data")
    paths = [out / m.name for m in members]
    labels = [sorted(per_class).index(m.name.split("/")[2]) for m in members]
    return paths[:64], np.asarray(labels[:64])


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine two threads can be 10x slower (spinning OpenMP)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("arch", ["vit", "rn"])
def test_loss_falls(tp, cifar64, arch, one_thread):
    torch.manual_seed(0)
    paths, labels = cifar64
    assert sorted(set(labels.tolist())) == list(range(10))
    images = tp.decode_images(paths, 64)
    assert images.shape == (64, 64, 64, 3) and images.dtype == np.uint8
    cfg = tp.model_config(arch, 64, 16, tiny=True)
    model = tp.build_model(cfg, patch_dropout=0.5 if arch == "vit" else 0.0)
    if arch == "rn":
        assert isinstance(model.visual, __import__("open_clip").model.ModifiedResNet)
    tokenizer = tp.open_clip.get_tokenizer("ViT-B-32", context_length=16)
    ts = tp.TrainSet(images, labels, list(tp.CIFAR_CLASSES), tokenizer)
    losses = tp.train_steps(model, ts, steps=25, batch_size=32, lr=3e-3, weight_decay=0.0, warmup=3, seed=0,
                            log_every=0)
    assert len(losses) == 25 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05, losses


def test_heldout_rule(tp):
    names = [[f"{i:04d}.JPEG" for i in range(12)], ["b.JPEG", "a.JPEG", "c.JPEG"]]
    train, held = tp.split_imagenette([sorted(n) for n in names])
    assert held == [["0000.JPEG", "0005.JPEG", "0010.JPEG"], ["a.JPEG"]]
    assert all(not set(t) & set(h) for t, h in zip(train, held))
    assert [len(t) + len(h) for t, h in zip(train, held)] == [12, 3]


def test_multi_positive_loss_is_clip_loss_without_repeats(tp):
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    scale = torch.tensor(2.0)
    got = tp.multi_positive_clip_loss(img, txt, torch.arange(6), scale)
    logits = scale.exp() * torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).t()
    ref = 0.5 * (torch.nn.functional.cross_entropy(logits, torch.arange(6))
                 + torch.nn.functional.cross_entropy(logits.t(), torch.arange(6)))
    assert torch.allclose(got, ref, atol=1e-6)


def test_augment_shapes_and_determinism(tp):
    u8 = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)
    a = tp.augment(u8, torch.Generator().manual_seed(1))
    b = tp.augment(u8, torch.Generator().manual_seed(1))
    assert a.shape == (4, 3, 64, 64) and torch.equal(a, b)


def test_local_dir_roundtrip(tp, tmp_path):
    open_clip = tp.open_clip
    cfg = tp.model_config("rn", 64, 16, tiny=True)
    model = tp.build_model(cfg).eval()
    tp.save_local_dir(model, cfg, tmp_path)
    loaded, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path}")
    loaded.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model.encode_image(x)
        got = loaded.float().encode_image(x)
    assert torch.allclose(ref, got, atol=5e-2, rtol=5e-2)
    assert preprocess.transforms[0].size == 64
    from safetensors import safe_open

    with safe_open(str(tmp_path / "open_clip_model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert torch.float32 not in dtypes and torch.float16 in dtypes


def _tiny_run(tp, images, labels, **kw):
    torch.manual_seed(0)
    model = tp.build_model(tp.model_config("vit", 64, 16, tiny=True))
    ts = tp.TrainSet(images, labels, list(tp.CIFAR_CLASSES), tp.open_clip.get_tokenizer("ViT-B-32", context_length=16))
    return tp.train_steps(model, ts, steps=8, batch_size=16, lr=1e-3, weight_decay=0.0, warmup=2, seed=0,
                          log_every=0, **kw)


def test_time_budget_leaves_a_fast_run_on_the_step_schedule(tp, cifar64, one_thread):
    paths, labels = cifar64
    images = tp.decode_images(paths, 64)
    plain = _tiny_run(tp, images, labels)
    budgeted = _tiny_run(tp, images, labels, max_seconds=3600)
    assert budgeted == plain  # same seed, budget never binding: bit-identical losses
    cut = _tiny_run(tp, images, labels, max_seconds=1e-3)
    assert 1 <= len(cut) < 8  # an exhausted budget stops the run early


def test_parallel_decode_matches_serial(tp, cifar64):
    paths = cifar64[0][:12]
    assert np.array_equal(tp.decode_images_parallel(paths, 64, 3), tp.decode_images(paths, 64))


def test_packed_data_unpacks_like_the_originals(tp, cifar64, tmp_path, capsys):
    """scripts/pack_proxy_data.py: CIFAR archives recompressed losslessly; photos shrunk, same names."""
    spec = importlib.util.spec_from_file_location("pack_proxy_data", REPO / "scripts" / "pack_proxy_data.py")
    pack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack)
    data, out = tmp_path / "data", tmp_path / "pack"
    data.mkdir()
    assert pack.main(["--data", str(data), "--out", str(out)]) == 2
    assert "cifar10-train.tar not found" in capsys.readouterr().err
    images = cifar64[0][:5]
    for name, prefix in (("cifar10-train", "cifar10/train/c"), ("cifar10-test", "cifar10/test/c"),
                         ("imagenette-train", "imagenette/train/n0")):
        with tarfile.open(data / f"{name}.tar", "w") as tar:
            for i, p in enumerate(images):
                tar.add(p, arcname=f"{prefix}{i % 2}/{p.name}")
    (data / "imagenette-classes.tsv").write_text("n00\ttench\nn01\tchurch\n")
    assert pack.main(["--data", str(data), "--out", str(out), "--size", "48"]) == 0
    manifest = json.loads((out / "PACK.json").read_text())
    assert manifest["imagenette_images"] == 5 and manifest["imagenette_size"] == 48
    assert all(sha256_file(out / n) == f["sha256"] for n, f in manifest["files"].items())
    for name, size in (("cifar10-train.tar", 32), ("imagenette-train.tar", 48)):
        dest = tmp_path / name.split("-")[0]
        dest.mkdir()
        tp.unpack(out, name, dest)
        files = sorted(dest.rglob("*.jpg"))
        assert sorted(f.name for f in files) == sorted(p.name for p in images)
        assert tp.decode_images(files, size).shape == (5, size, size, 3)
    orig = {p.name: p.read_bytes() for p in images}
    assert all(f.read_bytes() == orig[f.name] for f in (tmp_path / "cifar10").rglob("*.jpg"))
    with pytest.raises(FileNotFoundError, match="--data"):
        tp.unpack(tmp_path, "cifar10-test.tar", tmp_path)


def test_card_is_rendered_from_the_shipped_training_log(tp, tmp_path):
    """`--card DIR` rebuilds the model card from train_log.json, hand-added notes and bundle numbers included."""
    from edgeclip.export.models import MODELS_DIR

    shipped = MODELS_DIR / "proxy-rn"
    for name in ("train_log.json", "open_clip_model.safetensors"):
        (tmp_path / name).symlink_to(shipped / name)
    assert tp.main(["--card", str(tmp_path)]) == 0
    assert (tmp_path / "README.md").read_text() == (shipped / "README.md").read_text()
