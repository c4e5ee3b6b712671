"""The ``edgeclip watch`` configuration: YAML in, validated dataclasses out, errors naming file, line and key.

A configuration names the cameras (any source ``edgeclip stream`` accepts), their regions (rectangles or
polygons) and, per region, the states to tell apart, written as text::

    cameras:
      driveway:
        source: rtsp://user:pass@cam1/stream
        regions:
          parking:
            rect: [0.05, 0.55, 0.4, 0.4]          # x, y, w, h: fractions of the frame (or integer pixels)
            states: {empty: an empty parking spot, car: a car parked in a parking spot}
            on: motion                            # motion (default) | always ; or every: 5s

Everything is parsed from PyYAML's composed nodes, which carry their line numbers, so every error is one
:class:`~edgeclip.errors.ConfigError` saying ``watch.yaml, line 12, key cameras.driveway.regions.parking.rect:
...``; an unknown key is answered with the closest known one. Durations are numbers of seconds or strings
such as ``500ms``, ``5s``, ``2m``. The tunable knobs are options objects (``edgeclip.options.option`` fields with
a default, a one-line help and a ``parse`` that checks a value from the file or a flag): :class:`WatchOptions`
(the job; ``edgeclip watch``'s flags are made from it), :class:`RegionSettings`, :class:`MotionSettings`,
:class:`MqttSettings`, :class:`WebhookSettings`; a camera's keys are ``edgeclip.sources.SourceOptions``.
Schedules, events and sinks are rows of ``edgeclip.tables``.
"""
from __future__ import annotations

import difflib
import math
import os
import re
import typing
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, ClassVar

from ..bundle.manifest import is_number
from ..errors import ConfigError, EdgeclipError, OptionError
from ..options import Options, check_output, option, parse_duration
from ..sources import SourceOptions
from ..tables import WATCH_SINKS, closest, watch_schedules


# ---------------------------------------------------------------------------------------------------------
# value converters (each takes a value from the file or a flag's text and raises ValueError with what is
# expected)
# ---------------------------------------------------------------------------------------------------------
def _discovery(value: Any) -> str:
    """A discovery prefix: a text, or true (Home Assistant's own, ``homeassistant``) / false or empty (none)."""
    if isinstance(value, bool):
        return "homeassistant" if value else ""
    return "" if value is None else str(value)


def _number(lo: float | None = None, hi: float | None = None, integer: bool = False) -> Callable[[Any], Any]:
    def conv(value: Any) -> Any:
        if isinstance(value, str):  # a flag's text
            try:
                value = int(value) if integer else float(value)
            except ValueError:
                raise ValueError(f"expected {'an integer' if integer else 'a number'}, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            raise ValueError(f"expected {'an integer' if integer else 'a number'}, got {value!r}")
        if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = " and ".join(s for s in (f">= {lo:g}" if lo is not None else "",
                                              f"<= {hi:g}" if hi is not None else "") if s)
            raise ValueError(f"must be {bounds}, got {value!r}")
        return int(value) if integer else float(value)
    conv.__name__ = "integer" if integer else "number"
    return conv


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _text(value: Any) -> str:
    if isinstance(value, (dict, list)) or value is None or str(value).strip() == "":
        raise ValueError(f"expected a non-empty text, got {value!r}")
    return str(value).strip()


def _choice(*options: str) -> Callable[[Any], str]:
    def conv(value: Any) -> str:
        if str(value) not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}{closest(str(value), options)}")
        return str(value)
    conv.__name__ = "choice"
    return conv


def _nested(default_factory: Callable[[], Any], help: str) -> Any:
    """A field holding a mapping or another settings object (no flag: it is written in the file)."""
    return field(default_factory=default_factory,
                 metadata={"help": help, "choices": None, "metavar": None, "parse": None, "group": None,
                           "alias": None, "output": None, "cli": False})


# ---------------------------------------------------------------------------------------------------------
# the settings (options objects: defaults, help and checks once)
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings(Options):
    """Options whose fields each check their value with their ``parse`` (a value from the file, a flag's
    text or a keyword): :meth:`problems` names every field whose value it refuses."""

    def problems(self) -> list[str]:
        """Each value its field's ``parse`` refuses, naming the field."""
        out = []
        for f in fields(self):
            parse = f.metadata.get("parse")
            if parse is not None and getattr(self, f.name) is not None:
                try:
                    parse(getattr(self, f.name))
                except (ValueError, EdgeclipError) as exc:
                    out.append(f"`{f.name}`: {exc}")
        return out


