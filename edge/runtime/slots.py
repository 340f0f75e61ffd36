"""`CameraSlot`: one camera of a (multi-camera) pipeline, with its own outputs, smoother, latest prediction and
stats."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from edge.runtime.outputs.base import Output
from edge.runtime.prediction import Prediction
from edge.runtime.smoothing import Smoother
from edge.runtime.timings import RateMeter, TimingWindow


class CameraSlot:
    """One camera of a pipeline and what belongs to it alone.

    camera: an `edge.runtime.camera.Camera` (or a plain FrameSource, adapted). outputs: given only this camera's
    (overlaid) frames, unlike the pipeline's `outputs`, which get every camera's. smoother: this camera's own
    (default: a fresh copy of the pipeline's). name: for logs and stats (default: the camera's URI).

    The pipeline sets `index` (the camera id its predictions carry, `Prediction.camera`) and keeps `latest`
    (this camera's newest prediction) and `stats` up to date.
    """

    def __init__(self, camera: Any, *, outputs: Iterable[Output] = (), smoother: Smoother | None = None,
                 name: str | None = None) -> None:
        self.camera = camera
        self.outputs: list[Output] = list(outputs)
        self.smoother = smoother
        self.name = name or str(getattr(camera, "uri", "") or "")
        self.index = 0
        self.latest: Prediction | None = None
        self.frames = 0
        self.drops = 0  # frames the camera delivered that inference never took
        self.errors = 0
        self.last_id = -1
        self.rate = RateMeter()
        self.recent = TimingWindow(("latency_ms", "e2e_ms"))
        self.canvas: np.ndarray | None = None
        self.started_camera = False

    @property
    def stats(self) -> dict[str, Any]:
        """This camera's JSON-friendly snapshot: state, frames, drops, fps, recent latency percentiles..."""
        cam, latest = self.camera, self.latest
        lat50, lat95 = self.recent.percentiles("latency_ms")
        e2e50, e2e95 = self.recent.percentiles("e2e_ms")
        return {
            "camera": self.index,
            "name": self.name,
            "state": str(getattr(cam, "state", "")),
            "frames": self.frames,
            "drops": self.drops,
            "errors": self.errors,
            "fps": round(self.rate.fps, 3),
            "fps_avg": round(self.rate.fps_avg, 3),
            "latency_ms_p50": lat50,
            "latency_ms_p95": lat95,
            "e2e_ms_p50": e2e50,
            "e2e_ms_p95": e2e95,
            "frame_age_ms": round(latest.frame_age_ms, 3) if latest else None,
            "reconnects": getattr(cam, "reconnects", None),
            "source_errors": getattr(cam, "errors", None),
            "label": latest.label if latest else None,
            "outputs": {o.name: o.alive for o in self.outputs},
        }

    def __repr__(self) -> str:
        return f"CameraSlot({self.index}, {self.name!r})"
