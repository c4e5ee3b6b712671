"""``edgeclip watch`` configuration: a worked file parses; every mistake names the file, line and key."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

pytest.importorskip("yaml", reason="the 'watch' extra (pyyaml, paho-mqtt) is not installed")

import edgeclip  # noqa: E402
from edgeclip.cli import main  # noqa: E402
from edgeclip.errors import ConfigError  # noqa: E402
from edgeclip.watch import load_config, parse_config  # noqa: E402

GOOD = """\
bundle: /opt/bundle
defaults:
  dwell: 2s
  half_life: 500ms
cameras:
  driveway:
    source: synthetic://640x480
    fps: 15
    regions:
      parking:
        rect: [0.05, 0.55, 0.4, 0.4]
        states: {empty: an empty parking spot, car: [a car parked in a parking spot, a parked car]}
      door:
        polygon: [[10, 10], [200, 10], [200, 300], [10, 300]]
        states: [an open door, a closed door]
        every: 5s
        threshold: 0.4
  shop:
    source: synthetic://320x240
    regions:
      shelf:
        rect: [10, 20, 100, 80]
        states: [a full shelf, an empty shelf]
        on: always
        motion: {level: 20}
options:
  max_batch: 8
  staleness: 1500ms
outputs:
  jsonl: events.jsonl
  mqtt: {host: 127.0.0.1, port: 1884, discovery: false}
  webhooks:
    - url: http://127.0.0.1:9/hook
      retries: 2
