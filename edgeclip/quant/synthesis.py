"""Synthetic calibration images made from the model itself: no real image is needed anywhere.

Sources (see ``edgeclip.quant.calibration`` for how they are chosen, cached and recorded):

* ``noise_images``: Gaussian or uniform noise in the model's input space, the baseline (numpy only);
* ``synthesise`` with a ``bn-stats`` objective (ZeroQ): pixels optimised with Adam so that every
  BatchNorm layer sees batch statistics equal to its running statistics (BatchNorm towers only);
  ``bn-stats:priors`` adds the natural-image priors below (random jitter/flip/scale views, in the spirit
  of Genie's swing convolution and DeepInversion's jitter, total variation and L2);
* ``synthesise`` with a ``text-guided`` objective (in the spirit of D4C and PSAQ-ViT): pixels optimised
  so the image embedding matches the text embedding of a prompt (the bundle's labels and generic scene
  prompts; cosine loss), with natural-image priors (total variation, L2, a random jitter/flip/scale view
  per step), plus the patch-similarity diversity term on ViTs and the BatchNorm statistics term on
  BatchNorm towers.

Every generator is deterministic given its seed (each batch has its own seeded generator) and bounded in
time: batch ``i`` of ``n`` must finish by ``start + budget * (i + 1) / n``; a batch that runs out of time
stops early and the result says so (``info["truncated"]``), so the budget is never exceeded by more than
one optimisation step.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import BundleError, EdgeclipError, OptionError, ParityError, QuantizationError
from ..runtime.process import usable_cpus

#: Scene-level prompts mixed with the label prompts so calibration also covers images of no label.
GENERIC_PROMPTS = (
    "a photo of an object.", "a photo of a scene.", "an outdoor photo.", "an indoor photo.",
    "a close-up photo of something.", "a photo of a street.", "a photo of nature.", "a photo of an animal.",
    "a photo of a vehicle.", "a photo of a person.", "a landscape photo.", "a photo of a room.",
    "a blurry photo.", "a bright photo.", "a dark photo.", "a photo of food.",
)


@dataclass
class SynthesisConfig:
    """Hyper-parameters of the pixel optimisation (defaults checked on the proxies, docs/quantization.md)."""

    batch_size: int = 16
    steps: int = 200
    lr: float = 0.1
    text_weight: float = 1.0
    bn_weight: float = 0.1
    diversity_weight: float = 0.1
    tv_weight: float = 0.1
    l2_weight: float = 0.005
    init_std: float = 0.5
    max_shift: float = 0.125
    scale: tuple[float, float] = (0.9, 1.1)
    flip: bool = True
    generic_fraction: float = 0.25
    device: str = "cpu"
    threads: int = 0  # torch CPU threads; 0 = auto (see ``synthesis_threads``)
    resolution: str = "auto"  # auto | full | coarse-to-fine | coarser (``edgeclip.quant.budget``)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 autocast (``budget.choose_precision``)

    def check(self) -> None:
        """Reject values that cannot work."""
        from .budget import PRECISIONS, check_mode

        if self.batch_size < 1 or self.steps < 1:
            raise OptionError("synthesis needs batch_size >= 1 and steps >= 1")
        check_mode(self.resolution)
        if self.precision not in PRECISIONS:
            raise OptionError(f"unknown synthesis precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if not 0.0 <= self.generic_fraction <= 1.0:
            raise OptionError("generic_fraction must lie in [0, 1]")

    def as_dict(self) -> dict[str, Any]:
        """JSON-able copy (the cache key and the manifest record use it)."""
        d = asdict(self)
        d["scale"] = list(self.scale)
        d.pop("threads")  # changes the speed, not the images
        return d


@dataclass
class SynthResult:
    """Images (float32 [N, 3, H, W], normalised model input) and what happened while making them."""

    images: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# noise (numpy only)
# ---------------------------------------------------------------------------------------------------------
def pixel_bounds(mean: Any, std: Any) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest normalised value per channel (pixel 0 and 1), each [3, 1, 1] float32."""
    mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return (0.0 - mean) / std, (1.0 - mean) / std


