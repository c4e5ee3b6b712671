"""``edgeclip serve`` under hostile and heavy load: real servers on 127.0.0.1 (the server ``edgeclip serve``
runs, with its connection limits), raw sockets for what a well-behaved client would never send.

The campaign with figures is scripts/fuzz_serve.py; the cases are shared through tests/serve_fuzz.py.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the 'serve' extra (starlette, uvicorn, python-multipart) is not installed")
pytest.importorskip("uvicorn", reason="the 'serve' extra is not installed")

import edgeclip  # noqa: E402
import serve_fuzz as sf  # noqa: E402
from edgeclip.errors import LabelsError  # noqa: E402
from edgeclip.serve import create_app  # noqa: E402
from edgeclip.serve.app import LOOPBACK_HOSTS  # noqa: E402
from edgeclip.serve.guard import parse_host  # noqa: E402
from edgeclip.stream.loop import StreamOptions  # noqa: E402
from serve_helpers import call, running_server  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, tiny_vit_bundle: Path) -> Path:
    dst = tmp_path_factory.mktemp("hardening") / "bundle"
    shutil.copytree(tiny_vit_bundle, dst)
    return dst


@pytest.fixture(scope="module")
def clf(bundle: Path):
    return edgeclip.load(bundle)


@pytest.fixture(scope="module")
def server(clf):
    """A service on loopback without a token (Host checked), with a live source: (base URL, port, app)."""
    app = create_app(clf, "synthetic://160x120", allowed_hosts=LOOPBACK_HOSTS,
                     stream_options=StreamOptions(fps_limit=15, summary_every=0))
    with running_server(app) as base:
        yield base, int(base.rsplit(":", 1)[1]), app


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def _rss(key: str = "VmRSS") -> int:
    m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) * 1024


def _wait(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# ---------------------------------------------------------------------------------------------------------
# Host, event ids, malformed HTTP
# ---------------------------------------------------------------------------------------------------------
def test_host_headers_are_parsed_strictly() -> None:
    assert parse_host("localhost:8080") == "localhost" and parse_host("[::1]:80") == "::1"
    assert parse_host("LOCALHOST") == "localhost" and parse_host("localhost.") == "localhost"
    assert parse_host("127.0.0.1") == "127.0.0.1"
    for bad in ("localhost:8080@evil.example", "127.0.0.1:evil", "localhost:99999", "a b", "user@localhost",
                "[::1", "127.0.0.1:80:80", "localhost:8080/x", "", "%6cocalhost"):
        assert parse_host(bad) is None, bad


def test_protocol_cases_are_answered_cleanly_and_the_service_stays_up(server, caplog) -> None:
    base, port, _ = server
    caplog.set_level(logging.INFO)
    failures = []
    for case in sf.protocol_cases(port):
        status, _, _ = sf.raw(port, case.data, 10, read_all=case.kind != "event-id")
        if status not in case.ok and not (status is None and None in case.ok):
            failures.append((case.name, status, case.ok))
    assert not failures
    assert call("GET", f"{base}/healthz").status == 200
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_last_event_id_must_be_an_event_id(server) -> None:
    base, port, _ = server
    for value in ("\u00b2", "9" * 5000, "-1"):
        r = call("GET", f"{base}/v1/stream", headers={"Last-Event-ID": value.encode().decode("latin-1")})
        assert r.status == 400 and "Last-Event-ID" in r.json()["error"], value
    assert call("GET", f"{base}/v1/stream?last_event_id=%C2%B2").status == 400
    status, head, _ = sf.raw(port, sf.request("GET", "/v1/stream", headers={"Last-Event-ID": "3"}), 5,
                             read_all=False)
    assert status == 200 and b"text/event-stream" in head


# ---------------------------------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------------------------------
def test_label_work_is_sized_before_it_is_built_and_text_is_checked(server) -> None:
    base, _, app = server
    docs = {name: body for name, body, _ in sf.label_documents()}
    Path("/proc/self/clear_refs").write_text("5")  # reset this process's peak RSS
    before = _rss()
    t0 = time.perf_counter()
    r = call("PUT", f"{base}/v1/labels", docs["20000-synonyms"])
    assert r.status == 422 and "2,000,100 prompts" in r.json()["error"]
    assert _rss("VmHWM") - before < 50 * 2**20  # nothing was built (before: +880 MB and 4.4 s)
    assert time.perf_counter() - t0 < 5
    version = app.state.service.labels.version
    r = call("PUT", f"{base}/v1/labels", docs["surrogate-name"])
    assert r.status == 422 and "lone surrogate" in r.json()["error"]
    assert app.state.service.labels.version == version  # nothing swapped in
    assert call("GET", f"{base}/v1/labels").status == 200
    assert call("POST", f"{base}/v1/classify", sf.small_jpeg()).status == 200
    for name in ("deep-1000", "deep-100000", "deep-objects"):
        r = call("PUT", f"{base}/v1/labels", docs[name])
        assert r.status == 400 and "nested too deeply" in r.json()["error"], name


def test_labels_files_and_the_python_api_refuse_lone_surrogates_and_deep_json(tmp_path, bundle, clf,
                                                                              capsys) -> None:
    from edgeclip.cli import main
    from edgeclip.runtime.labels import read_labels_file

    bad = tmp_path / "bad.json"
    bad.write_text('["\\ud800", "dog"]')
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000)
    for path, words in ((bad, "lone surrogate"), (deep, "nested too deeply")):
        with pytest.raises(LabelsError, match=words):
            read_labels_file(path)
        copy = tmp_path / f"b-{path.stem}"
        shutil.copytree(bundle, copy)
        assert main(["-q", "labels", str(copy), "--labels-file", str(path)]) == 2
        assert words in capsys.readouterr().err
    with pytest.raises(LabelsError, match="lone surrogate"):
        clf.embed_labels(["cat", "\udfff"])
    with pytest.raises(LabelsError, match="lone surrogate"):
        clf.embed_labels([edgeclip.Label("cat", synonyms=["a\ud800"])])


def test_label_updates_run_one_at_a_time_off_the_request_threads_with_a_queue_limit(clf) -> None:
    app = create_app(clf, label_queue=1)
    doc = json.dumps({"labels": [f"object number {i}" for i in range(400)], "templates": "short"}).encode()
    with running_server(app) as base:
        with ThreadPoolExecutor(6) as pool:
            puts = [pool.submit(call, "PUT", f"{base}/v1/labels", doc) for _ in range(5)]
            time.sleep(0.3)
            during = [call("POST", f"{base}/v1/classify", sf.small_jpeg()).status for _ in range(5)]
            replies = [f.result() for f in puts]
    statuses = sorted(r.status for r in replies)
    assert during == [200] * 5
    assert statuses.count(200) >= 2 and statuses.count(429) >= 1 and set(statuses) <= {200, 429}, statuses
    for r in replies:
        if r.status == 429:
            assert int(r.headers["Retry-After"]) >= 1 and "label_queue" in r.json()["error"]
    assert app.state.service.label_jobs == 0


# ---------------------------------------------------------------------------------------------------------
# uploads: decoding, time and memory bounds
# ---------------------------------------------------------------------------------------------------------
def test_uploads_decode_at_the_reduced_dct_scale_of_classify(server, clf) -> None:
    base, _, app = server
    data = sf.big_jpeg(2000, 1500, 90)
    r = call("POST", f"{base}/v1/classify?top_k=3", data)
    assert r.status == 200
    ref = edgeclip.load(clf.bundle.path)
    ref.set_label_matrix(app.state.service.labels.names, app.state.service.labels.matrix)
    want = ref.classify(data, top_k=3)  # bytes decode at 1/2 here too (short side 1500 -> 750 >= 2 x 32 px)
    got = r.json()["predictions"]
    assert [p["label"] for p in got] == want.labels
    assert np.allclose([p["score"] for p in got], want.scores, atol=1e-5)


def test_classify_waits_are_bounded_by_request_timeout(clf) -> None:
    import cv2

    png = cv2.imencode(".png", sf._picture(2500, 2500)[:, :, ::-1])[1].tobytes()  # PNG: no reduced decode
    app = create_app(clf, decode_workers=1, request_timeout_s=0.3)
    with running_server(app) as base:
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: call("POST", f"{base}/v1/classify", png), range(8)))
    statuses = [r.status for r in replies]
    assert set(statuses) <= {200, 503} and 503 in statuses, statuses
    busy = next(r for r in replies if r.status == 503)
    assert busy.headers["Retry-After"] == "1" and "request_timeout_s" in busy.json()["error"]


def test_bodies_being_received_are_bounded_by_a_memory_budget(clf) -> None:
    app = create_app(clf, max_body_bytes=32 * 1024, body_memory_bytes=64 * 1024, body_timeout_s=1.5)
    with running_server(app) as base:
        port = _port(base)
        stalled = sf.stall_bodies(port, 2, 32 * 1024, 16 * 1024)
        time.sleep(0.3)
        status, answer, _ = sf.raw(port, sf.request("POST", "/v1/classify", b"x" * 32 * 1024), 5)
        assert status == 503 and b"retry-after: 1" in answer.lower() and b"body_memory_bytes" in answer
        assert _wait(lambda: sf.closed_by_server(stalled) == 2, 10)  # the body timeout closed them
        assert call("POST", f"{base}/v1/classify", sf.small_jpeg()).status == 200  # the budget is back
        for s in stalled:
            s.close()


# ---------------------------------------------------------------------------------------------------------
# connections: deadlines, the cap, stalled readers, hang-ups
# ---------------------------------------------------------------------------------------------------------
def test_heads_and_bodies_have_deadlines_logged_as_one_line(clf, caplog) -> None:
    caplog.set_level(logging.INFO, logger="edgeclip.serve")
    app = create_app(clf, header_timeout_s=0.5, body_timeout_s=0.8)
    with running_server(app) as base:
        port = _port(base)
        silent = socket.create_connection(("127.0.0.1", port))
        partial = socket.create_connection(("127.0.0.1", port))
        partial.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        body = sf.stall_bodies(port, 1, 100_000, 1000)
        assert _wait(lambda: sf.closed_by_server([silent, partial] + body) == 3, 10)
        assert call("GET", f"{base}/healthz").status == 200
        for s in [silent, partial] + body:
            s.close()
        time.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records if r.name == "edgeclip.serve"]
    assert sum("no complete request head" in m for m in lines) == 2
    assert sum("was not complete within" in m for m in lines) == 1
    assert not any("client went away" in m for m in lines)  # the server's own closing is not logged twice
    assert not [r for r in caplog.records if r.exc_info]


def test_the_connection_cap_closes_the_longest_idle_connection(clf) -> None:
    app = create_app(clf, max_connections=8)
    with running_server(app) as base:
        idle = sf.open_idle(_port(base), 30)
        time.sleep(0.5)
        assert call("POST", f"{base}/v1/classify", sf.small_jpeg()).status == 200
        assert _wait(lambda: sf.closed_by_server(idle) >= 30 - 8 + 1, 10)
        assert sf.closed_by_server(idle[-5:]) == 0  # the newest are kept
        for s in idle:
            s.close()


def test_preview_viewers_that_stop_reading_are_disconnected(clf) -> None:
    app = create_app(clf, "synthetic://1280x720", max_viewers=2, preview_fps=30, send_timeout_s=1.0,
                     stream_options=StreamOptions(summary_every=0))
    with running_server(app) as base:
        port = _port(base)
        viewers = []
        for _ in range(2):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /v1/preview.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            viewers.append(s)
        time.sleep(0.5)
        assert sf.raw(port, sf.request("GET", "/v1/preview.mjpg"), 5, read_all=False)[0] == 503
        assert _wait(lambda: sf.raw(port, sf.request("GET", "/v1/preview.mjpg"), 5, read_all=False)[0] == 200,
                     90, step=1.0)
        for s in viewers:
            s.close()


def test_a_client_hanging_up_mid_body_is_one_line_not_a_traceback(clf, caplog) -> None:
    caplog.set_level(logging.INFO, logger="edgeclip.serve")
    app = create_app(clf)
    with running_server(app) as base:
        for i in range(4):
            s = socket.create_connection(("127.0.0.1", _port(base)))
            line = b"POST /v1/classify" if i % 2 else b"PUT /v1/labels"
            s.sendall(line + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
            time.sleep(0.1)
            s.close()
        time.sleep(0.5)
        assert call("GET", f"{base}/healthz").status == 200
    gone = [r for r in caplog.records if "client went away" in r.getMessage()]
    assert len(gone) == 4 and not [r for r in caplog.records if r.exc_info]


# ---------------------------------------------------------------------------------------------------------
# the command: SIGTERM, thread counts
# ---------------------------------------------------------------------------------------------------------
def test_sigterm_during_a_long_label_update_exits_promptly_without_a_traceback(bundle, tmp_path) -> None:
    doc = json.dumps({"labels": [f"thing {i}" for i in range(2000)],
                      "templates": [f"a photo {i} of a {{}}." for i in range(25)]}).encode()  # 50,000 prompts
    with sf.ServerProcess(bundle, log_path=tmp_path / "serve.log") as s:
        put = threading.Thread(target=call, args=("PUT", f"{s.url}/v1/labels", doc), kwargs={"timeout": 120})
        put.start()
        time.sleep(1.5)  # the update is being embedded (it takes ~20 s on 2 cores)
        seconds, rc = s.stop(signal.SIGTERM, 30)
        put.join(30)
    assert rc == 0 and seconds < 5, (seconds, rc)
    assert s.tracebacks() == 0, s.log()[-2000:]


def test_thread_counts_are_set_by_edgeclip_not_inherited(bundle, tmp_path) -> None:
    image = tmp_path / "photo.jpg"
    image.write_bytes(sf.small_jpeg())
    code = (
        "import sys, numpy\n"
        "from edgeclip.cli import main\n"
        f"assert main(['-q', 'classify', {str(bundle)!r}, {str(image)!r}, '--backend', 'onnxruntime']) == 0\n"
        "from edgeclip.runtime.process import current_threads, encoder_cpus\n"
        "import edgeclip\n"
        f"clf = edgeclip.load({str(bundle)!r}, backend='onnxruntime')\n"
        "opts = clf.encoder.session.get_session_options()\n"
        "t = current_threads()\n"
        "print('THREADS', t.blas, t.opencv, opts.intra_op_num_threads, encoder_cpus(), opts.inter_op_num_threads)\n")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "3", "OPENCV_FOR_THREADS_NUM": "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    blas, opencv, intra, cpus, inter = out.stdout.split("THREADS")[1].split()
    assert blas in ("1", "None") and opencv in ("1", "None")  # None: that library is not installed
    assert intra == cpus and inter == "1"
