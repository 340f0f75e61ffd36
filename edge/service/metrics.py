"""Prometheus metrics of `edge serve`, in their own CollectorRegistry (served at /metrics).

Counters the pipeline and the camera already keep (frames, drops, reconnects) are read at scrape time by a
custom collector, so there is one source of truth; per-inference histograms are fed by a pipeline listener.

Everything that belongs to one camera carries a `camera` label (its index, "0" for a single camera, so a fleet of
one-camera and several-camera devices is queried alike): frames, drops, fps, frame age, reconnects, latency, label
changes, stream clients, per-camera outputs; `edge_camera_info{camera, source}` says which camera an index is (its
source, credentials redacted). Service-wide: `edge_healthy` (every camera), inference time (one model),
reloads, `edge_model_info`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from edge.runtime.outputs.changes import LabelChanges
from edge.runtime.prediction import Prediction

CONTENT_TYPE = CONTENT_TYPE_LATEST

# milliseconds on a Jetson / CPU: 1 ms (TensorRT squeezenet) .. 2 s (eager AlexNet on a loaded Nano)
_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0)

# stats() key -> (metric name, kind, help)
_SERVICE = {
    "healthy": ("edge_healthy", "gauge", "1 while every camera's frames and predictions are fresh (same as /healthz)"),
}
# key of each stats()["cameras"] entry -> (metric name, kind, help); labelled with the entry's "camera"
_PER_CAMERA = {
    "frames_captured": ("edge_frames_captured", "counter", "Frames delivered by the video source"),
    "frames_processed": ("edge_frames_processed", "counter", "Frames classified by the pipeline"),
    "frames_dropped": ("edge_frames_dropped", "counter",
                       "Frames replaced by a newer one before inference (latest-frame-only policy)"),
    "source_reconnects": ("edge_source_reconnects", "counter", "Times the video source was reopened"),
    "source_errors": ("edge_source_errors", "counter", "Video source read/open errors"),
    "fps": ("edge_fps", "gauge", "Classified frames per second (recent average)"),
    "frame_age_seconds": ("edge_frame_age_seconds", "gauge", "Age of the newest captured frame"),
    "healthy": ("edge_camera_healthy", "gauge", "1 while this camera's frames and predictions are fresh"),
    "stream_clients": ("edge_http_stream_clients", "gauge", "Connected /stream.mjpg clients"),
}


def _family(name: str, kind: str, help_: str,
            labels: list[str] | None = None) -> CounterMetricFamily | GaugeMetricFamily:
    return (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, help_, labels=labels)


class _LiveCollector:
    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self._stats()
        for key, (name, kind, help_) in _SERVICE.items():
            if s.get(key) is not None:
                fam = _family(name, kind, help_, labels=[])
                fam.add_metric([], float(s[key]))
                yield fam
        cameras = s.get("cameras") or []
        for key, (name, kind, help_) in _PER_CAMERA.items():
            values = [(str(c["camera"]), c[key]) for c in cameras if c.get(key) is not None]
            if values:
                fam = _family(name, kind, help_, labels=["camera"])
                for camera, v in values:
                    fam.add_metric([camera], float(v))
                yield fam
        if any(c.get("source") for c in cameras):
            fam = GaugeMetricFamily("edge_camera_info", "Each camera's source, credentials redacted (always 1)",
                                    labels=["camera", "source"])
            for c in cameras:
                fam.add_metric([str(c["camera"]), str(c.get("source") or "")], 1.0)
            yield fam
        # shared outputs (events, on-change) have no camera; a camera's own (record, http-stream) have its label
        alive = [({"output": n}, a) for n, a in (s.get("outputs") or {}).items()]
        alive += [({"camera": str(c["camera"]), "output": n}, a) for c in cameras
                  for n, a in (c.get("outputs") or {}).items()]
        if alive:
            fam = GaugeMetricFamily("edge_output_alive", "1 while an output works (0 after it failed and was dropped)")
            for labels, ok in alive:
                fam.add_sample("edge_output_alive", labels, 1.0 if ok else 0.0)
            yield fam
        model = s.get("model")
        if model:
            fam = GaugeMetricFamily("edge_model_info", "The model being served (value is always 1)",
                                    labels=list(model))
            fam.add_metric([str(v) for v in model.values()], 1.0)
            yield fam

    def describe(self) -> list[GaugeMetricFamily]:  # no fixed description: labels of edge_model_info vary
        return []


class ServiceMetrics:
    """The registry plus the metrics `edge serve` updates itself. `changes`: the service's shared label-change
    decider, so edge_label_changes_total counts exactly the changes --events and --on-change see. `cameras`: how
    many, so that every camera's series exist (at 0) from the start and rate() works at once."""

    def __init__(self, stats: Callable[[], dict[str, Any]], changes: LabelChanges | None = None,
                 cameras: int = 1) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.inference = Histogram("edge_inference_seconds", "Model inference time per frame (backend.infer; a "
                                   "batch's time is shared among its frames)", buckets=_BUCKETS, registry=self.registry)
        self.latency = Histogram("edge_latency_seconds", "Frame arrival to prediction (queueing + preprocess + infer)",
                                 ["camera"], buckets=_BUCKETS, registry=self.registry)
        self.label_changes = Counter("edge_label_changes", "Changes of the shown (smoothed) label, the first "
                                     "label included (one per --events line)", ["camera"], registry=self.registry)
        for camera in range(cameras):
            self.latency.labels(str(camera))
            self.label_changes.labels(str(camera))
        self.reloads = Counter("edge_model_reloads", "Model reloads (SIGHUP) by result", ["result"],
                               registry=self.registry)
        for r in ("ok", "failed"):
            self.reloads.labels(r)  # export both series from the start (0), so rate() works at once
        self.registry.register(_LiveCollector(stats))
        self.changes = changes or LabelChanges()

    def listener(self, prediction: Prediction, timings: dict[str, float] | None = None) -> None:
        """Pipeline listener: called on the inference thread after each prediction (cheap: a few adds)."""
        camera = str(prediction.camera)
        self.inference.observe(prediction.infer_ms / 1000.0 / max(1.0, (timings or {}).get("batch", 1.0)))
        self.latency.labels(camera).observe(prediction.latency_ms / 1000.0)
        if self.changes.observe(prediction) is not None:
            self.label_changes.labels(camera).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
