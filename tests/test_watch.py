"""``edgeclip watch`` end to end on real ONNX sessions: cameras made from real photos, regions, one encoder
call per tick, motion gating, fairness and staleness, reload without dropping streams, a lost camera that
disturbs no other, webhooks that fail and recover, the CLI with SIGHUP and SIGTERM."""
from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("yaml", reason="the 'watch' extra (pyyaml, paho-mqtt) is not installed")
cv2 = pytest.importorskip("cv2")

import edgeclip  # noqa: E402
from edgeclip.options import LoadOptions  # noqa: E402
from edgeclip.runtime.classifier import Classifier  # noqa: E402
from edgeclip.stream.loop import Frame  # noqa: E402
from edgeclip.watch import Watcher, WatchOptions, load_config, parse_config, plan_threads  # noqa: E402
from edgeclip.watch.config import RegionConfig, RegionSettings, Shape, State, WebhookSettings  # noqa: E402
from edgeclip.watch.watcher import Crop, CropQueue, Region  # noqa: E402
from edgeclip.watch.sinks import JsonLinesOutput, WebhookOutput  # noqa: E402
from watch_scenes import Patch, photos, write_scene  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DOOR, SHELF = (40, 60, 200, 300), (380, 240, 220, 200)


@pytest.fixture(scope="module")
def clf(tiny_vit_bundle: Path) -> Classifier:
    return edgeclip.load(tiny_vit_bundle, threads=1)


