"""Stream decisions: EMA half-life math, hysteresis, the unknown threshold and regions of interest."""
from __future__ import annotations

import numpy as np
import pytest

from edgeclip.errors import OptionError
from edgeclip.stream.decisions import UNKNOWN, EmaSmoother, HalfLife, LabelDecider, Roi, ema_weight

NAMES = ["cat", "dog", "bird"]


# -- half-life and EMA ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,value,unit", [("0.5", 0.5, "s"), ("0.5s", 0.5, "s"), ("500ms", 0.5, "s"),
                                             ("5f", 5.0, "frames"), ("5 frames", 5.0, "frames"), ("0", 0.0, "s")])
def test_half_life_parse(text: str, value: float, unit: str) -> None:
    hl = HalfLife.parse(text)
    assert hl.value == pytest.approx(value) and hl.unit == unit


@pytest.mark.parametrize("text", ["", "fast", "-1s", "nan", "2x"])
def test_half_life_rejects_nonsense(text: str) -> None:
    with pytest.raises(OptionError):
        HalfLife.parse(text)


def test_ema_weight_halves_per_half_life() -> None:
    assert ema_weight(1.0, 1.0) == pytest.approx(0.5)
    assert ema_weight(2.0, 1.0) == pytest.approx(0.75)
    assert ema_weight(0.5, 0.0) == 1.0  # no smoothing
    assert ema_weight(0.0, 1.0) == 0.0  # no time passed


def test_ema_in_seconds_follows_timestamps() -> None:
    ema = EmaSmoother(HalfLife(2.0, "s"))
    a, b = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    np.testing.assert_allclose(ema.update(a, t=10.0), a)  # the first frame is taken as is
    out = ema.update(b, t=12.0)  # one half-life later: halfway
    np.testing.assert_allclose(out, [0.5, 0.5, 0.0])
    out = ema.update(b, t=14.0)  # another half-life: the old evidence halves again
    np.testing.assert_allclose(out, [0.25, 0.75, 0.0])


def test_ema_in_seconds_is_independent_of_frame_rate() -> None:
    """Same signal sampled at 10 fps and at 40 fps (with irregular gaps): same smoothed value at t = 1 s."""
    a, b = np.array([0.9, 0.1]), np.array([0.2, 0.8])
    slow, fast = EmaSmoother(HalfLife(0.3)), EmaSmoother(HalfLife(0.3))
    slow.update(a, 0.0)
    fast.update(a, 0.0)
    for t in np.arange(1, 11) / 10:
        out_slow = slow.update(b, float(t))
    rng = np.random.default_rng(0)
    ts = np.sort(np.concatenate([rng.uniform(0, 1, 39), [1.0]]))
    for t in ts:
        out_fast = fast.update(b, float(t))
    expected = b + (a - b) * 0.5 ** (1.0 / 0.3)
    np.testing.assert_allclose(out_slow, expected, atol=1e-12)
    np.testing.assert_allclose(out_fast, expected, atol=1e-12)


def test_ema_in_frames_and_reset() -> None:
    ema = EmaSmoother(HalfLife.parse("2f"))
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    ema.update(a)
    ema.update(b)
    out = ema.update(b)  # two frames = one half-life
    np.testing.assert_allclose(out, [0.5, 0.5])
    ema.reset()
    np.testing.assert_allclose(ema.update(b), b)
    # a new label set (another length) restarts the average instead of failing
    np.testing.assert_allclose(ema.update(np.array([0.2, 0.3, 0.5])), [0.2, 0.3, 0.5])


def test_ema_seconds_needs_timestamps() -> None:
    ema = EmaSmoother(HalfLife(1.0, "s"))
    ema.update(np.array([1.0, 0.0]))
    with pytest.raises(OptionError):
        ema.update(np.array([0.0, 1.0]))


def test_no_smoothing_passes_through() -> None:
    ema = EmaSmoother(0.0)
    ema.update(np.array([1.0, 0.0]), 0.0)
    np.testing.assert_allclose(ema.update(np.array([0.3, 0.7]), 0.1), [0.3, 0.7])


# -- hysteresis ----------------------------------------------------------------------------------------------
def run(decider: LabelDecider, rows: list[list[float]]) -> list[str]:
    return [decider.update(np.array(r)).label for r in rows]


def test_first_frame_decides_at_once() -> None:
    d = LabelDecider(NAMES, margin=0.1, min_frames=5)
    first = d.update(np.array([0.2, 0.5, 0.3]))
    assert first.label == "dog" and first.changed and first.previous is None
    again = d.update(np.array([0.2, 0.5, 0.3]))
    assert again.label == "dog" and not again.changed


