"""The ``edgeclip watch`` loop: many sources, their regions, one encoder call per tick.

Threads and data flow::

    one capture thread per camera            the inference thread (Watcher.run)                 one thread per sink
    read + decode -> mailbox (2 frames, ->   newest frame per camera -> per region: due?      ->  JSON lines,
    newest wins; lost live sources           (schedule, motion gate) -> fair queue -> a batch:    MQTT, webhooks
    reconnect with backoff, alone)           crop, then resize (+1 helper thread) -> ONE encoder  (bounded queues)
                                             call for every due crop -> per-region scores ->
                                             EMA, margin, dwell -> state events (on change)

* **One encoder call per tick.** Crops of every due region of every camera are batched together (at most
  ``max_batch``); each crop is then scored against its own region's state matrix
  (``Classifier.probabilities(embeddings, label_matrix=)``), so one bundle serves every region.
* **Fair and fresh.** Each camera keeps at most ``frame_buffer`` frames for the inference thread and each
  region at most ``frame_buffer`` crops waiting (the newest win, so a burst is absorbed and a slow encoder
  classifies the present); a batch takes crops round-robin across cameras, starting one camera further on
  each tick, so no camera starves. A crop older than ``staleness`` seconds, or replaced by a newer crop of
  its region before its turn, is dropped and counted.
  Sources read as fast as possible (unpaced files) are not read ahead: every frame is classified.
* **Threads budgeted against the cores** (:func:`plan_threads`): the encoder gets the cores; motion gating,
  cropping and preprocessing run *between* encoder calls (never beside them), preprocessing only for the crops
  taken into the batch, split with one helper thread where there are two cores or more; each decoder is held
  to ``decode_threads`` threads (FFmpeg's default is one per core per source).
* **Isolation.** A lost camera reconnects on its own thread with exponential backoff; the others go on. A
  live source that is down at start starts lost. A region that does not fit a camera's frames is reported
  once (``region_error``) and skipped.
* **Reload.** ``request_reload()`` (SIGHUP) or a changed configuration file re-reads regions and states;
  new states are embedded on a background thread, then swapped in between two ticks. Cameras whose source is
  unchanged keep their stream; regions whose place and states are unchanged keep their decision.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, EdgeclipError, ImageReadError, OptionError, SourceError
from ..runtime.classifier import Classifier
from ..runtime.images import encode_jpeg
from ..runtime.labels import Label
from ..runtime.process import usable_cpus
from ..sources import SourceSpec, parse_source
from ..stream.loop import CaptureWorker, Frame, FrameMailbox, loop_end
from ..stream.outputs import LatencyStats, iso_time, rate, rss_bytes
from ..tables import WATCH_EVENTS
from .config import CameraConfig, RegionConfig, WatchConfig, WatchOptions, load_config
from .decide import RegionState
from .geometry import Geometry
from .motion import MotionGate
from .sinks import JsonLinesOutput, MqttOutput, QueuedSink, WebhookOutput

log = logging.getLogger("edgeclip.watch")

#: End reasons after which ``edgeclip watch`` exits 0.
CLEAN_END = ("eof", "duration", "stopped", "SIGINT", "SIGTERM")


# ---------------------------------------------------------------------------------------------------------
# thread budget
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ThreadBudget:
    """How the cores are shared: ``encoder`` intra-op threads; ``decoders`` sources each decoding on at most
    ``decode_threads`` threads, ``decode_nice`` steps below the encoder's priority; preprocessing runs between
    encoder calls, on the inference thread and, with two cores or more, one helper thread."""

    cores: int
    encoder: int
    decoders: int
    decode_threads: int
    decode_nice: int = 0

    def to_json(self) -> dict[str, int]:
        return {"cores": self.cores, "encoder_threads": self.encoder, "decoders": self.decoders,
                "decode_threads": self.decode_threads, "decode_nice": self.decode_nice}


def plan_threads(cameras: int, options: WatchOptions | None = None, cores: int | None = None) -> ThreadBudget:
    """The thread budget for ``cameras`` sources on this machine (see docs/watch.md, "Threads").

    The encoder gets every core (``encoder_threads`` overrides): it is the one big consumer, and motion,
    cropping and preprocessing alternate with it on the inference thread instead of competing with it. The
    decoders are what remains concurrent; each is held to ``decode_threads`` (default 1) so that N sources
    add N decoding threads, not N x cores. ``decode_nice`` (default 0) can run them nicer than the encoder
    (Linux), so they take only the cycles the encoder leaves; measured here it gained nothing and lost to any
    other process on the machine, so it is off unless asked.
    """
    opts = options or WatchOptions()
    n = cores or usable_cpus()
    encoder = opts.encoder_threads or n
    return ThreadBudget(n, encoder, cameras, opts.decode_threads, opts.decode_nice)


# ---------------------------------------------------------------------------------------------------------
# regions and cameras
# ---------------------------------------------------------------------------------------------------------
class Region:
    """One region at run time: its geometry for the camera's frame size, motion gate, state and counters."""

    def __init__(self, camera: str, config: RegionConfig, matrix: np.ndarray) -> None:
        self.camera, self.config, self.name = camera, config, config.name
        self.names = [s.name for s in config.states]
        self.matrix = matrix
        self.state = RegionState(self.names, config.settings)
        self.geometry: Geometry | None = None
        self.gate: MotionGate | None = None
        self.error: str | None = None
        self.retired = False
        self.classified = self.motion_skipped = self.dropped = self.stale = 0
        self.latency = LatencyStats(window=512, reservoir=1024)
        self.times: deque[float] = deque(maxlen=64)
        self.last_classified: float | None = None  # frame time of the last crop queued
        self.last_probs: np.ndarray | None = None  # the last classification's probabilities
        self.last_event: dict[str, Any] | None = None  # the last state event sent (retained by MQTT)
        self.pending_event: dict[str, Any] | None = None  # held back by the cooldown
        self.last_sent = -math.inf

    @property
    def key(self) -> str:
        return f"{self.camera}/{self.name}"

    def resolve(self, width: int, height: int) -> Geometry:
        if self.geometry is None or self.geometry.size != (width, height):
            self.geometry = Geometry(self.config.shape, width, height,
                                     f"cameras.{self.camera}.regions.{self.name} (line {self.config.line})")
            self.gate = MotionGate(self.config.settings.motion, self.geometry.mask)
        return self.geometry

    def due(self, image: np.ndarray, t: float) -> bool:
        """Whether the frame at time ``t`` should be classified for this region (schedule and motion)."""
        s = self.config.settings
        first = self.last_classified is None
        if s.every > 0:
            return first or t - self.last_classified >= s.every
        if s.on == "always":
            return True
        x, y, w, h = self.geometry.box
        moved = self.gate.update(image[y:y + h, x:x + w], t)
        if moved or first or self.gate.active(t):
            return True
        return bool(s.motion.refresh) and t - self.last_classified >= s.motion.refresh

    def fps(self) -> float | None:
        return rate(self.times)

    def status(self) -> dict[str, Any]:
        st = self.state
        scores = ({n: float(p) for n, p in zip(self.names, st.smoothed)} if st.smoothed is not None else None)
        geo = self.geometry
        return {"name": self.name, "states": self.names, "state": st.label,
                "score": None if st.smoothed is None or st.current is None or st.current < 0
                else float(st.smoothed[st.current]),
                "scores": scores, "shape": self.config.shape.to_json(),
                "box": list(geo.box) if geo else None, "points": geo.points if geo else None,
                "on": "every" if self.config.settings.every else self.config.settings.on,
                "classified": self.classified, "motion_skipped": self.motion_skipped, "dropped": self.dropped,
                "fps": self.fps(), "latency_ms": LatencyStats.summary_ms(list(self.latency.recent)),
                "error": self.error}


