"""``edgeclip stream``: real video files, a real MJPEG-over-HTTP server, real signals, the tiny ViT bundle.

Expected labels come from ``Classifier.classify`` (the path ``edgeclip classify`` uses) on the frames as
OpenCV decodes them from the same file, so lossy video coding cannot make the comparison unsound.
"""
from __future__ import annotations

import http.server
import json
import os
import signal
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeclip.options import LoadOptions

from edgeclip.cli import main
from edgeclip.errors import SourceError
from edgeclip.runtime.backends import create_backend
from edgeclip.runtime.classifier import Classifier
from edgeclip.stream.decisions import EmaSmoother, HalfLife, LabelDecider, Roi
from edgeclip.sources import opencv_has, parse_source
from edgeclip.stream.loop import FrameMailbox, StreamPipeline
from edgeclip.stream.options import StreamOptions
from edgeclip.stream.outputs import JsonLinesSink, LatencyStats

SEGMENTS = 10
HOLD = 8  # frames per segment
VIDEO_FPS = 10.0
SIZE = 96


def read_video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def no_smoothing(**kw) -> StreamOptions:
    return StreamOptions(half_life=HalfLife(0.0), hysteresis=0.0, min_frames=1, summary_every=0, **kw)


@pytest.fixture(scope="module")
def clf(tiny_vit_bundle: Path) -> Classifier:
    return Classifier(tiny_vit_bundle, LoadOptions(threads=1))


