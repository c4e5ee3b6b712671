"""The ``edgeclip serve`` page in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Install on Debian/Ubuntu: ``apt-get install -y chromium`` and ``pip install playwright`` (never
``playwright install``: the system Chromium is used, nothing is downloaded). The test skips, saying why,
only where Chromium or Playwright is absent. The page is loaded from a real server on 127.0.0.1 with a
synthetic live source; a screenshot is kept under ``build/test-artifacts/`` (path printed).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the 'serve' extra (starlette, uvicorn, python-multipart) is not installed")
pytest.importorskip("uvicorn", reason="the 'serve' extra is not installed")

import edgeclip  # noqa: E402
from edgeclip.stream.loop import StreamOptions  # noqa: E402
from edgeclip.serve import create_app  # noqa: E402
from serve_helpers import call, running_server  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("EDGECLIP_TEST_ARTIFACTS", REPO / "build" / "test-artifacts"))
TOKEN = "browser-token-51c2"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


def wait_until(page, expression: str, timeout: float = 20.0) -> None:
    """Poll a JavaScript expression from Python until it is truthy (``page.wait_for_function`` would
    evaluate a string inside the page, which the page's Content-Security-Policy rightly forbids)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout} s: {expression}")
        time.sleep(0.1)


def open_page(browser_context, url: str) -> tuple[object, list[str]]:  # noqa: ANN001
    """A new page at ``url``, and the list its console messages and page errors are collected into."""
    console: list[str] = []
    page = browser_context.new_page()
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.goto(url)
    return page, console


def keep_screenshot(page, tmp_path: Path, name: str, what: str) -> None:  # noqa: ANN001
    """A full-page screenshot kept under ARTIFACTS (for a person to look at), its path printed."""
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    kept = ARTIFACTS / name
    shutil.copyfile(shot, kept)
    print(f"\nscreenshot of {what}: {kept}")


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory):
    exe = chromium_path()
    if exe is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(profile), executable_path=exe, headless=True,
                                                       args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 900})
        try:
            yield context
        finally:
            context.close()


def test_page_shows_live_frames_and_renames_a_label_for_the_next_predictions(
        browser_context, tiny_vit_bundle: Path, cifar_test: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_vit_bundle, bundle)
    clf = edgeclip.load(bundle)
    app = create_app(clf, "synthetic://320x240", token=TOKEN, preview_fps=8,
                     stream_options=StreamOptions(fps_limit=10, summary_every=0))
    app.state.service.set_labels(["cat", "dog", "truck"])
    photo = sorted((cifar_test / "dog").glob("*.jpg"))[0]
    with running_server(app) as base:
        page, console = open_page(browser_context, f"{base}/?token={TOKEN}")
        assert "token" not in page.url  # the page drops the token from the address bar (the cookie holds it)

        # live preview: the MJPEG <img> shows frames, and they change
        page.wait_for_selector("#live:not([hidden])", timeout=20_000)
        wait_until(page, "document.getElementById('preview').naturalWidth === 320")
        first = page.locator("#preview").screenshot()
        page.wait_for_timeout(1000)
        second = page.locator("#preview").screenshot()
        assert first != second, "the preview did not change: no new frames arrived"
        # the current label and its bar chart come from the event stream
        wait_until(page, "document.querySelectorAll('#bars .bar').length === 3")
        frame = int(page.get_attribute("#current-label", "data-frame"))
        wait_until(page, f"Number(document.getElementById('current-label').dataset.frame) > {frame}")
        assert page.inner_text("#current-label") in ("cat", "dog", "truck")

        # rename "dog" -> "puppy" through the labels editor and apply
        assert page.input_value("#labels li:nth-child(2) input") == "dog"
        page.fill("#labels li:nth-child(2) input", "puppy")
        page.click("#apply")
        page.wait_for_selector("#labels-msg.ok", timeout=30_000)
        assert "Applied 3 labels" in page.inner_text("#labels-msg")
        assert call("GET", f"{base}/v1/labels?token={TOKEN}").json()["names"] == ["cat", "puppy", "truck"]

        # the next live predictions carry the new name ...
        wait_until(page, "[...document.querySelectorAll('#bars .bar .name')].some(e => e.textContent === 'puppy')")
        bars = page.locator("#bars .bar .name").all_inner_texts()
        assert sorted(bars) == ["cat", "puppy", "truck"]
        # ... and so do photos classified through the drop zone
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#classify-msg.ok", timeout=20_000)
        assert sorted(page.locator("#result .bar .name").all_inner_texts()) == ["cat", "puppy", "truck"]
        assert "labels version 3" in page.inner_text("#classify-msg")
        # a non-image dropped on the page is an error message, and the page keeps working
        page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
        page.wait_for_selector("#classify-msg.bad", timeout=20_000)
        assert "not a JPEG, PNG or WebP" in page.inner_text("#classify-msg")

        time.sleep(0.3)  # let the bars settle for the screenshot
        keep_screenshot(page, tmp_path, "serve_page.png", "the edgeclip serve page")
        page.close()
    assert not [c for c in console if c.startswith("pageerror")], console


def test_page_asks_for_nothing_missing_and_shows_every_label_of_a_ten_label_bundle(
        browser_context, tiny_vit_bundle: Path) -> None:
    """No request of the page ends in an error (the favicon included), and all ten labels of the bundle are in
    view in the labels editor, none clipped at the bottom of its list."""
    app = create_app(edgeclip.load(tiny_vit_bundle), token=TOKEN)
    failed: list[str] = []
    with running_server(app) as base:
        page = browser_context.new_page()
        page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.on("requestfailed", lambda r: failed.append(f"failed {r.url}"))
        page.goto(f"{base}/?token={TOKEN}")
        wait_until(page, "document.querySelectorAll('#labels li').length === 10")
        page.wait_for_load_state("networkidle")
        clipped = page.evaluate("""() => {
            const list = document.getElementById('labels'), box = list.getBoundingClientRect();
            return [...list.querySelectorAll('li')].map((li, i) => [i + 1, li.getBoundingClientRect()])
                .filter(([, r]) => r.bottom > box.bottom + 0.5 || r.height < 20).map(([i]) => i)
                .concat(list.scrollHeight > list.clientHeight + 1 ? ['scrolls'] : []);
        }""")
        page.close()
    assert clipped == [], f"labels not fully shown: {clipped}"
    assert failed == [], failed
