"""Streams under faults: malformed MJPEG servers on 127.0.0.1 and bad files in image-folder sources.

Every fault of a live stream must end in ``source_lost`` (with its reason) and a reconnection, with memory
bounded by the part size limit; a bad frame or file is a ``frame_error`` event and the stream goes on.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeclip.options import LoadOptions

from mjpeg_servers import BadMjpegServer
from image_fuzz import jpeg_bomb, png_bomb
from edgeclip.runtime.classifier import Classifier
from edgeclip.stream.decisions import HalfLife
from edgeclip.stream.outputs import JsonLinesSink
from edgeclip.stream.loop import StreamPipeline
from edgeclip.stream.options import StreamOptions
from edgeclip.sources import MjpegHttpReader, parse_source

LIMIT = 2**20  # the part size limit in these tests (1 MiB)


@pytest.fixture(scope="module")
def clf(tiny_vit_bundle: Path) -> Classifier:
    return Classifier(tiny_vit_bundle, LoadOptions(threads=1))


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def stream(clf: Classifier, source: str, events: Path, max_frames: int = 12, timeout: float = 0.6,
           max_part: int = LIMIT) -> dict:
    sink = JsonLinesSink(events)
    opts = StreamOptions(half_life=HalfLife(0.0), hysteresis=0.0, min_frames=1, summary_every=0,
                         max_frames=max_frames, duration=30)
    try:
        network = source.startswith(("mjpeg+", "http"))  # the limits and reconnection of network sources
        spec = parse_source(source, **(dict(read_timeout=timeout, max_part_size=max_part, reconnect_min=0.1,
                                            reconnect_max=0.5) if network else {}))
        return StreamPipeline(clf, spec, opts, sink=sink).run()
    finally:
        sink.close()


FAULTS_FAST = [("huge_length", "over the limit"), ("endless", "without an end"),
               ("trickle", "no complete part within")]
FAULTS_SLOW = [("oversized", "over the limit"), ("long_line", "header line longer"), ("stall", ""),
               ("slow_header", "")]


def _check_lost_and_back(clf: Classifier, tmp_path: Path, fault: str, reason: str) -> None:
    server = BadMjpegServer(fault)
    t0 = time.monotonic()
    try:
        end = stream(clf, "mjpeg+" + server.url, tmp_path / "events.jsonl")
    finally:
        server.close()
    ev = read_events(tmp_path / "events.jsonl")
    kinds = [e["event"] for e in ev]
    assert end["reason"] == "max_frames" and end["captured"] == 12 and "error" not in end, end
    assert end["reconnects"] >= 1 and server.connections >= 2
    assert kinds.index("source_lost") < kinds.index("reconnect")
    lost = ev[kinds.index("source_lost")]
    assert reason in (lost["reason"] or ""), lost
    if fault == "slow_header":  # the first reconnection was cut at the header deadline, the second worked
        assert ev[kinds.index("reconnect")]["attempts"] >= 2 and server.connections >= 3
    assert time.monotonic() - t0 < 15
    # memory: the client stopped reading soon after the limit (plus what socket buffers hold)
    assert server.sent[0] < LIMIT + 16 * 2**20, server.sent


@pytest.mark.parametrize("fault,reason", FAULTS_FAST)
def test_malformed_server_is_lost_and_reconnected(clf: Classifier, tmp_path: Path, fault: str, reason: str) -> None:
    _check_lost_and_back(clf, tmp_path, fault, reason)


@pytest.mark.slow
@pytest.mark.parametrize("fault,reason", FAULTS_SLOW)
def test_more_malformed_servers(clf: Classifier, tmp_path: Path, fault: str, reason: str) -> None:
    _check_lost_and_back(clf, tmp_path, fault, reason)


def test_corrupt_parts_are_frame_errors_and_the_stream_goes_on(clf: Classifier, tmp_path: Path) -> None:
    server = BadMjpegServer("corrupt")
    try:
        end = stream(clf, "mjpeg+" + server.url, tmp_path / "events.jsonl", max_frames=10)
    finally:
        server.close()
    ev = read_events(tmp_path / "events.jsonl")
    errors = [e for e in ev if e["event"] == "frame_error"]
    assert end["reason"] == "max_frames" and end["captured"] == 10 and end["reconnects"] == 0
    assert len(errors) == 3 and end["frame_errors"] == 3
    assert all("corrupt" in e["error"] or "decodable" in e["error"] for e in errors), errors
    assert "source_lost" not in [e["event"] for e in ev]


def test_reader_bounds_without_a_pipeline() -> None:
    """The reader alone: a 999999999999-byte Content-Length is refused at once, no allocation."""
    server = BadMjpegServer("huge_length", good_before=1)
    try:
        reader = MjpegHttpReader(server.url, timeout=2.0, max_part_bytes=LIMIT)
        assert reader.read() is not None
        t0 = time.monotonic()
        assert reader.read() is None and time.monotonic() - t0 < 1.0
        assert "999,999,999,999 bytes" in reader.lost_reason
        reader.close()
    finally:
        server.close()


# -- image-folder sources -----------------------------------------------------------------------------------
def test_bad_files_in_a_folder_source_are_events(clf: Classifier, cifar_test: Path, tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    good = sorted((cifar_test / "cat").iterdir())[:4]
    for i, p in enumerate(good):
        shutil.copy(p, folder / f"{2 * i:02d}.jpg")
    (folder / "01.jpg").write_bytes(good[0].read_bytes()[:100])  # truncated
    (folder / "03.png").write_bytes(png_bomb(20000, 20000))  # a decompression bomb
    os.mkfifo(folder / "05.jpg")  # a named pipe: must not hang the capture thread
    (folder / "07.jpg").symlink_to(folder / "missing.jpg")  # a broken link
    (folder / "08.jpg").write_bytes(jpeg_bomb())
    end = stream(clf, str(folder), tmp_path / "events.jsonl", max_frames=0)
    ev = read_events(tmp_path / "events.jsonl")
    errors = {Path(e["file"]).name: e["error"] for e in ev if e["event"] == "frame_error"}
    assert end["reason"] == "eof" and end["inferred"] == 4 and end["frame_errors"] == 5
    assert set(errors) == {"01.jpg", "03.png", "05.jpg", "07.jpg", "08.jpg"}
    assert "over the limit" in errors["03.png"] and "named pipe" in errors["05.jpg"]
    assert "broken symbolic link" in errors["07.jpg"]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["endless", "huge_length"])
def test_cli_stream_memory_stays_bounded(tiny_vit_bundle: Path, tmp_path: Path, fault: str) -> None:
    """`edgeclip stream` with the default 32 MiB part limit: peak RSS under 500 MB, lost and reconnected."""
    if not Path("/proc/self/status").exists():
        pytest.skip("peak memory is read from /proc/self/status (Linux)")
    server = BadMjpegServer(fault)
    events = tmp_path / "events.jsonl"
    args = ["-q", "stream", str(tiny_vit_bundle), "--source", "mjpeg+" + server.url, "--read-timeout", "3",
            "--max-frames", "40", "--reconnect-min", "0.1", "--jsonl", str(events)]
    code = ("import sys\nfrom edgeclip.cli import main\n"
            f"rc = main({args!r})\n"
            "hwm = open('/proc/self/status').read().split('VmHWM:')[1].split()[0]\n"  # this process's peak, in kB
            "print('PEAK_KB', hwm, file=sys.stderr)\nsys.exit(rc)\n")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr[-2000:]
    kinds = [e["event"] for e in read_events(events)]
    assert "source_lost" in kinds and "reconnect" in kinds
    peak_kb = int(proc.stderr.split("PEAK_KB")[1].split()[0])
    assert peak_kb * 1024 < 500 * 2**20, peak_kb