@dataclass(frozen=True)
class MotionSettings(Settings):
    """Motion gating of one region (``on: motion``); see ``edgeclip.watch.motion``."""

    WHAT: ClassVar[str] = "motion setting"

    level: int = option(16, "grey levels (0-255) a cell must differ from the background by, after the region's "
                            "overall brightness shift is removed", parse=_number(1, 255, integer=True))
    area: float = option(0.02, "fraction of the region's cells that must change for motion", parse=_number(0.0, 1.0))
    cells: int = option(32, "longest side, in cells, of the small grey copy compared with the background",
                        parse=_number(4, 256, integer=True))
    background: float = option(10.0, "half-life in seconds of the background's slow update (absorbs lighting "
                                     "drift and objects that stay)", parse=parse_duration)
    hold: float = option(1.5, "seconds a region keeps being classified after its motion stopped", parse=parse_duration)
    refresh: float = option(300.0, "classify a quiet region at least this often, in seconds (0: never)",
                            parse=parse_duration)


@dataclass(frozen=True)
class RegionSettings(Settings):
    """How one region is classified and decided; ``defaults:`` sets them for every region."""

    WHAT: ClassVar[str] = "region setting"

    on: str = option("motion", "when to classify: motion (only when the region changes) or always (every frame)",
                     choices=watch_schedules("on"), parse=_choice(*watch_schedules("on")))
    every: float = option(0.0, "classify every this many seconds instead (e.g. 5s; 0: use on)", parse=parse_duration)
    threshold: float = option(0.0, "report 'unknown' below this smoothed probability (0: never)",
                              parse=_number(0.0, 1.0))
    half_life: float = option(0.25, "EMA smoothing half-life of the probabilities, in seconds", parse=parse_duration)
    margin: float = option(0.05, "a new state must beat the current one by this much probability",
                           parse=_number(0.0, 0.99))
    dwell: float = option(0.5, "... continuously for this many seconds before it is reported", parse=parse_duration)
    cooldown: float = option(0.0, "at most one state event per region per this many seconds (the last change is "
                                  "sent when it ends)", parse=parse_duration)
    snapshot: bool = option(False, "attach a JPEG of the region to its state events", parse=_boolean)
    motion: MotionSettings = _nested(MotionSettings, "motion gating (level, area, cells, background, hold, refresh)")


_OUTPUTS = "outputs"


@dataclass(frozen=True)
class WatchOptions(Settings):
    """The job: batching, staleness, threads, reporting (the file's ``options:``) and the files it writes (the
    file's ``outputs.jsonl`` and ``outputs.snapshots``). ``edgeclip watch``'s flags are made from it."""

    WHAT: ClassVar[str] = "watch option"

    max_batch: int = option(16, "most region crops per encoder call (one call per tick covers every due region)",
                            parse=_number(1, 1024, integer=True))
    staleness: float = option(1.0, "a crop waiting longer than this many seconds is dropped (and counted)",
                              parse=parse_duration)
    frame_buffer: int = option(3, "frames a camera keeps for the inference thread, and crops a region keeps "
                                  "waiting (the newest win; more absorb jitter, fewer keep latency down)",
                               parse=_number(1, 64, integer=True))
    encoder_threads: int = option(0, "image encoder threads (0: the thread budget's choice, see docs/watch.md; "
                                     "the command's flag is threads)", parse=_number(0, 1024, integer=True), cli=False)
    decode_threads: int = option(1, "threads each source's decoder may use (FFmpeg; a camera's own decode_threads "
                                    "wins); cameras x this, plus the encoder's, is what the budget counts",
                                 parse=_number(1, 64, integer=True))
    decode_nice: int = option(0, "how much lower the decoders' CPU priority is than the encoder's (Linux; 0: the "
                                 "same); nicer decoders take only what the encoder leaves",
                              parse=_number(0, 19, integer=True))
    summary_every: float = option(10.0, "seconds between summary events (0: only at the end)", parse=parse_duration)
    duration: float = option(0.0, "stop after this many seconds (0: run until stopped)", parse=parse_duration)
    reload_poll: float = option(1.0, "seconds between checks of the configuration file for changes (0: only on "
                                     "SIGHUP)", parse=parse_duration)
    top_k: int = option(3, "states listed with scores in each event", parse=_number(1, 100, integer=True))
    jsonl: str | None = option(None, "every event as JSON lines to this file ('-': stdout; the default when the "
                                     "configuration names no output)", metavar="FILE", group=_OUTPUTS, output="file")
    snapshots: str | None = option(None, "write the JPEG of each region with a snapshot to this folder (created "
                                         "if missing)", metavar="DIR", group=_OUTPUTS, output="folder")

    @classmethod
    def in_section(cls, section: str) -> tuple[str, ...]:
        """The fields written under ``options:`` or under ``outputs:`` in the file."""
        return tuple(f.name for f in fields(cls) if (f.metadata["group"] == _OUTPUTS) == (section == _OUTPUTS))