def noise_images(n: int, size: tuple[int, int], mean: Any, std: Any, seed: int = 0,
                 kind: str = "gaussian") -> np.ndarray:
    """``n`` noise images in the normalised input space, clipped to valid pixels.

    ``gaussian``: N(0, 1) per normalised value (what the normalisation maps typical images to);
    ``uniform``: pixels uniform in [0, 1] before normalisation.
    """
    rng = np.random.default_rng(seed)
    lo, hi = pixel_bounds(mean, std)
    h, w = size
    if kind == "gaussian":
        x = rng.standard_normal((n, 3, h, w), dtype=np.float32)
    elif kind == "uniform":
        u = rng.random((n, 3, h, w), dtype=np.float32)
        x = lo + u * (hi - lo)
    else:
        raise OptionError(f"unknown noise kind {kind!r}; use noise (Gaussian) or noise:uniform")
    return np.clip(x, lo, hi).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# the torch tower
# ---------------------------------------------------------------------------------------------------------
@dataclass
class TorchTower:
    """The bundle's image tower as a torch module, with what synthesis needs to know about it."""

    encode: Any  # nn.Module: pixel_values -> image_embeds
    visual: Any  # the module that holds the tower's layers (for hooks)
    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    architecture: str

    @property
    def has_batchnorm(self) -> bool:
        from .priors import batchnorm_layers

        return bool(batchnorm_layers(self.visual))

    @property
    def is_vit(self) -> bool:
        from .priors import vit_blocks

        return bool(vit_blocks(self.visual))


def tower_from_module(module: Any, size: tuple[int, int], mean: Any, std: Any, name: str = "") -> TorchTower:
    """Any torch image model (pixel_values -> outputs) as a ``TorchTower``, frozen and in eval mode.

    ``size`` (height, width), ``mean`` and ``std`` describe its input: normalised = (pixel/255 - mean) / std.
    """
    module = module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return TorchTower(module, module, (int(size[0]), int(size[1])), tuple(float(m) for m in mean),
                      tuple(float(s) for s in std), name or type(module).__name__)


def load_torch_tower(bundle: Any) -> TorchTower:
    """Reload the bundle's torch model from ``manifest.model.load`` and check it still matches the ONNX."""
    try:
        from ..export.models import load_source_model
        from ..export.onnx_export import Tolerance, check_parity
    except ImportError as exc:
        raise QuantizationError("synthetic calibration needs torch and open_clip: pip install 'edgeclip[export]'"
                                ", or calibrate with calib='noise' or calib='real:DIR'") from exc
    import torch

    try:
        loaded = load_source_model(bundle)
    except BundleError as exc:
        raise QuantizationError(f"{exc}, or calibrate with calib='noise' or calib='real:DIR'") from exc
    except EdgeclipError as exc:
        raise QuantizationError(f"cannot reload the model this bundle was exported from ({exc}); "
                                f"calibrate with calib='noise' or calib='real:DIR' instead") from exc
    model = loaded.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    pre = bundle.preprocess
    tower = TorchTower(loaded.image_tower.eval(), getattr(model, "visual", model), tuple(pre["size"]),
                       tuple(pre["mean"]), tuple(pre["std"]), str(bundle.model.get("architecture", "")))
    fp32 = bundle.encoder("image", "fp32")
    x = torch.from_numpy(noise_images(2, tower.size, tower.mean, tower.std, seed=12345))
    try:  # only the direction matters here: no limit on the absolute difference
        check_parity(tower.encode, fp32, [x], Tolerance(max_abs=math.inf, min_cosine=0.999))
    except ParityError as exc:
        cos = exc.numbers.get("min_cosine")
        raise QuantizationError(f"the torch model reloaded from manifest.model.load no longer matches "
                                f"{fp32.name} ({f'cosine {cos:.4f}' if cos is not None else exc}); the "
                                f"checkpoint changed since export: re-export the bundle, or calibrate with "
                                f"calib='noise' or calib='real:DIR'") from exc
    return tower


@dataclass(frozen=True)
class CpuSample:
    """At one moment: busy CPU seconds of the cores this process may use (``/proc/stat``) and its own."""

    wall: float
    busy: float
    own: float


