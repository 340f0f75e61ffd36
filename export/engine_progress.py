"""Progress of a TensorRT engine build: what it is doing (BuildProgress, fed by TensorRT's IProgressMonitor on
TensorRT >= 10 and by the builder's own steps), and a heartbeat thread that reports it every few seconds (elapsed
time always, since a Nano can spend many minutes in kernel timing with no other sign of life)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 2.0  # how often the progress line is refreshed while TensorRT builds

ProgressFn = Callable[[str], None]


@dataclass
class BuildProgress:
    """What the build is doing, updated from TensorRT's threads and read by the heartbeat thread."""

    label: str
    phase: str = "starting"
    step: int = 0
    steps: int = 0
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _phases: dict[str, tuple[str | None, int, int]] = field(default_factory=dict, repr=False)

    def set(self, phase: str, step: int = 0, steps: int = 0) -> None:
        with self.lock:
            self.phase, self.step, self.steps = phase, step, steps

    # IProgressMonitor callbacks (TensorRT >= 10); nested phases: show the innermost active one
    def phase_start(self, name: str, parent: str | None, steps: int) -> None:
        with self.lock:
            self._phases[name] = (parent, 0, int(steps))
            self.phase, self.step, self.steps = name, 0, int(steps)

    def step_complete(self, name: str, step: int) -> None:
        with self.lock:
            parent, _, steps = self._phases.get(name, (None, 0, 0))
            self._phases[name] = (parent, int(step) + 1, steps)
            if self.phase == name:
                self.step = int(step) + 1

    def phase_finish(self, name: str) -> None:
        with self.lock:
            parent, _, _ = self._phases.pop(name, (None, 0, 0))
            if parent and parent in self._phases:
                _, step, steps = self._phases[parent]
                self.phase, self.step, self.steps = parent, step, steps

    def line(self) -> str:
        with self.lock:
            elapsed = time.monotonic() - self.started
            where = self.phase + (f" {self.step}/{self.steps}" if self.steps else "")
        return f"{self.label}: {where}, {int(elapsed) // 60}:{int(elapsed) % 60:02d} elapsed"


class Heartbeat:
    """Calls progress(state.line()) every `interval` seconds from a daemon thread while the build runs."""

    def __init__(self, state: BuildProgress, progress: ProgressFn, interval: float | None = None):
        self.state, self.progress = state, progress
        self.interval = PROGRESS_INTERVAL_S if interval is None else interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trt-build-progress", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.progress(self.state.line())
            except Exception:  # a broken progress sink must not break the build
                log.debug("progress callback failed", exc_info=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def log_progress(line: str) -> None:
    """The default progress sink: an INFO log line."""
    log.info(line)


def make_progress_monitor(trt, state: BuildProgress):
    """An IProgressMonitor feeding `state` (TensorRT >= 10), or None where the API has none."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class _Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            try:
                state.phase_start(str(phase_name), parent_phase and str(parent_phase), int(num_steps))
            except Exception:  # noqa: BLE001 - never raise into TensorRT
                pass

        def step_complete(self, phase_name, step):
            try:
                state.step_complete(str(phase_name), int(step))
            except Exception:  # noqa: BLE001 - a broken progress sink must not break the build
                pass
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            try:
                state.phase_finish(str(phase_name))
            except Exception:  # noqa: BLE001 - a broken progress sink must not break the build
                pass

    return _Monitor()
