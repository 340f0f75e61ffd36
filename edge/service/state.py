"""`LiveState`: what the HTTP layer and the supervisor read of a running service, and nothing else.

It holds each camera's newest prediction (fed by a pipeline listener, on monotonic clocks), the served model's
description, each camera's HTTP stream and the Prometheus metrics, and gives the one health decision
(edge.service.health) and the JSON bodies of /api/prediction, /api/cameras, /healthz and /metrics. It implements
`edge.service.http.HttpApp`. A pipeline running `NullBackend` (no model yet, `edge teach`) reports its frames
without a label.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from edge.runtime.backends.null import NO_MODEL, is_null
from edge.runtime.outputs.changes import LabelChanges
from edge.runtime.prediction import Prediction
from edge.service.health import CameraStatus, ServiceHealth, assess_all
from edge.service.metrics import CONTENT_TYPE, ServiceMetrics
from edge.service.views import cameras_json, metrics_stats

if TYPE_CHECKING:
    from edge.runtime.backends.base import Backend
    from edge.runtime.outputs.stream import StreamOutput
    from edge.runtime.pipeline import Pipeline


class LiveState:
    """The live data of one service: `sources` (camera i reads sources[i]), `max_age` (health's --health-max-age).

    Assembly sets `cameras`, `pipeline` and `streams` once they are built; `on_prediction` is a pipeline listener;
    `set_model` records what is being served (the reload and go-live paths call it after each swap)."""

    def __init__(self, sources: Sequence[str], max_age: float) -> None:
        self.sources = tuple(sources)
        self.max_age = max_age
        self.cameras: Sequence[CameraStatus] = []
        self.pipeline: Pipeline | None = None
        self.streams: list[StreamOutput] = []  # each camera's StreamOutput (with --http), camera 0 first
        self.changes = LabelChanges()  # the one decision of a label change: events, on-change and the metric
        self.prom = ServiceMetrics(self.live_stats, self.changes, cameras=len(self.sources))
        self._model_info: dict[str, str] = {}
        self._latest: dict[int, tuple[Prediction, float]] = {}  # camera -> (newest prediction, monotonic time)

    # ------------------------------------------------------------------ fed by the pipeline and the model swaps
    def on_prediction(self, prediction: Prediction, timings: dict[str, float] | None = None) -> None:
        """Pipeline listener: each camera's newest prediction and its monotonic time (never the wall clock)."""
        self._latest[prediction.camera] = (prediction, time.monotonic())

    def set_model(self, backend: Backend, path: str | None) -> None:
        """What edge_model_info and /api/prediction's `model` say; nothing while no model is served."""
        meta = backend.meta
        self._model_info = {} if is_null(backend) or path is None else {
            "arch": meta.arch, "backend": backend.name, "classes": ",".join(meta.class_names),
            "file": Path(path).name}

    @property
    def model_info(self) -> dict[str, str] | None:
        """The served model (arch, backend, classes, file); None while there is none (teach before training)."""
        return dict(self._model_info) or None

    # ------------------------------------------------------------------ what HTTP, metrics and systemd read
    def freshness(self) -> ServiceHealth:
        """The one health decision (/healthz, `stale`, edge_healthy, STATUS=), from monotonic clocks only."""
        at = [self._latest[i][1] if i in self._latest else None for i in range(len(self.cameras))]
        return assess_all(self.cameras, at, self.max_age)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, the /healthz body)."""
        health = self.freshness()
        return health.ok, health.to_json()

    def prediction_json(self, camera: int = 0) -> dict[str, Any] | None:
        """Camera `camera`'s newest prediction as /api/prediction serves it; None before its first."""
        latest = self._latest.get(camera)
        if latest is None:
            return None
        pred, health = latest[0], self.freshness().cameras[camera]
        out: dict[str, Any] = {
            "camera": camera,
            "label": pred.label,
            "confidence": round(float(pred.confidence), 6),
            "probabilities": {k: round(float(v), 6) for k, v in pred.probabilities.items()},
            "raw_label": pred.raw_label,
            "novelty": None if pred.novelty is None else round(float(pred.novelty), 6),
            "novelty_threshold": self._novelty_threshold(),
            "frame": int(pred.frame_id),
            "timestamp": float(pred.timestamp),
            "fps": round(float(pred.fps), 3),
            "infer_ms": round(float(pred.infer_ms), 3),
            "latency_ms": round(float(pred.latency_ms), 3),
            "frame_age_ms": round(float(pred.frame_age_ms), 3),
            "stale": not health.ok,
            "source_state": health.source_state,
            "model": dict(self._model_info),
        }
        if pred.raw_label == NO_MODEL:  # no model yet: the frame was seen, nothing was classified
            out.update(label=None, confidence=None, probabilities={}, raw_label=None, model=None)
        if health.reason:
            out["reason"] = health.reason
        return out

    def _novelty_threshold(self) -> float | None:
        """Above this novelty the label is `unknown` (the served model's, or --novelty-threshold); None without."""
        threshold = self.pipeline.backend.novelty_threshold if self.pipeline is not None else None
        return None if threshold is None else round(float(threshold), 6)

    def metrics(self) -> tuple[bytes, str]:
        return self.prom.render(), CONTENT_TYPE

    def cameras_json(self) -> list[dict[str, Any]]:
        """/api/cameras (see edge.service.views)."""
        slots = self.pipeline.stats["cameras"] if self.pipeline is not None else None
        return cameras_json(self.sources, self.cameras, self.freshness(), slots)

    def live_stats(self) -> dict[str, Any]:
        """What /metrics reports (see edge.service.views)."""
        if self.pipeline is None:
            return {}
        return metrics_stats(self.sources, self.cameras, self.freshness(), self.pipeline.stats, self.streams,
                             self._model_info)