def cpu_sample() -> CpuSample | None:
    """The CPU counters now, or None where they cannot be read (no ``/proc/stat``: not Linux)."""
    try:
        cores = os.sched_getaffinity(0)
        with open("/proc/stat", encoding="ascii") as f:
            lines = f.read().splitlines()
        import resource

        tick = float(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, OSError, ImportError, ValueError):
        return None
    busy = 0
    for line in lines:
        name, *vals = line.split()
        if name[:3] == "cpu" and name[3:].isdigit() and int(name[3:]) in cores and len(vals) >= 8:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in vals[:8])
            busy += user + nice + system + irq + softirq + steal
    r = resource.getrusage(resource.RUSAGE_SELF)
    return CpuSample(time.monotonic(), busy / tick, r.ru_utime + r.ru_stime)


def busy_elsewhere(before: CpuSample | None, after: CpuSample | None) -> float | None:
    """Cores that other processes kept busy between two samples (None without both samples)."""
    if before is None or after is None or after.wall - before.wall < 0.05:
        return None
    others = (after.busy - before.busy) - (after.own - before.own)
    return max(0.0, others / (after.wall - before.wall))


class OtherCpuUse:
    """Cores other processes keep busy, measured from one call of ``since_last`` to the next."""

    def __init__(self) -> None:
        self.last = cpu_sample()

    @property
    def available(self) -> bool:
        """False where the counters cannot be read (no ``/proc/stat``)."""
        return self.last is not None

    def since_last(self) -> float | None:
        """Cores other processes kept busy since the previous call (or since this was made)."""
        now = cpu_sample()
        busy, self.last = busy_elsewhere(self.last, now), now
        return busy


def synthesis_threads(tower: TorchTower, requested: int = 0, busy: float | None = None) -> int:
    """Torch CPU threads for synthesis: ``requested``, else 1 for small towers, else the usable cores
    (``usable_cpus``) less those that other processes kept busy (``busy``, measured by ``busy_elsewhere``
    over the last interval; None: not measured, every usable core).

    Measured on the 2-core machine while another job trained: a second thread made one forward+backward
    step of the tiny ViT 50x slower (OpenMP threads spin against the other job) and ViT-B/32 2x slower; on
    an idle machine big towers gain from every core. Small towers (< 10 M parameters) never gain. The load
    average is not used: it lags by a minute, so a job that had just ended still cost a run its threads.
    """
    if requested > 0:
        return requested
    cores = usable_cpus()
    params = sum(p.numel() for p in tower.encode.parameters())
    if params < 10_000_000 or cores == 1:
        return 1
    if busy is None:
        return cores
    return max(1, min(cores, int(round(cores - busy))))


# ---------------------------------------------------------------------------------------------------------
# pixel optimisation
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Objective:
    """Which loss terms a synthesis uses. ``targets``: one L2-normalised text embedding per image."""

    name: str
    targets: np.ndarray | None = None
    batchnorm: bool = False
    diversity: bool = False
    priors: bool = True  # total variation, L2 and random views

    @property
    def terms(self) -> list[str]:
        """The loss terms in use, as recorded in ``info["terms"]`` and the manifest."""
        return [k for k, on in (("text", self.targets is not None), ("bn-stats", self.batchnorm),
                                ("patch-diversity", self.diversity), ("priors", self.priors)) if on]


def bn_stats_objective(tower: TorchTower, priors: bool = False) -> Objective:
    """ZeroQ: BatchNorm statistics only (``priors``: plus the natural-image priors and random views);
    an OptionError for towers without BatchNorm."""
    if not tower.has_batchnorm:
        raise OptionError(f"calib='bn-stats' matches BatchNorm statistics, but this {tower.architecture or 'model'} "
                          f"image tower has no BatchNorm layer (a ViT); use calib='text-guided'")
    return Objective("bn-stats:priors" if priors else "bn-stats", batchnorm=True, priors=priors)


def text_guided_objective(tower: TorchTower, targets: np.ndarray) -> Objective:
    """Text-guided synthesis; adds patch diversity on ViTs and BatchNorm statistics on BatchNorm towers."""
    return Objective("text-guided", targets=np.asarray(targets, dtype=np.float32),
                     batchnorm=tower.has_batchnorm, diversity=tower.is_vit)


