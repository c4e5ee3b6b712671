"""Where ``edgeclip watch`` sends events: JSON lines, MQTT (with Home Assistant discovery), webhooks.

Every sink has its own bounded queue and its own thread, so inference never waits for a disk, a broker or a
web server: ``publish`` appends and returns at once. When a queue is full the oldest event is dropped and
counted (``overflow``); a sink whose endpoint is away keeps its events (up to the bound), reconnects with
backoff and goes on where it stopped (``reconnects``, ``failed`` count what happened).

MQTT topics (``prefix`` default ``edgeclip``)::

    PREFIX/availability                    online / offline (retained; offline is the broker's last will)
    PREFIX/CAMERA/availability             online / offline as the camera streams or is lost (retained)
    PREFIX/CAMERA/REGION/state             {"state", "score", "scores", "previous", "time", ...} (retained)
    PREFIX/CAMERA/REGION/snapshot          JPEG of the region at the change (retained), with snapshot: true
    DISCOVERY/sensor/edgeclip_CAMERA_REGION/config   Home Assistant discovery (retained): an enum sensor
                                                     whose state is the label, the scores as attributes

After a (re)connection the sink publishes availability, discovery and every region's current state again,
so a restarted broker (or Home Assistant) is complete at once.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from ..stream.outputs import JsonLinesSink, _clean
from ..tables import WATCH_SINKS
from .config import MqttSettings, WebhookSettings

log = logging.getLogger("edgeclip.watch")


class QueuedSink:
    """A bounded queue drained by one thread through ``deliver``; subclasses say how to deliver.

    ``deliver(event)`` returns True when the event is done (sent, or given up on and counted in
    ``failed``), False to keep it and retry after ``wait_retry`` (the endpoint is away). ``kind`` is a row of
    ``edgeclip.tables.WATCH_SINKS``, which says the events it takes.
    """

    kind = "sink"

    def __init__(self, name: str, capacity: int = 1000) -> None:
        self.name = name
        self.capacity = max(1, int(capacity))
        self._queue: deque[dict[str, Any]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self.sent = self.failed = self.overflow = self.reconnects = 0
        self.thread = threading.Thread(target=self._run, name=f"edgeclip-sink-{name}", daemon=True)

    # -- the inference side --------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def publish(self, event: dict[str, Any]) -> None:
        """Queue one event; never blocks (a full queue drops its oldest event and counts it)."""
        if not self.wants(event):
            return
        with self._cond:
            if len(self._queue) >= self.capacity:
                self._queue.popleft()
                self.overflow += 1
            self._queue.append(event)
            self._cond.notify()

    def wants(self, event: dict[str, Any]) -> bool:
        """Whether this sink takes the event (its row's ``events``; all for a sink without a row)."""
        row = WATCH_SINKS.get(self.kind)
        return row is None or row.events is None or event.get("event") in row.events

    @property
    def depth(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self, timeout: float = 3.0) -> None:
        """Deliver what is queued (for up to ``timeout`` s), then stop."""
        deadline = time.monotonic() + timeout
        while self.depth and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.02)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self.thread.is_alive():
            self.thread.join(max(0.1, deadline - time.monotonic()))
        self.shutdown()

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "queued": self.depth, "sent": self.sent,
                "failed": self.failed, "overflow": self.overflow, "reconnects": self.reconnects,
                "connected": self.connected}

    # -- the sink's thread ---------------------------------------------------------------------------------
    connected = True
    wait_retry = 0.5

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait(0.5)
                if self._closing:
                    return
                event = self._queue[0]
            try:
                done = self.deliver(event)
            except Exception:  # a sink must never die: log, count, go on
                log.exception("%s sink %s: delivery failed", self.kind, self.name)
                done, self.failed = True, self.failed + 1
            if done:
                with self._cond:
                    if self._queue and self._queue[0] is event:
                        self._queue.popleft()
            else:
                with self._cond:
                    if not self._closing:
                        self._cond.wait(self.wait_retry)

    def deliver(self, event: dict[str, Any]) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def reconfigured(self) -> None:
        """The watcher's cameras or regions changed (a reload); a sink that announces them does so again."""

    def shutdown(self) -> None:
        """Release connections and files (after the thread stopped)."""


def _wire(event: dict[str, Any]) -> dict[str, Any]:
    """The event without its out-of-band parts (``_``-prefixed keys such as the snapshot bytes)."""
    return {k: v for k, v in event.items() if not k.startswith("_")}


