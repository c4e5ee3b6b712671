"""``QuantizeOptions``: what ``edgeclip quantize`` is asked for, each default once (imports without torch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..options import Options, option
from ..tables import INT8_RECIPES, precisions
from .budget import MODES

#: how activation ranges are chosen (ONNX Runtime's calibration methods)
CALIB_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_SOURCE = "text-guided"
DEFAULT_IMAGES = 64
DEFAULT_TIME_BUDGET = 180.0


@dataclass(frozen=True)
class QuantizeOptions(Options):
    """What ``edgeclip quantize`` is asked for (``edgeclip.quantize(bundle, **fields)``)."""

    WHAT: ClassVar[str] = "quantize option"

    calib: str = option(DEFAULT_SOURCE, "calibration images: noise (noise:uniform), bn-stats or bn-stats:priors "
                                        "(ResNet towers), text-guided, or real:DIR", metavar="SOURCE")
    target: str = option("auto", "INT8 recipe: auto (the one this machine's backend runs best: `edgeclip devices` "
                                 "says which backend that is; name a recipe to make one for another device), "
                                 + "; ".join(f"{r.name} ({r.title})" for r in INT8_RECIPES.values()),
                         choices=("auto", *INT8_RECIPES))
    images: int = option(DEFAULT_IMAGES, "calibration images", metavar="N")
    seed: int = option(0, "seed of the calibration images")
    calib_method: str | None = option(None, "how activation ranges are chosen (default: the recipe's measured "
                                            "choice)", choices=CALIB_METHODS)
    max_drop: float | None = option(None, "keep the most sensitive layers in fp32 until at most POINTS %% of the "
                                          "calibration images change zero-shot label vs fp32 (default: quantize "
                                          "every weighted layer)", metavar="POINTS")
    time_budget: float = option(DEFAULT_TIME_BUDGET, "seconds the whole job may take: synthesis gets what loading "
                                                     "and the estimated quantizing and checking leave, its plan "
                                                     "said before it starts", metavar="SEC")
    steps: int | None = option(None, "optimisation steps per synthetic batch (default 200; fewer is faster, "
                                     "rougher)")
    device: str = option("cpu", "torch device for synthesis: cpu or cuda")
    synthesis_resolution: str = option("auto", "resolution plan of synthesis: auto (every step at full size if that "
                                               "fits `time_budget`, else coarse-to-fine, else coarser, else cut), "
                                               "full, coarse-to-fine (most steps at a reduced size, the last at full "
                                               "size) or coarser (an extra first phase at the smallest size the "
                                               "tower supports); a forced plan is still cut to fit", choices=MODES)
    synthesis_precision: str = option("auto", "autocast precision of synthesis (auto: bf16 on CUDA GPUs that "
                                              "support it and on CPUs with AMX, else fp32)",
                                      choices=("auto", *precisions("synthesis")))
    synthesis_threads: int = option(0, "torch CPU threads for synthesis (0: the usable cores less those other "
                                       "processes keep busy, re-checked before every batch; 1 for small models)",
                                    metavar="N")
    cache: bool = option(True, "use the calibration cache in <bundle>/.work (read and written)")

    def problems(self) -> list[str]:
        """Every value out of range, each naming the option."""
        out = []
        if self.images < 1:
            out.append(f"`images` must be >= 1, got {self.images}")
        if not self.time_budget > 0:
            out.append(f"`time_budget` must be > 0 seconds, got {self.time_budget}")
        if self.max_drop is not None and not 0.0 <= self.max_drop <= 100.0:
            out.append("`max_drop` is in percentage points of top-1 agreement with fp32: 0 to 100 (e.g. max_drop=1 "
                       "allows 1% of the calibration images to change label)")
        if self.steps is not None and self.steps < 1:
            out.append(f"`steps` must be >= 1, got {self.steps}")
        if self.synthesis_threads < 0:
            out.append(f"`synthesis_threads` must be >= 0 (0: chosen for the machine), got {self.synthesis_threads}")
        return out