def test_dwell_holds_a_challenger_for_seconds_of_frame_time_and_a_break_starts_it_again() -> None:
    """What ``edgeclip watch`` regions use: the state changes only after the challenger has led by the margin
    for ``dwell`` seconds (frame times), however few or many frames came meanwhile."""
    from edgeclip.watch.config import RegionSettings
    from edgeclip.watch.decide import RegionState

    d = LabelDecider(NAMES, margin=0.1, dwell=2.0)
    cat, dog = np.array([0.8, 0.1, 0.1]), np.array([0.1, 0.8, 0.1])
    assert d.update(cat, 0.0).label == "cat"
    assert d.update(dog, 1.0).label == "cat" and d.update(dog, 2.9).label == "cat"  # led for 1.9 s
    assert d.update(cat, 3.0).label == "cat"  # a break
    assert d.update(dog, 4.0).label == "cat" and d.update(dog, 5.5).label == "cat"  # led for 1.5 s since the break
    switched = d.update(dog, 6.0)
    assert switched.label == "dog" and switched.changed and switched.previous == "cat"
    region = RegionState(NAMES, RegionSettings(half_life=0.0, margin=0.1, dwell=2.0))
    assert [region.update(p, t).label for p, t in ((cat, 0.0), (dog, 1.0), (dog, 3.0))] == ["cat", "cat", "dog"]
    assert region.current == 1 and region.smoothed.tolist() == dog.tolist()


def test_margin_prevents_flicker() -> None:
    d = LabelDecider(NAMES, margin=0.1, min_frames=1)
    rows = [[0.5, 0.45, 0.05], [0.45, 0.5, 0.05], [0.5, 0.45, 0.05], [0.44, 0.51, 0.05]]
    assert run(d, rows) == ["cat"] * 4  # the challenger never leads by 0.1
    assert run(d, [[0.3, 0.65, 0.05]]) == ["dog"]  # now it does


def test_min_frames_needs_consecutive_frames() -> None:
    d = LabelDecider(NAMES, margin=0.0, min_frames=3)
    cat, dog, bird = [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]
    assert run(d, [cat, dog, dog, cat, dog, dog]) == ["cat"] * 6  # interrupted streaks reset
    assert run(d, [dog]) == ["dog"]  # third consecutive dog frame
    assert run(d, [bird, cat, bird, bird, bird]) == ["dog", "dog", "dog", "dog", "bird"]  # the streak is per label
    out = d.update(np.array(cat))
    assert out.label == "bird" and not out.changed


def test_change_reports_previous() -> None:
    d = LabelDecider(NAMES, min_frames=2)
    d.update(np.array([0.8, 0.1, 0.1]))
    d.update(np.array([0.1, 0.8, 0.1]))
    out = d.update(np.array([0.1, 0.8, 0.1]))
    assert out.changed and out.label == "dog" and out.previous == "cat" and out.score == pytest.approx(0.8)


def test_unknown_below_threshold_with_a_band() -> None:
    d = LabelDecider(NAMES, threshold=0.5, margin=0.05, min_frames=1)
    assert run(d, [[0.4, 0.3, 0.3]]) == [UNKNOWN]
    out = d.update(np.array([0.52, 0.28, 0.2]))  # above the threshold but inside the band: still unknown
    assert out.label == UNKNOWN and out.index == -1 and out.score == pytest.approx(0.52)
    assert run(d, [[0.56, 0.24, 0.2]]) == ["cat"]  # threshold + margin reached
    assert run(d, [[0.47, 0.33, 0.2]]) == ["cat"]  # below the threshold, not yet by the margin
    assert run(d, [[0.44, 0.36, 0.2]]) == [UNKNOWN]


def test_threshold_zero_never_unknown_and_validation() -> None:
    d = LabelDecider(NAMES)
    assert run(d, [[0.34, 0.33, 0.33]]) == ["cat"]
    for kwargs in ({"threshold": 1.5}, {"margin": -0.1}, {"min_frames": 0}, {"min_frames": 1.5}):
        with pytest.raises(OptionError):
            LabelDecider(NAMES, **kwargs)
    with pytest.raises(OptionError):
        d.update(np.array([0.5, 0.5]))


def test_new_label_set_resets() -> None:
    d = LabelDecider(NAMES, min_frames=3)
    d.update(np.array([0.8, 0.1, 0.1]))
    d.set_names(["red", "blue"])
    out = d.update(np.array([0.3, 0.7]))
    assert out.label == "blue" and out.changed and out.previous is None


# -- region of interest --------------------------------------------------------------------------------------
def test_roi_pixels_and_fractions() -> None:
    img = np.arange(100 * 200 * 3, dtype=np.uint8).reshape(100, 200, 3)
    roi = Roi.parse("10, 20, 50, 30")
    assert not roi.relative and roi.pixels(200, 100) == (10, 20, 50, 30)
    crop = roi.crop(img)
    assert crop.shape == (30, 50, 3) and np.shares_memory(crop, img)
    np.testing.assert_array_equal(crop, img[20:50, 10:60])
    frac = Roi.parse("0.25,0.5,0.5,0.5")
    assert frac.relative and frac.pixels(200, 100) == (50, 50, 100, 50)
    assert frac.crop(img).shape == (50, 100, 3)


@pytest.mark.parametrize("text", ["1,2,3", "a,b,c,d", "-1,0,10,10", "0,0,0,10", "0.5,0.5,0.6,0.2", "0,0,1.5,1"])
def test_roi_rejects_bad_text(text: str) -> None:
    with pytest.raises(OptionError):
        Roi.parse(text)


def test_roi_must_fit_the_frame() -> None:
    roi = Roi.parse("150,50,100,100")
    with pytest.raises(OptionError, match="does not fit the 200x100 frame"):
        roi.crop(np.zeros((100, 200, 3), np.uint8))