@dataclass(frozen=True)
class MqttSettings(Settings):
    """An MQTT broker: state topics, Home Assistant discovery, availability."""

    WHAT: ClassVar[str] = "MQTT setting"

    host: str = option("127.0.0.1", "broker host", parse=_text)
    port: int = option(1883, "broker port", parse=_number(1, 65535, integer=True))
    prefix: str = option("edgeclip", "topic prefix: PREFIX/CAMERA/REGION/state, PREFIX/availability", parse=_text)
    discovery: str = option("homeassistant", "Home Assistant discovery prefix ('' or false: no discovery)",
                            parse=_discovery)
    client_id: str = option("", "MQTT client id (default: edgeclip-watch-HOSTNAME)")
    username: str = option("", "user name, if the broker wants one")
    password: str = option("", "password (prefer password_file)")
    password_file: str = option("", "file holding the password")
    keepalive: int = option(30, "seconds between keep-alive pings", parse=_number(5, 3600, integer=True))
    queue: int = option(1000, "messages kept while the broker is away; more are counted as overflow",
                        parse=_number(1, 10**6, integer=True))


@dataclass(frozen=True)
class WebhookSettings(Settings):
    """An HTTP endpoint that receives each state event as a JSON POST."""

    WHAT: ClassVar[str] = "webhook setting"

    url: str = option("", "http(s) URL to POST to", parse=_text)
    timeout: float = option(5.0, "seconds per attempt", parse=parse_duration)
    retries: int = option(5, "attempts after the first, with exponential backoff", parse=_number(0, 100, integer=True))
    backoff: float = option(0.5, "first wait between attempts in seconds (doubles, at most 30 s)", parse=parse_duration)
    queue: int = option(1000, "events kept while the endpoint is away; more are counted as overflow",
                        parse=_number(1, 10**6, integer=True))
    headers: dict = _nested(dict, "extra request headers (e.g. Authorization)")


@dataclass
class Outputs:
    """Where events go besides JSON lines (``WatchOptions.jsonl``): MQTT, webhooks."""

    mqtt: MqttSettings | None = None
    webhooks: list[WebhookSettings] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------
# the parsed configuration
# ---------------------------------------------------------------------------------------------------------
@dataclass
class State:
    """One state of a region: its name (the sensor value) and the prompts that describe it."""

    name: str
    prompts: list[str]


@dataclass
class Shape:
    """A rectangle ``[x, y, w, h]`` or a polygon ``[[x, y], ...]``: pixels, or fractions when ``relative``."""

    kind: str
    points: list[tuple[float, float]]
    relative: bool

    def pixels(self, width: int, height: int) -> list[tuple[int, int]]:
        """The corner points in pixels of a ``width`` x ``height`` frame."""
        sx, sy = (width, height) if self.relative else (1, 1)
        return [(int(round(x * sx)), int(round(y * sy))) for x, y in self.points]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "points": [list(p) for p in self.points], "relative": self.relative}


