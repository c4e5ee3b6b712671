"""The options of a stream run: what is classified and how decisions are made (:class:`StreamOptions`), and
where its events go (:class:`StreamOutputs`). How the source is read is ``edgeclip.sources.SourceOptions``."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ..options import Options, option
from .decisions import HalfLife, Roi


@dataclass(frozen=True)
class StreamOptions(Options):
    """What is classified, how often, and how labels are decided."""

    WHAT: ClassVar[str] = "stream option"

    fps_limit: float = option(0.0, "classify at most this many frames per second (the newest frame each time); "
                                   "0: no limit", group="processing")
    batch: int = option(1, "frames kept waiting for the model and classified together (default 1: only the "
                           "newest)", group="processing")
    max_frames: int = option(0, "stop after reading this many frames (0: no limit)", group="processing")
    duration: float = option(0.0, "stop after this many seconds (0: no limit)", group="processing")
    roi: Roi | None = option(None, "classify only this region: pixels (100,50,320,240) or fractions "
                                   "(0.25,0.25,0.5,0.5)", metavar="X,Y,W,H", parse=Roi.parse, group="processing")
    half_life: HalfLife = option(HalfLife(0.5, "s"), "EMA smoothing half-life of the probabilities: seconds (0.5s, "
                                                     "500ms) or frames (5f); 0 disables smoothing",
                                 parse=HalfLife.parse, group="decisions")
    threshold: float = option(0.0, "report 'unknown' when the best smoothed probability is below this "
                                   "(0: never); for a sigmoid-scored bundle (SigLIP) it is that label's own "
                                   "probability of matching", group="decisions")
    hysteresis: float = option(0.05, "a new label must beat the current one by this much probability",
                               group="decisions")
    min_frames: int = option(3, "... for this many consecutive classified frames", group="decisions")
    top_k: int = option(3, "labels listed in label events", group="decisions")
    every_frame: bool = option(False, "also emit one 'frame' event per classified frame", group="outputs")
    summary_every: float = option(10.0, "seconds between 'summary' events with fps, latency p50/p95, drops, "
                                        "memory (0: only at the end)", group="outputs")

    def __post_init__(self) -> None:
        if isinstance(self.roi, str):
            object.__setattr__(self, "roi", Roi.parse(self.roi))
        if not isinstance(self.half_life, HalfLife):
            object.__setattr__(self, "half_life", HalfLife.parse(self.half_life))

    def problems(self) -> list[str]:
        """Values out of range, each naming the option."""
        out = [f"`{name}` must be >= 0, got {getattr(self, name)}" for name in ("fps_limit", "duration", "summary_every")
               if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0)]
        if self.max_frames < 0:
            out.append(f"`max_frames` must be >= 0 (0 = no limit), got {self.max_frames}")
        for name in ("batch", "top_k", "min_frames"):
            if getattr(self, name) < 1:
                out.append(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.threshold <= 1.0:
            out.append(f"`threshold` must be in [0, 1] (a probability), got {self.threshold}")
        if not 0.0 <= self.hysteresis < 1.0:
            out.append(f"`hysteresis` must be in [0, 1), got {self.hysteresis}")
        return out


@dataclass(frozen=True)
class StreamOutputs(Options):
    """Where a stream run's events and frames go, and where its labels may change from."""

    WHAT: ClassVar[str] = "stream output"

    jsonl: str = option("-", "JSON-lines events to this file ('-': stdout)", metavar="FILE", group="outputs",
                        output="file")
    append: bool = option(False, "append to `jsonl` instead of replacing it", group="outputs")
    video_out: str | None = option(None, "write classified frames with label and score drawn on them (.mp4, "
                                         ".avi, .mkv)", metavar="FILE", group="outputs", output="file")
    video_fps: float | None = option(None, "frame rate of `video_out` (default: `fps_limit` for a paced source, "
                                           "else the source's rate)", group="outputs")
    show: bool = option(False, "show an annotated window (needs a display; q quits)", group="outputs")
    labels_watch: str | None = option(None, "labels file (.txt/.csv/.json) applied at start and re-embedded on the "
                                            "device whenever it changes (polled) or on SIGHUP, without restarting",
                                      metavar="FILE", group="live relabelling")
    watch_interval: float = option(1.0, "seconds between checks of `labels_watch`", group="live relabelling")
    templates: str | None = option(None, "prompt templates for relabelling (default: the ones the bundle was made "
                                         "with)", metavar="SET|FILE", group="live relabelling")

    def problems(self) -> list[str]:
        """Contradictions, each naming the option to add or drop."""
        out = []
        if self.video_fps is not None and not self.video_out:
            out.append("`video_fps` sets the rate of `video_out`; pass `video_out` too, or drop it")
        if self.video_fps is not None and not self.video_fps > 0:
            out.append(f"`video_fps` must be > 0, got {self.video_fps}")
        if not self.watch_interval > 0:
            out.append(f"`watch_interval` must be > 0, got {self.watch_interval}")
        if self.templates and not self.labels_watch:
            out.append("`templates` is used when relabelling; pass `labels_watch` too, or drop it")
        return out