@pytest.fixture(scope="module")
def segment_video(tmp_path_factory: pytest.TempPathFactory, cifar_test: Path, clf: Classifier) -> dict:
    """An MJPG .avi of 10 real CIFAR-10 images, each held for HOLD frames; successive labels differ clearly."""
    picked, labels = [], []
    for cls in sorted(p.name for p in cifar_test.iterdir()):
        for f in sorted((cifar_test / cls).glob("*.jpg"))[:40]:
            img = cv2.resize(cv2.imread(str(f)), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
            p = clf.probabilities(clf.embed([img]))[0]
            top2 = np.sort(p)[-2:]
            label = clf.label_names[int(np.argmax(p))]
            if top2[1] - top2[0] > 2e-3 and (not labels or label != labels[-1]):
                picked.append(img)
                labels.append(label)
                break
        if len(picked) == SEGMENTS:
            break
    assert len(picked) == SEGMENTS
    path = tmp_path_factory.mktemp("video") / "segments.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), VIDEO_FPS, (SIZE, SIZE))
    assert writer.isOpened()
    for img in picked:
        for _ in range(HOLD):
            writer.write(img)
    writer.release()
    decoded = read_video(path)
    assert len(decoded) == SEGMENTS * HOLD
    probs = clf.probabilities(clf.embed(decoded))
    return {"path": path, "frames": decoded, "probs": probs,
            "labels": [clf.label_names[i] for i in probs.argmax(axis=1)]}


# -- files -----------------------------------------------------------------------------------------------
def test_video_file_every_frame_matches_classify(clf: Classifier, segment_video: dict) -> None:
    got: list = []
    end = StreamPipeline(clf, parse_source(str(segment_video["path"])), no_smoothing(), observers=[got.append]).run()
    assert end["reason"] == "eof" and end["dropped"] == 0
    assert [r.frame.index for r in got] == list(range(SEGMENTS * HOLD))  # unpaced file: no frame lost
    assert [r.decision.label for r in got] == segment_video["labels"]
    expected = [p.label for p in clf.classify(segment_video["frames"], top_k=1)]
    assert [r.raw_label for r in got] == expected
    np.testing.assert_allclose(np.stack([r.probs for r in got]), segment_video["probs"], atol=1e-5)
    # media timestamps follow the file's frame rate, not the processing speed
    assert [r.frame.t_media for r in got[:3]] == pytest.approx([0.0, 0.1, 0.2])


def test_loop_restarts_a_file_and_media_time_goes_on(clf: Classifier, segment_video: dict) -> None:
    got: list = []
    n = SEGMENTS * HOLD
    end = StreamPipeline(clf, parse_source(str(segment_video["path"]), loop=True), no_smoothing(max_frames=n + 5),
                         observers=[got.append]).run()
    assert end["reason"] == "max_frames" and end["inferred"] == n + 5
    assert [r.raw_label for r in got[n:]] == segment_video["labels"][:5]
    assert got[n].frame.t_media == pytest.approx(n / VIDEO_FPS)


def test_roi_is_applied_before_preprocessing(clf: Classifier, segment_video: dict) -> None:
    got: list = []
    opts = no_smoothing(roi=Roi.parse("8,16,64,48"), max_frames=2 * HOLD)
    StreamPipeline(clf, parse_source(str(segment_video["path"])), opts, observers=[got.append]).run()
    crops = [f[16:64, 8:72] for f in segment_video["frames"][:2 * HOLD]]
    np.testing.assert_allclose(np.stack([r.probs for r in got]),
                               clf.probabilities(clf.embed(crops)), atol=1e-5)


def test_smoothing_and_hysteresis_follow_segments(clf: Classifier, segment_video: dict) -> None:
    """Label events equal an offline run of the same decision rules on classify's probabilities, and every
    segment settles on its own label."""
    half_life, min_frames = HalfLife.parse("0.1s"), 2  # 0.1 s = one frame of the 10 fps file
    opts = StreamOptions(half_life=half_life, hysteresis=0.0, min_frames=min_frames, summary_every=0, batch=3)
    got: list = []
    StreamPipeline(clf, parse_source(str(segment_video["path"])), opts, observers=[got.append]).run()
    ema, decider = EmaSmoother(half_life), LabelDecider(clf.label_names, margin=0.0, min_frames=min_frames)
    expected = [decider.update(ema.update(p, i / VIDEO_FPS)).label for i, p in enumerate(segment_video["probs"])]
    assert [r.decision.label for r in got] == expected
    for s in range(SEGMENTS):
        assert got[(s + 1) * HOLD - 1].decision.label == segment_video["labels"][s * HOLD]
    changes = [r for r in got if r.decision.changed]
    assert len(changes) >= SEGMENTS  # each segment's label differs from the previous one


def test_cli_file_outputs(tiny_vit_bundle: Path, segment_video: dict, tmp_path: Path) -> None:
    events, video = tmp_path / "events.jsonl", tmp_path / "annotated.avi"
    rc = main(["-q", "stream", str(tiny_vit_bundle), "--source", str(segment_video["path"]), "--jsonl", str(events),
               "--half-life", "0", "--hysteresis", "0", "--min-frames", "1", "--every-frame",
               "--summary-every", "0", "--video-out", str(video), "--threads", "1"])
    assert rc == 0
    ev = read_events(events)
    assert ev[0]["event"] == "start" and ev[-1]["event"] == "end" and ev[-1]["reason"] == "eof"
    frames = [e for e in ev if e["event"] == "frame"]
    assert [e["frame"] for e in frames] == list(range(SEGMENTS * HOLD))
    assert [e["label"] for e in frames] == segment_video["labels"]
    changes = [e for e in ev if e["event"] == "label"]
    assert changes[0]["previous"] is None and len(changes) >= SEGMENTS
    assert all({"time", "frame", "label", "score", "latency_ms", "top"} <= set(e) for e in changes)
    end = ev[-1]
    assert end["inferred"] == SEGMENTS * HOLD and end["rss_mb"] > 0 and end["latency_ms"]["p95"] is not None
    annotated = read_video(video)
    assert len(annotated) == SEGMENTS * HOLD and annotated[0].shape == (SIZE, SIZE, 3)
    assert not np.array_equal(annotated[0], segment_video["frames"][0])  # text was drawn


def test_cli_rejects_contradictions(tiny_vit_bundle: Path, segment_video: dict, capsys) -> None:
    base = ["stream", str(tiny_vit_bundle), "--source"]
    assert main(base + ["http://127.0.0.1:9/x", "--loop"]) == 2
    assert "--loop" in capsys.readouterr().err
    assert main(base + [str(segment_video["path"]), "--width", "640"]) == 2
    assert main(base + [str(segment_video["path"]), "--roi", "1,2,3"]) == 2
    env_display = os.environ.pop("DISPLAY", None)
    try:
        assert main(base + [str(segment_video["path"]), "--show"]) == 2
        assert "--show" in capsys.readouterr().err
    finally:
        if env_display is not None:
            os.environ["DISPLAY"] = env_display


# -- sources ---------------------------------------------------------------------------------------------
def test_parse_sources(tmp_path: Path, segment_video: dict, cifar_test: Path) -> None:
    assert parse_source("0").kind == "camera" and parse_source("0").target == 0
    assert parse_source("/dev/video2").kind == "camera"
    assert parse_source("rtsp://u:secret@cam/x").text == "rtsp://u:***@cam/x"
    assert parse_source("http://h/s.mjpg").kind == "url" and parse_source("mjpeg+http://h/s").target == "http://h/s"
    assert parse_source(str(segment_video["path"])).kind == "file"
    folder = parse_source(str(cifar_test / "cat"))
    assert folder.kind == "folder" and len(folder.files) == 1000 and not folder.paced
    assert parse_source(str(cifar_test / "cat"), fps=5).paced
    assert parse_source("synthetic://64x48").target == "64x48"
    with pytest.raises(SourceError, match="not a camera"):
        parse_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(SourceError, match="appsink"):
        parse_source("gst:videotestsrc ! fakesink")


@pytest.mark.skipif(opencv_has("GSTREAMER"), reason="this OpenCV has GStreamer")
@pytest.mark.parametrize("source", ["csi://0", "usb://1", "gst:videotestsrc ! videoconvert ! appsink",
                                    "videotestsrc ! appsink"])
def test_gstreamer_sources_explain_the_system_opencv(source: str) -> None:
    with pytest.raises(SourceError) as err:
        parse_source(source)
    msg = str(err.value)
    assert "without GStreamer" in msg and "sudo apt install python3-opencv" in msg
    assert "--system-site-packages" in msg and "do not pip-install opencv-python" in msg


def test_gstreamer_preset_pipelines() -> None:
    from edgeclip.sources.gstreamer import csi_pipeline, usb_pipeline

    csi = csi_pipeline(1, 1920, 1080, 30)
    assert csi.startswith("nvarguscamerasrc sensor-id=1 ") and "width=1920,height=1080,framerate=30/1" in csi
    assert csi.endswith("appsink drop=true max-buffers=1 sync=false")
    assert usb_pipeline(2, 640, 480, 15).startswith("v4l2src device=/dev/video2 ")


# -- latest-frame policy -----------------------------------------------------------------------------------
def test_mailbox_keeps_newest_and_counts_drops() -> None:
    box = FrameMailbox(capacity=2)
    for i in range(5):
        box.put(i)
    assert box.take(0) == [3, 4] and box.dropped == 3
    box.close()
    assert box.put(9) is False and box.drained


def test_latency_reservoir_is_bounded() -> None:
    stats = LatencyStats(window=100, reservoir=500)
    for i in range(20000):
        stats.add(i / 20000)
    assert len(stats.sample) == 500 and len(stats.recent) == 100 and stats.count == 20000
    assert 0.4 < np.median(stats.sample) < 0.6  # a uniform sample of the whole run


class SlowEncoder:
    """The real encoder, plus a fixed delay per call: a model slower than the camera."""

    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.name, self.input_name, self.output_name = f"slow-{inner.name}", inner.input_name, inner.output_name

    def run(self, x: np.ndarray) -> np.ndarray:
        time.sleep(self.delay)
        return self.inner.run(x)


@pytest.mark.parametrize("batch", [1, 4])
def test_slow_model_drops_frames_and_latency_stays_bounded(tiny_vit_bundle: Path, clf: Classifier,
                                                            batch: int) -> None:
    delay, fps, seconds = 0.05, 100.0, 1.5
    slow = Classifier(tiny_vit_bundle, encoder=SlowEncoder(create_backend(clf.bundle.encoder("image"), LoadOptions(threads=1)), delay))
    source = parse_source("synthetic://64x48", fps=fps)
    assert source.paced
    end = StreamPipeline(slow, source, StreamOptions(duration=seconds, summary_every=0, batch=batch)).run()
    assert end["reason"] == "duration"
    assert end["captured"] > 0.6 * fps * seconds  # the capture thread kept pace with the source
    # stale frames were dropped, not queued: each captured frame was classified or dropped (or still waiting)
    assert end["dropped"] > 0 and end["captured"] - end["inferred"] - end["dropped"] <= batch
    if batch == 1:
        assert end["dropped"] > 0.3 * end["captured"]
    # queued frames would wait ever longer (~1 s by the end); dropped ones keep latency near one inference
    assert end["latency_ms"]["p95"] < (2 * batch + 2) * delay * 1000 + 100
    if batch > 1:
        assert end["inferred"] > 1.5 * seconds / delay  # micro-batches classify several frames per call


def test_synthetic_fps_limit(clf: Classifier) -> None:
    end = StreamPipeline(clf, parse_source("synthetic://64x48", fps=60),
                         StreamOptions(duration=1.0, fps_limit=10, summary_every=0.4)).run()
    assert 6 <= end["inferred"] <= 12 and end["dropped"] > 20


# -- MJPEG over HTTP with a dropped connection -------------------------------------------------------------
class MjpegServer:
    """multipart/x-mixed-replace MJPEG on 127.0.0.1: the first connection breaks mid-frame after `first`
    frames; later ones stream until the client leaves (or, with `refuse`, the server closes instead)."""

    def __init__(self, frames: list[np.ndarray], first: int = 12, fps: float = 50, refuse: bool = False) -> None:
        self.jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames]
        self.connections = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                owner.connections += 1
                n = owner.connections
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=edgeclipframe")
                self.end_headers()
                i = 0
                try:
                    while not owner.stopping:
                        jpg = owner.jpegs[i % len(owner.jpegs)]
                        head = b"--edgeclipframe\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                        if n == 1 and i == first:  # drop the connection in the middle of a frame
                            self.wfile.write(head + jpg[:len(jpg) // 2])
                            self.wfile.flush()
                            if refuse:
                                threading.Thread(target=owner.close, daemon=True).start()
                            return
                        self.wfile.write(head + jpg + b"\r\n")
                        self.wfile.flush()
                        i += 1
                        time.sleep(1.0 / fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args) -> None:
                pass

        self.stopping = False
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stopping = True
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("scheme", ["http", "mjpeg+http"])
def test_mjpeg_http_stream_reconnects_after_a_drop(clf: Classifier, segment_video: dict, tmp_path: Path,
                                                   scheme: str) -> None:
    if scheme == "http":  # OpenCV's FFmpeg backend reads multipart MJPEG over HTTP in this build
        assert opencv_has("FFMPEG")
    frames = segment_video["frames"][::HOLD]
    server = MjpegServer(frames, first=12)
    events = tmp_path / "events.jsonl"
    sink = JsonLinesSink(events)
    got: list = []
    try:
        url = server.url if scheme == "http" else "mjpeg+" + server.url
        opts = no_smoothing(max_frames=40)
        source = parse_source(url, read_timeout=5, reconnect_min=0.2, reconnect_max=1.0)
        end = StreamPipeline(clf, source, opts, sink=sink, observers=[got.append]).run()
    finally:
        sink.close()
        server.close()
    ev = read_events(events)
    kinds = [e["event"] for e in ev]
    assert end["reason"] == "max_frames" and end["captured"] == 40 and end["reconnects"] == 1
    assert kinds.index("source_lost") < kinds.index("reconnect")
    rec = ev[kinds.index("reconnect")]
    assert 0.2 <= rec["gap_s"] < 5 and rec["attempts"] >= 1 and rec["frame"] >= 11
    assert server.connections >= 2
    # the frames after the reconnection are classified like the images the server sent
    after = [r for r in got if r.frame.index > rec["frame"]]
    assert after, "no frame classified after the reconnection"
    expected = {clf.label_names[int(np.argmax(p))] for p in clf.probabilities(clf.embed(frames))}
    assert {r.raw_label for r in after} <= expected


def test_lost_stream_gives_up_when_asked(clf: Classifier, segment_video: dict, tmp_path: Path) -> None:
    server = MjpegServer(segment_video["frames"][::HOLD], first=5, refuse=True)
    sink = JsonLinesSink(tmp_path / "events.jsonl")
    t0 = time.monotonic()
    try:
        source = parse_source("mjpeg+" + server.url, read_timeout=2, reconnect_min=0.1, reconnect_max=0.4,
                              give_up_after=1.0)
        end = StreamPipeline(clf, source, no_smoothing(), sink=sink).run()
    finally:
        sink.close()
        server.close()
    assert end["reason"] == "source_lost" and time.monotonic() - t0 < 6
    gone = [e for e in read_events(tmp_path / "events.jsonl") if e["event"] == "source_gone"]
    assert len(gone) == 1 and gone[0]["gap_s"] >= 1.0 and gone[0]["attempts"] >= 3  # 0.1, 0.2, 0.4, 0.4 ...


# -- the CLI as a process: signals and live relabelling -----------------------------------------------------
def wait_for(path: Path, pred, timeout: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines()
            ev = [json.loads(x) for x in lines[:-1]] + ([json.loads(lines[-1])] if lines and lines[-1].endswith("}") else [])
            if pred(ev):
                return ev
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting on {path}:\n" + (path.read_text()[-3000:] if path.exists() else ""))


def start_stream(bundle: Path, source: Path, events: Path, labels: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "edgeclip.cli", "-q", "stream", str(bundle), "--source", str(source), "--fps", "30",
           "--loop", "--jsonl", str(events), "--every-frame", "--labels-watch", str(labels), "--half-life", "0",
           "--min-frames", "1", "--hysteresis", "0", "--threads", "1", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


NEW_LABELS = ["a red sports car", "a cup of coffee", "a snowy mountain"]


def test_sigterm_flushes_and_watched_labels_relabel_live(tiny_vit_bundle: Path, cifar_test: Path,
                                                          tmp_path: Path) -> None:
    labels, events = tmp_path / "labels.txt", tmp_path / "events.jsonl"
    labels.write_text("cat\ndog\n", encoding="utf-8")
    proc = start_stream(tiny_vit_bundle, cifar_test / "frog", events, labels, "--watch-interval", "0.1")
    try:
        ev = wait_for(events, lambda ev: sum(e["event"] == "frame" for e in ev) >= 5)
        assert ev[0]["event"] == "relabel" and ev[0]["reason"] == "start" and ev[0]["labels"] == ["cat", "dog"]
        assert {e["label"] for e in ev if e["event"] == "frame"} <= {"cat", "dog"}
        write_atomic(labels, "\n".join(NEW_LABELS) + "\n")
        ev = wait_for(events, lambda ev: any(e["event"] == "relabel" and e["reason"] == "watch" for e in ev)
                      and sum(e["event"] == "frame" for e in ev[[e["event"] for e in ev].index("relabel", 1):]) >= 3)
        i = [k for k, e in enumerate(ev) if e["event"] == "relabel"][-1]
        assert ev[i]["labels"] == NEW_LABELS and ev[i]["count"] == 3
        assert {e["label"] for e in ev[i:] if e["event"] == "frame"} <= set(NEW_LABELS)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    ev = read_events(events)  # every line is complete JSON
    assert ev[-1]["event"] == "end" and ev[-1]["reason"] == "SIGTERM" and ev[-1]["relabels"] == 2
    assert ev[-1]["inferred"] == sum(e["event"] == "frame" for e in ev)


def test_sigint_stops_cleanly_and_sighup_rereads_labels(tiny_vit_bundle: Path, cifar_test: Path,
                                                         tmp_path: Path) -> None:
    labels, events = tmp_path / "labels.txt", tmp_path / "events.jsonl"
    labels.write_text("cat\ndog\n", encoding="utf-8")
    proc = start_stream(tiny_vit_bundle, cifar_test / "ship", events, labels, "--watch-interval", "3600",
                        "--summary-every", "0.3")
    try:
        wait_for(events, lambda ev: sum(e["event"] == "frame" for e in ev) >= 3)
        labels.write_text("cat\ncat\n", encoding="utf-8")  # invalid: the stream keeps its labels and says why
        proc.send_signal(signal.SIGHUP)
        ev = wait_for(events, lambda ev: any(e["event"] == "relabel_error" for e in ev))
        assert "twice" in [e for e in ev if e["event"] == "relabel_error"][0]["error"]
        labels.write_text("\n".join(NEW_LABELS) + "\n", encoding="utf-8")
        proc.send_signal(signal.SIGHUP)
        wait_for(events, lambda ev: any(e["event"] == "relabel" and e["reason"] == "sighup" for e in ev)
                 and any(e["event"] == "summary" for e in ev))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    ev = read_events(events)
    assert ev[-1]["event"] == "end" and ev[-1]["reason"] == "SIGINT"
    summary = [e for e in ev if e["event"] == "summary"][0]
    assert {"capture_fps", "inference_fps", "latency_ms", "dropped", "rss_mb", "frame"} <= set(summary)
    assert summary["latency_ms"]["p50"] is not None and summary["rss_mb"] > 0


def test_stream_runtime_never_imports_torch(tiny_vit_bundle: Path) -> None:
    code = ("import sys\n"
            "from edgeclip.cli import main\n"
            f"rc = main(['-q', 'stream', {str(tiny_vit_bundle)!r}, '--source', 'synthetic://64x48', "
            "'--max-frames', '20', '--jsonl', '/dev/null', '--threads', '1'])\n"
            "import edgeclip.stream.relabel, edgeclip.sources, edgeclip.stream\n"
            "assert rc == 0, rc\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'open_clip'))\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# -- the public streaming API ------------------------------------------------------------------------------
def test_the_public_stream_api_iterates_decisions_and_stops_when_left(clf: Classifier, segment_video: dict) -> None:
    import edgeclip

    live = edgeclip.stream(clf, str(segment_video["path"]), half_life="0", hysteresis=0.0, min_frames=1)
    got = [(r.frame.index, r.decision.label) for r in live]  # to the end of the file
    assert got == list(enumerate(segment_video["labels"])) and live.end["reason"] == "eof"
    with edgeclip.stream(clf, str(segment_video["path"]), loop=True) as endless:  # a looped file never ends
        first = [r.frame.index for _, r in zip(range(5), endless)]
    assert first == [0, 1, 2, 3, 4] and endless.end["reason"] == "stopped"
    assert not endless._thread.is_alive()


def test_everything_that_can_be_refused_is_refused_before_the_model_loads(tmp_path: Path, capsys) -> None:
    import edgeclip

    nowhere = tmp_path / "no-bundle"  # never opened: the source options are refused first
    with pytest.raises(SourceError, match="`fps` does not apply to a url source.*`fps_limit`"):
        edgeclip.stream(nowhere, "rtsp://camera/stream", fps=10)
    with pytest.raises(edgeclip.OptionError, match="did you mean 'threshold'"):
        edgeclip.stream(nowhere, "synthetic://64x48", treshold=0.3)
    for command in ("stream", "serve"):  # one rule for every application that reads a source
        assert main([command, str(nowhere), "--source", "rtsp://camera/stream", "--fps", "10"]) == 2
        assert "--fps does not apply to a url source" in capsys.readouterr().err
