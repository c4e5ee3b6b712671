"""``edgeclip serve --watch``: /v1/watch, each camera's frame, per-camera and per-region /metrics, and the page
in a real headless Chromium showing every camera with its regions drawn and their states."""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("yaml", reason="the 'watch' extra (pyyaml, paho-mqtt) is not installed")
pytest.importorskip("starlette", reason="the 'serve' extra is not installed")
pytest.importorskip("uvicorn", reason="the 'serve' extra is not installed")
cv2 = pytest.importorskip("cv2")

import edgeclip  # noqa: E402
from edgeclip.serve import create_app  # noqa: E402
from serve_helpers import call, running_server  # noqa: E402
from test_serve_browser import browser_context, keep_screenshot, open_page, wait_until  # noqa: E402,F401  (the fixture)
from test_watch import DOOR, videos, wait_for  # noqa: E402,F401  (the fixture)

TOKEN = "watch-token-7f3e"


def config_text(videos: dict) -> str:
    return (f"options: {{summary_every: 0, reload_poll: 0}}\ndefaults: {{on: always}}\ncameras:\n"
            f"  front:\n    source: {videos['front']}\n    fps: 10\n    loop: true\n    regions:\n"
            f"      door: {{rect: {list(DOOR)}, states: {{open: an open door, closed: a closed door}}}}\n"
            f"      shelf:\n        polygon: [[380, 240], [600, 240], [600, 440], [380, 440]]\n"
            f"        states: [a full shelf, an empty shelf]\n        on: motion\n"
            f"  yard:\n    source: synthetic://320x240\n    fps: 10\n    regions:\n"
            f"      gate: {{rect: [0.1, 0.1, 0.5, 0.6], states: [an open gate, a closed gate, a dog]}}\n")


@pytest.fixture()
def app(tiny_vit_bundle: Path, videos: dict, tmp_path: Path):
    config = tmp_path / "watch.yaml"
    config.write_text(config_text(videos), encoding="utf-8")
    app = create_app(edgeclip.load(tiny_vit_bundle, threads=1), token=TOKEN, watch=str(config))  # a serve option
    return app, app.state.watcher


def test_watch_endpoints_and_metrics(app) -> None:
    app, watcher = app
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with running_server(app) as base:
        assert call("GET", f"{base}/v1/watch").status == 401  # the token guards it like every route
        wait_for(lambda: all(r.state.label and r.fps() is not None and c.fps() is not None
                             for c in watcher.cameras.values() for r in c.regions), 30, "states and rates")
        assert call("GET", f"{base}/v1/status", headers=auth).json()["watch"] is True  # the page asks this first
        status = call("GET", f"{base}/v1/watch", headers=auth).json()
        assert [c["name"] for c in status["cameras"]] == ["front", "yard"] and status["regions"] == 3
        front = status["cameras"][0]
        assert front["size"] == [640, 480] and front["up"] is True
        door = front["regions"][0]
        assert door["state"] in ("open", "closed") and set(door["scores"]) == {"open", "closed"}
        assert door["box"] == list(DOOR) and len(door["points"]) == 4 and door["classified"] > 0
        one = call("GET", f"{base}/v1/watch/yard", headers=auth).json()
        assert one["size"] == [320, 240] and one["regions"][0]["box"] == [32, 24, 160, 144]
        jpg = call("GET", f"{base}/v1/watch/front/frame.jpg", headers=auth)
        assert jpg.headers["Content-Type"] == "image/jpeg"
        img = cv2.imdecode(np.frombuffer(jpg.body, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (480, 640, 3)
        assert call("GET", f"{base}/v1/watch/nowhere", headers=auth).status == 404
        text = call("GET", f"{base}/metrics", headers=auth).body.decode()
        classified = re.search(r'edgeclip_watch_region_classified_total\{camera="front",region="door"\} (\d+)', text)
        assert classified and int(classified.group(1)) > 0
        assert re.search(r'edgeclip_watch_region_motion_skipped_total\{camera="front",region="shelf"\} \d+', text)
        assert re.search(r'edgeclip_watch_camera_fps\{camera="yard"\} [0-9.]+', text)
        assert re.search(r'edgeclip_watch_region_latency_seconds\{camera="yard",region="gate",quantile="0.95"\}', text)
        states = re.findall(r'edgeclip_watch_region_state\{camera="front",region="door",state="(\w+)"\} 1', text)
        assert len(states) == 1 and states[0] in ("open", "closed")
        call("GET", f"{base}/no-such-page", headers=auth)
        counted = set(re.findall(r'edgeclip_http_requests_total\{route="([^"]+)",method="GET",code="(\d+)"\}', text))
        assert {("/v1/watch/{camera}/frame.jpg", "200"), ("/v1/watch/{camera}", "200"),
                ("/v1/watch/{camera}", "404")} <= counted, counted
        later = call("GET", f"{base}/metrics", headers=auth).body.decode()  # one route table: the app's
        assert re.search(r'edgeclip_http_requests_total\{route="other",method="GET",code="404"\} 1$', later, re.M)
    assert not watcher.running  # the service's shutdown stops the watcher


def test_page_shows_every_camera_with_regions_and_states(browser_context, app, tmp_path: Path) -> None:
    app, watcher = app
    with running_server(app) as base:
        page, console = open_page(browser_context, f"{base}/?token={TOKEN}")
        page.wait_for_selector("#cameras:not([hidden])", timeout=30_000)
        wait_until(page, "document.querySelectorAll('#camera-list .cam').length === 2")
        # each camera's frame arrives and the regions are drawn over it, one polygon per region
        wait_until(page, "document.querySelector('.cam[data-camera=front] img').naturalWidth === 640", 30)
        wait_until(page, "document.querySelector('.cam[data-camera=yard] img').naturalWidth === 320", 30)
        assert page.locator(".cam[data-camera=front] svg polygon.region").count() == 2
        assert page.locator(".cam[data-camera=yard] svg polygon.region").count() == 1
        door = page.get_attribute(".cam[data-camera=front] polygon[data-region=door]", "points")
        assert door == "40,60 240,60 240,360 40,360"
        # and every region's current state is shown, beside the frame and on it
        wait_until(page, "[...document.querySelectorAll('.region-row .state')].every(e => e.dataset.state)", 30)
        shown = page.locator(".cam[data-camera=front] .region-row[data-region=door] .state").inner_text()
        assert shown in ("open", "closed")
        labels = page.locator(".cam[data-camera=yard] svg text").all_text_contents()
        assert len(labels) == 1 and labels[0].startswith("gate: ") and not labels[0].endswith("…")
        # the frame is refreshed: a later frame number is loaded
        first = page.get_attribute(".cam[data-camera=yard] img", "src")
        time.sleep(1.5)
        assert page.get_attribute(".cam[data-camera=yard] img", "src") != first
        keep_screenshot(page, tmp_path, "watch_page.png", "the watch page")
        page.close()
    assert not [c for c in console if c.startswith("pageerror")], console


def test_serve_takes_the_watch_configuration_as_one_of_its_options() -> None:
    from edgeclip.cli import build_parser
    from edgeclip.cli.options import options_from_args
    from edgeclip.serve import ServeOptions

    args = build_parser().parse_args(["serve", "bundle", "--watch", "watch.yaml"])
    assert options_from_args(ServeOptions, args, token=None).watch == "watch.yaml"
    assert ServeOptions().watch is None
