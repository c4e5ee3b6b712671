"""What a source string names (:class:`SourceSpec`), with the options that shape it (:class:`SourceOptions`).

``parse_source`` tries the kinds of ``edgeclip.tables.SOURCE_KINDS`` in order; the first whose module
matches the text wins, and every option given that the kind does not take is refused, naming the kind.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from ..errors import SourceError
from ..options import Options, option, parse_duration, parse_size
from ..tables import SOURCE_KINDS, SourceKind

#: frames per second of a folder played in real time (``realtime``) when no ``fps`` is given
DEFAULT_FOLDER_FPS = 10.0

#: why an option given does not apply to a kind that does not take it, and what to use instead
_INSTEAD = {
    "fps": "it sends frames at its own rate: use `fps_limit` to classify fewer",
    "width": "use `roi` to classify part of the frame",
    "height": "use `roi` to classify part of the frame",
    "realtime": "it is already real time: drop `realtime`",
    "loop": "live sources reconnect by themselves: drop `loop`",
}


class FrameReader(Protocol):
    """An open source: ``read()`` returns the next BGR frame, or None at its end / when it is lost."""

    fps: float | None

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SourceOptions(Options):
    """How a source is read (each kind takes some of these: ``edgeclip.tables.SOURCE_KINDS``)."""

    WHAT: ClassVar[str] = "source option"

    width: int | None = option(None, "capture width for cameras / presets / synthetic")
    height: int | None = option(None, "capture height for cameras / presets / synthetic")
    fps: float | None = option(None, "camera frame rate to request; for files, folders and synthetic the playback "
                                     "rate (plays them in real time, dropping frames a slow model cannot keep up with)")
    realtime: bool = option(False, "play a file/folder at its own frame rate (folders: 10 fps) instead of as fast "
                                   "as possible")
    loop: bool = option(False, "restart a file or folder at its end")
    read_timeout: float = option(10.0, "seconds before a silent network stream counts as lost; an MJPEG stream must "
                                       "also deliver each whole frame within it (slow trickles count as lost)",
                                parse=parse_duration)
    max_part_size: int | None = option(None, "largest MJPEG frame accepted from mjpeg+http:// sources, e.g. 64M "
                                             "(default 32M); a bigger one counts as a lost source and is reconnected",
                                       metavar="SIZE", parse=parse_size)
    reconnect_max: float = option(30.0, "longest wait between reconnection attempts, in seconds; waits start at "
                                        "`reconnect_min` and double", parse=parse_duration)
    reconnect_min: float = option(0.5, "first reconnection wait in seconds", parse=parse_duration)
    give_up_after: float = option(0.0, "end (exit 1) after this many seconds without frames from a lost source "
                                       "(0: never)", parse=parse_duration)
    decode_threads: int | None = option(None, "threads OpenCV's FFmpeg decoder may use for a video file or network "
                                              "stream (default: OpenCV's, one per core); a process reading many "
                                              "sources sets 1 so that the decoders do not outnumber the cores")

    def problems(self) -> list[str]:
        """Values out of range, each naming the option."""
        out = []
        for name in ("width", "height", "max_part_size", "decode_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                out.append(f"`{name}` must be >= 1, got {value}")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            out.append(f"`fps` must be > 0, got {self.fps}")
        if not self.read_timeout > 0:
            out.append(f"`read_timeout` must be > 0, got {self.read_timeout}")
        if not 0 < self.reconnect_min <= self.reconnect_max:
            out.append(f"reconnection waits need 0 < `reconnect_min` ({self.reconnect_min}) <= `reconnect_max` "
                       f"({self.reconnect_max})")
        if self.give_up_after < 0:
            out.append(f"`give_up_after` must be >= 0 (0 = keep trying), got {self.give_up_after}")
        return out


@dataclass
class SourceSpec:
    """What a source string names: its kind (a row of ``SOURCE_KINDS``), target and options.

    ``live`` sources (cameras, streams, pipelines) are reconnected when lost; files and folders end.
    ``fps``: for cameras the rate to request; for files, folders and synthetic frames the playback rate,
    which (like ``realtime``) makes them *paced*: frames come at that rate and a slow model drops frames as
    it would with a camera. Unpaced sources are read as fast as the model takes frames, none dropped.
    """

    text: str
    kind: str
    target: str | int
    options: SourceOptions = field(default_factory=SourceOptions)
    width: int | None = None
    height: int | None = None
    files: list[Path] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.width = self.width or self.options.width
        self.height = self.height or self.options.height

    @property
    def row(self) -> SourceKind:
        """The kind's row of ``SOURCE_KINDS``."""
        return SOURCE_KINDS[self.kind]

    @property
    def live(self) -> bool:
        return self.row.live

    def require_extra(self) -> None:
        """MissingExtraError (exit 2, with the pip line) where this kind needs an extra that is not installed."""
        if self.row.extra:
            from ..extras import require

            require(self.row.extra, what=f"a {self.kind} source")

    @property
    def fps(self) -> float | None:
        return self.options.fps

    @property
    def realtime(self) -> bool:
        return self.options.realtime

    @property
    def paced(self) -> bool:
        """Whether frames arrive at a real-time rate (so stale ones are dropped rather than queued)."""
        return self.live or self.realtime or bool(self.fps)

    def nominal_fps(self, reader: FrameReader | None = None) -> float:
        """Frames per second of the source's own clock (timestamps of unpaced sources come from it)."""
        if self.fps:
            return float(self.fps)
        if reader is not None and reader.fps:
            return float(reader.fps)
        return DEFAULT_FOLDER_FPS if self.kind == "folder" else 30.0

    def open(self) -> FrameReader:
        """Open the source; raises SourceError saying what failed and what to try."""
        return self.row.load().open_reader(self)


def _refuse_others(kind: SourceKind, options: SourceOptions) -> None:
    wrong = sorted(options.given() - set(kind.options))
    if wrong:
        raise SourceError("; ".join(f"`{name}` does not apply to a {kind.name} source ({kind.title})"
                                    + (f": {_INSTEAD[name]}" if name in _INSTEAD else "") for name in wrong))


def parse_source(text: str | int, options: SourceOptions | None = None, /, **values: Any) -> SourceSpec:
    """Interpret a source string (the kinds of ``edgeclip.tables.SOURCE_KINDS``, tried in order) with
    ``options`` (any of its fields as keywords on top); SourceError when it names nothing usable or an option
    does not apply to its kind."""
    opts = SourceOptions.build(options, **values)
    s = str(text).strip()
    if not s:
        raise SourceError("empty `source`; pass a camera (0, /dev/video0, csi://0), a file, a folder or a URL")
    for kind in SOURCE_KINDS.values():
        found = kind.load().match(kind.name, s, opts)
        if found is not None:
            _refuse_others(kind, opts)
            return SourceSpec(found.pop("text", s), kind.name, found.pop("target"), opts, **found)
    raise SourceError(f"{s}: not a camera, URL, file or folder; examples: "
                      + ", ".join(e for k in SOURCE_KINDS.values() for e in k.examples[:1]))
