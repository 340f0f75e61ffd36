"""`--events`: one JSON line per label change (with the `camera` it happened on), written on its own thread."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import queue
import sys
import threading
from typing import IO, Any

import numpy as np

from edge.core.errors import EdgeError
from edge.runtime.outputs.base import Output
from edge.runtime.outputs.changes import LabelChanges

log = logging.getLogger(__name__)


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="milliseconds")


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


class EventsOutput(Output):
    """Appends one JSON line per change of the shown label to a file (or stdout for `-`).

    Line: {"timestamp": epoch seconds, "time": ISO 8601 UTC, "label", "previous", "confidence", "frame",
    "novelty"} (novelty: the frame's novelty score, null for a model without one; above the model's threshold
    the label is "unknown").
    The first prediction is an event too (previous = null), so a reader always knows the current state.
    `changes`: the service's shared decider (so events, --on-change and the metric agree); default: its own.
    """

    name = "events"

    def __init__(self, target: str, queue_size: int = 1000, changes: LabelChanges | None = None) -> None:
        super().__init__()
        self.target = target
        self.changes = changes or LabelChanges()
        self._f: IO[str]
        if target == "-":
            self._f = sys.stdout
        else:
            try:
                self._f = open(target, "a", encoding="utf-8")  # closed in close()
            except OSError as e:
                raise EdgeError(f"--events: cannot open {target!r} for appending: {e.strerror}") from e
        self._q: queue.Queue[str | None] = queue.Queue(queue_size)
        self.dropped = 0
        self._thread = threading.Thread(target=self._writer, name="events-writer", daemon=True)
        self._thread.start()

    def write(self, frame: np.ndarray, prediction: Any) -> None:
        change = self.changes.observe(prediction)
        if change is None:
            return
        event = {
            "camera": change.camera,
            "timestamp": round(change.timestamp, 3),
            "time": _iso(change.timestamp),
            "label": change.label,
            "previous": change.previous,
            "confidence": round(change.confidence, 4),
            "frame": change.frame,
            "novelty": _rounded(getattr(prediction, "novelty", None)),
        }
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
