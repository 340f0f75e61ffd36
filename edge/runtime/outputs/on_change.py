"""`--on-change`: run a shell command on a label change, on its own thread, rate-limited and time-limited."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import threading
import time
from typing import Any

import numpy as np

from edge.runtime.outputs.base import Output
from edge.runtime.outputs.changes import LabelChange, LabelChanges

log = logging.getLogger(__name__)


class OnChangeOutput(Output):
    """Runs a shell command when the shown label changes: rate-limited, one at a time, off the pipeline thread.

    The command runs as `/bin/sh -c CMD edge-on-change LABEL CONFIDENCE` (so `$1` is the label) with
    EDGE_LABEL, EDGE_PREVIOUS, EDGE_CONFIDENCE, EDGE_TIMESTAMP, EDGE_FRAME and EDGE_CAMERA in its environment.
    Changes that happen while a command runs or within `interval` seconds of the last start are coalesced: when the
    next run is due, it reports the label shown then (and nothing if that is the label it reported last). With
    several cameras all of this is per camera (a busy camera never swallows another's change); commands still run
    one at a time. `changes`: the service's shared decider (so --events, this and the metric agree); default: its own.
    """

    name = "on-change"

    def __init__(self, command: str, interval: float = 2.0, timeout: float = 30.0,
                 changes: LabelChanges | None = None) -> None:
        super().__init__()
        self.command = command
        self.changes = changes or LabelChanges()
        self.interval = float(interval)
        self.timeout = float(timeout)
        self._cond = threading.Condition()
        self._pending: dict[int, LabelChange] = {}  # camera -> its newest change not reported yet
        self._reported: dict[int, str] = {}  # camera -> label the command was last run for (worker thread)
        self._closed = False
        self.runs = 0
        self.failures = 0
        self._last_warn = 0.0
        self._proc: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._worker, name="on-change", daemon=True)
        self._thread.start()

    def write(self, frame: np.ndarray, prediction: Any) -> None:
        change = self.changes.observe(prediction)
        if change is None:
            return
        with self._cond:
            self._pending[change.camera] = change
            self._cond.notify()

    def _next_due(self, last_start: dict[int, float]) -> LabelChange | None:
        """Wait (holding the condition) for the pending change that is due first; None once closed. Rate limit: a
        camera's change waits out `interval` since that camera's last run (newer changes just replace it)."""
        while not self._closed:
            due = [(last_start.get(cam, -float("inf")) + self.interval, cam) for cam in self._pending]
            if not due:
                self._cond.wait()
                continue
            when, cam = min(due)
            delay = when - time.monotonic()
            if delay <= 0:
                return self._pending.pop(cam)
            self._cond.wait(delay)
        return None

    def _worker(self) -> None:
        last_start: dict[int, float] = {}
        while True:
            with self._cond:
                change = self._next_due(last_start)
            if change is None:
                return
            reported = self._reported.get(change.camera)
            if change.label == reported:
                continue
            change = dataclasses.replace(change, previous=reported)  # coalesced: since the last report
            last_start[change.camera] = time.monotonic()
            self._run(change)
            self._reported[change.camera] = change.label

    def _run(self, change: LabelChange) -> None:
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)  # the command must not talk to systemd on our behalf
        env.update(
            EDGE_LABEL=str(change.label),
            EDGE_PREVIOUS="" if change.previous is None else str(change.previous),
            EDGE_CONFIDENCE=f"{change.confidence:.4f}",
            EDGE_TIMESTAMP=f"{change.timestamp:.3f}",
            EDGE_FRAME=str(change.frame),
            EDGE_CAMERA=str(change.camera),
        )
        argv = ["/bin/sh", "-c", self.command, "edge-on-change", str(change.label), f"{change.confidence:.4f}"]
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