# ---------------------------------------------------------------------------------------------------------
# JSON lines
# ---------------------------------------------------------------------------------------------------------
class JsonLinesOutput(QueuedSink):
    """Every event as one JSON line (a file, or stdout for ``-``)."""

    kind = WATCH_SINKS["jsonl"].name

    def __init__(self, target: str, capacity: int = 10000) -> None:
        super().__init__(str(target), capacity)
        self.writer = JsonLinesSink(target, append=False)

    def deliver(self, event: dict[str, Any]) -> bool:
        fields = _wire(event)
        name = fields.pop("event")
        wall = fields.pop("wall", None)
        self.writer.emit(name, wall=wall, **fields)
        self.sent += 1
        return True

    def shutdown(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------------------------------------------------
# webhooks
# ---------------------------------------------------------------------------------------------------------
class WebhookOutput(QueuedSink):
    """State events as JSON POSTs to one URL; failed attempts are retried with exponential backoff."""

    kind = WATCH_SINKS["webhook"].name

    def __init__(self, settings: WebhookSettings) -> None:
        super().__init__(settings.url, settings.queue)
        self.settings = settings
        self._attempt = 0
        self._retry_at = 0.0
        self.connected = True

    def deliver(self, event: dict[str, Any]) -> bool:
        s = self.settings
        now = time.monotonic()
        if now < self._retry_at:
            self.wait_retry = self._retry_at - now
            return False
        body = json.dumps(_clean(_wire(event)), separators=(",", ":")).encode()
        req = urllib.request.Request(s.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "edgeclip-watch",
                                              **s.headers})
        try:
            with urllib.request.urlopen(req, timeout=s.timeout) as r:
                r.read(65536)
            ok, why = True, None
        except urllib.error.HTTPError as exc:
            ok, why = (exc.code < 500 and exc.code != 429), f"HTTP {exc.code}"
            if ok:  # a 4xx is the receiver refusing this event: retrying will not help
                self.failed += 1
                log.warning("webhook %s refused an event (%s)", s.url, why)
                self._attempt = 0
                return True
        except (urllib.error.URLError, OSError, ValueError) as exc:
            ok, why = False, str(getattr(exc, "reason", exc))
        if ok:
            if not self.connected:
                self.reconnects += 1
            self.connected, self._attempt = True, 0
            self.sent += 1
            return True
        self.connected = False
        self._attempt += 1
        if self._attempt > s.retries:
            log.warning("webhook %s: giving up on an event after %d attempts (%s)", s.url, self._attempt, why)
            self.failed += 1
            self._attempt = 0
            self._retry_at = time.monotonic() + min(30.0, s.backoff * 2 ** s.retries)
            return True
        delay = min(30.0, s.backoff * 2 ** (self._attempt - 1))
        self._retry_at = time.monotonic() + delay
        self.wait_retry = delay
        return False


