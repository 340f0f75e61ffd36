"""Helpers for the `edge serve` end-to-end tests (test_serve.py, test_serve_multicam.py): the test video, the
brightness model, a served subprocess, metrics and MJPEG readers, and the headless-Chromium page renderer."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.core.preprocess import PreprocessSpec, preprocess_image

FPS = 10
PHASE = 20  # frames per phase: white, black, grey
SIZE = (160, 120)
GREY = 128
TOKEN = "test-token-123"
# A stop must end before systemd gives up on it (the unit's TimeoutStopSec=15, then SIGKILL): that is what a user
# would notice. The 5 s the service aims for (SHUTDOWN_GRACE_S) is a wall-clock figure a loaded machine cannot
# promise, so it is measured by benchmarks/bench_stop.py, not asserted here.
STOP_LIMIT_S = 15.0
SPEC = PreprocessSpec(input_size=96, resize_size=96)


# ---------------------------------------------------------------------------------------------- fixtures' helpers
def make_video(path: Path) -> np.ndarray:
    """Write the white/black/grey video; return its decoded grey frame (the codec shifts grey a little)."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, SIZE)
    for v in [255] * PHASE + [0] * PHASE + [GREY] * PHASE:
        w.write(np.full((SIZE[1], SIZE[0], 3), v, np.uint8))
    w.release()
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    assert len(frames) == 3 * PHASE
    return frames[2 * PHASE + PHASE // 2]


def brightness_model(path: Path, grey: np.ndarray, names=("up", "down"), k: float = 15.0) -> None:
    """A real squeezenet1_1 checkpoint whose logits are +-k * (brightness - brightness(grey))."""
    import torch

    from edge.core.metadata import ModelMeta, save_checkpoint
    from edge.core.registry import create_model

    model = create_model("squeezenet1_1", 2, "none")
    sd = {n: torch.zeros_like(v) for n, v in model.state_dict().items()}
    sd["features.0.weight"][0, :, 1, 1] = 1.0 / 3  # channel 0 = mean of the normalized RGB
    for name in sd:  # every Fire module passes channel 0 through (squeeze -> expand1x1); all else is zero
        if name.endswith(("squeeze.weight", "expand1x1.weight")):
            sd[name][0, 0] = 1.0
    t = float(preprocess_image(grey, SPEC).mean())
    sd["classifier.1.weight"][0, 0], sd["classifier.1.bias"][0] = k, -k * t
    sd["classifier.1.weight"][1, 0], sd["classifier.1.bias"][1] = -k, k * t
    save_checkpoint(path, sd, ModelMeta(arch="squeezenet1_1", class_names=list(names), preprocess=SPEC))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NotifyCollector:
    """A fake systemd: receives sd_notify datagrams on a unix socket."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self) -> None:
        while not self._stop:
            try:
                self.messages.append((time.time(), self.sock.recv(4096).decode()))
            except socket.timeout:
                pass
            except OSError:
                return

    def first(self, prefix: str) -> float | None:
        """When the first datagram with a line starting with `prefix` came (READY=1 carries a STATUS= line too)."""
        return next((t for t, m in self.messages if any(ln.startswith(prefix) for ln in m.splitlines())), None)

    def count(self, prefix: str) -> int:
        return sum(any(ln.startswith(prefix) for ln in m.splitlines()) for _, m in self.messages)

    def close(self) -> None:
        self._stop = True
        self._t.join(1)
        self.sock.close()


class Served:
    """One `edge serve` subprocess."""

    def __init__(self, cwd: Path, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.cwd = cwd
        self.log_path = cwd / f"{name}.log"
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.env.pop("EDGE_TOKEN", None)
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        for i, a in enumerate(args):
            if a == "--http":
                self.port = int(args[i + 1].rsplit(":", 1)[1])

    def start(self) -> "Served":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "edge", "serve", *self.args], cwd=self.cwd,
                                     stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, token: str | None = TOKEN, timeout: float = 5.0, headers: dict | None = None):
        req = urllib.request.Request(self.url + path.lstrip("/"), headers=headers or {})
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def json(self, path: str, token: str | None = TOKEN):
        status, _, body = self.get(path, token)
        return status, json.loads(body)

    def wait_for(self, what: str, cond, timeout: float = 60.0, interval: float = 0.2):
        """Poll `cond()` until truthy (returns its value); fail with the log if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"edge serve exited ({self.proc.returncode}) while waiting for {what}:\n"
                            f"{self.log()[-4000:]}")
            try:
                got = cond()
            except (OSError, ValueError):
                got = None
            if got:
                return got
            time.sleep(interval)
        pytest.fail(f"timed out waiting for {what}:\n{self.log()[-4000:]}")

    def wait_healthy(self, timeout: float = 90.0) -> None:
        self.wait_for("/healthz 200", lambda: self.get("healthz", None, timeout=2)[0] == 200, timeout)

    def terminate(self, timeout: float = 5.0, sig: int = signal.SIGTERM) -> tuple[int, float]:
        """SIGTERM (or `sig`) -> (exit code, seconds it took)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"edge serve ignored SIGTERM:\n{self.log()[-4000:]}")
        self._log.close()
        return rc, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name{labels}` with exactly these labels (none: the unlabelled sample)."""
    selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    m = re.search(rf"^{re.escape(name + (f'{{{selector}}}' if selector else ''))} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


def mjpeg_frames(url: str, n: int, token: str | None = TOKEN, timeout: float = 10.0) -> list[np.ndarray]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    frames = []
    with urllib.request.urlopen(req, timeout=timeout) as r:
        assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        while len(frames) < n:
            line = r.readline()
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
                r.readline()
                frames.append(cv2.imdecode(np.frombuffer(r.read(length), np.uint8), cv2.IMREAD_COLOR))
    return frames



def find_chromium() -> str | None:
    for name in (os.environ.get("EDGE_TEST_CHROMIUM"), "chromium", "chromium-browser", "google-chrome",
                 "google-chrome-stable"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@contextmanager
def headless_chrome(tmp_path: Path, window: str = "1000,800"):
    """A selenium driver of headless Chromium with its own profile under `tmp_path` (needs selenium, chromium and
    chromedriver: the tests that use it skip without them)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = find_chromium()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-sync", f"--window-size={window}",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@contextmanager
def mounted_tmpfs(tmp_path: Path, size: str):
    """A tmpfs of `size` (e.g. "1m") mounted under `tmp_path`: a disk that fills up. Skips the test where mounting
    is not allowed (not root, no CAP_SYS_ADMIN)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    where = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def rendered_page(url: str, tmp_path: Path, budget_ms: int = 4000):
    """(DOM, text_of(id)) of the page at `url` after `budget_ms` of its scripts' time in headless Chromium."""
    cmd = [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
           f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    dom = r.stdout
    assert r.returncode == 0 and "<html" in dom, r.stderr[-2000:]

    def text_of(id_: str) -> str:
        m = re.search(rf'id="{id_}"[^>]*>([^<]*)<', dom)
        assert m, f"#{id_} missing from the rendered page:\n{dom[:4000]}"
        return m.group(1).strip()

    return dom, text_of
