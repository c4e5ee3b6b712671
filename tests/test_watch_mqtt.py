"""``edgeclip watch`` on a real MQTT broker (Debian's mosquitto, started by the test on a free port).

Home Assistant discovery and state messages arrive retained; the broker is killed mid-run and restarted on
the same port: inference never stops, what overflows the sink's queue is counted, and the events resume
(with availability, discovery and the current states published again).
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("yaml", reason="the 'watch' extra (pyyaml, paho-mqtt) is not installed")
mqtt = pytest.importorskip("paho.mqtt.client", reason="the 'watch' extra (paho-mqtt) is not installed")
pytest.importorskip("cv2")

import edgeclip  # noqa: E402
from edgeclip.watch import Watcher, parse_config  # noqa: E402
from test_watch import DOOR, videos, wait_for  # noqa: E402,F401  (videos: the fixture)


def mosquitto_path() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")
                                             if Path(p).exists()), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A mosquitto process on 127.0.0.1:port (anonymous, no persistence), stoppable and restartable."""

    def __init__(self, exe: str, folder: Path) -> None:
        self.exe, self.port = exe, free_port()
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not start: {self.proc.stderr.read()!r}")
                time.sleep(0.05)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


@pytest.fixture()
def broker(tmp_path: Path):
    exe = mosquitto_path()
    if exe is None:
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
    b = Broker(exe, tmp_path)
    yield b
    if b.proc.poll() is None:
        b.kill()


class Listener:
    """A subscriber to everything, reconnecting by itself; messages as (topic, payload bytes, retain)."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-listener")
        self.client.on_connect = lambda c, u, f, r, p=None: c.subscribe("#", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:  # noqa: ANN001
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def topics(self, start: int = 0) -> list[str]:
        with self.lock:
            return [m[0] for m in self.messages[start:]]

    def payloads(self, topic: str, start: int = 0) -> list[bytes]:
        with self.lock:
            return [m[1] for m in self.messages[start:] if m[0] == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_discovery_states_and_a_broker_restart(broker: Broker, tiny_vit_bundle: Path, videos: dict) -> None:
    clf = edgeclip.load(tiny_vit_bundle, threads=1)
    # a dwell of an hour: each region reports its first state and no change after it, so the only events queued
    # while the broker is away are the test's own (a real change could push them out of the bounded queue)
    text = (f"options: {{summary_every: 0, reload_poll: 0}}\ndefaults: {{on: always, half_life: 0s, dwell: 1h}}\n"
            f"cameras:\n  front:\n    source: {videos['front']}\n    fps: 15\n    loop: true\n    regions:\n"
            f"      door: {{rect: {list(DOOR)}, states: {{open: an open door, closed: a closed door}}}}\n"
            f"      shelf: {{rect: [0.6, 0.5, 0.35, 0.4], states: [a full shelf, an empty shelf]}}\n"
            f"outputs:\n  mqtt: {{host: 127.0.0.1, port: {broker.port}, prefix: edgeclip, queue: 2, keepalive: 5}}\n")
    listener = Listener(broker.port)
    watcher = Watcher(clf, parse_config(text, "t.yaml"))
    sink = watcher.sinks[0]
    watcher.start()
    try:
        config_topic = "homeassistant/sensor/edgeclip_front_door/config"
        state_topic = "edgeclip/front/door/state"
        wait_for(lambda: config_topic in listener.topics() and state_topic in listener.topics(), 30, "discovery")
        doc = json.loads(listener.payloads(config_topic)[-1])
        assert doc["state_topic"] == state_topic and doc["device_class"] == "enum"
        assert doc["options"] == ["open", "closed", "unknown"] and doc["unique_id"] == "edgeclip_front_door"
        assert {a["topic"] for a in doc["availability"]} == {"edgeclip/availability", "edgeclip/front/availability"}
        state = json.loads(listener.payloads(state_topic)[-1])
        assert state["state"] in ("open", "closed") and set(state["scores"]) == {"open", "closed"}
        assert listener.payloads("edgeclip/availability")[-1] == b"online"
        assert listener.payloads("edgeclip/front/availability")[-1] == b"online"

        # the broker dies: inference goes on, state events queue up to the bound, the rest is counted
        broker.kill()
        wait_for(lambda: not sink.connected, 20, "the sink noticing the broker is gone")
        crops = watcher.crops
        for k in range(12):
            sink.publish({"event": "state", "camera": "front", "region": "door", "state": ("open", "closed")[k % 2],
                          "previous": None, "score": 0.9, "scores": {"open": 0.9, "closed": 0.1}, "frame": 1000 + k})
        time.sleep(1.0)
        assert watcher.crops > crops + 10, (crops, watcher.crops)  # ~30 crops a second without a broker
        assert sink.depth <= 2 and sink.overflow >= 10, sink.stats()

        # the broker comes back on the same port: availability, discovery and states again, then the queue
        mark = len(listener.topics())
        broker.start()
        # discovery and the retained states come back at once, before any new event (six messages at once, more
        # than the queue of two: paho's own queue of unacknowledged messages must hold the whole announcement)
        wait_for(lambda: "edgeclip/front/shelf/state" in listener.topics(mark), 40, "the announcement")
        wait_for(lambda: sink.connected and sink.depth == 0, 40, "the sink reconnecting and draining its queue")
        wait_for(lambda: state_topic in listener.topics(mark) and config_topic in listener.topics(mark), 20,
                 "messages after the restart")
        assert sink.reconnects >= 1, sink.stats()
        frames = [json.loads(p).get("frame") for p in listener.payloads(state_topic, mark)]
        assert 1011 in frames, frames  # the newest queued event was delivered after the restart
        assert watcher.running and watcher.crops > crops + 30, (crops, watcher.crops)
    finally:
        watcher.stop()
        listener.close()
    end = watcher.end
    assert end["sinks"][f"mqtt:127.0.0.1:{broker.port}"]["overflow"] >= 10
