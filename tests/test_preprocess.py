"""The torch-free preprocessing must reproduce open_clip's eval transform (PIL + torchvision) on real photos.

Three levels, strictest first:
- resampling: our Pillow-compatible resize is bit-identical to ``PIL.Image.resize`` (bicubic, bilinear,
  nearest; down- and upscaling; both of Pillow's pass orders);
- pixels: ``Preprocessor(cfg)(cv2.imread(f))`` against ``open_clip.image_transform(...)`` on
  ``Image.open(f).convert("RGB")`` for every resize mode and interpolation, square and non-square sizes,
  down- and upscaling, full photos and non-square crops;
- embeddings: random-weight ViT and ModifiedResNet CLIP towers give the same embeddings (cosine) and the
  same top-1 label on 256 real photos whichever preprocessing fed them.
"""
from __future__ import annotations

import json
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeclip.errors import BundleError, ImageReadError, OptionError
from edgeclip.runtime.preprocess import (OPENAI_MEAN, OPENAI_STD, PreprocessConfig, Preprocessor,
                                         pillow_coefficients)

REPO = Path(__file__).resolve().parents[1]
PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

PILLOW_13 = int(PIL.__version__.split(".")[0]) >= 13  # Pillow >= 13 may run the vertical pass first
STEP = 1 / 255 / min(OPENAI_STD)  # one uint8 level after normalisation, ~0.0150


def _files(root: Path, pattern: str, per_class: int) -> list[Path]:
    return [f for d in sorted(p for p in root.iterdir() if p.is_dir()) for f in sorted(d.glob(pattern))[:per_class]]


@pytest.fixture(scope="module")
def photos(imagenette_train: Path) -> list[Path]:
    """200 Imagenette photos (20 per class), 224x224."""
    return _files(imagenette_train, "*.JPEG", 20)


@pytest.fixture(scope="module")
def thumbs(cifar_test: Path) -> list[Path]:
    """60 CIFAR-10 photos (6 per class), 32x32."""
    return _files(cifar_test, "*.jpg", 6)


def _open_clip():
    return pytest.importorskip("open_clip")


def reference(size, mode: str, interpolation: str, mean=OPENAI_MEAN, std=OPENAI_STD, fill: int = 0):
    """open_clip's eval transform; for ``nearest`` (which open_clip rejects) the same pipeline built from
    open_clip's and torchvision's pieces with InterpolationMode.NEAREST."""
    open_clip = _open_clip()
    if interpolation != "nearest":
        return open_clip.image_transform(size, is_train=False, mean=mean, std=std, resize_mode=mode,
                                         interpolation=interpolation, fill_color=fill)
    from open_clip.transform import CenterCropOrPad, ResizeKeepRatio
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor
    nearest = InterpolationMode.NEAREST
    h, w = (size, size) if isinstance(size, int) else size
    if mode == "longest":
        steps = [ResizeKeepRatio((h, w), interpolation=nearest, longest=1), CenterCropOrPad((h, w), fill=fill)]
    elif mode == "squash":
        steps = [Resize((h, w), interpolation=nearest)]
    else:
        steps = [Resize(h, interpolation=nearest) if h == w else ResizeKeepRatio((h, w), interpolation=nearest),
                 CenterCrop((h, w))]
    return Compose(steps + [ToTensor(), Normalize(mean, std)])