class _Mailbox(FrameMailbox):
    """A one-frame mailbox that also wakes the inference thread."""

    def __init__(self, arrived: threading.Event, capacity: int = 1) -> None:
        super().__init__(capacity)
        self.arrived = arrived

    def put(self, item: Any, block: bool = False) -> bool:
        ok = super().put(item, block)
        self.arrived.set()
        return ok

    def close(self) -> None:
        super().close()
        self.arrived.set()


class _Down:
    """The reader of a live source that could not be opened at start: it reads as lost, so the capture
    thread reconnects with backoff."""

    fps = None

    def __init__(self, reason: str) -> None:
        self.lost_reason = reason

    def read(self) -> None:
        return None

    def close(self) -> None:
        pass


class Camera:
    """One source: its capture thread, newest frame, regions and counters."""

    def __init__(self, config: CameraConfig, regions: list[Region], arrived: threading.Event,
                 emit: Callable[..., Any], decode_threads: int, buffer: int = 1, nice: int = 0) -> None:
        self.config, self.name, self.regions = config, config.name, regions
        self.spec = camera_spec(config, decode_threads)
        self.mailbox = _Mailbox(arrived, buffer)
        self.up = True
        self.error: str | None = None

        def on_event(event: str, **fields: Any) -> None:
            if event in ("source_lost", "source_gone"):
                self.up = False
            elif event == "reconnect":
                self.up = True
            emit(event, camera=self.name, **fields)

        reader = None
        if self.spec.live:
            try:
                reader = self.spec.open()
            except SourceError as exc:  # down at start: reconnect like a lost source, the others go on
                reader = _Down(str(exc))
                self.up = False
        self.capture = CaptureWorker(self.spec, self.mailbox, on_event, reader=reader,
                                     name=f"edgeclip-capture-{self.name}", nice=nice)
        self.last: Frame | None = None
        self.frames = 0
        self.times: deque[float] = deque(maxlen=64)
        self._jpeg: tuple[int, bytes] | None = None
        self._jpeg_lock = threading.Lock()

    @property
    def lossless(self) -> bool:
        return self.capture.lossless

    @property
    def ended(self) -> bool:
        return self.mailbox.drained

    def start(self) -> None:
        self.capture.start()

    def stop(self) -> None:
        self.capture.stop()
        self.mailbox.close()

    def fps(self) -> float | None:
        return rate(self.times)

    def jpeg(self) -> tuple[int, bytes] | None:
        """(frame number, JPEG) of the newest frame, encoded once per frame however many viewers ask."""
        frame = self.last
        if frame is None:
            return None
        with self._jpeg_lock:
            if self._jpeg is None or self._jpeg[0] != frame.index:
                self._jpeg = (frame.index, encode_jpeg(frame.image))
            return self._jpeg

    def status(self) -> dict[str, Any]:
        cap = self.capture
        size = None if self.last is None else [int(self.last.image.shape[1]), int(self.last.image.shape[0])]
        return {"name": self.name, "source": self.spec.text, "kind": self.spec.kind, "up": self.up,
                "ended": self.ended, "size": size, "frame": None if self.last is None else self.last.index,
                "fps": self.fps(), "captured": cap.captured, "frames_dropped": self.mailbox.dropped,
                "reconnects": cap.reconnects, "frame_errors": cap.frame_errors, "error": cap.error or self.error,
                "regions": [r.status() for r in self.regions]}