@pytest.fixture(scope="module")
def videos(imagenette_train: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two 60-frame 640x480 cameras from real photos: the door changes at frame 30, the shelf never."""
    folder = tmp_path_factory.mktemp("watch-videos")
    pics = photos(imagenette_train, 8, seed=3)
    out = {}
    for i, name in enumerate(("front", "back")):
        own = pics[4 * i:4 * i + 4]
        out[name] = write_scene(folder / f"{name}.avi", own[0],
                                [Patch(DOOR, [own[1], own[2]], [0, 30]), Patch(SHELF, [own[3]])], 60, seed=i)
    return out


def config_for(videos: dict[str, Path], on: str = "always", extra: str = "", half_life: str = "0s") -> str:
    lines = ["defaults:", f"  half_life: {half_life}", "  dwell: 0s", "cameras:"]
    for name, path in videos.items():
        lines += [f"  {name}:", f"    source: {path}", "    regions:",
                  "      door:", f"        rect: {list(DOOR)}", "        states: [an open door, a closed door]",
                  f"        on: {on}",
                  "      shelf:", "        polygon: [[380, 240], [600, 240], [600, 440], [380, 440]]",
                  "        states: {full: a full shelf, empty: an empty shelf, dark: a dark room}", f"        on: {on}"]
    return "\n".join(lines) + "\n" + extra


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def last_frame(path: Path) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    frame = None
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frame = img
    cap.release()
    return frame


def test_every_frame_of_every_region_in_shared_encoder_calls(clf: Classifier, videos: dict, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    config = parse_config(config_for(videos), "t.yaml")
    w = Watcher(clf, config, WatchOptions(summary_every=0, reload_poll=0), sinks=[JsonLinesOutput(str(events))])
    end = w.run()
    assert end["reason"] == "eof" and end["regions"] == 4
    for cam in w.cameras.values():
        assert [r.classified for r in cam.regions] == [60, 60]  # unpaced files: every frame, none dropped
    assert end["crops"] == 240 and end["dropped"] == 0 and end["frames_dropped"] == 0
    # one encoder call covers the due regions of both cameras (4 crops a tick), not one call per region
    assert end["encoder_calls"] < 240 / 2 and end["mean_batch"] > 2 and max(w.batch_sizes) >= 4
    assert clf.preprocessor.cache_size >= 2 * 4 + 4  # a resampling plan kept for every region's size
    ev = read_jsonl(events)
    assert ev[0]["event"] == "start" and ev[-1]["event"] == "end"
    first = {(e["camera"], e["region"]): e for e in ev if e["event"] == "state" and e["previous"] is None}
    assert set(first) == {(c, r) for c in videos for r in ("door", "shelf")}
    assert set(first[("front", "shelf")]["scores"]) <= {"full", "empty", "dark"}
    # each region is scored against its own states, exactly as a classifier relabelled with them scores its crop
    img = last_frame(videos["back"])
    for region, crop in (("door", img[DOOR[1]:DOOR[1] + DOOR[3], DOOR[0]:DOOR[0] + DOOR[2]]),):
        reg = next(r for r in w.cameras["back"].regions if r.name == region)
        ref = Classifier(clf.bundle, LoadOptions(threads=1))
        ref.set_labels([s.prompts[0] for s in reg.config.states])
        expect = ref.classify(crop, top_k=2)
        got = dict(zip(reg.names, reg.state.smoothed))  # half-life 0: the last frame's probabilities
        for name, score in zip(expect.labels, expect.scores):
            assert got[name] == pytest.approx(score, abs=2e-3)


def test_motion_gating_skips_still_regions_and_catches_a_change_at_once(clf: Classifier, videos: dict) -> None:
    config = parse_config(config_for({"front": videos["front"]}, on="motion"), "t.yaml")
    w = Watcher(clf, config, WatchOptions(summary_every=0, reload_poll=0), sinks=[])
    end = w.run()
    door, shelf = w.cameras["front"].regions
    hold = int(door.config.settings.motion.hold * 15)  # frames
    # the shelf never changes: classified for its first frame and `hold` after it, then never
    assert shelf.classified <= hold + 2 and shelf.motion_skipped >= 60 - hold - 2
    # the door changes at frame 30: classified from that very frame on, for about twice `hold`
    assert door.classified <= 2 * hold + 2 + hold + 2
    assert end["encoder_calls"] < 60 and end["motion_skipped"] == door.motion_skipped + shelf.motion_skipped
    crops_frames = []

    class Spy(Watcher):
        def _infer(self, batch):  # noqa: ANN001
            crops_frames.extend((c.region.name, c.frame.index) for c in batch)
            super()._infer(batch)

    Spy(clf, config, WatchOptions(summary_every=0, reload_poll=0), sinks=[]).run()
    assert ("door", 30) in crops_frames and ("door", 29) not in crops_frames


def crop_at(region: Region, index: int, t: float) -> Crop:
    return Crop(region, Frame(np.zeros((1, 1, 3), np.uint8), index, t, t, 0.0))


def make_region(camera: str, name: str = "r") -> Region:
    cfg = RegionConfig(name, Shape("rect", [(0, 0), (1, 0), (1, 1), (0, 1)], False),
                       [State("a", ["a"]), State("b", ["b"])], RegionSettings())
    return Region(camera, cfg, np.eye(2, 4, dtype=np.float32))


def test_the_queue_is_fair_across_cameras_and_drops_stale_and_replaced_crops() -> None:
    q = CropQueue(per_region=2)
    regions = {c: [make_region(c, f"r{i}") for i in range(3)] for c in ("busy", "quiet", "third")}
    for k in range(2):  # the busy camera has 6 crops waiting, the others 1 each
        for reg in regions["busy"]:
            q.put(crop_at(reg, k, 100.0))
    q.put(crop_at(regions["quiet"][0], 0, 100.0))
    q.put(crop_at(regions["third"][0], 0, 100.0))
    batch = q.take(3, 100.1, staleness=1.0)
    assert sorted(c.region.camera for c in batch) == ["busy", "quiet", "third"]  # one each, none starves
    assert len(q) == 5
    # a third crop of one region replaces its oldest waiting one (counted); a stale one is dropped (counted)
    r0 = regions["busy"][0]  # frame 0 went into the batch, frame 1 waits
    q.put(crop_at(r0, 9, 100.5))
    assert r0.dropped == 0
    q.put(crop_at(r0, 10, 100.5))
    assert r0.dropped == 1 and q.dropped == 1
    assert [c.frame.index for c in q.pending["busy"] if c.region is r0] == [9, 10]
    later = q.take(10, 101.2, staleness=1.0)  # everything captured at 100.0 is now 1.2 s old
    assert [(c.region.name, c.frame.index) for c in later] == [("r0", 9), ("r0", 10)]
    assert q.dropped == 1 + 4 and sum(r.stale for rs in regions.values() for r in rs) == 4
    # turns rotate: over many ticks of batch 1 every camera is served alike
    served = {c: 0 for c in regions}
    for k in range(30):
        for c, rs in regions.items():
            q.put(crop_at(rs[0], k, 200.0 + k))
        for crop in q.take(1, 200.0 + k, staleness=0):
            served[crop.region.camera] += 1
    assert max(served.values()) - min(served.values()) <= 1


def test_by_default_a_tick_three_frame_periods_long_loses_no_frame(clf: Classifier, videos: dict) -> None:
    """Frames that arrive while the encoder runs wait in the camera's mailbox and their crops in the queue: with
    the default ``frame_buffer`` a tick as long as three frame periods (a slow batch, a late capture thread
    catching up) loses none of them; a fourth frame replaces the oldest, and that is counted."""
    paced = config_for(videos).replace("    regions:", "    fps: 15\n    regions:")  # a camera's pace
    w = Watcher(clf, parse_config(paced, "t.yaml"), WatchOptions(summary_every=0, reload_poll=0), sinks=[])
    cam = w.cameras["front"]
    assert not cam.lossless
    img = last_frame(videos["front"])
    for i in range(3):
        cam.mailbox.put(Frame(img, i, 10.0 + i / 15, 0.0, i / 15))
    assert w._collect() and cam.mailbox.dropped == 0
    assert sorted((c.region.name, c.frame.index) for c in w.queue.pending["front"]) == [
        (r.name, i) for r in sorted(cam.regions, key=lambda r: r.name) for i in range(3)]
    for i in range(3, 7):
        cam.mailbox.put(Frame(img, i, 10.0 + i / 15, 0.0, i / 15))
    assert cam.mailbox.dropped == 1  # frame 3 made way for frame 6
    w._collect()
    assert w.queue.dropped == 3 * len(cam.regions)  # each region keeps its newest three crops
    assert sorted({c.frame.index for c in w.queue.pending["front"]}) == [4, 5, 6]


@pytest.mark.parametrize("helper", [False, True], ids=["one thread", "with the helper thread"])
def test_a_batch_is_preprocessed_when_taken_and_a_crop_that_cannot_be_made_is_skipped(
        clf: Classifier, videos: dict, helper: bool) -> None:
    from concurrent.futures import ThreadPoolExecutor

    w = Watcher(clf, parse_config(config_for(videos), "t.yaml"), WatchOptions(summary_every=0, reload_poll=0),
                sinks=[])
    door, shelf = w.cameras["front"].regions
    img = last_frame(videos["front"])
    frame, broken = Frame(img, 1, 0.0, 0.0, 0.0), Frame(img.astype(np.float32), 2, 0.0, 0.0, 0.0)
    batch = [Crop(door, frame, door.resolve(640, 480)), Crop(door, broken, door.geometry),
             Crop(shelf, frame, shelf.resolve(640, 480))]
    w._helper = ThreadPoolExecutor(1) if helper else None
    try:
        kept, pixels = w._prepare(batch)
    finally:
        if w._helper is not None:
            w._helper.shutdown()
    assert kept == [batch[0], batch[2]] and pixels.shape[0] == 2  # the float frame is skipped, not fatal
    np.testing.assert_array_equal(pixels[0], clf.preprocessor(img, roi=door.geometry.box))
    np.testing.assert_array_equal(pixels[1], clf.preprocessor(shelf.geometry.crop(img)))  # the polygon, masked


def test_thread_budget_gives_the_encoder_the_cores_and_each_decoder_one_thread() -> None:
    b = plan_threads(16, WatchOptions(), cores=2)
    assert (b.encoder, b.decoders, b.decode_threads) == (2, 16, 1)
    assert plan_threads(4, WatchOptions(encoder_threads=1, decode_threads=2), cores=8).to_json() == {
        "cores": 8, "encoder_threads": 1, "decoders": 4, "decode_threads": 2, "decode_nice": 0}


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="thread priorities are a Linux feature here")
def test_decoders_run_nicer_than_the_encoder(clf: Classifier, cifar_test: Path) -> None:
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    config = parse_config(synthetic_config(REGION_A), "t.yaml")
    w = Watcher(clf, config, WatchOptions(duration=0.5, summary_every=0, reload_poll=0, decode_nice=5), sinks=[])
    seen: list[int] = []
    capture = w.cameras["synth"].capture
    reader_read = capture.reader.read

    def read():  # noqa: ANN202  (runs on the capture thread)
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return reader_read()
    capture.reader.read = read
    w.run()
    assert seen and set(seen) == {min(19, base + 5)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # the caller is untouched

    class Spy(Classifier):
        def load_file(self, path, min_size=None):  # noqa: ANN001, ANN201
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            return super().load_file(path, min_size)

    spy = Spy(clf.bundle, LoadOptions(threads=1))
    assert spy.decode_nice == 0  # off by default (measured: no gain, a loss beside other processes)
    spy.decode_nice = 7
    seen.clear()
    files = sorted((cifar_test / "cat").glob("*.jpg"))[:8]
    assert all(r.ok for r in spy.classify_files(files, batch_size=4, workers=2))
    assert set(seen) == {min(19, base + 7)}


def synthetic_config(regions: str, extra_cam: str = "") -> str:
    return ("options: {reload_poll: 0.1, summary_every: 0}\ndefaults: {on: always, half_life: 0s, dwell: 0s}\n"
            "cameras:\n  synth:\n    source: synthetic://320x240\n    fps: 20\n    regions:\n" + regions + extra_cam)


REGION_A = "      a:\n        rect: [0, 0, 160, 120]\n        states: [a red square, a blue sky]\n"
REGION_B = "      b:\n        rect: [0.5, 0.5, 0.5, 0.5]\n        states: [stripes, dots, nothing]\n"


def wait_for(cond, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout} s")
        time.sleep(0.05)


def test_reload_changes_regions_without_dropping_the_stream(clf: Classifier, tmp_path: Path) -> None:
    path = tmp_path / "watch.yaml"
    path.write_text(synthetic_config(REGION_A))
    events = tmp_path / "events.jsonl"
    w = Watcher(clf, load_config(path), sinks=[JsonLinesOutput(str(events))])
    w.start()
    try:
        wait_for(lambda: w.cameras["synth"].regions[0].classified > 5, what="classifying")
        cam = w.cameras["synth"]
        capture, region_a = cam.capture, cam.regions[0]
        captured = capture.captured
        # add a region, keep region a unchanged: same stream, same decision object for a
        time.sleep(0.05)
        path.write_text(synthetic_config(REGION_A + REGION_B))
        wait_for(lambda: w.reloads == 1, what="reload")
        assert w.cameras["synth"] is cam and cam.capture is capture and capture.thread.is_alive()
        assert [r.name for r in cam.regions] == ["a", "b"] and cam.regions[0] is region_a
        wait_for(lambda: cam.regions[1].classified > 3, what="the new region classified")
        assert capture.captured > captured and capture.reconnects == 0
        # a broken file is reported with its line and the running configuration stays
        path.write_text(synthetic_config(REGION_A.replace("rect: [0, 0, 160, 120]", "rect: [0, 0]")))
        wait_for(lambda: any(e["event"] == "reload_error" for e in read_jsonl(events)), what="reload_error")
        err = next(e for e in read_jsonl(events) if e["event"] == "reload_error")
        assert "watch.yaml, line 9, key cameras.synth.regions.a.rect" in err["error"]
        assert [r.name for r in w.cameras["synth"].regions] == ["a", "b"] and w.running
        # SIGHUP's path: a reload on request re-reads the same file
        path.write_text(synthetic_config(REGION_B))
        w.request_reload("sighup")
        wait_for(lambda: w.reloads == 2, what="second reload")
        assert [r.name for r in w.cameras["synth"].regions] == ["b"] and region_a.retired
    finally:
        w.stop()
    ev = read_jsonl(events)
    reloads = [e for e in ev if e["event"] == "reload"]
    assert reloads[0]["kept"] == ["synth"] and reloads[0]["restarted"] == [] and ev[-1]["event"] == "end"


class StoppableMjpeg:
    """An MJPEG server on a fixed 127.0.0.1 port that can be killed and restarted (a camera going away)."""

    def __init__(self, frames: list[np.ndarray], port: int = 0) -> None:
        self.jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames]
        self.port = port
        self.server: socketserver.ThreadingTCPServer | None = None
        self.start()

    def start(self) -> None:
        owner = self
        self.alive = True

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=f")
                self.end_headers()
                i = 0
                try:
                    while owner.alive:
                        jpg = owner.jpegs[i % len(owner.jpegs)]
                        self.wfile.write(b"--f\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                                         + jpg + b"\r\n")
                        self.wfile.flush()
                        i += 1
                        time.sleep(0.05)
                except OSError:
                    pass

            def log_message(self, *args) -> None:
                pass

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kill(self) -> None:
        self.alive = False
        self.server.shutdown()
        self.server.server_close()


def test_a_lost_camera_disturbs_no_other(clf: Classifier, videos: dict, tmp_path: Path) -> None:
    frames = [cv2.resize(last_frame(v), (320, 240)) for v in videos.values()]
    server = StoppableMjpeg(frames)
    text = ("options: {summary_every: 0, reload_poll: 0}\ndefaults: {on: always}\ncameras:\n"
            f"  ipcam:\n    source: mjpeg+http://127.0.0.1:{server.port}/\n    read_timeout: 1s\n"
            "    reconnect_min: 0.2\n    reconnect_max: 0.5\n    regions:\n"
            "      door: {rect: [0.1, 0.1, 0.5, 0.5], states: [open, closed]}\n"
            "  synth:\n    source: synthetic://320x240\n    fps: 20\n    regions:\n"
            "      a: {rect: [0, 0, 160, 120], states: [red, blue]}\n")
    events = tmp_path / "events.jsonl"
    w = Watcher(clf, parse_config(text, "t.yaml"), sinks=[JsonLinesOutput(str(events))])
    w.start()
    try:
        ip, synth = w.cameras["ipcam"].regions[0], w.cameras["synth"].regions[0]
        wait_for(lambda: ip.classified > 5 and synth.classified > 5, what="both cameras classifying")
        server.kill()
        wait_for(lambda: not w.cameras["ipcam"].up, what="the ip camera reported lost")
        during = synth.classified
        ip_during = ip.classified
        time.sleep(1.5)
        assert synth.classified >= during + 15  # 20 fps: the other camera went on at full rate
        assert ip.classified <= ip_during + 2
        server.start()  # the camera comes back on the same address
        wait_for(lambda: w.cameras["ipcam"].up and ip.classified > ip_during + 5, what="reconnected")
    finally:
        w.stop()
        server.kill()
    ev = read_jsonl(events)
    lost = [e for e in ev if e["event"] == "source_lost"]
    back = [e for e in ev if e["event"] == "reconnect"]
    assert lost and lost[0]["camera"] == "ipcam" and back and back[0]["camera"] == "ipcam"
    assert w.cameras["synth"].capture.reconnects == 0


def test_a_camera_down_at_start_starts_lost_and_joins_later(clf: Classifier, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port with nothing listening yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text = ("options: {summary_every: 0, reload_poll: 0}\ndefaults: {on: always}\ncameras:\n"
            f"  late:\n    source: mjpeg+http://127.0.0.1:{port}/\n    read_timeout: 1s\n"
            "    reconnect_min: 0.2\n    reconnect_max: 0.4\n    regions:\n"
            "      door: {rect: [0.1, 0.1, 0.5, 0.5], states: [open, closed]}\n"
            "  synth:\n    source: synthetic://160x120\n    fps: 20\n    regions:\n"
            "      a: {rect: [0, 0, 80, 60], states: [red, blue]}\n")
    w = Watcher(clf, parse_config(text, "t.yaml"), sinks=[])
    assert not w.cameras["late"].up
    w.start()
    server = None
    try:
        wait_for(lambda: w.cameras["synth"].regions[0].classified > 5, what="the other camera classifying")
        server = StoppableMjpeg([np.full((120, 160, 3), 90, np.uint8)], port=port)
        wait_for(lambda: w.cameras["late"].regions[0].classified > 3, what="the late camera joining")
        assert w.cameras["late"].up
    finally:
        w.stop()
        if server:
            server.kill()


class FlakyHook:
    """An HTTP endpoint that answers 500 to its first ``fail`` POSTs, then 200; bodies are kept."""

    def __init__(self, fail: int) -> None:
        self.fail, self.calls, self.bodies = fail, 0, []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                owner.calls += 1
                body = self.rfile.read(int(self.headers["Content-Length"]))
                code = 500 if owner.calls <= owner.fail else 200
                if code == 200:
                    owner.bodies.append(json.loads(body))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhooks_retry_with_backoff_and_count_overflow_without_blocking(clf: Classifier, videos: dict) -> None:
    hook = FlakyHook(fail=2)
    try:
        sink = WebhookOutput(WebhookSettings(url=hook.url, retries=3, backoff=0.05, timeout=2))
        sink.start()
        t0 = time.monotonic()
        sink.publish({"event": "state", "camera": "c", "region": "r", "state": "open"})
        sink.publish({"event": "summary"})  # webhooks take state events only
        wait_for(lambda: sink.sent == 1, 10, "delivery after two failures")
        assert hook.calls == 3 and hook.bodies == [{"event": "state", "camera": "c", "region": "r", "state": "open"}]
        assert time.monotonic() - t0 >= 0.05 + 0.1 and sink.reconnects == 1 and sink.failed == 0
        sink.close()
    finally:
        hook.close()
    # a dead endpoint: a small queue overflows (counted) while a watch run classifies every frame
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    sink = WebhookOutput(WebhookSettings(url=dead, retries=1000, backoff=0.2, queue=2, timeout=0.5))
    config = parse_config(config_for(videos), "t.yaml")
    t0 = time.monotonic()
    end = Watcher(clf, config, WatchOptions(summary_every=0, reload_poll=0), sinks=[sink]).run()
    assert end["crops"] == 240 and time.monotonic() - t0 < 30
    stats = end["sinks"][f"webhook:{dead}"]
    assert stats["sent"] == 0 and stats["connected"] is False
    n_states = 4 + 0  # at least the first state of each region was published
    assert stats["queued"] + stats["overflow"] >= n_states - 1 and stats["overflow"] >= 1


def test_cli_reloads_on_sighup_and_stops_cleanly_on_sigterm(tiny_vit_bundle: Path, tmp_path: Path) -> None:
    path = tmp_path / "watch.yaml"
    path.write_text(synthetic_config(REGION_A).replace("reload_poll: 0.1", "reload_poll: 0"))
    events = tmp_path / "events.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "edgeclip", "-q", "watch", str(path), "--bundle",
                             str(tiny_vit_bundle), "--jsonl", str(events), "--threads", "1"],
                            cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: events.exists() and any(e["event"] == "state" for e in read_jsonl(events)), 60, "start")
        path.write_text(synthetic_config(REGION_A + REGION_B).replace("reload_poll: 0.1", "reload_poll: 0"))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any(e["event"] == "reload" for e in read_jsonl(events)), 30, "reload event")
        wait_for(lambda: any(e["event"] == "state" and e["region"] == "b" for e in read_jsonl(events)), 30,
                 "the new region's state")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    ev = read_jsonl(events)
    assert ev[-1]["event"] == "end" and ev[-1]["reason"] == "SIGTERM"
    assert [e["reason"] for e in ev if e["event"] == "reload"] == ["sighup"]
