"""Planning synthetic calibration to fit a time budget: which resolutions, how many steps, and whether cut.

Synthesis optimises the calibration images batch by batch. Before the first batch, one step is timed at
every size of the tower's ladders (``resolution.ladder``); ``plan_batch`` then chooses, for each batch and
the time left for it, the steps at each size:

* ``full``: every step at full size (the original synthesis);
* ``coarse-to-fine``: most steps at a reduced size, the image upsampled (bicubic) between phases, the last
  steps at full size (``resolution.COARSE_TO_FINE``);
* ``coarser``: an extra first phase at the smallest grid the tower supports, then the coarse-to-fine
  phases (``resolution.COARSER``);
* ``auto`` (default): the first of ``full``, ``coarse-to-fine``, ``coarser`` that fits the time left.

When even the coarsest does not fit, the plan is *cut*: the largest step count that fits, spread over the
coarsest ladder's phases, and the record says so (``plan_cut``). Step times are re-measured while the
batches run, so a machine that gets busier or idler is followed from one batch to the next. Without a time budget the plan
is the configured schedule, untouched (deterministic images).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import OptionError
from ..tables import precisions

MODES = ("auto", "full", "coarse-to-fine", "coarser")
Ladder = list[tuple[tuple[int, int], float]]
#: Share of the time left that a plan may fill: step times vary under load; the deadline is a hard stop.
SAFETY = 0.9


@dataclass(frozen=True)
class Phase:
    """``steps`` optimisation steps at input ``size`` (height, width)."""

    size: tuple[int, int]
    steps: int

    def record(self) -> list[int]:
        return [int(self.size[0]), int(self.size[1]), int(self.steps)]


@dataclass
class BatchPlan:
    """The phases one batch runs, and whether its plan had to be cut below the configured steps."""

    mode: str
    phases: list[Phase]
    configured: int
    estimated_seconds: float | None = None

    @property
    def steps(self) -> int:
        return sum(p.steps for p in self.phases)

    @property
    def cut(self) -> bool:
        return self.steps < self.configured


@dataclass
class StepTimes:
    """Seconds per optimisation step of one batch at each size, measured and then followed (moving average)."""

    seconds: dict[tuple[int, int], float] = field(default_factory=dict)

    def update(self, size: tuple[int, int], seconds: float, weight: float = 0.3) -> None:
        old = self.seconds.get(size)
        self.seconds[size] = seconds if old is None else (1 - weight) * old + weight * seconds

    def cost(self, phases: list[Phase]) -> float:
        return sum(p.steps * self.seconds.get(p.size, 0.0) for p in phases)

    def record(self) -> dict[str, float]:
        return {f"{h}x{w}": round(s, 4) for (h, w), s in sorted(self.seconds.items())}


def check_mode(mode: str) -> str:
    """The resolution mode, or an OptionError naming the choices."""
    if mode not in MODES:
        raise OptionError(f"unknown synthesis resolution {mode!r}; use one of {', '.join(MODES)}")
    return mode


def spread(ladder: list[tuple[tuple[int, int], float]], steps: int) -> list[Phase]:
    """``steps`` spread over the ladder's phases by their shares; the full-size phase keeps at least one step
    while there are steps to give, and empty phases are dropped."""
    if steps < 1:
        return []
    if len(ladder) == 1:
        return [Phase(ladder[0][0], steps)]
    counts = [int(share * steps) for _, share in ladder]
    counts[0] += steps - sum(counts)  # rounding leftovers go to the cheap coarse phase
    if counts[-1] == 0:
        counts[-1] = 1
        counts[max(range(len(counts) - 1), key=lambda i: counts[i])] -= 1
    return [Phase(size, c) for (size, _), c in zip(ladder, counts) if c > 0]


def _fit(ladder: list[tuple[tuple[int, int], float]], steps: int, times: StepTimes, available: float) -> int:
    """The largest step count <= ``steps`` whose spread costs at most ``available`` seconds (at least 1)."""
    lo, hi = 1, steps
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if times.cost(spread(ladder, mid)) <= available:
            lo = mid
        else:
            hi = mid - 1
    return lo


def ladders(full_size: tuple[int, int], ladder: Ladder, coarser: Ladder | None = None) -> list[tuple[str, Ladder]]:
    """The distinct ladders ``auto`` tries, in order: ``full``, ``coarse-to-fine`` (``ladder``, when it has a
    reduced size), ``coarser`` (when it differs from ``ladder``)."""
    full: Ladder = [((int(full_size[0]), int(full_size[1])), 1.0)]
    out = [("full", full)]
    if len(ladder) > 1:
        out.append(("coarse-to-fine", ladder))
    if coarser and len(coarser) > 1 and [s for s, _ in coarser] != [s for s, _ in out[-1][1]]:
        out.append(("coarser", coarser))
    return out


def ladder_of(mode: str, full_size: tuple[int, int], ladder: Ladder,
              coarser: Ladder | None = None) -> tuple[str, Ladder]:
    """(name, phases) a forced ``mode`` runs: the nearest finer ladder where the tower has no such one
    (e.g. ``coarser`` on a tower whose smallest grid is already the coarse-to-fine one)."""
    check_mode(mode)
    options = ladders(full_size, ladder, coarser)
    order = ("full", "coarse-to-fine", "coarser")
    wanted = order.index(mode) if mode in order else 0
    return [o for o in options if order.index(o[0]) <= wanted][-1]


def plan_batch(mode: str, full_size: tuple[int, int], ladder: Ladder, steps: int,
               times: StepTimes | None, available: float | None, coarser: Ladder | None = None) -> BatchPlan:
    """The phases of one batch given ``available`` seconds for it (None: no budget, the configured plan).

    ``ladder``: the tower's coarse-to-fine phases (``resolution.ladder``); ``coarser``: its coarser phases
    (``resolution.ladder(..., COARSER)``), ``auto``'s last resort before a cut; ``times``: measured step
    times at every size of the ladders and at full size.
    """
    check_mode(mode)
    if mode != "auto":
        name, chosen = ladder_of(mode, full_size, ladder, coarser)
    elif available is None or times is None:
        name, chosen = ladder_of("full", full_size, ladder, coarser)
    else:
        options = ladders(full_size, ladder, coarser)
        fitting = [o for o in options if times.cost(spread(o[1], steps)) <= SAFETY * available]
        name, chosen = fitting[0] if fitting else options[-1]  # nothing fits: the coarsest, cut below
    if available is None or times is None:
        return BatchPlan(name, spread(chosen, steps), steps)
    budget = SAFETY * available
    n = steps if times.cost(spread(chosen, steps)) <= budget else _fit(chosen, steps, times, budget)
    phases = spread(chosen, n)
    return BatchPlan(name, phases, steps, round(times.cost(phases), 2))


def steps_left(phases: list[Phase], done: int) -> list[Phase]:
    """The phases still to run after the first ``done`` steps of ``phases``."""
    out = []
    for p in phases:
        if done >= p.steps:
            done -= p.steps
            continue
        out.append(Phase(p.size, p.steps - done))
        done = 0
    return out


def plan_event(plan: BatchPlan, batches: int, configured: int, budget: float | None,
               full_seconds: float | None) -> dict[str, Any]:
    """What synthesis announces before its first step: the first batch's plan, for all ``batches``.

    ``full_seconds``: what every configured step at full size would take (None without a budget).
    """
    each = plan.estimated_seconds
    return {"event": "plan", "batches": batches, "mode": plan.mode, "steps": plan.steps, "configured": configured,
            "schedule": [p.record() for p in plan.phases], "cut": plan.cut, "budget": budget,
            "seconds": round(batches * each, 1) if each is not None else None,
            "full_seconds": round(full_seconds, 1) if full_seconds else None}


def describe_plan(event: dict[str, Any]) -> str:
    """One line for a ``plan_event``: the ladder, the steps, the estimate and whether it was cut."""
    phases = " -> ".join(f"{h}px x{s}" for h, _w, s in event["schedule"])
    text = f"plan: {event['batches']} batches x {event['steps']} steps, {event['mode']} ({phases})"
    if event.get("seconds") is not None:
        text += f", about {event['seconds']:.0f} s of the {event['budget']:.0f} s synthesis budget"
    if event.get("cut"):
        text += f"; CUT from {event['configured']} steps to fit the budget"
    if event.get("full_seconds") and (event["cut"] or event["mode"] != "full"):
        text += f" (every step at full size would need about {event['full_seconds']:.0f} s)"
    return text


def schedule_record(plans: list[BatchPlan]) -> list[list[list[int]]]:
    """Per batch, its phases as [height, width, steps] (the manifest's ``schedule``)."""
    return [[p.record() for p in plan.phases] for plan in plans]


def summary(info: dict[str, Any]) -> str:
    """One line on how many steps the batches got and whether the plan was cut (for the CLI and inspect)."""
    run = info.get("steps_run") or []
    if not run:
        return ""
    planned = info.get("steps_planned") or run
    steps = info.get("steps", max(planned))
    lo, hi = min(run), max(run)
    got = f"{lo}" if lo == hi else f"{lo}-{hi}"
    text = f"{got} of {steps} steps per batch"
    sched = info.get("schedule") or []
    modes = (info.get("plan") or {}).get("modes_per_batch") or []
    if sched and any(len(b) > 1 for b in sched):
        most = max(range(len(sched)), key=lambda i: sum(p[2] for p in sched[i]))  # the batch that got the most
        name = f"{modes[most]}: " if len(modes) == len(sched) else ""
        text += " (" + name + " -> ".join(f"{h}px x{s}" for h, _w, s in sched[most]) + ")"
        if len(set(modes)) > 1:
            text += "; ladder per batch: " + ", ".join(modes)
    if info.get("plan_cut"):
        need = info.get("plan", {}).get("needed_seconds")
        text += f"; PLAN CUT from {steps} steps to fit the time budget" + (f" (the full plan needs about "
                                                                             f"{need:.0f} s)" if need else "")
    if info.get("truncated"):
        text += "; TRUNCATED by the time budget"
    return text


PRECISIONS = ("auto", *precisions("synthesis"))


def choose_precision(device: str, requested: str = "auto", cpu_flags: frozenset[str] | None = None,
                     cuda_bf16: bool | None = None) -> str:
    """The autocast precision of synthesis: ``requested`` unless ``auto``.

    ``auto``: on CUDA bf16 where the GPU supports it (tensor cores; bf16 needs no loss scaling, the pixel
    gradients stay fp32), else fp32; on a CPU bf16 only with AMX (``amx_bf16``): measured on this session's
    AVX512_BF16 CPU without AMX, a bf16-autocast step of ViT-B/32 took 1.5x the fp32 time (docs).
    """
    if requested not in PRECISIONS:
        raise OptionError(f"unknown synthesis precision {requested!r}; use one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested
    if str(device).startswith("cuda"):
        if cuda_bf16 is None:
            import torch

            cuda_bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        return "bf16" if cuda_bf16 else "fp32"
    if cpu_flags is None:
        from ..runtime.cpu import read_cpuinfo

        cpu_flags = read_cpuinfo()[2]
    return "bf16" if "amx_bf16" in cpu_flags else "fp32"