@dataclass
class RegionConfig:
    """A named region of one camera with its states and settings."""

    name: str
    shape: Shape
    states: list[State]
    settings: RegionSettings
    line: int = 0

    def signature(self) -> tuple:
        """What makes two regions classify alike (unchanged regions keep their state across a reload)."""
        return (self.shape.kind, tuple(self.shape.points), self.shape.relative,
                tuple((s.name, tuple(s.prompts)) for s in self.states))


@dataclass
class CameraConfig:
    """A named source with its regions; ``options`` are how the source is read (the camera's keys besides
    ``source`` and ``regions``: ``edgeclip.sources.SourceOptions``, each kind taking its own)."""

    name: str
    source: str
    regions: list[RegionConfig]
    options: SourceOptions = field(default_factory=SourceOptions)
    line: int = 0
    file: str | None = None

    def source_key(self) -> tuple:
        """What identifies the stream: a reload keeps a camera's stream when this is unchanged."""
        return (self.source, self.options)


@dataclass
class WatchConfig:
    """A whole configuration file."""

    path: Path | None
    cameras: list[CameraConfig]
    outputs: Outputs = field(default_factory=Outputs)
    options: WatchOptions = field(default_factory=WatchOptions)
    bundle: str | None = None
    templates: str | None = None

    @property
    def regions(self) -> int:
        return sum(len(c.regions) for c in self.cameras)


# ---------------------------------------------------------------------------------------------------------
# node walking
# ---------------------------------------------------------------------------------------------------------
class _Reader:
    """Reads PyYAML nodes into values, raising ConfigError with the file, line and key of the culprit."""

    def __init__(self, file: str) -> None:
        import yaml

        self.file = file
        self.yaml = yaml
        self.constructor = yaml.constructor.SafeConstructor()

    def fail(self, node: Any, key: str, message: str) -> ConfigError:
        line = node.start_mark.line + 1 if node is not None else None
        return ConfigError(message, self.file, line, key or None)

    def value(self, node: Any, key: str) -> Any:
        try:
            return self.constructor.construct_object(node, deep=True)
        except self.yaml.YAMLError as exc:
            raise self.fail(node, key, f"cannot read this value ({exc})") from None

    def mapping(self, node: Any, key: str, known: list[str] | None = None) -> dict[str, tuple[Any, Any]]:
        """{key: (key node, value node)} of a mapping node; unknown keys answered with the closest known."""
        if not isinstance(node, self.yaml.MappingNode):
            raise self.fail(node, key, f"expected a mapping (key: value lines), got {self._kind(node)}")
        out: dict[str, tuple[Any, Any]] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, self.yaml.ScalarNode):
                raise self.fail(knode, key, "keys must be names")
            name = str(knode.value)  # as written: YAML 1.1 would read the key `on` as true
            where = f"{key}.{name}" if key else name
            if name in out:
                raise self.fail(knode, where, "this key is given twice")
            if known is not None and name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(known)}"
                raise self.fail(knode, where, f"unknown key; {hint}")
            out[name] = (knode, vnode)
        return out

    def sequence(self, node: Any, key: str) -> list[Any]:
        if not isinstance(node, self.yaml.SequenceNode):
            raise self.fail(node, key, f"expected a list ([a, b] or '- ' lines), got {self._kind(node)}")
        return list(node.value)

    def _kind(self, node: Any) -> str:
        if isinstance(node, self.yaml.MappingNode):
            return "a mapping"
        if isinstance(node, self.yaml.SequenceNode):
            return "a list"
        return repr(self.value(node, ""))

    def settings(self, node: Any, key: str, cls: type, base: Any = None,
                 names: typing.Sequence[str] | None = None) -> Any:
        """A settings object from a mapping node (``names``: the fields that may be written there, default all):
        each key parsed by its field's ``parse``; the rest from ``base`` (or the defaults)."""
        names = list(names) if names is not None else [f.name for f in fields(cls)]
        items = self.mapping(node, key, names)
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in items:
                continue
            knode, vnode = items[f.name]
            where = f"{key}.{f.name}" if key else f.name
            current = getattr(base, f.name) if base is not None else _default(f)
            if hasattr(current, "__dataclass_fields__"):
                values[f.name] = self.settings(vnode, where, type(current), current)
                continue
            raw = self.value(vnode, where)
            parse = f.metadata.get("parse")
            try:
                if parse is not None:
                    values[f.name] = parse(raw)
                elif isinstance(current, dict):
                    if not isinstance(raw, dict):
                        raise ValueError("expected a mapping of names to texts")
                    values[f.name] = {str(k): str(v) for k, v in raw.items()}
                else:
                    values[f.name] = "" if raw is None else str(raw)
            except ValueError as exc:
                raise self.fail(vnode, where, str(exc)) from None
        return replace(base, **values) if base is not None else cls(**values)


