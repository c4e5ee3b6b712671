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
such as ``500ms``, ``5s``, ``2m``. The tunable knobs are dataclass fields with defaults and a one-line help
(``field(metadata={"help": ...})``), so documentation and command-line flags can be made from them.
"""
from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, OptionError

SCHEDULES = ("motion", "always")


# ---------------------------------------------------------------------------------------------------------
# value converters (each raises ValueError with what is expected)
# ---------------------------------------------------------------------------------------------------------
def parse_duration(value: Any) -> float:
    """Seconds from a number or a string with a unit (``250ms``, ``5s``, ``2m``, ``1h``); >= 0."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 5s, 500ms or 2m")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*", str(value).lower())
        if not m:
            raise ValueError(f"{value!r} is not a duration; write 5s, 500ms, 2m or a number of seconds")
        seconds = float(m.group(1)) * {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2) or "s"]
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"a duration must be >= 0, got {value!r}")
    return seconds


def _number(lo: float | None = None, hi: float | None = None, integer: bool = False) -> Callable[[Any], Any]:
    def conv(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            raise ValueError(f"expected {'an integer' if integer else 'a number'}, got {value!r}")
        if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = " and ".join(s for s in (f">= {lo:g}" if lo is not None else "",
                                              f"<= {hi:g}" if hi is not None else "") if s)
            raise ValueError(f"must be {bounds}, got {value!r}")
        return int(value) if integer else float(value)
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
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return str(value)
    return conv


def _opt(default: Any, help_text: str, parse: Callable[[Any], Any] | None = None, **kw: Any) -> Any:
    meta = {"help": help_text, **({"parse": parse} if parse else {})}
    if callable(default) and not isinstance(default, (int, float, str, bool)):
        return field(default_factory=default, metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


# ---------------------------------------------------------------------------------------------------------
# the settings (dataclasses with defaults and help)
# ---------------------------------------------------------------------------------------------------------
@dataclass
class MotionSettings:
    """Motion gating of one region (``on: motion``); see ``edgeclip.watch.motion``."""

    level: int = _opt(16, "grey levels (0-255) a cell must differ from the background by, after the region's "
                          "overall brightness shift is removed", _number(1, 255, integer=True))
    area: float = _opt(0.02, "fraction of the region's cells that must change for motion", _number(0.0, 1.0))
    cells: int = _opt(32, "longest side, in cells, of the small grey copy compared with the background",
                      _number(4, 256, integer=True))
    background: float = _opt(10.0, "half-life in seconds of the background's slow update (absorbs lighting drift "
                                   "and objects that stay)", parse_duration)
    hold: float = _opt(1.5, "seconds a region keeps being classified after its motion stopped", parse_duration)
    refresh: float = _opt(300.0, "classify a quiet region at least this often, in seconds (0: never)",
                          parse_duration)


@dataclass
class RegionSettings:
    """How one region is classified and decided; ``defaults:`` sets them for every region."""

    on: str = _opt("motion", "when to classify: motion (only when the region changes) or always (every frame)",
                   _choice(*SCHEDULES))
    every: float = _opt(0.0, "classify every this many seconds instead (e.g. 5s; 0: use `on`)", parse_duration)
    threshold: float = _opt(0.0, "report 'unknown' below this smoothed probability (0: never)", _number(0.0, 1.0))
    half_life: float = _opt(0.25, "EMA smoothing half-life of the probabilities, in seconds", parse_duration)
    margin: float = _opt(0.05, "a new state must beat the current one by this much probability",
                         _number(0.0, 0.99))
    dwell: float = _opt(0.5, "... continuously for this many seconds before it is reported", parse_duration)
    cooldown: float = _opt(0.0, "at most one state event per region per this many seconds (the last change is "
                                "sent when it ends)", parse_duration)
    snapshot: bool = _opt(False, "attach a JPEG of the region to its state events", _boolean)
    motion: MotionSettings = _opt(MotionSettings, "motion gating (level, area, cells, background, hold, refresh)")


@dataclass
class WatchOptions:
    """The job: batching, staleness, threads, reporting. Also settable under ``options:`` in the file."""

    max_batch: int = _opt(16, "most region crops per encoder call (one call per tick covers every due region)",
                          _number(1, 1024, integer=True))
    staleness: float = _opt(1.0, "a crop waiting longer than this many seconds is dropped (and counted)",
                            parse_duration)
    frame_buffer: int = _opt(2, "frames a camera keeps for the inference thread, and crops a region keeps waiting "
                                "(the newest win; more absorb jitter, fewer keep latency down)",
                             _number(1, 64, integer=True))
    encoder_threads: int = _opt(0, "image encoder threads (0: the thread budget's choice, see docs/watch.md)",
                                _number(0, 1024, integer=True))
    decode_threads: int = _opt(1, "threads each source's decoder may use (FFmpeg); cameras x this, plus the "
                                  "encoder's, is what the budget counts", _number(1, 64, integer=True))
    decode_nice: int = _opt(0, "how much lower the decoders' CPU priority is than the encoder's (Linux; 0: the "
                               "same); nicer decoders take only what the encoder leaves", _number(0, 19, integer=True))
    summary_every: float = _opt(10.0, "seconds between summary events (0: only at the end)", parse_duration)
    duration: float = _opt(0.0, "stop after this many seconds (0: run until stopped)", parse_duration)
    reload_poll: float = _opt(1.0, "seconds between checks of the configuration file for changes (0: only on "
                                   "SIGHUP)", parse_duration)
    top_k: int = _opt(3, "states listed with scores in each event", _number(1, 100, integer=True))


@dataclass
class MqttSettings:
    """An MQTT broker: state topics, Home Assistant discovery, availability."""

    host: str = _opt("127.0.0.1", "broker host", _text)
    port: int = _opt(1883, "broker port", _number(1, 65535, integer=True))
    prefix: str = _opt("edgeclip", "topic prefix: PREFIX/CAMERA/REGION/state, PREFIX/availability", _text)
    discovery: str = _opt("homeassistant", "Home Assistant discovery prefix ('' or false: no discovery)")
    client_id: str = _opt("", "MQTT client id (default: edgeclip-watch-HOSTNAME)")
    username: str = _opt("", "user name, if the broker wants one")
    password: str = _opt("", "password (prefer password_file)")
    password_file: str = _opt("", "file holding the password")
    keepalive: int = _opt(30, "seconds between keep-alive pings", _number(5, 3600, integer=True))
    queue: int = _opt(1000, "messages kept while the broker is away; more are counted as overflow",
                      _number(1, 10**6, integer=True))


@dataclass
class WebhookSettings:
    """An HTTP endpoint that receives each state event as a JSON POST."""

    url: str = _opt("", "http(s) URL to POST to", _text)
    timeout: float = _opt(5.0, "seconds per attempt", parse_duration)
    retries: int = _opt(5, "attempts after the first, with exponential backoff", _number(0, 100, integer=True))
    backoff: float = _opt(0.5, "first wait between attempts in seconds (doubles, at most 30 s)", parse_duration)
    queue: int = _opt(1000, "events kept while the endpoint is away; more are counted as overflow",
                      _number(1, 10**6, integer=True))
    headers: dict = _opt(dict, "extra request headers (e.g. Authorization)")


@dataclass
class Outputs:
    """Where events go: JSON lines, MQTT, webhooks; JPEG snapshots of regions."""

    jsonl: str | None = None
    mqtt: MqttSettings | None = None
    webhooks: list[WebhookSettings] = field(default_factory=list)
    snapshots: str | None = None


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
    """A named source with its regions."""

    name: str
    source: str
    regions: list[RegionConfig]
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    loop: bool = False
    realtime: bool = False
    timeout: float = 10.0
    line: int = 0

    def source_key(self) -> tuple:
        """What identifies the stream: a reload keeps a camera's stream when this is unchanged."""
        return (self.source, self.fps, self.width, self.height, self.loop, self.realtime, self.timeout)


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

    def settings(self, node: Any, key: str, cls: type, base: Any = None) -> Any:
        """A settings dataclass from a mapping node: each key parsed by its field's ``parse``; the rest from
        ``base`` (or the defaults)."""
        names = [f.name for f in fields(cls)]
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
                elif f.name == "discovery" and isinstance(raw, bool):
                    values[f.name] = "homeassistant" if raw else ""
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
CAMERA_KEYS = ["source", "fps", "width", "height", "loop", "realtime", "timeout", "regions"]
SHAPE_KEYS = ["rect", "polygon"]
REGION_KEYS = SHAPE_KEYS + ["states"] + [f.name for f in fields(RegionSettings)]
OUTPUT_KEYS = ["jsonl", "mqtt", "webhooks", "snapshots"]
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
    options = r.settings(top["options"][1], "options", WatchOptions) if "options" in top else WatchOptions()
    defaults = r.settings(top["defaults"][1], "defaults", RegionSettings) if "defaults" in top else RegionSettings()
    cameras = _cameras(r, top["cameras"][1], defaults)
    outputs = _outputs(r, top["outputs"][1]) if "outputs" in top else Outputs()
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
    cam = CameraConfig(name, str(source).strip(), [], line=knode.start_mark.line + 1)
    convs = {"fps": _number(0.001, 1000.0), "width": _number(1, 1 << 16, integer=True),
             "height": _number(1, 1 << 16, integer=True), "loop": _boolean, "realtime": _boolean,
             "timeout": parse_duration}
    for k, conv in convs.items():
        if k in items:
            try:
                setattr(cam, k, conv(r.value(items[k][1], f"{key}.{k}")))
            except ValueError as exc:
                raise r.fail(items[k][1], f"{key}.{k}", str(exc)) from None
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
        if not (isinstance(raw, list) and len(raw) == 4 and all(_is_num(v) for v in raw)):
            raise r.fail(node, key, f"a rect is 4 numbers [x, y, w, h] (pixels, or fractions like [0.1, 0.2, 0.3, "
                                    f"0.4]), got {raw!r}")
        x, y, w, h = (float(v) for v in raw)
        if w <= 0 or h <= 0 or x < 0 or y < 0:
            raise r.fail(node, key, f"a rect needs x, y >= 0 and w, h > 0, got {raw!r}")
        points = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
        flat = raw
    else:
        if not (isinstance(raw, list) and len(raw) >= 3 and all(
                isinstance(p, list) and len(p) == 2 and all(_is_num(v) for v in p) for p in raw)):
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


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


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


def _outputs(r: _Reader, node: Any) -> Outputs:
    items = r.mapping(node, "outputs", OUTPUT_KEYS)
    out = Outputs()
    for k in ("jsonl", "snapshots"):
        if k in items:
            try:
                setattr(out, k, _text(r.value(items[k][1], f"outputs.{k}")))
            except ValueError as exc:
                raise r.fail(items[k][1], f"outputs.{k}", str(exc)) from None
    if "mqtt" in items:
        out.mqtt = r.settings(items["mqtt"][1], "outputs.mqtt", MqttSettings)
    if "webhooks" in items:
        for i, wnode in enumerate(r.sequence(items["webhooks"][1], "outputs.webhooks")):
            hook = r.settings(wnode, f"outputs.webhooks[{i}]", WebhookSettings)
            if not hook.url.lower().startswith(("http://", "https://")):
                raise r.fail(wnode, f"outputs.webhooks[{i}].url", f"expected an http(s):// URL, got {hook.url!r}")
            out.webhooks.append(hook)
    return out


def check_options(options: WatchOptions) -> WatchOptions:
    """Validate a WatchOptions built in code (the file's are checked while parsing)."""
    for f in fields(WatchOptions):
        parse = f.metadata.get("parse")
        if parse is not None:
            try:
                parse(getattr(options, f.name))
            except ValueError as exc:
                raise OptionError(f"`{f.name}`: {exc}") from None
    return options
