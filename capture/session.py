"""Capture loops: headless (N shots, one every SEC seconds) and interactive (preview window, keys)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from edge.core.errors import EdgeError
from edge.runtime.camera import Camera
from edge.runtime.sources import FrameSource

from .dataset import DatasetWriter
from .display import Display

NO_FRAME_TIMEOUT_S = 30.0
KEY_SPACE, KEY_TAB, KEY_ESC = 32, 9, 27
KEY_HELP = "SPACE snap  b burst  1-9/TAB label  u undo  q quit"


class ChangeFilter:
    """Skips frames nearly identical to the last kept one (camera not moving): mean absolute difference of a
    small grey thumbnail, as a fraction of full scale."""

    def __init__(self, min_change: float):
        if not 0 <= min_change <= 1:
            raise EdgeError(f"--min-change must be between 0 and 1 (fraction of full scale), got {min_change}")
        self.min_change = min_change
        self._last: np.ndarray | None = None

    @staticmethod
    def _thumb(frame: np.ndarray) -> np.ndarray:
        return cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), (64, 48), interpolation=cv2.INTER_AREA)

    def accept(self, frame: np.ndarray) -> bool:
        thumb = self._thumb(frame).astype(np.float32)
        if self._last is not None and float(np.mean(np.abs(thumb - self._last))) / 255.0 < self.min_change:
            return False
        self._last = thumb
        return True


@dataclass
class Shooter:
    """Saves frames for the current label, applying the near-duplicate filter; counts what it skipped."""

    writer: DatasetWriter
    label: str
    change: ChangeFilter | None = None
    out: Callable[[str], None] = print
    #: set by the signal handler: loops finish the shot in progress and return (no half-written file)
    stop: threading.Event = field(default_factory=threading.Event)
    saved: int = 0
    skipped: int = 0

    def shoot(self, frame: np.ndarray, filtered: bool = True) -> Path | None:
        if filtered and self.change is not None and not self.change.accept(frame):
            self.skipped += 1
            return None
        path = self.writer.save(self.label, frame)
        self.saved += 1
        return path


def _progress(shooter: Shooter, count: int | None, path) -> None:
    total = "" if count is None else f"/{count}"
    shooter.out(f"[{shooter.saved}{total}] {path}")


def capture_media(source: FrameSource, shooter: Shooter, count: int | None, interval: float) -> None:
    """Files and test://: read as fast as possible and keep one frame every `interval` seconds of media time."""
    fps = source.fps or 30.0
    index, due = 0, 0.0
    while (count is None or shooter.saved < count) and not shooter.stop.is_set():
        frame = source.read()
        if frame is None:
            shooter.out(f"end of {source.uri} after {index} frames")
            return
        t = index / fps
        index += 1
        if t + 1e-9 < due:
            continue
        path = shooter.shoot(frame)
        if path is not None:
            due = t + interval
            _progress(shooter, count, path)


def capture_live(cam: Camera, shooter: Shooter, count: int | None, interval: float) -> None:
    """Cameras and streams: the latest frame every `interval` seconds of wall time."""
    last_id, due = -1, time.monotonic()
    while count is None or shooter.saved < count:
        if shooter.stop.wait(max(0.0, due - time.monotonic())):
            return
        waited, got = 0.0, None
        while got is None and waited < NO_FRAME_TIMEOUT_S and cam.running and not shooter.stop.is_set():
            got = cam.read_latest(last_id, timeout=0.2)
            waited += 0.2
        if shooter.stop.is_set():
            return
        if got is None:
            if cam.state == "ended":
                shooter.out(f"end of {cam.uri}")
                return
            raise EdgeError(f"no frames from {cam.uri} for {NO_FRAME_TIMEOUT_S:g} s ({cam.state}: "
                            f"{cam.last_error or 'no error reported'}); check the camera and its cable")
        frame, last_id, _ = got
        path = shooter.shoot(frame)
        if path is not None:
            due = max(due + interval, time.monotonic() - interval)  # keep the cadence, never burst to catch up
            _progress(shooter, count, path)


@dataclass
class Interactive:
    """The preview-window session; `step` handles one key so tests can drive it with a fake display."""

    cam: Camera
    shooter: Shooter
    display: Display
    burst_interval: float = 0.25
    labels: list[str] = field(default_factory=list)
    burst: bool = False
    flash_until: float = 0.0
    message: str = ""
    message_until: float = 0.0
    last_shot: float = 0.0
    frame: np.ndarray | None = None
    frame_id: int = -1

    def __post_init__(self) -> None:
        if self.shooter.label not in self.labels:
            self.labels = sorted({*self.labels, self.shooter.label})

    def say(self, text: str, seconds: float = 1.5) -> None:
        self.message, self.message_until = text, time.monotonic() + seconds
        self.shooter.out(text)

    def snap(self, filtered: bool) -> None:
        if self.frame is None:
            return
        path = self.shooter.shoot(self.frame, filtered=filtered)
        if path is not None:
            self.last_shot = time.monotonic()
            self.flash_until = self.last_shot + 0.15
            _progress(self.shooter, None, path)

    def switch(self, label: str) -> None:
        if label != self.shooter.label:
            self.shooter.writer.prepare(label)
            self.shooter.label = label
            self.say(f"label: {label}")

    def handle_key(self, key: int) -> bool:
        """Act on one key; False means quit."""
        if key in (ord("q"), ord("Q"), KEY_ESC):
            return False
        if key == KEY_SPACE:
            self.snap(filtered=False)  # an explicit shot is always kept
        elif key in (ord("b"), ord("B")):
            self.burst = not self.burst
            self.say(f"burst {'on' if self.burst else 'off'}")
        elif key == KEY_TAB:
            i = self.labels.index(self.shooter.label)
            self.switch(self.labels[(i + 1) % len(self.labels)])
        elif ord("1") <= key <= ord("9"):
            n = key - ord("0")
            if n <= len(self.labels):
                self.switch(self.labels[n - 1])
            else:
                self.say(f"no label {n}: there are {len(self.labels)}")
        elif key in (ord("u"), ord("U")):
            path = self.shooter.writer.undo()
            if path is not None:
                self.shooter.saved = max(0, self.shooter.saved - 1)
            self.say(f"undone: {path.name}" if path else "nothing to undo")
        return True

    def render(self) -> np.ndarray:
        img = self.frame.copy() if self.frame is not None else np.zeros((480, 640, 3), np.uint8)
        now = time.monotonic()
        if now < self.flash_until:
            img = cv2.addWeighted(img, 0.4, np.full_like(img, 255), 0.6, 0)
        h, w = img.shape[:2]
        scale = max(0.4, min(w, h) / 800)
        line = int(28 * scale / 0.6)
        bar = img[: min(h, line * (1 + len(self.labels)) + 8)]
        bar[:] = bar // 3  # darken behind the text, keep the picture visible

        def text(y: int, s: str, color=(255, 255, 255)) -> None:
            cv2.putText(img, s, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)

        mode = "BURST" if self.burst else ""
        text(line, f"label: {self.shooter.label}  {mode}", (0, 255, 255))
        for i, label in enumerate(self.labels):
            mark = ">" if label == self.shooter.label else " "
            text(line * (i + 2), f"{mark}{i + 1} {label}: {self.shooter.writer.count(label)}")
        if now < self.message_until:
            text(h - line - 6, self.message, (0, 255, 0))
        text(h - 6, KEY_HELP, (200, 200, 200))
        return img

    def run(self) -> None:
        while self.display.is_open() and not self.shooter.stop.is_set():
            got = self.cam.read_latest(self.frame_id, timeout=0.03)
            if got is not None:
                self.frame, self.frame_id, _ = got
                if self.burst and time.monotonic() - self.last_shot >= self.burst_interval:
                    self.snap(filtered=True)
            self.display.show(self.render())
            key = self.display.wait_key(10)
            if key != -1 and not self.handle_key(key):
                return