def _default(f: Any) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


# ---------------------------------------------------------------------------------------------------------
# the document
# ---------------------------------------------------------------------------------------------------------
TOP_KEYS = ["bundle", "templates", "defaults", "options", "cameras", "outputs"]
CAMERA_KEYS = ["source", "regions", *SourceOptions.names()]
SHAPE_KEYS = ["rect", "polygon"]
REGION_KEYS = SHAPE_KEYS + ["states"] + [f.name for f in fields(RegionSettings)]
OUTPUT_KEYS = [*(k.key for k in WATCH_SINKS.values()), *(n for n in WatchOptions.in_section(_OUTPUTS)
                                                          if n not in (k.key for k in WATCH_SINKS.values()))]
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")


def load_config(path: str | os.PathLike[str]) -> WatchConfig:
    """Read and validate a configuration file (YAML); ConfigError names the file, line and key of a problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("no such file; pass the path of a YAML configuration (docs/watch.md has an example)",
                          str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read it ({exc})", str(p)) from None
    config = parse_config(text, str(p))
    config.path = p
    return config


def parse_config(text: str, file: str = "<config>") -> WatchConfig:
    """Parse a configuration from YAML text (``file`` names it in errors)."""
    try:
        import yaml
    except ImportError:
        from ..extras import require

        require("watch", what="reading a watch configuration (YAML)")
        raise
    r = _Reader(file)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise ConfigError(f"not valid YAML: {exc.problem or exc.context}", file,
                          mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file) from None
    if root is None:
        raise ConfigError("the file is empty; it needs a cameras: section (docs/watch.md has an example)", file)
    top = r.mapping(root, "", TOP_KEYS)
    if "cameras" not in top:
        raise r.fail(root, "cameras", "missing: name at least one camera with a source and regions")
    bundle = _optional_text(r, top, "bundle")
    templates = _optional_text(r, top, "templates")
    options = WatchOptions()
    if "options" in top:
        options = r.settings(top["options"][1], "options", WatchOptions, options, WatchOptions.in_section("options"))
    defaults = r.settings(top["defaults"][1], "defaults", RegionSettings) if "defaults" in top else RegionSettings()
    cameras = _cameras(r, top["cameras"][1], defaults)
    outputs = Outputs()
    if "outputs" in top:
        outputs, options = _outputs(r, top["outputs"][1], options)
    return WatchConfig(None, cameras, outputs, options, bundle, templates)


def _optional_text(r: _Reader, items: dict, key: str) -> str | None:
    if key not in items:
        return None
    node = items[key][1]
    try:
        return _text(r.value(node, key))
    except ValueError as exc:
        raise r.fail(node, key, str(exc)) from None


def _name(r: _Reader, knode: Any, key: str, what: str) -> str:
    name = str(r.value(knode, key))
    if not NAME.fullmatch(name):
        raise r.fail(knode, key, f"a {what} name is 1-64 letters, digits, '_' or '-' (it becomes an MQTT topic "
                                 f"and a metrics label), got {name!r}")
    return name


def _cameras(r: _Reader, node: Any, defaults: RegionSettings) -> list[CameraConfig]:
    items = r.mapping(node, "cameras")
    if not items:
        raise r.fail(node, "cameras", "no cameras; name at least one with a source and regions")
    cameras = []
    for name, (knode, vnode) in items.items():
        key = f"cameras.{name}"
        _name(r, knode, key, "camera")
        cameras.append(_camera(r, name, knode, vnode, key, defaults))
    return cameras


def _camera(r: _Reader, name: str, knode: Any, node: Any, key: str, defaults: RegionSettings) -> CameraConfig:
    items = r.mapping(node, key, CAMERA_KEYS)
    if "source" not in items:
        raise r.fail(knode, f"{key}.source", "missing: a camera (0, /dev/video0, csi://0), a URL, a file or a folder")
    source = r.value(items["source"][1], f"{key}.source")
    if source is None or str(source).strip() == "":
        raise r.fail(items["source"][1], f"{key}.source", "empty source")
    cam = CameraConfig(name, str(source).strip(), [], _source_options(r, items, key, knode),
                       knode.start_mark.line + 1, r.file)
    if "regions" not in items:
        raise r.fail(knode, f"{key}.regions", "missing: name at least one region with a rect or polygon and states")
    regions = r.mapping(items["regions"][1], f"{key}.regions")
    if not regions:
        raise r.fail(items["regions"][1], f"{key}.regions", "no regions")
    for rname, (rk, rv) in regions.items():
        rkey = f"{key}.regions.{rname}"
        _name(r, rk, rkey, "region")
        cam.regions.append(_region(r, rname, rk, rv, rkey, defaults))
    return cam


def _region(r: _Reader, name: str, knode: Any, node: Any, key: str, defaults: RegionSettings) -> RegionConfig:
    items = r.mapping(node, key, REGION_KEYS)
    shapes = [k for k in SHAPE_KEYS if k in items]
    if len(shapes) != 1:
        raise r.fail(knode, f"{key}.rect", "give the region's place as exactly one of rect: [x, y, w, h] or "
                                          "polygon: [[x, y], ...] (pixels, or fractions of the frame)")
    shape = _shape(r, shapes[0], items[shapes[0]][1], f"{key}.{shapes[0]}")
    if "states" not in items:
        raise r.fail(knode, f"{key}.states", "missing: at least two states, e.g. states: [an open door, a closed "
                                            "door]")
    states = _states(r, items["states"][1], f"{key}.states")
    setting_items = {k: v for k, v in items.items() if k not in ("states", *SHAPE_KEYS)}
    settings = defaults
    if setting_items:
        from yaml import MappingNode

        sub = MappingNode("tag:yaml.org,2002:map", [v for k, v in setting_items.items()],
                          node.start_mark, node.end_mark)
        settings = r.settings(sub, key, RegionSettings, defaults)
    if "every" in items and "on" in items:
        raise r.fail(items["every"][0], f"{key}.every", "give either on: (motion or always) or every: (a period), "
                                                        "not both")
    if "every" in items and settings.every <= 0:
        raise r.fail(items["every"][1], f"{key}.every", "must be > 0 (e.g. 5s)")
    if "on" in items and "every" not in items:
        settings = replace(settings, every=0.0)
    return RegionConfig(name, shape, states, settings, knode.start_mark.line + 1)


def _shape(r: _Reader, kind: str, node: Any, key: str) -> Shape:
    raw = r.value(node, key)
    if kind == "rect":
        if not (isinstance(raw, list) and len(raw) == 4 and all(is_number(v) for v in raw)):
            raise r.fail(node, key, f"a rect is 4 numbers [x, y, w, h] (pixels, or fractions like [0.1, 0.2, 0.3, "
                                    f"0.4]), got {raw!r}")
        x, y, w, h = (float(v) for v in raw)
        if w <= 0 or h <= 0 or x < 0 or y < 0:
            raise r.fail(node, key, f"a rect needs x, y >= 0 and w, h > 0, got {raw!r}")
        points = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
        flat = raw
    else:
        if not (isinstance(raw, list) and len(raw) >= 3 and all(
                isinstance(p, list) and len(p) == 2 and all(is_number(v) for v in p) for p in raw)):
            raise r.fail(node, key, f"a polygon is a list of at least 3 points [[x, y], [x, y], [x, y], ...], "
                                    f"got {raw!r}")
        points = [(float(p[0]), float(p[1])) for p in raw]
        if any(v < 0 for p in points for v in p):
            raise r.fail(node, key, "polygon points must be >= 0")
        flat = [v for p in raw for v in p]
    relative = any(isinstance(v, float) for v in flat)
    if relative and any(v > 1.0 + 1e-9 for p in points for v in p):
        raise r.fail(node, key, "fractions of the frame must stay within 0..1 (write pixels as integers)")
    return Shape(kind, points, relative)


def _states(r: _Reader, node: Any, key: str) -> list[State]:
    raw = r.value(node, key)
    states: list[State] = []
    if isinstance(raw, list):
        for i, v in enumerate(raw):
            if not isinstance(v, str) or not v.strip():
                raise r.fail(node.value[i], f"{key}[{i}]", f"a state is a text such as 'an open door', got {v!r}")
            states.append(State(v.strip(), [v.strip()]))
    elif isinstance(raw, dict):
        for (knode, vnode), (name, v) in zip(node.value, raw.items()):
            prompts = v if isinstance(v, list) else [v]
            if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
                raise r.fail(vnode, f"{key}.{name}", "a state's prompts are a text or a list of texts, e.g. "
                                                     "open: [an open door, a door standing open]")
            states.append(State(str(name), [p.strip() for p in prompts]))
    else:
        raise r.fail(node, key, "states are a list of texts [an open door, a closed door] or a mapping "
                                "{open: an open door, closed: a closed door}")
    if len(states) < 2:
        raise r.fail(node, key, "a region needs at least two states to choose between")
    names = [s.name for s in states]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise r.fail(node, key, f"the state {dup!r} is given twice")
    return states


def _outputs(r: _Reader, node: Any, options: WatchOptions) -> tuple[Outputs, WatchOptions]:
    """The ``outputs:`` section: the sinks' settings, and the files written (into the options), each output
    checked as every command's outputs are (``edgeclip.options.check_output``)."""
    items = r.mapping(node, "outputs", OUTPUT_KEYS)
    out = Outputs()
    for name in WatchOptions.in_section(_OUTPUTS):
        if name in items:
            vnode, where = items[name][1], f"outputs.{name}"
            try:
                path = _text(r.value(vnode, where))
            except ValueError as exc:
                raise r.fail(vnode, where, str(exc)) from None
            kind = next(f.metadata["output"] for f in fields(WatchOptions) if f.name == name)
            problem = check_output(path, where, kind)
            if problem:
                raise r.fail(vnode, where, problem.replace(f"`{where}` ", ""))
            options = replace(options, **{name: path})
    if "mqtt" in items:
        out.mqtt = r.settings(items["mqtt"][1], "outputs.mqtt", MqttSettings)
    if "webhooks" in items:
        for i, wnode in enumerate(r.sequence(items["webhooks"][1], "outputs.webhooks")):
            hook = r.settings(wnode, f"outputs.webhooks[{i}]", WebhookSettings)
            if not hook.url.lower().startswith(("http://", "https://")):
                raise r.fail(wnode, f"outputs.webhooks[{i}].url", f"expected an http(s):// URL, got {hook.url!r}")
            out.webhooks.append(hook)
    return out, options