# ---------------------------------------------------------------------------------------------------------
# MQTT
# ---------------------------------------------------------------------------------------------------------
class MqttOutput(QueuedSink):
    """State events on an MQTT broker with Home Assistant discovery (see the module doc).

    ``describe()`` is called at every (re)connection and returns the current picture: ``{"cameras":
    {camera: {"up": bool, "regions": {region: {"states": [...], "event": last state event or None}}}},
    "model": ...}``; from it the sink publishes discovery, availability and the retained states.
    """

    kind = WATCH_SINKS["mqtt"].name

    def __init__(self, settings: MqttSettings, describe: Callable[[], dict[str, Any]]) -> None:
        from ..extras import require

        require("watch", ["paho"], what="MQTT output (outputs.mqtt)")
        import paho.mqtt.client as mqtt

        super().__init__(f"{settings.host}:{settings.port}", settings.queue)
        self.settings, self.describe = settings, describe
        self.prefix = settings.prefix.strip("/")
        self.availability = f"{self.prefix}/availability"
        client_id = settings.client_id or f"edgeclip-watch-{socket.gethostname()}-{os.getpid()}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self._mqtt = mqtt
        if settings.username:
            password = settings.password
            if settings.password_file:
                try:
                    password = Path(settings.password_file).read_text(encoding="utf-8").strip()
                except OSError as exc:
                    raise ConfigError(f"{settings.password_file}: cannot read it ({exc.strerror})",
                                      key="outputs.mqtt.password_file") from None
            self.client.username_pw_set(settings.username, password or None)
        self.client.will_set(self.availability, "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.max_queued_messages_set(settings.queue)  # paho's own queue of unacknowledged messages
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.connected = False
        self._fresh = False  # connected, and the full picture not yet republished
        self._ever = False
        self._lock = threading.Lock()

    def start(self) -> None:
        s = self.settings
        self.client.connect_async(s.host, s.port, keepalive=s.keepalive)
        self.client.loop_start()  # paho's network thread: connects, reconnects with backoff
        super().start()

    # -- paho callbacks (network thread) ---------------------------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("MQTT %s refused the connection: %s", self.name, reason)
            return
        with self._lock:
            if self._ever:
                self.reconnects += 1
            self._ever = True
            self.connected, self._fresh = True, True
        log.info("MQTT connected to %s", self.name)
        with self._cond:  # announce at once, even when no event is waiting
            self._queue.appendleft({"event": "_announce"})
            self._cond.notify_all()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        with self._lock:
            self.connected = False
        log.warning("MQTT %s: disconnected (%s); reconnecting", self.name, reason)

    # -- publishing (the sink's thread) -------------------------------------------------------------------
    def _publish(self, topic: str, payload: Any, retain: bool = True) -> bool:
        if isinstance(payload, (dict, list)):
            payload = json.dumps(_clean(payload), separators=(",", ":"))
        deadline = time.monotonic() + self.settings.keepalive
        while True:  # paho's queue of unacknowledged messages is full (an announcement is a burst): wait for acks
            info = self.client.publish(topic, payload, qos=1, retain=retain)
            if info.rc != self._mqtt.MQTT_ERR_QUEUE_SIZE or not self.connected or time.monotonic() > deadline:
                return info.rc == self._mqtt.MQTT_ERR_SUCCESS
            time.sleep(0.01)

    def _announce(self) -> bool:
        """Availability, discovery and current states (after every connection)."""
        picture = self.describe()
        cams = picture.get("cameras", {})
        ok = self._publish(self.availability, "online")
        for cam, c in cams.items():
            ok &= self._publish(f"{self.prefix}/{cam}/availability", "online" if c.get("up") else "offline")
            for region, r in c.get("regions", {}).items():
                if self.settings.discovery:
                    ok &= self._publish(self._discovery_topic(cam, region),
                                        self.discovery_config(cam, region, r["states"], picture.get("model")))
                if r.get("event") is not None:
                    ok &= self._publish(self.state_topic(cam, region), self.state_payload(r["event"]))
        return ok

    def deliver(self, event: dict[str, Any]) -> bool:
        if not self.connected:
            self.wait_retry = 0.5
            return False
        if self._fresh:
            if not self._announce():
                return False
            self._fresh = False
        name, cam = event.get("event"), event.get("camera")
        if name == "_announce":
            return True
        if name == "state":
            ok = self._publish(self.state_topic(cam, event["region"]), self.state_payload(event))
            if ok and event.get("_jpeg"):
                ok = self._publish(f"{self.prefix}/{cam}/{event['region']}/snapshot", event["_jpeg"])
        else:
            ok = self._publish(f"{self.prefix}/{cam}/availability", "online" if name == "reconnect" else "offline")
        if ok:
            self.sent += 1
        return ok

    def state_topic(self, camera: str, region: str) -> str:
        return f"{self.prefix}/{camera}/{region}/state"

    def _discovery_topic(self, camera: str, region: str) -> str:
        return f"{self.settings.discovery.strip('/')}/sensor/edgeclip_{camera}_{region}/config"

    @staticmethod
    def state_payload(event: dict[str, Any]) -> dict[str, Any]:
        keep = ("state", "previous", "score", "scores", "camera", "region", "time", "frame", "latency_ms", "snapshot")
        return {k: event[k] for k in keep if k in event}

    def discovery_config(self, camera: str, region: str, states: list[str], model: str | None) -> dict[str, Any]:
        """A Home Assistant MQTT discovery document: an enum sensor, scores as attributes."""
        topic = self.state_topic(camera, region)
        return {
            "name": region, "unique_id": f"edgeclip_{camera}_{region}", "object_id": f"edgeclip_{camera}_{region}",
            "state_topic": topic, "value_template": "{{ value_json.state }}", "json_attributes_topic": topic,
            "json_attributes_template": "{{ {'score': value_json.score, 'scores': value_json.scores, "
                                        "'previous': value_json.previous} | tojson }}",
            "device_class": "enum", "options": list(states) + ["unknown"], "icon": "mdi:cctv",
            "availability": [{"topic": self.availability}, {"topic": f"{self.prefix}/{camera}/availability"}],
            "availability_mode": "all",
            "device": {"identifiers": [f"edgeclip_{camera}"], "name": f"edgeclip {camera}",
                       "manufacturer": "edgeclip", "model": model or "CLIP zero-shot"},
        }

    def reconfigured(self) -> None:
        self._fresh = True  # discovery and states for the new regions before the next event

    def shutdown(self) -> None:
        try:
            if self.connected:
                self.client.publish(self.availability, "offline", qos=1, retain=True).wait_for_publish(1.0)
        except (RuntimeError, ValueError, OSError):
            pass
        self.client.disconnect()
        self.client.loop_stop()
