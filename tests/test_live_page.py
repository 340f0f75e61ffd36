"""The live page of `edge serve` in a real browser (headless Chromium driven by selenium), as a user sees it: a camera
that cannot be opened says so and why, on its tile; a prediction shows its novelty against the threshold."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

import numpy as np
import pytest
from serve_helpers import TOKEN, Served, brightness_model, find_chromium, free_port, headless_chrome

webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (the test extra)")
from selenium.webdriver.common.by import By  # noqa: E402 - after importorskip (selenium)
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402 - after importorskip (selenium)

CHROMIUM = find_chromium()
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="needs Chromium and its driver (apt-get install chromium chromium-driver)"),
]


@pytest.fixture
def browser(tmp_path):
    with headless_chrome(tmp_path, "1000,800") as driver:
        yield driver


def _text_becomes(driver, element_id: str, cond, timeout: float = 60.0) -> str:
    WebDriverWait(driver, timeout).until(lambda d: cond(d.find_element(By.ID, element_id).text.strip()))
    return driver.find_element(By.ID, element_id).text.strip()


def test_a_missing_camera_is_shown_with_its_reason(tmp_path, browser):
    grey = np.full((120, 160, 3), 128, np.uint8)
    brightness_model(tmp_path / "model.pt", grey)
    port = free_port()
    svc = Served(tmp_path, "nocam", ["--model", str(tmp_path / "model.pt"), "--source", "/dev/video57",
                                     "--http", f"127.0.0.1:{port}", "--token", TOKEN]).start()
    try:
        svc.wait_for("/api/cameras", lambda: svc.get("api/cameras")[0] == 200, 120)
        browser.get(f"{svc.url}?token={TOKEN}")
        state = _text_becomes(browser, "camera-state", lambda t: "/dev/video57" in t)
        assert state.startswith("camera reconnecting: cannot open") and "/dev/video57" in state, state
        assert browser.find_element(By.ID, "label").text == "no camera"
        assert "bad" in browser.find_element(By.ID, "camera-state").get_attribute("class")
        browser.save_screenshot(str(tmp_path / "missing-camera.png"))  # looked at by hand: tmp_path keeps it
        assert (tmp_path / "missing-camera.png").stat().st_size > 1000
    finally:
        rc, _ = svc.terminate()
    assert rc == 0, svc.log()[-2000:]


class _Canned(BaseHTTPRequestHandler):
    """The page and canned answers of a service whose model has a novelty threshold: camera 0 fine, 1 lost."""

    def log_message(self, *_a) -> None:
        pass

    def do_GET(self) -> None:  # http.server's method name
        path = self.path.split("?")[0]
        if path == "/":
            body, kind = resources.files("edge.service").joinpath("page.html").read_bytes(), "text/html"
        elif path == "/api/cameras":
            body, kind = json.dumps([
                {"camera": 0, "source": "test://", "state": "streaming", "status": "ok", "reason": ""},
                {"camera": 1, "source": "rtsp://cam", "state": "reconnecting", "status": "stale",
                 "reason": "no fresh frames (camera reconnecting: connection refused)", "error": "connection refused"},
            ]).encode(), "application/json"
        elif path == "/api/prediction":
            cam = int(self.path.split("camera=")[1].split("&")[0]) if "camera=" in self.path else 0
            pred = {"camera": cam, "label": "unknown" if cam else "up", "confidence": 0.97,
                    "probabilities": {"up": 0.97, "down": 0.03}, "novelty": 0.52 if cam else 0.012,
                    "novelty_threshold": 0.3, "frame": 12, "fps": 9.5, "stale": bool(cam),
                    "source_state": "reconnecting" if cam else "streaming"}
            body, kind = json.dumps(pred).encode(), "application/json"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_novelty_and_threshold_beside_the_label_and_each_cameras_state(browser):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
        near = _text_becomes(browser, "novelty", lambda t: t.startswith("novelty"), 30)
        assert near == "novelty 0.012 \u2264 threshold 0.300", near
        far = _text_becomes(browser, "novelty-1", lambda t: t.startswith("novelty"), 30)
        assert far.startswith("novelty 0.520 > threshold 0.300") and "unknown" in far, far
        assert _text_becomes(browser, "camera-state", lambda t: t != "camera: -", 30) == "camera streaming"
        lost = _text_becomes(browser, "camera-state-1", lambda t: t != "camera: -", 30)
        assert lost == "camera reconnecting: connection refused", lost
    finally:
        server.shutdown()
        server.server_close()