def camera_spec(config: CameraConfig, decode_threads: int | None = None) -> SourceSpec:
    """The source of a camera entry, parsed with its options as ``edgeclip stream`` parses a source (the same
    kinds, the same rules); a ConfigError names the file, line and camera. ``decode_threads`` holds the FFmpeg
    decoder of the kinds that have one, unless the camera sets its own."""
    try:
        spec = parse_source(config.source, config.options)
    except SourceError as exc:
        raise ConfigError(str(exc).replace("`", ""), config.file, config.line, f"cameras.{config.name}") from None
    if decode_threads and "decode_threads" in spec.row.options and spec.options.decode_threads is None:
        spec.options = spec.options.replace(decode_threads=decode_threads)
    return spec


# ---------------------------------------------------------------------------------------------------------
# the fair queue
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Crop:
    """One region of one frame, waiting for the encoder; its pixels are made when it is taken into a batch
    (a crop replaced or gone stale before its turn costs no preprocessing). ``geometry``: the region's place
    when the frame was queued."""

    region: Region
    frame: Frame
    geometry: Geometry | None = None


class CropQueue:
    """Crops waiting for the encoder, per camera in arrival order, at most ``per_region`` per region (the
    newest win); taken round-robin across cameras. Stale or replaced crops are dropped and counted."""

    def __init__(self, per_region: int = 2) -> None:
        self.pending: dict[str, deque[Crop]] = {}
        self.per_region = max(1, int(per_region))
        self._turn = 0
        self.dropped = 0

    def put(self, crop: Crop) -> None:
        box = self.pending.setdefault(crop.region.camera, deque())
        same = [c for c in box if c.region is crop.region]
        if len(same) >= self.per_region:  # the region's oldest waiting crop makes room for the newest
            box.remove(same[0])
            crop.region.dropped += 1
            self.dropped += 1
        box.append(crop)

    def waiting(self, camera: str) -> int:
        return len(self.pending.get(camera, ()))

    def __len__(self) -> int:
        return sum(len(b) for b in self.pending.values())

    def take(self, limit: int, now: float, staleness: float) -> list[Crop]:
        """Up to ``limit`` crops, one camera at a time in turn (starting one further each call), oldest first
        within a camera; crops older than ``staleness`` seconds are dropped on the way."""
        if staleness > 0:
            for box in self.pending.values():
                for crop in [c for c in box if now - c.frame.t_capture > staleness]:
                    box.remove(crop)
                    crop.region.dropped += 1
                    crop.region.stale += 1
                    self.dropped += 1
        cams = [c for c, box in self.pending.items() if box]
        if not cams:
            return []
        start = self._turn % len(cams)
        self._turn += 1
        order = cams[start:] + cams[:start]
        out: list[Crop] = []
        while len(out) < limit:
            took = False
            for cam in order:
                box = self.pending[cam]
                if box and len(out) < limit:
                    out.append(box.popleft())
                    took = True
            if not took:
                break
        return out

    def forget(self, regions: Sequence[Region]) -> None:
        ids = {id(r) for r in regions}
        for cam, box in self.pending.items():
            self.pending[cam] = deque(c for c in box if id(c.region) not in ids)