def _as_size(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


# ---------------------------------------------------------------------------------------------------------
# resampling: bit-identical to Pillow
# ---------------------------------------------------------------------------------------------------------
RESIZES = [  # (crop h, crop w) of a photo -> (out h, out w)
    ((224, 224), (64, 64)), ((224, 224), (17, 201)), ((200, 60), (20, 50)), ((61, 203), (224, 224)),
    ((224, 150), (224, 77)), ((150, 224), (31, 224)), ((32, 32), (224, 224)), ((32, 23), (64, 80)),
    ((224, 224), (1, 1)), ((5, 224), (300, 3)), ((224, 224), (223, 225)), ((101, 99), (100, 100)),
    ((224, 224), (7, 224)), ((180, 40), (30, 38)), ((224, 224), (448, 112)),
]


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
def test_resampling_is_bit_identical_to_pillow(photos, interpolation):
    modes = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
    for k, ((ch, cw), (oh, ow)) in enumerate(RESIZES):
        bgr = cv2.imread(str(photos[k * 13]))
        crop = bgr[(224 - ch) // 3:(224 - ch) // 3 + ch, (224 - cw) // 2:(224 - cw) // 2 + cw]
        ours = Preprocessor(PreprocessConfig(size=(oh, ow), resize_mode="squash",
                                             interpolation=interpolation)).pixels(crop)[:, :, ::-1]
        ref = np.asarray(Image.fromarray(np.ascontiguousarray(crop[:, :, ::-1])).resize((ow, oh), modes[interpolation]))
        diff = np.abs(ours.astype(int) - ref.astype(int))
        vertical_first = (ch - oh) > 0 and (ch - oh) > 2 * (cw - ow)
        allowed = 0 if PILLOW_13 or not vertical_first else 1  # older Pillow: horizontal pass first
        assert diff.max() <= allowed, (f"{cw}x{ch} -> {ow}x{oh} {interpolation}: {int((diff > 0).sum())} "
                                       f"pixels differ, max {diff.max()}")


def test_coefficients_are_pillows():
    """Weights sum to 2**22 (up to rounding), are antialiased when shrinking and interpolating when not."""
    for n_in, n_out, interp in ((224, 64, "bicubic"), (32, 224, "bicubic"), (1080, 224, "bilinear")):
        xmin, kk = pillow_coefficients(n_in, n_out, interp)
        assert kk.shape[0] == n_out and (xmin >= 0).all() and (xmin < n_in).all()
        assert np.abs(kk.sum(axis=1) - 2 ** 22).max() <= kk.shape[1]
        support = (2.0 if interp == "bicubic" else 1.0) * max(n_in / n_out, 1.0)
        assert kk.shape[1] == int(np.ceil(support)) * 2 + 1  # support widened by the downscale factor


# ---------------------------------------------------------------------------------------------------------
# pixels: against open_clip's transform on the PIL-decoded photo
# ---------------------------------------------------------------------------------------------------------
SIZES = [64, (64, 80), (80, 64), 224]


def _sources(photos: list[Path], thumbs: list[Path], rng: np.random.Generator):
    """(path, crop box (x, y, w, h) or None): full photos and random non-square crops, large and small."""
    out = []
    for group, side in ((photos, 224), (thumbs, 32)):
        for i in rng.choice(len(group), 2, replace=False):
            out.append((group[i], None))
            while True:
                w, h = (int(v) for v in rng.integers(side // 2, side + 1, size=2))
                if w != h:
                    break
            x, y = int(rng.integers(0, side - w + 1)), int(rng.integers(0, side - h + 1))
            out.append((group[i], (x, y, w, h)))
    return out


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
@pytest.mark.parametrize("mode", ["shortest", "longest", "squash"])
def test_matches_open_clip_transform(photos, thumbs, mode, interpolation, record_property):
    rng = np.random.default_rng(zlib.crc32(f"{mode}/{interpolation}".encode()))
    worst, total, count = 0.0, 0.0, 0
    for size in SIZES:
        fill = 0 if mode != "longest" else 114
        pre = Preprocessor(PreprocessConfig(size=_as_size(size), resize_mode=mode, interpolation=interpolation,
                                            fill_color=fill))
        ref_tf = reference(size, mode, interpolation, fill=fill)
        for path, box in _sources(photos, thumbs, rng):
            bgr = cv2.imread(str(path))
            pil = Image.open(path).convert("RGB")  # exactly as open_clip's users decode
            if box is not None:
                x, y, w, h = box
                pil = pil.crop((x, y, x + w, y + h))
            ours = pre(bgr, roi=box)
            assert ours.shape == (3, *_as_size(size)) and ours.dtype == np.float32
            ref = ref_tf(pil).numpy()
            diff = np.abs(ours - ref)
            worst, total, count = max(worst, float(diff.max())), total + float(diff.mean()), count + 1
            # Same decoded pixels into both pipelines: identical up to float32 rounding.
            rgb = cv2.imread(str(path))[:, :, ::-1]
            if box is not None:
                rgb = rgb[box[1]:box[1] + box[3], box[0]:box[0] + box[2]]
            same = ref_tf(Image.fromarray(np.ascontiguousarray(rgb))).numpy()
            assert np.abs(ours - same).max() <= 1e-6, f"{path.name} {box} -> {size}"
    record_property("max_abs_diff", worst)
    record_property("mean_abs_diff", total / count)
    print(f"\n{mode}/{interpolation}: {count} images, max |diff| {worst:.2e}, mean {total / count:.2e} "
          f"(one uint8 level = {STEP:.4f})")
    # cv2.imread and PIL decode JPEGs with libjpeg(-turbo); a different build may differ by a level or two.
    assert total / count < 0.1 * STEP
    assert worst <= 2 * STEP


def test_large_images_are_resampled_in_strips(photos, monkeypatch):
    """Big photos go through the first pass in strips (bounded memory); the result must not change."""
    from edgeclip.runtime import preprocess
    bgr = cv2.imread(str(photos[9]))
    crops = [bgr, bgr[:, :60], bgr[:50]]  # horizontal first, vertical first (tall), short and wide
    cfgs = [PreprocessConfig(size=s, resize_mode=m) for s in ((40, 40), (30, 90)) for m in ("shortest", "squash")]
    whole = [Preprocessor(c).pixels(x) for c in cfgs for x in crops]
    monkeypatch.setattr(preprocess, "_STRIP_ELEMENTS", 3000)
    strips = [Preprocessor(c).pixels(x) for c in cfgs for x in crops]
    for a, b in zip(whole, strips):
        np.testing.assert_array_equal(a, b)


def test_padding_uses_fill_color_and_crop_is_centred(photos):
    bgr = cv2.imread(str(photos[0]))[:, :150]  # 150 wide, 224 tall
    pre = Preprocessor(PreprocessConfig(size=(64, 64), resize_mode="longest", fill_color=200))
    px = pre.pixels(bgr)
    # 150x224 -> round(150 / 3.5) = 43 wide, padded (64 - 43) // 2 = 10 left and 11 right with the fill
    assert (px[:, :10] == 200).all() and (px[:, 53:] == 200).all()
    assert not (px[:, 10:53] == 200).all()


# ---------------------------------------------------------------------------------------------------------
# embeddings: the acceptance criterion
# ---------------------------------------------------------------------------------------------------------
def _tiny_clips():
    open_clip = _open_clip()
    import torch
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=2)
    torch.manual_seed(0)
    vit = CLIP(embed_dim=64, vision_cfg=CLIPVisionCfg(layers=2, width=64, patch_size=8, image_size=64),
               text_cfg=text).eval()
    torch.manual_seed(0)
    rn = CLIP(embed_dim=64, vision_cfg=CLIPVisionCfg(layers=[1, 1, 1, 1], width=16, image_size=64),
              text_cfg=text).eval()
    assert type(rn.visual).__name__ == "ModifiedResNet" and open_clip is not None
    return {"vit": vit, "modified-resnet": rn}


def test_embeddings_match_open_clip(photos, thumbs, record_property):
    import torch
    files = photos + thumbs  # 200 Imagenette + 60 CIFAR-10
    pre = Preprocessor(PreprocessConfig(size=(64, 64)))
    ours = torch.from_numpy(pre.batch([cv2.imread(str(f)) for f in files]))
    tf = reference(64, "shortest", "bicubic")
    theirs = torch.stack([tf(Image.open(f).convert("RGB")) for f in files])
    labels = np.random.default_rng(0).normal(size=(10, 64)).astype(np.float32)
    labels /= np.linalg.norm(labels, axis=1, keepdims=True)
    for name, model in _tiny_clips().items():
        with torch.no_grad():
            a = torch.nn.functional.normalize(model.encode_image(ours), dim=-1).numpy()
            b = torch.nn.functional.normalize(model.encode_image(theirs), dim=-1).numpy()
        cos = (a * b).sum(axis=1)
        record_property(f"min_cosine_{name}", float(cos.min()))
        print(f"\n{name}: {len(files)} images, min cosine {cos.min():.7f}")
        assert cos.min() >= 0.999, f"{name}: {files[int(cos.argmin())].name} cosine {cos.min():.5f}"
        top_a, top_b = (a @ labels.T).argmax(axis=1), (b @ labels.T).argmax(axis=1)
        assert (top_a == top_b).all(), f"{name}: top-1 differs on {int((top_a != top_b).sum())} images"


# ---------------------------------------------------------------------------------------------------------
# torch-free, inputs, ROI, cache
# ---------------------------------------------------------------------------------------------------------
def test_import_is_torch_and_pil_free():
    code = ("import sys, numpy as np; import edgeclip.runtime.preprocess as p; "
            "pre = p.Preprocessor(p.PreprocessConfig(size=(32, 32))); pre(np.zeros((40, 50, 3), np.uint8)); "
            "print([m for m in ('torch', 'torchvision', 'open_clip', 'PIL') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_gray_bgra_and_single_channel_inputs(photos):
    path = str(photos[3])
    bgr = cv2.imread(path)
    gray = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    bgra = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    bgra[:, :, 3] = np.random.default_rng(0).integers(0, 256, bgra.shape[:2])
    for mode in ("shortest", "longest"):
        pre = Preprocessor(PreprocessConfig(size=(48, 40), resize_mode=mode))
        np.testing.assert_array_equal(pre(bgra), pre(bgr))  # alpha dropped, as PIL's convert("RGB")
        g = pre(gray)
        np.testing.assert_array_equal(g, pre(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)))
        np.testing.assert_array_equal(g, pre(gray[:, :, None]))
        ref = reference((48, 40), mode, "bicubic")(Image.fromarray(gray).convert("RGB")).numpy()
        assert np.abs(g - ref).max() <= 1e-6


def test_roi_crops_first(photos):
    bgr = cv2.imread(str(photos[5]))
    pre = Preprocessor(PreprocessConfig(size=(32, 32)))
    np.testing.assert_array_equal(pre(bgr, roi=(30, 10, 120, 90)), pre(bgr[10:100, 30:150]))
    np.testing.assert_array_equal(pre(bgr, roi=(0, 0, 224, 224)), pre(bgr))
    for bad in ((200, 0, 50, 50), (-1, 0, 10, 10), (0, 0, 0, 10), (0, 0, 10), ("a", 0, 1, 1), (0.5, 0, 10, 10)):
        with pytest.raises(OptionError, match="roi"):
            pre(bgr, roi=bad)


@pytest.mark.parametrize("bad, match", [
    (None, "None"), (np.zeros((0, 10, 3), np.uint8), "empty"), (np.zeros((10, 10, 2), np.uint8), "shape"),
    (np.zeros((10, 10, 3, 1), np.uint8), "shape"), (np.zeros((10, 10, 3), np.float32), "uint8"),
    ([[1, 2], [3, 4]], "numpy"), (np.zeros((1, 3000, 3), np.uint8), "elongated"),
])
def test_bad_images_raise_image_read_error(bad, match):
    pre = Preprocessor(PreprocessConfig(size=(64, 64), resize_mode="longest"))
    with pytest.raises(ImageReadError, match=match):
        pre(bad)


def test_batch_cache_and_threads(photos, thumbs):
    images = [cv2.imread(str(f)) for f in photos[:6] + thumbs[:6]]
    images.append(cv2.imread(str(photos[7]))[:, 40:200])
    pre = Preprocessor(PreprocessConfig(size=(56, 56)))
    batch = pre.batch(images)
    assert batch.shape == (13, 3, 56, 56) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0], pre(images[0]))
    assert pre.batch([]).shape == (0, 3, 56, 56)
    assert len(pre._plans) == 3  # 224x224, 32x32 and 224x160: weights computed once per input size
    plan = pre._plan(224, 224)
    pre(images[1])
    assert pre._plan(224, 224) is plan
    with ThreadPoolExecutor(4) as ex:
        threaded = np.stack(list(ex.map(pre, images * 3)))
    np.testing.assert_array_equal(threaded, np.concatenate([batch] * 3))
    for w in range(40, 80):  # the cache is bounded
        pre(np.zeros((50, w, 3), np.uint8))
    assert len(pre._plans) <= 16


# ---------------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------------
def test_config_round_trips_through_the_manifest():
    cfg = PreprocessConfig(size=(224, 192), resize_mode="longest", interpolation="bilinear",
                           mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), fill_color=128)
    d = json.loads(json.dumps(cfg.to_manifest()))
    assert d["color"] == "RGB" and d["layout"] == "NCHW" and d["size"] == [224, 192]
    assert PreprocessConfig.from_manifest(d) == cfg
    short = PreprocessConfig.from_manifest({"size": 224, "resize_mode": "shortest", "interpolation": "bicubic",
                                            "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD)})
    assert short == PreprocessConfig(size=(224, 224)) and short.fill_color == 0


GOOD = {"size": [224, 224], "resize_mode": "shortest", "interpolation": "bicubic", "mean": list(OPENAI_MEAN),
        "std": list(OPENAI_STD)}


@pytest.mark.parametrize("key, value, match", [
    ("size", 0, "size"), ("size", [224], "size"), ("size", "224", "size"), ("size", [224, -1], "size"),
    ("size", True, "size"), ("size", [224.0, 224.0], "size"),
    ("resize_mode", "crop", "shortest, longest, squash"), ("interpolation", "lanczos", "bicubic, bilinear, nearest"),
    ("mean", [0.5, 0.5], "mean"), ("mean", "0.5", "mean"), ("std", [0.0, 1.0, 1.0], "std"),
    ("std", [float("nan"), 1, 1], "std"), ("fill_color", 256, "fill_color"), ("fill_color", 1.5, "fill_color"),
    ("color", "BGR", "color"), ("layout", "NHWC", "layout"), ("resize_mode", None, "resize_mode"),
])
def test_invalid_manifest_raises_bundle_error(key, value, match):
    d = dict(GOOD, **{key: value}) if value is not None else {k: v for k, v in GOOD.items() if k != key}
    with pytest.raises(BundleError, match=match) as info:
        PreprocessConfig.from_manifest(d)
    assert f"preprocess.{key}" in str(info.value)


def test_invalid_direct_config_raises_option_error():
    with pytest.raises(OptionError, match="resize_mode"):
        PreprocessConfig(size=(224, 224), resize_mode="fit")
    with pytest.raises(BundleError):
        PreprocessConfig.from_manifest([224])


def test_a_window_of_coefficients_equals_the_slice_of_all_of_them() -> None:
    from edgeclip.runtime.preprocess import pillow_nearest_index

    for interp in ("bicubic", "bilinear"):
        xmin, kk = pillow_coefficients(1000, 300, interp)
        wx, wk = pillow_coefficients(1000, 300, interp, 40, 200)
        assert (xmin[40:200] == wx).all() and (kk[40:200] == wk).all()
    full = pillow_nearest_index(333, 1001)
    assert (pillow_nearest_index(333, 1001, 500) == full[:500]).all()


@pytest.mark.parametrize("shape", [(1, 200_000), (200_000, 1)])
def test_an_extremely_elongated_image_costs_memory_for_the_crop_only(shape: tuple[int, int]) -> None:
    """A 1x200000 image resized to 224 px on its short side is 44.8 M px wide: only the crop is computed."""
    import tracemalloc

    pre = Preprocessor(PreprocessConfig(size=(224, 224), resize_mode="shortest", interpolation="bicubic",
                                        mean=OPENAI_MEAN, std=OPENAI_STD))
    image = np.full(shape + (3,), 128, np.uint8)
    tracemalloc.start()
    try:
        out = pre(image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (3, 224, 224) and np.isfinite(out).all()
    assert peak < 64 * 2 ** 20, f"peak {peak / 2 ** 20:.0f} MB"


def test_resampling_memory_does_not_grow_with_the_image() -> None:
    """Beside the decoded image, a resize needs one strip of float32 and a uint8 intermediate as tall as the
    image and as wide as the crop, not a float32 copy of the image (which for 6000x6000 would be 412 MB)."""
    import tracemalloc

    pp = Preprocessor(PreprocessConfig(size=(224, 224)))
    peaks = {}
    for side in (1500, 6000):
        image = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
        pp(image)  # the plan is cached: measure the resize alone
        tracemalloc.start()
        pp(image)
        peaks[side] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[6000] < 32 * 2**20, peaks  # before: 40 MB
    assert peaks[6000] - peaks[1500] < 4 * 2**20, peaks  # 16x the pixels, ~1 MB more (before: +13 MB)


def test_a_camera_crop_reuses_its_work_arrays_and_runs_outputs_in_blocks(photos) -> None:
    """Once a thread has preprocessed a crop of a size, the next one allocates no fresh work arrays (fresh
    ones cost page faults on every call), each pass takes a few matrix products rather than one per output
    row, and the result stays Pillow's."""
    import threading
    import tracemalloc

    frame = cv2.resize(cv2.imread(str(photos[0])), (640, 480), interpolation=cv2.INTER_AREA)
    pre = Preprocessor(PreprocessConfig(size=(224, 224)))
    out = np.empty((3, 224, 224), np.float32)
    box = (40, 60, 200, 300)
    pre.into(out, frame, box)
    plan = pre._plan(300, 200)
    assert all(len(axis.blocks) <= axis.n // 8 for axis in (plan.rows, plan.cols))
    tracemalloc.start()
    try:
        pre.into(out, frame, box)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 512 * 2 ** 10, f"{peak / 2 ** 10:.0f} kB allocated"  # 255 kB; fresh work arrays: 2.1 MB
    crop = np.ascontiguousarray(frame[60:360, 40:240, ::-1])
    ref = np.asarray(Image.fromarray(crop).resize((224, 336), Image.BICUBIC))[56:280]
    np.testing.assert_array_equal(pre.pixels(frame, box)[:, :, ::-1], ref)
    other = []  # another thread has arrays of its own: results do not mix
    t = threading.Thread(target=lambda: other.append(pre.pixels(frame, (380, 240, 220, 200))))
    t.start()
    mine = pre.pixels(frame, box)
    t.join()
    np.testing.assert_array_equal(mine[:, :, ::-1], ref)
    np.testing.assert_array_equal(other[0], pre.pixels(frame, (380, 240, 220, 200)))
