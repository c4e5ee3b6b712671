"""Synthesis that fits its time budget: coarse-to-fine resolution, plans that say when they are cut, autocast."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeclip.bundle import load_bundle
from edgeclip.cli import main
from edgeclip.errors import OptionError, QuantizationError
from edgeclip.quant.budget import (MODES, PRECISIONS, Phase, StepTimes, choose_precision, describe_plan, ladders,
                                   plan_batch, spread, summary)
from edgeclip.quant.calibration import MIN_SYNTHESIS_SECONDS, text_targets
from edgeclip.quant.resolution import COARSER, at_resolution, ladder
from edgeclip.runtime.process import usable_cpus
from edgeclip.quant.synthesis import (OtherCpuUse, SynthesisConfig, busy_elsewhere, cpu_sample, load_torch_tower, pixel_bounds,
                                      synthesis_threads, synthesise, text_cosine, text_guided_objective,
                                      tower_from_module)

FULL = (224, 224)
LADDER = [((96, 96), 0.8), ((160, 160), 0.15), (FULL, 0.05)]
TIMES = StepTimes({(96, 96): 1.0, (160, 160): 2.2, FULL: 4.3})


@pytest.fixture(scope="module")
def vit_tower(tiny_vit_bundle: Path):
    return load_torch_tower(load_bundle(tiny_vit_bundle))


def test_spread_keeps_every_step_and_one_at_full_size() -> None:
    assert spread(LADDER, 200) == [Phase((96, 96), 160), Phase((160, 160), 30), Phase(FULL, 10)]
    for n in (1, 2, 7, 19, 200):
        phases = spread(LADDER, n)
        assert sum(p.steps for p in phases) == n and phases[-1].size == FULL
    assert spread([(FULL, 1.0)], 5) == [Phase(FULL, 5)]


def test_plan_full_when_it_fits_coarse_to_fine_when_not_cut_when_nothing_fits() -> None:
    no_budget = plan_batch("auto", FULL, LADDER, 200, None, None)
    assert no_budget.mode == "full" and no_budget.steps == 200 and not no_budget.cut
    roomy = plan_batch("auto", FULL, LADDER, 200, TIMES, 2000.0)  # 200 x 4.3 s = 860 s fits
    assert roomy.mode == "full" and roomy.phases == [Phase(FULL, 200)] and not roomy.cut
    tight = plan_batch("auto", FULL, LADDER, 200, TIMES, 400.0)  # full 860 s > 360; c2f 269 s fits
    assert tight.mode == "coarse-to-fine" and tight.steps == 200 and not tight.cut
    assert tight.estimated_seconds == pytest.approx(160 * 1.0 + 30 * 2.2 + 10 * 4.3)
    cut = plan_batch("auto", FULL, LADDER, 200, TIMES, 100.0)
    assert cut.mode == "coarse-to-fine" and cut.cut and 1 <= cut.steps < 200
    assert cut.estimated_seconds <= 90.0 and TIMES.cost(spread(LADDER, cut.steps + 1)) > 90.0
    forced = plan_batch("full", FULL, LADDER, 200, TIMES, 400.0)
    assert forced.mode == "full" and forced.cut and forced.steps == int(360 / 4.3)
    with pytest.raises(OptionError, match="coarse-to-fine"):
        plan_batch("fast", FULL, LADDER, 200, TIMES, 1.0)


def test_summary_says_how_many_steps_and_whether_cut() -> None:
    info = {"steps": 200, "steps_planned": [40, 38], "steps_run": [40, 38], "plan_cut": True, "truncated": False,
            "schedule": [[[96, 96, 32], [160, 160, 6], [224, 224, 2]]], "plan": {"needed_seconds": 1077.0}}
    text = summary(info)
    assert text.startswith("38-40 of 200 steps per batch") and "96px x32 -> 160px x6 -> 224px x2" in text
    assert "PLAN CUT" in text and "1077 s" in text


def test_ladder_follows_the_token_grid(vit_tower) -> None:
    assert ladder(vit_tower.visual, (32, 32)) == [((16, 16), pytest.approx(0.95)), ((32, 32), 0.05)]
    assert ladder(object(), (224, 224)) == [((224, 224), 1.0)], "unknown towers stay at full size"


def test_at_resolution_runs_a_vit_and_a_resnet_smaller_and_restores_them(vit_tower) -> None:
    import torch
    from open_clip.modified_resnet import ModifiedResNet

    resnet = ModifiedResNet(layers=[1, 1, 1, 1], output_dim=16, heads=2, image_size=128, width=8).eval()
    assert ladder(resnet, (128, 128))[0][0] == (64, 64)
    for visual, full, small in ((vit_tower.visual, (32, 32), (16, 16)), (resnet, (128, 128), (64, 64))):
        x = torch.randn(2, 3, *full)
        with torch.no_grad():
            before = visual(x)
            with pytest.raises(RuntimeError):
                visual(torch.randn(2, 3, *small))
            with at_resolution(visual, full, small):
                assert visual(torch.randn(2, 3, *small)).shape == before.shape
            torch.testing.assert_close(visual(x), before, rtol=0, atol=0)


def test_coarse_to_fine_is_deterministic_full_size_and_follows_the_text(vit_tower, tiny_vit_bundle: Path) -> None:
    targets, _ = text_targets(load_bundle(tiny_vit_bundle), 8, 0, 0.25)
    objective = text_guided_objective(vit_tower, targets)
    cfg = SynthesisConfig(batch_size=4, steps=40, resolution="coarse-to-fine")
    a = synthesise(vit_tower, 8, objective, seed=3, config=cfg)
    b = synthesise(vit_tower, 8, objective, seed=3, config=cfg)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.shape == (8, 3, 32, 32)
    assert a.info["schedule"] == [[[16, 16, 38], [32, 32, 2]]] * 2 and a.info["plan"]["modes"] == ["coarse-to-fine"]
    assert a.info["steps_planned"] == a.info["steps_run"] == [40, 40] and not a.info["plan_cut"]
    assert a.info["end"]["text_cosine"] > a.info["start"]["text_cosine"] + 0.02, a.info
    lo, hi = pixel_bounds(vit_tower.mean, vit_tower.std)
    assert (a.images >= lo - 1e-5).all() and (a.images <= hi + 1e-5).all()


def test_budget_plans_measures_step_times_and_cuts_visibly(vit_tower) -> None:
    targets = np.eye(16, dtype=np.float32)[:8]
    objective = text_guided_objective(vit_tower, targets)
    r = synthesise(vit_tower, 8, objective, config=SynthesisConfig(batch_size=4, steps=20_000), time_budget=1.0)
    info = r.info
    assert info["plan_cut"] and all(p < 20_000 for p in info["steps_planned"]) and info["seconds"] < 6
    assert set(info["plan"]["step_seconds"]) == {"16x16", "32x32"} and info["plan"]["needed_seconds"] > 1.0
    assert info["schedule"][0][0][:2] == [16, 16], "did not fit at full size: coarse-to-fine first"
    roomy = synthesise(vit_tower, 8, objective, config=SynthesisConfig(batch_size=4, steps=3), time_budget=600)
    assert not roomy.info["plan_cut"] and roomy.info["schedule"] == [[[32, 32, 3]]] * 2, "fits: full size"
    plain = synthesise(vit_tower, 8, objective, config=SynthesisConfig(batch_size=4, steps=3))
    np.testing.assert_array_equal(roomy.images, plain.images)


def test_the_plan_and_its_cut_are_announced_before_the_first_step_and_the_bar_follows_the_plan(vit_tower) -> None:
    objective = text_guided_objective(vit_tower, np.eye(16, dtype=np.float32)[:8])
    events: list[tuple[str, dict]] = []
    r = synthesise(vit_tower, 8, objective, config=SynthesisConfig(batch_size=4, steps=20_000), time_budget=1.5,
                   progress=lambda k: events.append(("step", {"k": k})), report=lambda e: events.append(("report", e)))
    plan = events[0][1]
    assert events[0][0] == "report" and plan["event"] == "plan", "the plan comes before any step"
    assert plan["cut"] and plan["steps"] < 20_000 and plan["seconds"] <= 1.5 and plan["full_seconds"] > 1.5
    line = describe_plan(plan)
    assert line.startswith(f"plan: 2 batches x {plan['steps']} steps") and "CUT from 20000 steps" in line, line
    lefts = [e for kind, e in events if kind == "report" and e["event"] == "left"]
    steps = sum(e["k"] for kind, e in events if kind == "step")
    assert steps == sum(r.info["steps_planned"]) == lefts[-1]["steps"], "the bar ends at the planned steps"
    assert lefts[0]["seconds"] <= 1.5 and lefts[-1]["seconds"] < lefts[0]["seconds"]


def test_the_time_budget_bounds_the_whole_job_synthesis_gets_what_the_rest_leaves(tmp_path: Path,
                                                                                   tiny_vit_bundle: Path) -> None:
    from edgeclip.api import quantize

    vit = tmp_path / "vit"
    shutil.copytree(tiny_vit_bundle, vit)
    said: list[str] = []
    record = quantize(vit, target="cpu", images=8, steps=20, time_budget=120, step=said.append)
    calib = record["calibration"]
    assert calib["time_budget"] == 120 and 0 < calib["plan"]["budget"] < 120, "loading and quantizing come off"
    split = next(s for s in said if s.startswith("time budget 120 s:"))
    assert "spent loading" in split and "kept to quantize and check" in split, split
    assert said.index(split) < next(i for i, s in enumerate(said) if s.startswith("plan: "))


def test_autocast_path_of_cuda_runs_on_cpu_and_precision_choice(vit_tower) -> None:
    """bf16 autocast is what ``--device cuda`` uses on a GPU with bf16; the same code path runs here on the CPU."""
    targets = np.eye(16, dtype=np.float32)[:4]
    objective = text_guided_objective(vit_tower, targets)
    r = synthesise(vit_tower, 4, objective, config=SynthesisConfig(batch_size=4, steps=25, precision="bf16",
                                                                  resolution="coarse-to-fine"))
    assert r.info["plan"]["precision"] == "bf16" and r.images.dtype == np.float32
    assert r.info["end"]["text_cosine"] > r.info["start"]["text_cosine"] + 0.02, r.info
    assert text_cosine(vit_tower, r.images, targets).mean() > r.info["start"]["text_cosine"]
    assert choose_precision("cuda", cuda_bf16=True) == "bf16" and choose_precision("cuda", cuda_bf16=False) == "fp32"
    assert choose_precision("cpu", cpu_flags=frozenset({"avx512_bf16"})) == "fp32"
    assert choose_precision("cpu", cpu_flags=frozenset({"avx512_bf16", "amx_bf16"})) == "bf16"
    assert choose_precision("cpu", "fp16") == "fp16"
    with pytest.raises(OptionError, match="fp32"):
        choose_precision("cpu", "int4")


def test_cuda_without_a_gpu_is_a_clear_error(vit_tower) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    objective = text_guided_objective(vit_tower, np.eye(16, dtype=np.float32)[:4])
    with pytest.raises(QuantizationError, match="'cpu'"):
        synthesise(vit_tower, 4, objective, config=SynthesisConfig(batch_size=4, steps=2, device="cuda"))


def test_cut_plan_shows_in_final_line_manifest_and_inspect(tmp_path: Path, tiny_vit_bundle: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    vit = tmp_path / "vit"
    shutil.copytree(tiny_vit_bundle, vit)
    assert main(["quantize", str(vit), "--target", "cpu", "--images", "8", "--steps", "50000", "--time-budget",
                 "1"]) == 0
    final = capsys.readouterr().out.strip().splitlines()[-1]
    assert final.startswith("wrote ") and "PLAN CUT from 50000 steps" in final, final
    calib = json.loads((vit / "manifest.json").read_text())["quantization"]["cpu"]["calibration"]
    assert calib["plan_cut"] and calib["steps"] == 50_000 and len(calib["steps_planned"]) == 1  # 8 images: one batch
    assert all(r <= p < 50_000 for r, p in zip(calib["steps_run"], calib["steps_planned"]))
    assert calib["schedule"][0][-1][:2] == [32, 32] and calib["time_budget"] == 1.0
    assert calib["plan"]["budget"] == MIN_SYNTHESIS_SECONDS  # a 1 s job leaves synthesis nothing: it gets its least
    assert main(["inspect", str(vit)]) == 0
    out = capsys.readouterr().out
    assert "synthesis " in out and "PLAN CUT from 50000 steps" in out, out


# ---------------------------------------------------------------------------------------------------------
# the coarser ladder, the synthesis flags, the thread count
# ---------------------------------------------------------------------------------------------------------
COARSER_LADDER = [((64, 64), 0.8), ((96, 96), 0.1), ((160, 160), 0.05), (FULL, 0.05)]
TIMES4 = StepTimes({(64, 64): 0.5, **TIMES.seconds})


@pytest.fixture(scope="module")
def grid8_tower():
    """A tiny open_clip ViT with an 8x8 token grid (64 px, patch 8): its coarser ladder (16 px first) differs
    from its coarse-to-fine one (24 px first), as on ViT-B/32 and RN50."""
    import torch
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=64, patch_size=8, width=32, layers=1, heads=2, mlp_ratio=2.0, output_dim=16)
    return tower_from_module(vit, (64, 64), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "grid8-vit")


def test_auto_tries_full_then_coarse_to_fine_then_coarser_then_cuts() -> None:
    # per batch: full 860 s, coarse-to-fine 269 s, coarser 160*0.5 + 20*1.0 + 10*2.2 + 10*4.3 = 165 s
    def plan(available: float):
        return plan_batch("auto", FULL, LADDER, 200, TIMES4, available, COARSER_LADDER)

    assert plan(1000.0).mode == "full" and plan(400.0).mode == "coarse-to-fine"
    only = plan(250.0)  # 225 s to fill: only the coarser ladder fits, uncut
    assert only.mode == "coarser" and only.steps == 200 and not only.cut
    assert only.phases == [Phase((64, 64), 160), Phase((96, 96), 20), Phase((160, 160), 10), Phase(FULL, 10)]
    assert only.estimated_seconds == pytest.approx(165.0)
    cut = plan(100.0)  # nothing fits: the coarsest ladder, cut
    assert cut.mode == "coarser" and cut.cut and cut.phases[0].size == (64, 64)
    assert TIMES4.cost(spread(COARSER_LADDER, cut.steps + 1)) > 90.0 >= cut.estimated_seconds
    forced = plan_batch("coarser", FULL, LADDER, 200, TIMES4, 1000.0, COARSER_LADDER)
    assert forced.mode == "coarser" and forced.steps == 200, "a forced ladder runs even when full size fits"
    assert plan_batch("coarser", FULL, LADDER, 200, None, None, COARSER_LADDER).mode == "coarser"
    assert plan_batch("coarse-to-fine", FULL, LADDER, 200, TIMES4, 1000.0, COARSER_LADDER).mode == "coarse-to-fine"
    # without a distinct coarser ladder (same sizes as coarse-to-fine) auto cuts coarse-to-fine as before
    same = [((96, 96), 0.95), (FULL, 0.05)]
    assert [n for n, _ in ladders(FULL, same, same)] == ["full", "coarse-to-fine"]
    assert plan_batch("coarser", FULL, same, 200, None, None, same).mode == "coarse-to-fine"
    assert plan_batch("auto", FULL, same, 200, TIMES4, 100.0, same).mode == "coarse-to-fine"


def test_coarser_ladder_starts_at_the_smallest_grid(grid8_tower) -> None:
    from open_clip.modified_resnet import ModifiedResNet

    rn = ModifiedResNet(layers=[1, 1, 1, 1], output_dim=16, heads=2, image_size=224, width=8)
    assert [s for s, _ in ladder(rn, FULL)] == [(96, 96), (128, 128), FULL]
    assert [s for s, _ in ladder(rn, FULL, COARSER)] == [(64, 64), (96, 96), (128, 128), FULL]  # RN50's grid
    assert [p.record() for p in spread(ladder(rn, FULL, COARSER), 200)] == \
        [[64, 64, 160], [96, 96, 20], [128, 128, 10], [224, 224, 10]]
    assert [s[0] for s, _ in ladder(grid8_tower.visual, (64, 64), COARSER)] == [16, 24, 32, 64]


def test_coarser_synthesis_is_recorded_forced_or_as_auto_fallback(grid8_tower) -> None:
    objective = text_guided_objective(grid8_tower, np.eye(16, dtype=np.float32)[:4])
    forced = synthesise(grid8_tower, 4, objective, seed=1, config=SynthesisConfig(batch_size=4, steps=20,
                                                                                  resolution="coarser"))
    info = forced.info
    assert forced.images.shape == (4, 3, 64, 64)
    assert info["schedule"] == [[[16, 16, 16], [24, 24, 2], [32, 32, 1], [64, 64, 1]]]
    assert info["plan"]["resolution"] == "coarser" and info["plan"]["modes_per_batch"] == ["coarser"]
    assert info["end"]["text_cosine"] > info["start"]["text_cosine"] + 0.02, info
    # auto with a budget nothing fits: full -> coarse-to-fine -> coarser, then the coarser plan is cut
    cut = synthesise(grid8_tower, 8, text_guided_objective(grid8_tower, np.eye(16, dtype=np.float32)[:8]),
                     config=SynthesisConfig(batch_size=4, steps=20_000), time_budget=1.0).info
    assert cut["plan_cut"] and cut["plan"]["modes_per_batch"] == ["coarser", "coarser"]
    assert cut["schedule"][0][0][:2] == [16, 16] and cut["schedule"][0][-1][:2] == [64, 64]
    assert set(cut["plan"]["step_seconds"]) == {"16x16", "24x24", "32x32", "64x64"}
    text = summary(cut)
    assert "(coarser: 16px x" in text and "PLAN CUT from 20000 steps" in text, text


def test_summary_names_the_ladder_of_every_batch_when_they_differ() -> None:
    info = {"steps": 200, "steps_planned": [200, 200], "steps_run": [200, 200], "plan_cut": False,
            "schedule": [[[96, 96, 160], [128, 128, 30], [224, 224, 10]],
                         [[64, 64, 160], [96, 96, 20], [128, 128, 10], [224, 224, 10]]],
            "plan": {"modes_per_batch": ["coarse-to-fine", "coarser"]}}
    text = summary(info)
    assert text.startswith("200 of 200 steps per batch (coarse-to-fine: 96px x160 -> 128px x30 -> 224px x10)")
    assert text.endswith("; ladder per batch: coarse-to-fine, coarser") and "CUT" not in text


def test_quantize_flags_reach_the_synthesis(tmp_path: Path, tiny_vit_bundle: Path) -> None:
    from edgeclip.cli import build_parser

    flags = {a.dest: a for a in build_parser()._subparsers._group_actions[0].choices["quantize"]._actions}
    assert tuple(flags["synthesis_resolution"].choices) == MODES
    assert tuple(flags["synthesis_precision"].choices) == PRECISIONS
    vit = tmp_path / "vit"
    shutil.copytree(tiny_vit_bundle, vit)
    assert main(["-q", "quantize", str(vit), "--target", "cpu", "--images", "4", "--steps", "4", "--no-cache",
                 "--synthesis-resolution",
                 "coarse-to-fine", "--synthesis-precision", "bf16", "--synthesis-threads", "1"]) == 0
    calib = json.loads((vit / "manifest.json").read_text())["quantization"]["cpu"]["calibration"]
    assert calib["plan"]["resolution"] == "coarse-to-fine" and calib["plan"]["precision"] == "bf16"
    assert calib["schedule"] == [[[16, 16, 3], [32, 32, 1]]]
    import edgeclip

    with pytest.raises(OptionError, match="coarser"):
        edgeclip.quantize(vit, synthesis_resolution="fast")
    with pytest.raises(OptionError, match="`synthesis_threads`"):
        edgeclip.quantize(vit, synthesis_threads=-1)
    assert main(["quantize", str(vit), "--synthesis-resolution", "fast"]) == 2


def test_threads_follow_usable_cores_and_what_others_use_now(vit_tower) -> None:
    import subprocess
    import sys

    import torch

    big = tower_from_module(torch.nn.Linear(3200, 3200), (1, 1), (0, 0, 0), (1, 1, 1))  # 10.2 M parameters
    cores = usable_cpus()
    assert synthesis_threads(vit_tower) == 1 and synthesis_threads(vit_tower, 3) == 3
    assert synthesis_threads(big) == cores, "not measured: every usable core (no stale load average)"
    assert synthesis_threads(big, busy=float(cores)) == 1 and synthesis_threads(big, busy=0.0) == cores
    assert synthesis_threads(big, 2, busy=float(cores)) == 2, "the user's count wins"
    before, others = cpu_sample(), OtherCpuUse()
    if before is None or not others.available:
        pytest.skip("no /proc/stat on this system")
    spin = subprocess.run([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 0.6: pass"],
                          check=True)
    assert spin.returncode == 0
    assert busy_elsewhere(before, cpu_sample()) >= 0.4, "a spinning process is another process's work"
    assert others.since_last() >= 0.4, "the same, measured since the watch was made"
    assert busy_elsewhere(before, None) is None