def _init_batch(torch: Any, count: int, size: tuple[int, int], std: float, gen: Any) -> Any:
    """Smooth random start: low-frequency noise plus a little pixel noise."""
    import torch.nn.functional as F

    h, w = size
    low = torch.randn(count, 3, max(2, h // 8), max(2, w // 8), generator=gen)
    x = F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False) * std
    return x + 0.1 * std * torch.randn(count, 3, h, w, generator=gen)


def synthesise(tower: TorchTower, n: int, objective: Objective, seed: int = 0,
               config: SynthesisConfig | None = None, time_budget: float | None = None,
               progress: Callable[[int], None] | None = None,
               report: Callable[[dict[str, Any]], None] | None = None) -> SynthResult:
    """Optimise ``n`` images for ``objective``, batch by batch; deterministic given ``seed``.

    ``progress(k)`` is called after every ``k`` optimisation steps. ``report(event)`` hears the plan before
    the first step (``{"event": "plan", ...}``: see :func:`edgeclip.quant.budget.plan_event`) and, with a
    time budget, after every step how many steps are planned in all and about how many seconds are left
    (``{"event": "left", "steps": ..., "seconds": ...}``). Returns the images and ``info`` with the loss
    terms at the start and the end (measured on the images themselves, without random views), steps run
    and whether the time budget cut the optimisation short.
    """
    import torch

    from .budget import (StepTimes, choose_precision, ladder_of, plan_batch, plan_event, schedule_record, spread,
                         steps_left)
    from .priors import BatchNormStats, PatchDiversity, ViewSampler, l2_prior, total_variation, vit_blocks
    from .resolution import COARSER, at_resolution, ladder

    cfg = config or SynthesisConfig()
    cfg.check()
    if n < 1:
        raise OptionError("`images` must be >= 1")
    if objective.targets is not None and len(objective.targets) != n:
        raise QuantizationError(f"{len(objective.targets)} text targets for {n} images")
    if str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
        raise QuantizationError(f"synthesis on device {cfg.device!r} needs a CUDA GPU that torch can see, and this "
                                f"torch ({torch.__version__}) sees none; synthesise on the CPU (device 'cpu') instead")
    device = torch.device(cfg.device)
    precision = choose_precision(device.type, cfg.precision)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    tower.encode.to(device)
    threads = synthesis_threads(tower, cfg.threads)
    others = OtherCpuUse() if device.type == "cpu" and not cfg.threads and threads > 1 else None
    busy: list[float | None] = [None]
    if others is not None and others.available:  # what other processes use now (not the load average's last minute)
        time.sleep(0.5)
        busy[0] = others.since_last()
        threads = synthesis_threads(tower, cfg.threads, busy[0])
    saved_threads = torch.get_num_threads()
    lo_np, hi_np = pixel_bounds(tower.mean, tower.std)
    lo, hi = torch.from_numpy(lo_np)[None].to(device), torch.from_numpy(hi_np)[None].to(device)
    targets = torch.from_numpy(objective.targets).to(device) if objective.targets is not None else None
    bn = BatchNormStats(tower.visual) if objective.batchnorm else None
    div = PatchDiversity(vit_blocks(tower.visual)) if objective.diversity else None
    batches = math.ceil(n / cfg.batch_size)
    out = np.empty((n, 3, *tower.size), dtype=np.float32)
    start = time.monotonic()
    steps_run: list[int] = []
    plans: list[Any] = []
    first: list[dict[str, float]] = []
    last: list[dict[str, float]] = []
    threads_used = [threads]
    full_size = tuple(tower.size)
    phases_of = ladder(tower.visual, full_size) if cfg.resolution != "full" else [(full_size, 1.0)]
    coarser_of = ladder(tower.visual, full_size, COARSER) if cfg.resolution in ("auto", "coarser") else None
    blocks = div.blocks if div else None
    times = StepTimes()

    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.monotonic()

    def autocast() -> Any:
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=amp_dtype)

    def terms(x: Any, tgt: Any) -> dict[str, Any]:
        if bn:
            bn.reset()
        if div:
            div.reset()
        emb = tower.encode(x).float()
        t: dict[str, Any] = {}
        if tgt is not None:
            t["text_cosine"] = torch.nn.functional.cosine_similarity(emb, tgt, dim=-1).mean()
        if bn:
            t["bn_loss"] = bn.loss()
        if div:
            t["diversity"] = div.loss()
        return t

    def total(t: dict[str, Any], x: Any) -> Any:
        loss = x.new_zeros(())
        if "text_cosine" in t:
            loss = loss + cfg.text_weight * (1.0 - t["text_cosine"])
        if "bn_loss" in t:
            # without text (ZeroQ) the BN term is the main objective; with text it is one prior among others
            loss = loss + (1.0 if objective.targets is None else cfg.bn_weight) * t["bn_loss"]
        if "diversity" in t:
            loss = loss + cfg.diversity_weight * t["diversity"]
        if objective.priors:
            loss = loss + cfg.tv_weight * total_variation(x) + cfg.l2_weight * l2_prior(x)
        return loss

    def measure(x: Any, tgt: Any) -> dict[str, float]:
        with torch.no_grad():
            t = terms(x, tgt)
            t["tv"] = total_variation(x)
        return {k: round(float(v), 6) for k, v in t.items()}

    with contextlib.ExitStack() as stack:
        torch.set_num_threads(threads)
        stack.callback(torch.set_num_threads, saved_threads)
        for hooks in (bn, div):
            if hooks is not None:
                stack.enter_context(hooks)
        def time_sizes() -> None:  # one step at every size the plans may use, smallest first
            sizes = sorted({size for size, _ in phases_of + (coarser_of or [])} | {full_size},
                           key=lambda hw: hw[0] * hw[1])
            count = min(cfg.batch_size, n)
            tgt = targets[:count] if targets is not None else None
            for i, size in enumerate([sizes[0]] + sizes):  # the first one warms up
                probe = torch.zeros(count, 3, *size, device=device, requires_grad=True)
                with at_resolution(tower.visual, full_size, size, blocks):
                    t_step = now()
                    with autocast():
                        loss = total(terms(probe, tgt), probe)
                    loss.backward()
                    if i:
                        times.seconds[size] = now() - t_step

        if time_budget:
            time_sizes()
        for b in range(batches):
            if b and others is not None and others.available:  # other processes' use during the last batch
                busy.append(others.since_last())
                threads = synthesis_threads(tower, cfg.threads, busy[-1])
                if time_budget and threads != threads_used[-1]:
                    torch.set_num_threads(threads)
                    time_sizes()  # the step times of the other thread count no longer apply
                torch.set_num_threads(threads)
                threads_used.append(threads)
            sl = slice(b * cfg.batch_size, min(n, (b + 1) * cfg.batch_size))
            count = sl.stop - sl.start
            left = (start + time_budget - time.monotonic()) / (batches - b) if time_budget else None
            plan = plan_batch(cfg.resolution, full_size, phases_of, cfg.steps, times if time_budget else None,
                              max(0.0, left) if left is not None else None, coarser_of)
            plans.append(plan)
            if report is not None:
                if b == 0:
                    full_cost = times.cost(spread(ladder_of("full", full_size, phases_of)[1], cfg.steps))
                    report(plan_event(plan, batches, cfg.steps, time_budget, batches * full_cost or None))
                planned_total = sum(p.steps for p in plans[:-1]) + plan.steps * (batches - b)
            gen = torch.Generator().manual_seed(seed * 1_000_003 + b)
            x = _init_batch(torch, count, plan.phases[0].size, cfg.init_std, gen).to(device)
            x = torch.max(torch.min(x, hi), lo).requires_grad_(True)
            tgt = targets[sl] if targets is not None else None
            first.append(measure(_resize(x.detach(), full_size), tgt))
            opt = torch.optim.Adam([x], lr=cfg.lr)
            views = ViewSampler(seed * 1_000_003 + b, cfg.max_shift, cfg.scale, cfg.flip)
            deadline = time.monotonic() + left if left is not None else None
            done, stopped = 0, False
            for phase in plan.phases:
                if tuple(x.shape[-2:]) != phase.size:  # next phase: upsample, fresh optimiser state
                    with torch.no_grad():
                        x = torch.max(torch.min(_resize(x.detach(), phase.size), hi), lo)
                    x.requires_grad_(True)
                    opt = torch.optim.Adam([x], lr=cfg.lr)
                with at_resolution(tower.visual, full_size, phase.size, blocks):
                    for _ in range(phase.steps):
                        if deadline is not None and time.monotonic() > deadline:
                            stopped = True
                            break
                        t_step = now() if time_budget else 0.0
                        for group in opt.param_groups:  # cosine decay to 5% of the rate
                            group["lr"] = cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done / plan.steps)))
                        opt.zero_grad(set_to_none=True)
                        view = views(x) if objective.priors else x
                        with autocast():
                            loss = total(terms(view, tgt), x)
                        loss.backward()
                        opt.step()
                        with torch.no_grad():
                            x.copy_(torch.max(torch.min(x, hi), lo))
                        if time_budget:
                            times.update(phase.size, now() - t_step)
                        done += 1
                        if progress:
                            progress(1)
                        if report is not None and time_budget:
                            eta = times.cost(steps_left(plan.phases, done)) + (batches - b - 1) * times.cost(plan.phases)
                            report({"event": "left", "steps": planned_total,
                                    "seconds": max(0.0, min(eta, start + time_budget - time.monotonic()))})
                if stopped:
                    break
            if tuple(x.shape[-2:]) != full_size:  # cut inside a coarse phase: the image still leaves at full size
                with torch.no_grad():
                    x = torch.max(torch.min(_resize(x.detach(), full_size), hi), lo)
            if progress and done < plan.steps:
                progress(plan.steps - done)
            steps_run.append(done)
            last.append(measure(x, tgt))
            out[sl] = x.detach().cpu().numpy()

    def mean_of(rows: list[dict[str, float]]) -> dict[str, float]:
        keys = rows[0].keys() if rows else ()
        return {k: round(float(np.mean([r[k] for r in rows])), 6) for k in keys}

    planned = [p.steps for p in plans]
    order = ("full", "coarse-to-fine", "coarser")  # the uncut plan of the coarsest ladder that ran
    coarsest = max((p.mode for p in plans), key=order.index, default="full")
    uncut = spread(ladder_of(coarsest, full_size, phases_of, coarser_of)[1], cfg.steps)
    info = {"objective": objective.name, "steps": cfg.steps, "steps_planned": planned, "steps_run": steps_run,
            "plan_cut": any(p.cut for p in plans),
            "truncated": any(r < p for r, p in zip(steps_run, planned)),
            "schedule": schedule_record(plans),
            "plan": {"resolution": cfg.resolution, "modes": sorted({p.mode for p in plans}),
                     "modes_per_batch": [p.mode for p in plans],
                     "precision": precision, "budget": time_budget, "step_seconds": times.record(),
                     "needed_seconds": round(batches * times.cost(uncut), 1) if time_budget else None},
            "seconds": round(time.monotonic() - start, 2), "threads": max(threads_used),
            "threads_per_batch": threads_used,
            "busy_elsewhere": [None if v is None else round(v, 2) for v in busy],
            "start": mean_of(first), "end": mean_of(last), "terms": objective.terms}
    return SynthResult(out, info)


def _resize(x: Any, size: tuple[int, int]) -> Any:
    """``x`` [B, 3, H, W] resized to ``size`` (bicubic); unchanged when it already has that size."""
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False)


def bn_statistics_loss(tower: TorchTower, images: np.ndarray, batch_size: int = 16) -> float:
    """Mean ZeroQ BatchNorm-statistics loss of ``images`` (batches of ``batch_size``), for checks and reports."""
    import torch

    from .priors import BatchNormStats

    vals = []
    with BatchNormStats(tower.visual) as bn, torch.no_grad():
        for i in range(0, len(images), batch_size):
            bn.reset()
            tower.encode(torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])))
            vals.append(float(bn.loss()))
    return float(np.mean(vals))


def text_cosine(tower: TorchTower, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Cosine between each image's embedding (torch tower) and its target text embedding."""
    import torch

    with torch.no_grad():
        emb = tower.encode(torch.from_numpy(np.ascontiguousarray(images))).numpy()
    emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True).clip(1e-12)
    t = targets / np.linalg.norm(targets, axis=-1, keepdims=True).clip(1e-12)
    return (emb * t).sum(-1)
