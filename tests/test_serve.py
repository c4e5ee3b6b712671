"""``edgeclip serve``: a real uvicorn server on 127.0.0.1, called over HTTP with urllib (no test client)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the 'serve' extra (starlette, uvicorn, python-multipart) is not installed")
pytest.importorskip("uvicorn", reason="the 'serve' extra is not installed")

import edgeclip  # noqa: E402
from edgeclip.bundle import load_bundle  # noqa: E402
from edgeclip.stream.loop import StreamOptions  # noqa: E402
from edgeclip.serve import create_app  # noqa: E402
from serve_helpers import call, multipart, read_events, read_mjpeg_parts, running_server  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOKEN = "test-token-7f3a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def served_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_vit_bundle: Path) -> Path:
    dst = tmp_path_factory.mktemp("serve") / "bundle"
    shutil.copytree(tiny_vit_bundle, dst)
    return dst


@pytest.fixture(scope="module")
def photos(cifar_test: Path) -> list[bytes]:
    """Real JPEGs (CIFAR-10 test images), one per class."""
    return [sorted((cifar_test / c).glob("*.jpg"))[0].read_bytes() for c in CIFAR]


@pytest.fixture(scope="module")
def server(served_bundle: Path):
    """The service with a token and a live synthetic source: (base URL, app)."""
    clf = edgeclip.load(served_bundle)
    app = create_app(clf, "synthetic://160x120", token=TOKEN, batch_wait_ms=20,
                     stream_options=StreamOptions(fps_limit=15, summary_every=0))
    with running_server(app) as base:
        yield base, app


def encode(jpeg: bytes, ext: str) -> bytes:
    import cv2

    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header states width x height (no pixel data): a decompression bomb's signature."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


# ---------------------------------------------------------------------------------------------------------
# access
# ---------------------------------------------------------------------------------------------------------
def test_healthz_is_open_and_every_other_endpoint_needs_the_token(server) -> None:
    base, _ = server
    assert call("GET", f"{base}/healthz").json() == {"status": "ok"}
    for method, path in [("GET", "/"), ("GET", "/v1/labels"), ("PUT", "/v1/labels"), ("POST", "/v1/classify"),
                         ("GET", "/v1/status"), ("GET", "/v1/stream"), ("GET", "/v1/preview.mjpg"),
                         ("GET", "/metrics"), ("GET", "/static/app.js")]:
        r = call(method, base + path, body=b"{}" if method != "GET" else None)
        assert r.status == 401, (path, r)
        assert r.json()["error"].startswith("no token") and r.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = call(method, base + path, body=b"{}" if method != "GET" else None,
                     headers={"Authorization": "Bearer test-token-7f3b"})
        assert wrong.status == 401 and wrong.json()["error"].startswith("a wrong token")
    assert call("GET", f"{base}/v1/labels?token=nope").status == 401
    assert call("GET", f"{base}/v1/labels", headers={"Cookie": "edgeclip_token=nope"}).status == 401
    assert call("GET", f"{base}/v1/labels", headers=AUTH).status == 200
    assert call("GET", f"{base}/v1/labels?token={TOKEN}").status == 200


def test_the_page_sets_a_strict_cookie_that_then_authorises_its_requests(server) -> None:
    base, _ = server
    page = call("GET", f"{base}/?token={TOKEN}")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert b'<script src="static/app.js">' in page.body and b"http" not in page.body.split(b"<body>")[1]
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    cookie = page.headers["Set-Cookie"]
    assert f"edgeclip_token={TOKEN}" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar = {"Cookie": f"edgeclip_token={TOKEN}"}
    for path in ("/static/app.js", "/static/style.css", "/v1/status"):
        assert call("GET", base + path, headers=jar).status == 200, path


# ---------------------------------------------------------------------------------------------------------
# classify
# ---------------------------------------------------------------------------------------------------------
def test_classify_answers_like_the_classifier_for_jpeg_png_webp_and_multipart(server, served_bundle, photos) -> None:
    base, app = server
    version = app.state.service.labels.version
    ref = edgeclip.load(served_bundle)
    ref.set_label_matrix(app.state.service.labels.names, app.state.service.labels.matrix)
    for jpeg in photos[:3]:
        want = ref.classify(jpeg, top_k=3)
        r = call("POST", f"{base}/v1/classify?top_k=3", jpeg, {**AUTH, "Content-Type": "image/jpeg"})
        assert r.status == 200, r
        doc = r.json()
        assert [p["label"] for p in doc["predictions"]] == want.labels
        assert np.allclose([p["score"] for p in doc["predictions"]], want.scores, atol=1e-5)
        assert doc["model"] == "edgeclip-tiny-vit" and doc["precision"] == ref.precision
        assert doc["latency_ms"] > 0 and doc["labels_version"] == version
    default = call("POST", f"{base}/v1/classify", photos[0], AUTH).json()
    assert len(default["predictions"]) == 5  # the service's default top_k
    for ext in (".png", ".webp"):
        data = encode(photos[0], ext)
        r = call("POST", f"{base}/v1/classify?top_k=2", data, AUTH)
        assert r.status == 200 and len(r.json()["predictions"]) == 2, (ext, r)
    body, ctype = multipart("file", "photo.jpg", photos[1], extra={"note": "x"})
    r = call("POST", f"{base}/v1/classify?top_k=3", body, {**AUTH, "Content-Type": ctype})
    assert r.status == 200, r
    assert [p["label"] for p in r.json()["predictions"]] == ref.classify(photos[1], top_k=3).labels


def test_bad_requests_are_json_4xx_and_the_service_keeps_serving(server, photos) -> None:
    base, _ = server
    url = f"{base}/v1/classify"

    def post(body, headers=None, query=""):
        return call("POST", url + query, body, {**AUTH, **(headers or {})})

    cases = {
        "not an image": (post(b"hello, this is text"), 415, "not a JPEG, PNG or WebP"),
        "a GIF": (post(b"GIF89a" + b"\0" * 20), 415, "JPEG, PNG or WebP"),
        "empty": (post(b""), 400, "empty request body"),
        "truncated JPEG": (post(photos[0][: len(photos[0]) // 2]), 400, "truncated or corrupt JPEG"),
        "corrupt PNG header": (post(b"\x89PNG\r\n\x1a\n" + b"\0" * 8), 400, "corrupt"),
        "bomb header": (post(png_header(30000, 30000)), 413, "over the limit"),
        "50 MB body": (post(b"\xff\xd8\xff" + bytes(50 * 2**20)), 413, "over the limit of 20,971,520"),
        "50 MB chunked": (post(iter([b"\xff\xd8\xff"] + [bytes(2**20)] * 50)), 413, "over the limit"),
        "top_k=0": (post(photos[0], query="?top_k=0"), 400, "top_k"),
        "top_k=abc": (post(photos[0], query="?top_k=abc"), 400, "top_k"),
    }
    body, ctype = multipart("", "", b"", extra={"note": "no file here"})
    cases["multipart without a file"] = (post(body, {"Content-Type": ctype}), 400, "holds no file")
    for name, (r, status, text) in cases.items():
        assert r.status == status, (name, r)
        doc = r.json()
        assert doc["status"] == status and text in doc["error"], (name, doc)
    assert call("GET", url, headers=AUTH).status == 405
    missing = call("GET", f"{base}/v2/nothing", headers=AUTH)
    assert missing.status == 404 and missing.json()["status"] == 404
    good = post(photos[2])
    assert good.status == 200 and len(good.json()["predictions"]) == 5


# ---------------------------------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------------------------------
def test_label_edits_are_validated_like_edgeclip_labels(server) -> None:
    base, app = server
    before = call("GET", f"{base}/v1/labels", headers=AUTH).json()
    assert before["names"] == CIFAR and before["template_set"] and before["templates"]
    bad = {
        b"{not json": (400, "not valid JSON"),
        b'{"labels": "cat"}': (422, "must be a list"),
        b'{"labels": []}': (422, "no labels"),
        b'{"labels": ["cat", "cat"]}': (422, "appears twice"),
        b'{"labels": ["cat", ""]}': (422, "empty name"),
        b'{"labels": [{"nom": "cat"}]}': (422, "unknown keys"),
        b'{"labels": [{"name": "cat", "synonyms": [3]}]}': (422, "must be a string"),
        b'{"labels": ["cat"], "colour": 1}': (422, "unknown keys"),
        b'{"labels": ["cat"], "templates": "/etc/passwd"}': (422, "unknown template set"),
        b'{"labels": ["cat"], "templates": ["a photo"]}': (422, "placeholder exactly once"),
        b'{"labels": ["cat"], "templates": ["a {0} photo"]}': (422, "uses {0}"),
        b"[1, 2]": (422, "must be a string or an object"),
    }
    for body, (status, text) in bad.items():
        r = call("PUT", f"{base}/v1/labels", body, {**AUTH, "Content-Type": "application/json"})
        assert r.status == status and text in r.json()["error"], (body, r)
    r = call("PUT", f"{base}/v1/labels?persist=maybe", b'["cat"]', AUTH)
    assert r.status == 400 and "persist" in r.json()["error"]
    after = call("GET", f"{base}/v1/labels", headers=AUTH).json()
    assert after == before  # nothing changed


def test_relabel_swaps_for_rest_and_stream_and_persists_into_the_bundle(server, served_bundle, photos) -> None:
    base, app = server
    old = call("GET", f"{base}/v1/labels", headers=AUTH).json()
    new = {"labels": ["red thing", {"name": "blue thing", "synonyms": ["azure thing"]}, "green thing"],
           "templates": ["a photo of a {}.", "itap of a {}."]}
    try:
        r = call("PUT", f"{base}/v1/labels", json.dumps(new).encode(),
                 {**AUTH, "Content-Type": "application/json"})
        assert r.status == 200, r
        doc = r.json()
        assert doc["names"] == ["red thing", "blue thing", "green thing"] and doc["version"] == old["version"] + 1
        assert doc["labels"][1] == {"name": "blue thing", "synonyms": ["azure thing"]}
        assert doc["template_set"] == "custom" and doc["persisted"] is False
        assert call("GET", f"{base}/v1/labels", headers=AUTH).json()["names"] == doc["names"]
        preds = call("POST", f"{base}/v1/classify", photos[0], AUTH).json()
        assert {p["label"] for p in preds["predictions"]} == set(doc["names"])
        assert preds["labels_version"] == doc["version"]
        # the live source's next decisions use the new names
        events = read_events(f"{base}/v1/stream?last_event_id=0", AUTH, lambda ev: any(
            n == "decision" and {t["label"] for t in d["top"]} == set(doc["names"]) for n, d in ev))
        assert any(n == "relabel" and d["labels"] == doc["names"] for n, d in events)
        # unchanged on disk until persist=1
        assert load_bundle(served_bundle).label_names() == CIFAR
        r = call("PUT", f"{base}/v1/labels?persist=1", b'["cat", "dog", "truck"]', AUTH)
        assert r.status == 200 and r.json()["persisted"] is True, r
        on_disk = load_bundle(served_bundle)  # verified: hashes and manifest written by the safe writer
        names, matrix = on_disk.labels()
        assert names == ["cat", "dog", "truck"] and matrix.shape[0] == 3
        assert np.allclose(matrix, app.state.service.labels.matrix, atol=1e-6)
        assert r.json()["template_set"] == "custom"  # the templates in use stay until changed
    finally:
        restore = {"labels": old["labels"], "templates": old["template_set"]}
        r = call("PUT", f"{base}/v1/labels?persist=1", json.dumps(restore).encode(), AUTH)
        assert r.status == 200 and r.json()["names"] == CIFAR


def test_requests_in_flight_during_a_relabel_finish_on_one_consistent_set(server, photos) -> None:
    base, app = server
    old_version = app.state.service.labels.version
    new_names = ["alpha", "beta", "gamma"]
    stop = threading.Event()
    answers: list[dict] = []

    def client(i: int) -> None:
        while not stop.is_set():
            r = call("POST", f"{base}/v1/classify?top_k=3", photos[i % len(photos)], AUTH)
            assert r.status == 200, r
            answers.append(r.json())

    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(client, i) for i in range(4)]
            time.sleep(0.5)
            r = call("PUT", f"{base}/v1/labels", b'["alpha", "beta", "gamma"]', AUTH)
            assert r.status == 200
            time.sleep(0.5)
            stop.set()
            for f in futures:
                f.result()
        versions = {a["labels_version"] for a in answers}
        assert versions == {old_version, old_version + 1}, versions
        for a in answers:
            names = {p["label"] for p in a["predictions"]}
            assert names <= (set(CIFAR) if a["labels_version"] == old_version else set(new_names)), a
    finally:
        r = call("PUT", f"{base}/v1/labels", ('{"labels": %s}' % json.dumps(CIFAR)).encode(), AUTH)
        assert r.status == 200


# ---------------------------------------------------------------------------------------------------------
# batching, live source, status, metrics
# ---------------------------------------------------------------------------------------------------------
def test_concurrent_requests_are_micro_batched(server, photos) -> None:
    base, app = server
    batcher = app.state.service.batcher
    batches, items = batcher.batches, batcher.items

    def one(i: int) -> int:
        return call("POST", f"{base}/v1/classify", photos[i % len(photos)], AUTH).status

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(32))) == {200}
    assert batcher.items - items == 32
    assert batcher.batches - batches < 32  # some requests shared an encoder call
    text = call("GET", f"{base}/metrics", headers=AUTH).body.decode()
    count = float(re.search(r"^edgeclip_batch_size_count (\S+)$", text, re.M).group(1))
    total = float(re.search(r"^edgeclip_batch_size_sum (\S+)$", text, re.M).group(1))
    assert total > count  # mean batch size above 1


def test_live_source_status_events_and_preview(server) -> None:
    import cv2

    base, _ = server
    events = read_events(f"{base}/v1/stream", AUTH, lambda ev: sum(n == "decision" for n, _ in ev) >= 3)
    assert events[0][0] == "state"
    decisions = [d for n, d in events if n == "decision"]
    frames = [d["frame"] for d in decisions]
    assert frames == sorted(frames) and frames[-1] > frames[0]
    assert all(d["label"] in CIFAR and len(d["top"]) == 5 and 0 <= d["score"] <= 1 for d in decisions)
    times = [datetime.fromisoformat(d["time"]) for _, d in events]  # ISO-8601 UTC, as in stream's JSON lines
    assert all(t.utcoffset() == timedelta(0) for t in times) and times == sorted(times)
    parts = read_mjpeg_parts(f"{base}/v1/preview.mjpg", AUTH, 3)
    shapes = [cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR).shape for p in parts]
    assert shapes == [(120, 160, 3)] * 3
    assert len({p for p in parts}) == 3  # new frames, not one repeated
    still = call("GET", f"{base}/v1/preview.jpg", headers=AUTH)
    assert still.status == 200 and still.headers["Content-Type"] == "image/jpeg" and still.body[:3] == b"\xff\xd8\xff"
    status = call("GET", f"{base}/v1/status", headers=AUTH).json()
    stream = status["stream"]
    assert stream["state"] == "running" and stream["source"] == "synthetic://160x120"
    assert stream["inferred"] > 0 and stream["captured"] >= stream["inferred"]
    assert stream["decision"]["label"] in CIFAR and stream["inference_fps"] > 0
    assert status["model"] == "edgeclip-tiny-vit" and status["token_required"] is True


def test_metrics_are_prometheus_text_with_requests_errors_batches_and_stream(server, photos) -> None:
    base, _ = server
    call("POST", f"{base}/v1/classify", b"not an image", AUTH)
    call("POST", f"{base}/v1/classify", photos[0], AUTH)
    r = call("GET", f"{base}/metrics", headers=AUTH)
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = r.body.decode()
    for pattern in [r'^edgeclip_http_requests_total\{route="/v1/classify",method="POST",code="200"\} [1-9]',
                    r'^edgeclip_http_requests_total\{route="/v1/classify",method="POST",code="415"\} [1-9]',
                    r'^edgeclip_classify_errors_total\{reason="unsupported_type"\} [1-9]',
                    r'^edgeclip_classify_latency_seconds_bucket\{le="\+Inf"\} [1-9]',
                    r"^edgeclip_batch_size_bucket\{le=\"8\"\} [1-9]",
                    r"^edgeclip_stream_frames_inferred_total [1-9]",
                    r"^edgeclip_stream_frames_dropped_total \d",
                    r"^edgeclip_stream_inference_fps \d",
                    r"^edgeclip_labels 10$",
                    r"^process_resident_memory_bytes [1-9]"]:
        assert re.search(pattern, text, re.M), pattern
    assert "# TYPE edgeclip_classify_latency_seconds histogram" in text


# ---------------------------------------------------------------------------------------------------------
# without a source, host check, mounting
# ---------------------------------------------------------------------------------------------------------
def test_without_a_source_the_stream_endpoints_say_so_and_foreign_hosts_are_refused(served_bundle, photos) -> None:
    from edgeclip.serve.app import LOOPBACK_HOSTS

    app = create_app(edgeclip.load(served_bundle), allowed_hosts=LOOPBACK_HOSTS, max_body_bytes=4096)
    with running_server(app) as base:
        for path in ("/v1/stream", "/v1/preview.mjpg", "/v1/preview.jpg"):
            r = call("GET", base + path)
            assert r.status == 404 and "no live source" in r.json()["error"], path
        assert call("GET", f"{base}/v1/status").json()["stream"] is None
        port = base.rsplit(":", 1)[1]
        rebound = call("GET", f"{base}/v1/labels", headers={"Host": f"attacker.example:{port}"})
        assert rebound.status == 421 and "token" in rebound.json()["error"]
        assert call("GET", f"{base}/v1/labels", headers={"Host": f"localhost:{port}"}).status == 200
        assert call("POST", f"{base}/v1/classify", photos[0]).status == 200  # a CIFAR JPEG is ~1 KB
        big = call("POST", f"{base}/v1/classify", encode(photos[0], ".png") * 8)
        assert big.status == 413 and "4,096" in big.json()["error"]


def test_the_app_mounts_inside_another_app(served_bundle, photos) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    outer = Starlette(routes=[Mount("/clip", app=create_app(edgeclip.load(served_bundle), token=TOKEN))])
    with running_server(outer, plain=True) as base:
        r = call("POST", f"{base}/clip/v1/classify?top_k=1", photos[0], AUTH)
        assert r.status == 200 and len(r.json()["predictions"]) == 1
        assert call("GET", f"{base}/clip/?token={TOKEN}").status == 200
        assert call("GET", f"{base}/clip/static/app.js", headers=AUTH).status == 200
        assert call("GET", f"{base}/clip/v1/labels").status == 401


# ---------------------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------------------
def test_serve_refuses_a_network_bind_without_a_token(served_bundle, capsys) -> None:
    from edgeclip.cli import main
    from edgeclip.cli.serve import check_exposure

    assert main(["serve", str(served_bundle), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0" in err and "--token" in err and "--insecure" in err
    assert check_exposure("0.0.0.0", None, True).startswith("edgeclip serve: WARNING")
    assert check_exposure("0.0.0.0", "t", False) is None and check_exposure("127.0.0.1", None, False) is None
    assert check_exposure("::1", None, False) is None and check_exposure("localhost", None, False) is None
    assert main(["serve", str(served_bundle), "--fps", "5"]) == 2
    assert "pass --source" in capsys.readouterr().err


def test_serve_command_runs_a_server_and_stops_on_sigint(served_bundle, tmp_path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("EDGECLIP_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "edgeclip", "serve", str(served_bundle), "--port", "0",
                             "--token-file", str(token_file), "--source", "synthetic://64x48", "--fps-limit", "5"],
                            cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            m = re.search(r"listening on (http://127\.0\.0\.1:\d+/)", line)
            if m or not line:
                break
        assert m, "".join(lines)
        base = m.group(1).rstrip("/")
        assert "token required" in line
        assert call("GET", f"{base}/healthz").status == 200
        assert call("GET", f"{base}/v1/status").status == 401
        status = call("GET", f"{base}/v1/status", headers=AUTH).json()
        assert status["stream"]["source"] == "synthetic://64x48"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