"""


def test_a_worked_configuration_parses_with_defaults_and_units() -> None:
    c = parse_config(GOOD, "watch.yaml")
    assert c.bundle == "/opt/bundle" and [cam.name for cam in c.cameras] == ["driveway", "shop"]
    park, door = c.cameras[0].regions
    assert park.shape.kind == "rect" and park.shape.relative and park.shape.points[2] == pytest.approx((0.45, 0.95))
    assert [s.name for s in park.states] == ["empty", "car"] and park.states[1].prompts[1] == "a parked car"
    assert park.settings.dwell == 2.0 and park.settings.half_life == 0.5 and park.settings.on == "motion"
    assert door.shape.kind == "polygon" and not door.shape.relative and door.settings.every == 5.0
    assert [s.name for s in door.states] == ["an open door", "a closed door"] and door.settings.threshold == 0.4
    shelf = c.cameras[1].regions[0]
    assert shelf.settings.on == "always" and shelf.settings.motion.level == 20 and shelf.settings.motion.area == 0.02
    assert c.cameras[0].options.fps == 15 and c.options.max_batch == 8 and c.options.staleness == 1.5
    assert c.outputs.mqtt.port == 1884 and c.outputs.mqtt.discovery == "" and c.outputs.webhooks[0].retries == 2
    assert c.regions == 3


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize("old, new, needle, key, words", [
    ("        every: 5s\n", "        evry: 5s\n", "evry", "cameras.driveway.regions.door.evry", "did you mean every"),
    ("[0.05, 0.55, 0.4, 0.4]", "[0.05, 0.55, 0.4]", "rect:", "cameras.driveway.regions.parking.rect", "4 numbers"),
    ("on: always", "on: sometimes", "on: sometimes", "cameras.shop.regions.shelf.on", "motion, always"),
    ("threshold: 0.4", "threshold: 1.4", "threshold", "cameras.driveway.regions.door.threshold", "<= 1"),
    ("staleness: 1500ms", "staleness: soon", "staleness", "options.staleness", "not a duration"),
    ("[a full shelf, an empty shelf]", "[a full shelf]", "a full shelf", "cameras.shop.regions.shelf.states",
     "at least two states"),
    ("    source: synthetic://320x240\n", "", "  shop:", "cameras.shop.source", "missing"),
    ("level: 20", "levle: 20", "levle", "cameras.shop.regions.shelf.motion.levle", "did you mean level"),
    ("port: 1884", "port: 99999", "port: 99999", "outputs.mqtt.port", "<= 65535"),
    ("http://127.0.0.1:9/hook", "ftp://x/hook", "ftp://", "outputs.webhooks[0].url", "http(s)"),
    ("  shop:\n", "  sh op:\n", "sh op", "cameras.sh op", "letters, digits"),
])
def test_each_mistake_names_file_line_and_key(tmp_path: Path, old: str, new: str, needle: str, key: str,
                                              words: str) -> None:
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    path = tmp_path / "watch.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    e = err.value
    assert (e.file, e.key) == (str(path), key)
    assert e.line == line_of(text, needle), str(e)
    assert str(e).startswith(f"{path}, line {e.line}, key {key}: ") and words in str(e)


def test_yaml_syntax_errors_and_empty_files_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cameras:\n  a:\n    source: [unclosed\n    regions: {}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml, line \d+: not valid YAML"):
        load_config(bad)
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(tmp_path / "empty.yaml")
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    dup = GOOD.replace("      door:\n", "      parking:\n", 1)
    with pytest.raises(ConfigError, match="given twice") as err:
        parse_config(dup, "d.yaml")
    assert err.value.line == line_of(dup, "        polygon:") - 1  # the second "parking:"


def test_the_key_on_is_a_name_not_yaml_true() -> None:
    c = parse_config(GOOD.replace("on: always", "on: motion"), "x.yaml")
    assert c.cameras[1].regions[0].settings.on == "motion"


def test_cli_exits_2_with_file_line_and_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "watch.yaml"
    text = GOOD.replace("every: 5s", "every: 5 parsecs")
    path.write_text(text)
    assert main(["watch", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert f"{path}, line {line_of(text, 'parsecs')}, key cameras.driveway.regions.door.every" in err
    assert "--" not in err.split("error:")[1]  # config keys stay config keys, not flags
    path.write_text(GOOD)
    assert main(["watch", str(path), "--check"]) == 0
    assert "2 cameras, 3 regions" in capsys.readouterr().out


def test_the_docs_name_every_setting_schedule_event_and_sink() -> None:
    from dataclasses import fields

    from edgeclip.tables import WATCH_EVENTS, WATCH_SCHEDULES, WATCH_SINKS
    from edgeclip.watch import MotionSettings, MqttSettings, RegionSettings, WatchOptions, WebhookSettings

    text = (Path(__file__).resolve().parents[1] / "docs" / "watch.md").read_text(encoding="utf-8")
    missing = [f"{prefix}{f.name}" for cls, prefix in ((RegionSettings, ""), (MotionSettings, "motion."),
                                                       (WatchOptions, ""), (MqttSettings, ""), (WebhookSettings, ""))
               for f in fields(cls) if f.name != "motion" and f"`{prefix}{f.name}`" not in text]
    missing += [f"`{name}`" for name in (*WATCH_SCHEDULES, *WATCH_EVENTS) if f"`{name}`" not in text]
    missing += [f"`outputs.{k.key}`" for k in WATCH_SINKS.values() if f"`outputs.{k.key}`" not in text]
    assert missing == []


def test_schedules_events_and_sinks_are_the_tables_rows() -> None:
    import ast

    import edgeclip
    from edgeclip.cli import build_parser
    from edgeclip.tables import WATCH_EVENTS, WATCH_SINKS, watch_schedules
    from edgeclip.watch import RegionSettings
    from edgeclip.watch.config import OUTPUT_KEYS
    from edgeclip.watch.sinks import JsonLinesOutput, MqttOutput, WebhookOutput

    on = next(f for f in dataclasses.fields(RegionSettings) if f.name == "on")
    assert on.metadata["choices"] == watch_schedules("on") == ("motion", "always")
    assert {k.key for k in WATCH_SINKS.values()} <= set(OUTPUT_KEYS)
    assert {JsonLinesOutput.kind, MqttOutput.kind, WebhookOutput.kind} == set(WATCH_SINKS)
    # every event the engine (or the capture threads it runs) sends is a row
    root = Path(edgeclip.__file__).parent
    sent = {node.args[0].value for f in [*(root / "watch").glob("*.py"), root / "stream" / "loop.py"]
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8")))
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "emit" and node.args
            and isinstance(node.args[0], ast.Constant)}
    capture = {"source_lost", "reconnect", "source_gone", "frame_error"}
    assert capture <= set(WATCH_EVENTS) and sent & set(WATCH_EVENTS) >= capture | {"start", "summary", "end"}
    assert {e for e in sent if e not in WATCH_EVENTS} <= {"label", "frame", "relabel", "relabel_error"}  # stream's
    epilog = build_parser()._subparsers._group_actions[0].choices["watch"].epilog
    assert all(name in epilog for name in WATCH_EVENTS)


def test_a_camera_takes_the_source_options_of_its_kind(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from edgeclip.watch.watcher import camera_spec

    text = GOOD.replace("    fps: 15\n", "    fps: 15\n    loop: true\n", 1)
    cam = parse_config(text, "w.yaml").cameras[0]
    assert (cam.options.fps, cam.options.loop, cam.options.reconnect_min) == (15.0, True, 0.5)
    spec = camera_spec(cam, decode_threads=1)
    assert spec.kind == "synthetic" and spec.options.decode_threads is None  # no FFmpeg decoder to hold
    with pytest.raises(ConfigError) as err:  # read_timeout: a network stream's, not a synthetic source's
        camera_spec(parse_config(GOOD.replace("    fps: 15\n", "    read_timeout: 2s\n", 1), "w.yaml").cameras[0])
    assert (err.value.key, err.value.line) == ("cameras.driveway", line_of(GOOD, "  driveway:"))
    assert "read_timeout does not apply to a synthetic source" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config(GOOD.replace("    fps: 15\n", "    fps: -3\n", 1), "w.yaml")
    assert err.value.key == "cameras.driveway.fps" and "fps must be > 0" in str(err.value)
    with pytest.raises(ConfigError) as err:  # a rate is no duration: "2m" is not 120 fps
        parse_config(GOOD.replace("    fps: 15\n", "    fps: 2m\n", 1), "w.yaml")
    assert err.value.key == "cameras.driveway.fps" and "expected a number, got '2m'" in str(err.value)
    rtsp = GOOD.replace("synthetic://640x480", "rtsp://cam/1", 1).replace("    fps: 15\n", "    read_timeout: 1.5m\n", 1)
    assert parse_config(rtsp, "w.yaml").cameras[0].options.read_timeout == 90.0  # seconds keys take durations
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    cam = parse_config(GOOD.replace("synthetic://640x480", str(video), 1), "w.yaml").cameras[0]
    assert camera_spec(cam, decode_threads=1).options.decode_threads == 1  # a file is decoded by FFmpeg
    path = tmp_path / "watch.yaml"
    path.write_text(GOOD.replace("    fps: 15\n", "    read_timeout: 2s\n", 1))
    assert main(["watch", str(path), "--check"]) == 2  # the check parses every source with its options
    err = capsys.readouterr().err
    assert "key cameras.driveway: read_timeout does not apply" in err and "--" not in err.split("error:")[1]


def test_flags_override_the_file_and_outputs_are_checked_first(tmp_path: Path) -> None:
    from edgeclip.cli import build_parser
    from edgeclip.cli.options import options_from_args
    from edgeclip.options import resolve
    from edgeclip.watch import WatchOptions

    c = parse_config(GOOD, "w.yaml")
    assert c.options.jsonl == "events.jsonl" and c.options.max_batch == 8
    args = build_parser().parse_args(["watch", "w.yaml", "--max-batch", "4", "--staleness", "250ms"])
    got = resolve(options_from_args(WatchOptions, args), {k: getattr(c.options, k) for k in c.options.given()})
    assert (got.max_batch, got.staleness, got.jsonl, got.top_k) == (4, 0.25, "events.jsonl", 3)
    with pytest.raises(ConfigError) as err:
        parse_config(GOOD.replace("jsonl: events.jsonl", f"jsonl: {tmp_path}/no/such/events.jsonl"), "w.yaml")
    assert err.value.key == "outputs.jsonl" and "does not exist; create it first" in str(err.value)
    with pytest.raises(edgeclip.OptionError, match="`max_batch`: must be >= 1"):
        WatchOptions(max_batch=0).check()