def _source_options(r: _Reader, items: dict, key: str, knode: Any) -> SourceOptions:
    """How a camera's source is read: its keys that are ``SourceOptions`` fields, checked as a whole (a kind
    that does not take one of them is refused when the source is opened, naming the camera)."""
    hints = typing.get_type_hints(SourceOptions)
    values: dict[str, Any] = {}
    for f in fields(SourceOptions):
        if f.name in items:
            vnode, where = items[f.name][1], f"{key}.{f.name}"
            try:
                values[f.name] = _source_value(f, hints[f.name], r.value(vnode, where))
            except (ValueError, EdgeclipError) as exc:
                raise r.fail(vnode, where, str(exc)) from None
    try:
        return SourceOptions.build(**values)
    except OptionError as exc:
        name = next((n for n in values if f"`{n}`" in str(exc)), None)
        node, where = (items[name][1], f"{key}.{name}") if name else (knode, key)
        raise r.fail(node, where, str(exc).replace("`", "")) from None


def _source_value(f: Field, hint: Any, raw: Any) -> Any:
    """A camera key's value as its SourceOptions field wants it (a text through the field's own parser)."""
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    if raw is None:
        return None
    if base is bool:
        return _boolean(raw)
    if f.metadata.get("parse") is not None and isinstance(raw, str):
        return f.metadata["parse"](raw)  # sizes, and durations for the seconds keys
    return _number(integer=base is int)(raw)
