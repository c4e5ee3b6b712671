"""Motion gating and region geometry on real photos: noise and lighting are not motion, a change is."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("yaml", reason="the 'watch' extra (pyyaml, paho-mqtt) is not installed")
cv2 = pytest.importorskip("cv2")

from edgeclip.watch.config import MotionSettings, Shape  # noqa: E402
from edgeclip.watch.geometry import OUTSIDE, Geometry  # noqa: E402
from edgeclip.watch.motion import MotionGate, small_grey  # noqa: E402


@pytest.fixture(scope="module")
def scene(imagenette_train: Path) -> tuple[np.ndarray, np.ndarray]:
    """Two different real photos at 320x240 (a region's two looks)."""
    files = sorted(imagenette_train.rglob("*.JPEG"))
    a, b = (cv2.resize(cv2.imread(str(files[i])), (320, 240)) for i in (0, 4000))
    return a, b


def noisy(img: np.ndarray, rng: np.random.Generator, level: int = 3, shift: int = 0) -> np.ndarray:
    out = img.astype(np.int16) + shift + rng.integers(-level, level + 1, img.shape[:2] + (1,), dtype=np.int16)
    return np.clip(out, 0, 255).astype(np.uint8)


def test_sensor_noise_and_uniform_lighting_changes_are_not_motion(scene) -> None:
    a, _ = scene
    rng = np.random.default_rng(0)
    gate = MotionGate(MotionSettings())
    assert gate.update(a, 0.0)  # the first look always counts
    moved = [gate.update(noisy(a, rng), k / 15) for k in range(1, 300)]
    assert not any(moved)
    # the lights change at once by 30 grey levels (auto-exposure): no motion either
    assert not any(gate.update(noisy(a, rng, shift=30), 20 + k / 15) for k in range(30))
    # and a slow dusk: -60 levels over 2 minutes
    assert not any(gate.update(noisy(a, rng, shift=30 - k // 30), 30 + k / 15) for k in range(1800))


def test_a_change_is_motion_at_once_then_becomes_background(scene) -> None:
    a, b = scene
    rng = np.random.default_rng(1)
    s = MotionSettings(hold=1.5)
    gate = MotionGate(s)
    for k in range(60):
        gate.update(noisy(a, rng), k / 15)
    assert not gate.active(60 / 15)
    assert gate.update(noisy(b, rng), 60 / 15)  # the first changed frame is motion
    moved = [gate.update(noisy(b, rng), (61 + k) / 15) for k in range(150)]
    # it stays motion while it is new, and stops once it stood still for `hold` seconds
    stopped = moved.index(False)
    assert 0.8 * s.hold * 15 <= stopped <= 1.2 * s.hold * 15 + 2
    assert not any(moved[stopped:])
    assert not gate.active((61 + 149) / 15)


def test_changes_outside_a_polygon_are_ignored(scene) -> None:
    a, b = scene
    shape = Shape("polygon", [(0, 0), (160, 0), (0, 240)], relative=False)  # the upper left triangle
    geo = Geometry(shape, 320, 240)
    assert geo.box == (0, 0, 160, 240) and geo.mask.shape == (240, 160)
    gate = MotionGate(MotionSettings(), geo.mask)
    rng = np.random.default_rng(2)
    x, y, w, h = geo.box
    for k in range(30):
        gate.update(noisy(a, rng)[y:y + h, x:x + w], k / 15)
    outside = a.copy()
    lower_right = np.ones((240, 160), bool) & (geo.mask == 0)
    outside[:, :160][lower_right] = b[:, :160][lower_right]
    assert not gate.update(outside[y:y + h, x:x + w], 3.0)
    inside = a.copy()
    inside[:, :160][geo.mask == 1] = b[:, :160][geo.mask == 1]
    assert gate.update(inside[y:y + h, x:x + w], 3.1)
    # classification sees the polygon only: outside pixels are grey
    crop = geo.crop(a)
    assert (crop[geo.mask == 0] == OUTSIDE).all() and (crop[geo.mask == 1] == a[:, :160][geo.mask == 1]).all()


def test_geometry_in_fractions_and_pixels() -> None:
    rect = Shape("rect", [(0.25, 0.5), (0.75, 0.5), (0.75, 1.0), (0.25, 1.0)], relative=True)
    assert Geometry(rect, 640, 480).box == (160, 240, 320, 240)
    assert Geometry(rect, 320, 240).box == (80, 120, 160, 120)  # the same region on a smaller stream
    px = Shape("rect", [(600, 400), (700, 400), (700, 500), (600, 500)], relative=False)
    assert Geometry(px, 640, 480).box == (600, 400, 40, 80)  # clipped to the frame
    with pytest.raises(Exception, match="outside the 320x240 frame"):
        Geometry(px, 320, 240)


def test_small_grey_is_the_same_with_and_without_opencv(scene, monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = scene
    with_cv = small_grey(a, 32)
    import edgeclip.watch.motion as motion

    monkeypatch.setattr(motion, "cv2", None)
    without = small_grey(a, 32)
    assert with_cv.shape == without.shape == (24, 32)
    assert float(np.abs(with_cv - without).mean()) < 1.0