# ---------------------------------------------------------------------------------------------------------
# the watcher
# ---------------------------------------------------------------------------------------------------------
class Watcher:
    """Runs a configuration over one classifier: ``run()`` blocks until the end; ``start()`` runs it on a
    thread (for ``edgeclip serve``); ``stop()``, ``request_reload()`` and the readers are thread-safe."""

    def __init__(self, classifier: Classifier, config: WatchConfig, options: WatchOptions | None = None,
                 sinks: Sequence[QueuedSink] | None = None) -> None:
        self._lock = threading.RLock()  # guards self.cameras against readers on other threads
        self.clf, self.config = classifier, config
        self.options = WatchOptions.build(options or config.options)  # checked: values and outputs
        self.budget = plan_threads(len(config.cameras), self.options)
        self._embeddings: dict[tuple, np.ndarray] = {}
        self.arrived = threading.Event()
        self.queue = CropQueue(self.options.frame_buffer)
        self.sinks: list[QueuedSink] = list(sinks) if sinks is not None else self._make_sinks(config)
        self.cameras: dict[str, Camera] = {}
        matrices = self._matrices(config)
        for cam in config.cameras:
            self.cameras[cam.name] = self._camera(cam, matrices)
        self._grow_plan_cache()
        self.encoder_calls = 0
        self.encoder_seconds = 0.0
        self.crops = 0
        self.batch_sizes: deque[int] = deque(maxlen=4096)
        self.infer_times: deque[float] = deque(maxlen=512)
        self.reloads = 0
        self._helper: ThreadPoolExecutor | None = None  # the second preprocessing thread, while run() runs
        self._stop: str | None = None
        self._reload_requested: str | None = None
        self._reload_thread: threading.Thread | None = None
        self._reload_result: tuple[str, WatchConfig | None, dict | None, str | None] | None = None
        self._reload_lock = threading.Lock()
        self._seen = _stat_key(config.path)
        self._next_check = 0.0
        self.thread: threading.Thread | None = None
        self.end: dict[str, Any] | None = None
        self.error: str | None = None
        self.started_at: float | None = None

    # -- building --------------------------------------------------------------------------------------
    def _make_sinks(self, config: WatchConfig) -> list[QueuedSink]:
        out: list[QueuedSink] = []
        o = config.outputs
        if self.options.jsonl:
            out.append(JsonLinesOutput(self.options.jsonl))
        if o.mqtt is not None:
            out.append(MqttOutput(o.mqtt, self.describe))
        out += [WebhookOutput(w) for w in o.webhooks]
        if self.options.snapshots:
            Path(self.options.snapshots).mkdir(exist_ok=True)  # its parent exists (checked with the options)
        return out

    def _camera(self, cam: CameraConfig, matrices: dict[tuple[str, str], np.ndarray],
                keep: dict[tuple, Region] | None = None) -> Camera:
        regions = [self._region(cam.name, r, matrices, keep) for r in cam.regions]
        return Camera(cam, regions, self.arrived, self.emit, self.budget.decode_threads, self.options.frame_buffer,
                      self.budget.decode_nice)

    def _region(self, camera: str, config: RegionConfig, matrices: dict[tuple[str, str], np.ndarray],
                keep: dict[tuple, Region] | None = None) -> Region:
        old = (keep or {}).get((camera, config.name, config.signature()))
        if old is not None and old.config.settings == config.settings:
            old.config = config  # same place, states and settings: the decision goes on
            return old
        return Region(camera, config, matrices[(camera, config.name)])

    def _matrices(self, config: WatchConfig) -> dict[tuple[str, str], np.ndarray]:
        """Each region's [states, D] matrix, embedding on the device only the prompts not seen before."""
        templates = config.templates
        todo: list[tuple[str, ...]] = []
        for cam in config.cameras:
            for reg in cam.regions:
                for st in reg.states:
                    k = (templates, tuple(st.prompts))
                    if k not in self._embeddings and tuple(st.prompts) not in todo:
                        todo.append(tuple(st.prompts))
        if todo:
            labels = [Label(p[0], synonyms=list(p[1:])) for p in todo]
            matrix = self.clf.embed_labels(labels, templates)
            for prompts, row in zip(todo, matrix):
                self._embeddings[(templates, prompts)] = row
        return {(cam.name, reg.name): np.stack([self._embeddings[(templates, tuple(s.prompts))] for s in reg.states])
                for cam in config.cameras for reg in cam.regions}

    def _grow_plan_cache(self) -> None:
        """Keep a resampling plan for every region's size (the preprocessor's cache would thrash otherwise)."""
        pre = self.clf.preprocessor
        n = sum(len(c.regions) for c in self.cameras.values())
        pre.cache_size = max(getattr(pre, "cache_size", 16), 2 * n + 4)

    # -- control ---------------------------------------------------------------------------------------
    def request_stop(self, reason: str = "stopped") -> None:
        """Stop after the current tick (safe from a signal handler or another thread)."""
        if self._stop is None:
            self._stop = reason
        self.arrived.set()

    stop_requested = property(lambda self: self._stop is not None)

    def request_reload(self, reason: str = "sighup") -> None:
        """Re-read the configuration file before the next tick (safe from a signal handler)."""
        self._reload_requested = reason
        self.arrived.set()

    def start(self) -> None:
        """Run on a thread (idempotent)."""
        if self.thread is None:
            self.thread = threading.Thread(target=self._run_thread, name="edgeclip-watch", daemon=True)
            self.thread.start()

    def _run_thread(self) -> None:
        try:
            self.end = self.run()
        except Exception as exc:
            log.exception("watch stopped")
            self.error = f"{type(exc).__name__}: {exc}"

    def stop(self, timeout: float = 10.0) -> None:
        self.request_stop("stopped")
        if self.thread is not None:
            self.thread.join(timeout)

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Send one event (a row of ``edgeclip.tables.WATCH_EVENTS``) to every sink (non-blocking); returns it."""
        if event not in WATCH_EVENTS:
            raise ValueError(f"{event!r} is not a watch event; add a row to edgeclip.tables.WATCH_EVENTS")
        record = {"event": event, **fields}
        for sink in self.sinks:
            sink.publish(record)
        return record

    # -- the loop --------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Watch until every source ended, ``duration`` passed or a stop was requested; the ``end`` record."""
        try:
            import cv2

            cv2.setNumThreads(1)  # OpenCV's own loops (grey, small resizes, JPEG): one thread, see plan_threads
        except ImportError:
            pass
        warm = self.warm_up()
        if self.budget.cores >= 2:
            self._helper = ThreadPoolExecutor(1, thread_name_prefix="edgeclip-watch-prep")
        for sink in self.sinks:
            sink.start()
        self.started_at = t0 = time.monotonic()
        self.emit("start", wall=time.time(), bundle=str(self.clf.bundle.path), model=self.clf.bundle.model.get("id"),
                  backend=self.clf.encoder.name, precision=self.clf.precision, budget=self.budget.to_json(),
                  cameras={c.name: {"source": c.spec.text, "regions": [r.name for r in c.regions]}
                           for c in self.cameras.values()},
                  max_batch=self.options.max_batch, staleness_s=self.options.staleness, warm_up_s=round(warm, 3))
        for cam in list(self.cameras.values()):
            cam.start()
        self._t_summary = t0
        reason = "stopped"
        try:
            while True:
                now = time.monotonic()
                ending = loop_end(self._stop, t0, self.options.duration, now)
                if ending is not None:
                    reason = ending
                    break
                self._check_reload(now)
                took = self._collect()
                batch = self.queue.take(self.options.max_batch, time.monotonic(), self.options.staleness)
                if batch:
                    self._infer(batch)
                elif not took:
                    if self.cameras and all(c.ended for c in self.cameras.values()) and not len(self.queue):
                        reason = "eof"
                        break
                    self.arrived.wait(0.05)
                    self.arrived.clear()
                self._flush_cooldowns(time.monotonic())
                if self.options.summary_every and time.monotonic() - self._t_summary >= self.options.summary_every:
                    self._t_summary = time.monotonic()
                    self.emit("summary", wall=time.time(), **self.totals())
        finally:
            for cam in list(self.cameras.values()):
                cam.stop()
            for cam in list(self.cameras.values()):
                cam.capture.join(3.0)
            if self._helper is not None:
                self._helper.shutdown()
                self._helper = None
        self.end = {"reason": reason, **self.totals()}
        self.emit("end", wall=time.time(), **self.end)
        for sink in self.sinks:
            sink.close()
        return self.end

    def warm_up(self) -> float:
        """The encoder run once at every batch size up to ``max_batch`` (``Classifier.warm_up``); seconds."""
        return self.clf.warm_up(self.options.max_batch)

    def _collect(self) -> bool:
        """Take the newest frame of each camera and queue the crops of its due regions; True if any frame."""
        took = False
        for cam in list(self.cameras.values()):
            if cam.lossless and self.queue.waiting(cam.name):
                continue  # a file read as fast as possible waits for its crops: every frame classified
            frames = cam.mailbox.take(timeout=0)
            if not frames:
                continue
            took = True
            for frame in frames:
                self._queue_frame(cam, frame)
        return took

    def _queue_frame(self, cam: Camera, frame: Frame) -> None:
        """Queue the crops of the regions this frame is due for (motion gate or schedule)."""
        cam.last, cam.frames = frame, cam.frames + 1
        cam.times.append(time.monotonic())
        h, w = frame.image.shape[:2]
        for region in cam.regions:
            if not self._fits(region, w, h):
                continue
            if not region.due(frame.image, frame.t_media):
                region.motion_skipped += 1
                self._unchanged(region, frame)
                continue
            region.last_classified = frame.t_media
            self.queue.put(Crop(region, frame, region.geometry))

    def _unchanged(self, region: Region, frame: Frame) -> None:
        """A frame the region skipped counts as seeing its last probabilities again, so smoothing and dwell
        advance exactly as they would had it been classified (motion gating changes cost, not decisions)."""
        if region.last_probs is None:
            return
        decision = region.state.update(region.last_probs, frame.t_media)
        if decision.changed:
            now = time.monotonic()
            self._state_event(region, Crop(region, frame), decision, now - frame.t_capture, now)

    def _fits(self, region: Region, w: int, h: int) -> bool:
        try:
            region.resolve(w, h)
            if region.error:
                region.error = None
            return True
        except OptionError as exc:
            if region.error is None:
                region.error = str(exc)
                log.warning("%s", exc)
                self.emit("region_error", wall=time.time(), camera=region.camera, region=region.name,
                          error=str(exc))
            return False

    def _prepare(self, batch: list[Crop]) -> tuple[list[Crop], np.ndarray]:
        """The batch's model input: crop first, then resize (only the region is preprocessed), written into one
        array; with a second core, half the crops are made on the helper thread meanwhile. A crop that cannot be
        made is skipped with a warning."""
        th, tw = self.clf.preprocessor.config.size
        pixels = np.empty((len(batch), 3, th, tw), np.float32)

        def make(rows: range) -> list[int]:
            failed = []
            for i in rows:
                crop, geo = batch[i], batch[i].geometry
                try:
                    if geo.mask is None:
                        self.clf.preprocessor.into(pixels[i], crop.frame.image, geo.box)
                    else:
                        self.clf.preprocessor.into(pixels[i], geo.crop(crop.frame.image))
                except ImageReadError as exc:
                    log.warning("%s: frame %d skipped: %s", crop.region.key, crop.frame.index, exc)
                    failed.append(i)
            return failed

        half = len(batch) // 2
        if self._helper is not None and half:
            other = self._helper.submit(make, range(half, len(batch)))
            failed = make(range(half)) + other.result()
        else:
            failed = make(range(len(batch)))
        if not failed:
            return batch, pixels
        gone = set(failed)
        keep = [i for i in range(len(batch)) if i not in gone]
        return [batch[i] for i in keep], pixels[keep]

    def _infer(self, batch: list[Crop]) -> None:
        clf = self.clf
        batch, pixels = self._prepare(batch)
        if not batch:
            return
        t = time.perf_counter()
        emb = clf.embed_pixels(pixels)
        seconds = time.perf_counter() - t
        self.encoder_calls += 1
        self.encoder_seconds += seconds
        self.crops += len(batch)
        self.batch_sizes.append(len(batch))
        self.infer_times.append(seconds)
        now = time.monotonic()
        for crop, e in zip(batch, emb):
            region = crop.region
            if region.retired:
                continue
            probs = region.last_probs = clf.probabilities(e[None, :], label_matrix=region.matrix)[0]
            decision = region.state.update(probs, crop.frame.t_media)
            latency = now - crop.frame.t_capture
            region.classified += 1
            region.latency.add(latency)
            region.times.append(now)
            if decision.changed:
                self._state_event(region, crop, decision, latency, now)

    def _state_event(self, region: Region, crop: Crop, decision: Any, latency: float, now: float) -> None:
        k = min(self.options.top_k, len(region.names))
        sm = region.state.smoothed
        order = np.argsort(-sm, kind="stable")
        event = {"event": "state", "wall": crop.frame.wall, "time": iso_time(crop.frame.wall),
                 "camera": region.camera, "region": region.name, "state": decision.label,
                 "previous": decision.previous, "score": float(decision.score),
                 "scores": {region.names[i]: round(float(sm[i]), 4) for i in order[:k]},
                 "frame": crop.frame.index, "latency_ms": round(latency * 1000.0, 2)}
        if region.config.settings.snapshot:
            jpeg = encode_jpeg(region.geometry.crop(crop.frame.image))
            event["_jpeg"] = jpeg
            folder = self.options.snapshots
            if folder:
                name = f"{region.camera}-{region.name}-{crop.frame.index:08d}-{decision.label}.jpg".replace(" ", "_")
                path = Path(folder) / name
                try:
                    path.write_bytes(jpeg)
                    event["snapshot"] = str(path)
                except OSError as exc:
                    log.warning("snapshot %s: %s", path, exc)
        if now - region.last_sent >= region.config.settings.cooldown:
            self._send_state(region, event, now)
        else:
            region.pending_event = event  # the last change within the cooldown is sent when it ends

    def _send_state(self, region: Region, event: dict[str, Any], now: float) -> None:
        region.last_sent, region.pending_event = now, None
        region.last_event = event
        for sink in self.sinks:
            sink.publish(event)

    def _flush_cooldowns(self, now: float) -> None:
        for cam in self.cameras.values():
            for region in cam.regions:
                ev = region.pending_event
                if ev is not None and now - region.last_sent >= region.config.settings.cooldown:
                    if region.last_event is None or ev["state"] != region.last_event["state"]:
                        self._send_state(region, ev, now)
                    else:
                        region.pending_event = None

    # -- reload ----------------------------------------------------------------------------------------
    def _check_reload(self, now: float) -> None:
        path = self.config.path
        if path is not None and self.options.reload_poll and now >= self._next_check:
            self._next_check = now + self.options.reload_poll
            key = _stat_key(path)
            if key is not None and key != self._seen:
                self._seen = key
                if self._reload_requested is None:
                    self._reload_requested = "file_changed"
        busy = self._reload_thread is not None and self._reload_thread.is_alive()
        if self._reload_requested is not None and not busy and path is not None:
            reason, self._reload_requested = self._reload_requested, None
            self._reload_thread = threading.Thread(target=self._prepare_reload, args=(reason,),
                                                   name="edgeclip-watch-reload", daemon=True)
            self._reload_thread.start()
        with self._reload_lock:
            result, self._reload_result = self._reload_result, None
        if result is not None:
            self._apply_reload(*result)

    def _prepare_reload(self, reason: str) -> None:
        """Read the file and embed new states (on a background thread: inference goes on)."""
        try:
            config = load_config(self.config.path)
            self._seen = _stat_key(self.config.path)
            matrices = self._matrices(config)
            result = (reason, config, matrices, None)
        except EdgeclipError as exc:
            result = (reason, None, None, str(exc))
        except Exception as exc:  # the text tower failing must not end a watch that runs for months
            result = (reason, None, None, f"{type(exc).__name__}: {exc}")
        with self._reload_lock:
            self._reload_result = result

    def _apply_reload(self, reason: str, config: WatchConfig | None, matrices: dict | None,
                      error: str | None) -> None:
        if config is None:
            log.warning("reload (%s) failed, keeping the running configuration: %s", reason, error)
            self.emit("reload_error", wall=time.time(), reason=reason, error=error, file=str(self.config.path))
            return
        before = [r for c in self.cameras.values() for r in c.regions]
        keep = {(r.camera, r.name, r.config.signature()): r for r in before}
        kept, started, stopped, restarted = [], [], [], []
        new: dict[str, Camera] = {}
        for cc in config.cameras:
            old = self.cameras.get(cc.name)
            try:
                if old is not None and old.config.source_key() == cc.source_key():
                    old.regions = [self._region(cc.name, r, matrices, keep) for r in cc.regions]
                    old.config = cc
                    new[cc.name] = old
                    kept.append(cc.name)
                    continue
                cam = self._camera(cc, matrices, keep)
            except EdgeclipError as exc:
                self.emit("camera_error", wall=time.time(), camera=cc.name, error=str(exc))
                if old is not None:
                    new[cc.name] = old  # keep the running one
                continue
            if old is not None:
                old.stop()
                restarted.append(cc.name)
            else:
                started.append(cc.name)
            new[cc.name] = cam
            cam.start()
        for name, cam in self.cameras.items():
            if name not in new:
                cam.stop()
                stopped.append(name)
        live = {id(r) for c in new.values() for r in c.regions}
        gone = [r for r in before if id(r) not in live]
        for r in gone:
            r.retired = True
        self.queue.forget(gone)
        with self._lock:
            self.cameras = new
            self.config = replace(config, outputs=self.config.outputs)  # outputs are opened once, at start
        keep = ("encoder_threads", "decode_threads", "duration", *WatchOptions.in_section("outputs"))
        self.options = replace(config.options, **{k: getattr(self.options, k) for k in keep})
        self._grow_plan_cache()
        self.reloads += 1
        log.info("reloaded (%s): %d cameras, %d regions", reason, len(new), config.regions)
        self.emit("reload", wall=time.time(), reason=reason, cameras=list(new), regions=config.regions,
                  kept=kept, started=started, restarted=restarted, stopped=stopped)
        for sink in self.sinks:
            sink.reconfigured()

    # -- readers (any thread) --------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Cameras, their availability and every region's states and last state event (for MQTT)."""
        with self._lock:
            cams = list(self.cameras.values())
        return {"model": self.clf.bundle.model.get("id"),
                "cameras": {c.name: {"up": c.up, "regions": {r.name: {"states": r.names, "event": r.last_event}
                                                              for r in c.regions}} for c in cams}}

    def camera(self, name: str) -> Camera | None:
        with self._lock:
            return self.cameras.get(name)

    def status(self) -> dict[str, Any]:
        """Everything a page or API shows: cameras, regions, states, counters, encoder."""
        with self._lock:
            cams = list(self.cameras.values())
        return {**self.totals(), "state": self.state_name(), "cameras": [c.status() for c in cams],
                "sinks": [s.stats() for s in self.sinks], "end_reason": (self.end or {}).get("reason"),
                "error": self.error}

    def state_name(self) -> str:
        if self.error:
            return "error"
        if self.end is not None:
            return "ended"
        return "running" if self.started_at is not None else "idle"

    def totals(self) -> dict[str, Any]:
        with self._lock:
            cams = list(self.cameras.values())
        regions = [r for c in cams for r in c.regions]
        elapsed = time.monotonic() - self.started_at if self.started_at else 0.0
        rss = rss_bytes()
        sizes = list(self.batch_sizes)
        return {"elapsed_s": round(elapsed, 3), "cameras_up": sum(c.up for c in cams), "cameras": len(cams),
                "regions": len(regions), "encoder_calls": self.encoder_calls, "crops": self.crops,
                "crops_per_s": self.crops / elapsed if elapsed else None,
                "encoder_s": round(self.encoder_seconds, 4),
                "mean_batch": float(np.mean(sizes)) if sizes else None,
                "dropped": sum(r.dropped for r in regions), "stale": sum(r.stale for r in regions),
                "motion_skipped": sum(r.motion_skipped for r in regions),
                "frames_dropped": sum(c.mailbox.dropped for c in cams),
                "reconnects": sum(c.capture.reconnects for c in cams), "reloads": self.reloads,
                "threads": threading.active_count(), "rss_mb": None if rss is None else round(rss / 2**20, 2),
                "sinks": {f"{s.kind}:{s.name}": {k: v for k, v in s.stats().items() if k not in ("kind", "name")}
                          for s in self.sinks}}


def _stat_key(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino
