"""Service outputs: label-change events (JSON lines), an on-change command and a display window.

Each one hands its work to its own thread and returns from `write` at once, so a slow disk, a hung command or
a GUI stall can never hold up the pipeline; a failure marks the output dead (logged once) and the rest go on.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Any

import numpy as np

from ..errors import EdgeError
from ..outputs.base import Output

log = logging.getLogger(__name__)


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="milliseconds")


class EventsOutput(Output):
    """Appends one JSON line per change of the shown label to a file (or stdout for `-`).

    Line: {"timestamp": epoch seconds, "time": ISO 8601 UTC, "label", "previous", "confidence", "frame"}.
    The first prediction is an event too (previous = null), so a reader always knows the current state.
    """

    name = "events"

    def __init__(self, target: str, queue_size: int = 1000) -> None:
        super().__init__()
        self.target = target
        self._f: IO[str]
        if target == "-":
            self._f = sys.stdout
        else:
            try:
                self._f = open(target, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
            except OSError as e:
                raise EdgeError(f"--events: cannot open {target!r} for appending: {e.strerror}") from e
        self._last: str | None = None
        self._q: queue.Queue[str | None] = queue.Queue(queue_size)
        self.dropped = 0
        self._thread = threading.Thread(target=self._writer, name="events-writer", daemon=True)
        self._thread.start()

    def write(self, frame: np.ndarray, prediction: Any) -> None:
        label = prediction.label
        if label == self._last:
            return
        event = {
            "timestamp": round(float(prediction.timestamp), 3),
            "time": _iso(float(prediction.timestamp)),
            "label": label,
            "previous": self._last,
            "confidence": round(float(prediction.confidence), 4),
            "frame": int(prediction.frame_id),
        }
        self._last = label
        try:
            self._q.put_nowait(json.dumps(event))
        except queue.Full:  # the disk is stuck: count, never wait
            self.dropped += 1
            if self.dropped == 1:
                log.warning("events: writer is stuck; dropping events")

    def _writer(self) -> None:
        while True:
            line = self._q.get()
            if line is None:
                return
            if not self.alive:
                continue
            try:
                self._f.write(line + "\n")
                self._f.flush()
            except (OSError, ValueError) as e:  # disk full, closed stdout pipe...
                self.alive = False
                log.error("events: writing to %s failed (%s); events output disabled, the service goes on",
                          "stdout" if self.target == "-" else repr(self.target), e)

    def close(self) -> None:
        if self._thread.is_alive():
            try:
                self._q.put(None, timeout=1.0)
            except queue.Full:
                pass
            self._thread.join(timeout=2.0)
        if self._f is not sys.stdout:
            try:
                self._f.close()
            except OSError as e:
                log.error("events: closing %r failed: %s", self.target, e)


class OnChangeOutput(Output):
    """Runs a shell command when the shown label changes: rate-limited, one at a time, off the pipeline thread.

    The command runs as `/bin/sh -c CMD edge-on-change LABEL CONFIDENCE` (so `$1` is the label) with
    EDGE_LABEL, EDGE_PREVIOUS, EDGE_CONFIDENCE, EDGE_TIMESTAMP and EDGE_FRAME in its environment. Changes that
    happen while a command runs or within `interval` seconds of the last start are coalesced: when the next run is
    due, it reports the label shown then (and nothing if that is the label it reported last).
    """

    name = "on-change"

    def __init__(self, command: str, interval: float = 2.0, timeout: float = 30.0) -> None:
        super().__init__()
        self.command = command
        self.interval = float(interval)
        self.timeout = float(timeout)
        self._cond = threading.Condition()
        self._pending: dict[str, Any] | None = None
        self._seen: str | None = None  # label of the last prediction (pipeline thread)
        self._reported: str | None = None  # label the command was last run for (worker thread)
        self._closed = False
        self.runs = 0
        self.failures = 0
        self._last_warn = 0.0
        self._proc: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._worker, name="on-change", daemon=True)
        self._thread.start()

    def write(self, frame: np.ndarray, prediction: Any) -> None:
        if prediction.label == self._seen:
            return
        change = {"label": prediction.label, "previous": self._seen, "confidence": float(prediction.confidence),
                  "timestamp": float(prediction.timestamp), "frame": int(prediction.frame_id)}
        self._seen = prediction.label
        with self._cond:
            self._pending = change
            self._cond.notify()

    def _worker(self) -> None:
        last_start = -float("inf")
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                # rate limit: wait out the interval (new changes just replace the pending one)
                while not self._closed and (delay := last_start + self.interval - time.monotonic()) > 0:
                    self._cond.wait(delay)
                if self._closed:
                    return
                change, self._pending = self._pending, None
            if change is None or change["label"] == self._reported:
                continue
            change["previous"] = self._reported
            last_start = time.monotonic()
            self._run(change)
            self._reported = change["label"]

    def _run(self, change: dict[str, Any]) -> None:
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)  # the command must not talk to systemd on our behalf
        env.update(
            EDGE_LABEL=str(change["label"]),
            EDGE_PREVIOUS="" if change["previous"] is None else str(change["previous"]),
            EDGE_CONFIDENCE=f"{change['confidence']:.4f}",
            EDGE_TIMESTAMP=f"{change['timestamp']:.3f}",
            EDGE_FRAME=str(change["frame"]),
        )
        argv = ["/bin/sh", "-c", self.command, "edge-on-change", str(change["label"]), f"{change['confidence']:.4f}"]
        self.runs += 1
        try:
            # own process group, so a timeout kills the command's children too
            self._proc = proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                rc = proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                self._kill(proc)
                rc = None
        except OSError as e:
            self._fail(f"could not start: {e}")
            return
        finally:
            self._proc = None
        if rc is None:
            self._fail(f"still running after {self.timeout:g} s; killed")
        elif rc != 0:
            self._fail(f"exited with status {rc}")

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            pass

    def _fail(self, why: str) -> None:
        self.failures += 1
        now = time.monotonic()
        if now - self._last_warn >= 60.0:  # a command that always fails must not flood the journal
            self._last_warn = now
            log.warning("--on-change command %s (%d failure(s) so far)", why, self.failures)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._kill(proc)  # shutdown must finish within seconds; a running hook is cut short
        self._thread.join(timeout=2.0)


class DisplayOutput(Output):
    """An OpenCV window showing the overlaid video; GUI calls all happen on its own thread."""

    name = "display"

    def __init__(self, title: str = "edge serve", startup_timeout: float = 5.0) -> None:
        super().__init__()
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise EdgeError("--display needs a desktop session ($DISPLAY is not set); use --http to watch remotely")
        self.title = title
        self._frame: np.ndarray | None = None
        self._lock = threading.Lock()
        self._new = threading.Event()
        self._stop = threading.Event()
        self._started = threading.Event()
        self._error: str | None = None
        self._thread = threading.Thread(target=self._loop, name="display", daemon=True)
        self._thread.start()
        if not self._started.wait(startup_timeout):
            raise EdgeError("--display: the window did not open within 5 s")
        if self._error:
            raise EdgeError(f"--display: cannot open a window ({self._error}); the pip `opencv-python-headless` has "
                            f"no GUI: use the system OpenCV or --http")

    def write(self, frame: np.ndarray, prediction: Any) -> None:
        with self._lock:
            if self._frame is None or self._frame.shape != frame.shape:
                self._frame = frame.copy()
            else:
                np.copyto(self._frame, frame)
        self._new.set()

    def _loop(self) -> None:
        import cv2

        try:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
        except cv2.error as e:
            self._error = str(e).strip().splitlines()[-1][:200]
            self._started.set()
            return
        self._started.set()
        try:
            while not self._stop.is_set():
                if self._new.wait(0.05):
                    self._new.clear()
                    with self._lock:
                        img = None if self._frame is None else self._frame.copy()
                    if img is not None:
                        cv2.imshow(self.title, img)
                cv2.waitKey(1)
                if cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
                    log.info("display window closed; the service goes on without it")
                    self.alive = False
                    return
        except cv2.error as e:
            self.alive = False
            log.error("display failed (%s); the service goes on without it", e)
        finally:
            try:
                cv2.destroyWindow(self.title)
            except cv2.error:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
