"""Helpers for the `edge teach` tests: a teach subprocess, its JSON API, and the test:// scene's true arrow."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from edge.core.synthetic import SceneRenderer

REPO = Path(__file__).resolve().parents[1]
FPS, PERIOD = 10.0, 4.0  # the scene: 10 frames a second, the arrow flips every 4 s
SOURCE = f"test://?width=160&height=120&fps={FPS:g}&period={PERIOD:g}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def true_arrow(frame: int, fps: float = FPS, period: float = PERIOD) -> str:
    """What the test:// scene shows in camera frame `frame` (the camera numbers frames as the source renders them)."""
    return SceneRenderer(8, 8, period_s=period).label_at(frame / fps)


def phase_left(frame: int, fps: float = FPS, period: float = PERIOD) -> float:
    """Seconds of scene time until the arrow flips after `frame`."""
    return period - (frame / fps) % period


class Teach:
    """One `edge teach` (or `capture --web`) subprocess and its HTTP API."""

    def __init__(self, workdir: Path, args: list[str], command: tuple[str, ...] = ("edge", "teach"),
                 token: str | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.token = token
        self.log_path = workdir / f"teach-{self.port}.log"
        self.cmd = [sys.executable, "-m", *command, *args, "--http" if command[0] == "edge" else "--web",
                    f"127.0.0.1:{self.port}"]
        self.proc: subprocess.Popen | None = None

    def start(self, ready: str = "healthz", timeout: float = 90.0) -> "Teach":
        """Start it and wait until `ready` answers 200 (/healthz: the camera's frames flow)."""
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("EDGE_TOKEN", None)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, cwd=self.workdir, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.wait_for(f"{ready} to answer", lambda: self.call("GET", ready)[0] == 200, timeout)
        return self

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             raw: bytes | None = None, timeout: float = 20.0) -> tuple[int, Any]:
        """(status, JSON answer, or bytes for other types); status 0 when nothing answers."""
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json"} if body is not None else {}
        if self.token:
            hdrs["Authorization"] = f"Bearer {self.token}"
        hdrs.update(headers or {})
        req = urllib.request.Request(self.url + path.lstrip("/"), data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, ctype, payload = r.status, r.headers.get("Content-Type", ""), r.read()
        except urllib.error.HTTPError as e:
            status, ctype, payload = e.code, e.headers.get("Content-Type", ""), e.read()
        except OSError:
            return 0, None
        return status, json.loads(payload) if ctype.startswith("application/json") else payload

    def ok(self, method: str, path: str, body: Any = None, want: int = 200) -> Any:
        status, answer = self.call(method, path, body)
        assert status == want, f"{method} {path} -> {status} {answer}\n{self.log()[-3000:]}"
        return answer

    def wait_for(self, what: str, check, timeout: float, interval: float = 0.1) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"teach exited ({self.proc.returncode}) waiting for {what}:\n{self.log()[-3000:]}")
            got = check()
            if got:
                return got
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}:\n{self.log()[-3000:]}")

    def frame(self) -> int:
        return int(self.ok("GET", "api/prediction")["frame"])

    def snap_true(self, per_label: int, labels: tuple[str, ...] = ("up", "down"), margin: float = 0.6) -> list[dict]:
        """Snap `per_label` examples of each arrow direction, each when the scene shows it (a snapshot whose frame
        turns out to show the other arrow is deleted again) -> the kept snapshots."""
        kept: dict[str, list[dict]] = {label: [] for label in labels}
        while any(len(v) < per_label for v in kept.values()):
            frame = self.frame()
            label = true_arrow(frame)
            if phase_left(frame) < margin or len(kept[label]) >= per_label:
                time.sleep(0.1)
                continue
            snap = self.ok("POST", "api/snapshots", {"label": label}, want=201)
            if true_arrow(snap["frame"]) == label:
                kept[label].append(snap)
            else:
                self.ok("DELETE", f"api/snapshots/{snap['id']}")
            time.sleep(0.05)
        return [s for v in kept.values() for s in v]

    def train(self, body: Any = None, timeout: float = 240.0) -> dict:
        self.ok("POST", "api/train", body or {}, want=202)
        return self.wait_for("the training", lambda: (lambda t: t if t["state"] in ("done", "failed") else None)(
            self.ok("GET", "api/train")), timeout, 0.2)

    def agreement(self, seconds: float, margin: float = 0.5) -> tuple[int, int]:
        """(predictions that name the scene's true arrow, predictions checked), away from the flips."""
        agree = total = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            p = self.ok("GET", "api/prediction")
            frame = int(p["frame"])
            if margin < phase_left(frame) < PERIOD - margin:
                total += 1
                agree += p["label"] == true_arrow(frame)
            time.sleep(0.15)
        return agree, total
