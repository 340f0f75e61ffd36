"""Prometheus metrics of `edge serve`, in their own CollectorRegistry (served at /metrics).

Counters the pipeline and the camera already keep (frames, drops, reconnects) are read at scrape time by a
custom collector, so there is one source of truth; per-inference histograms are fed by a pipeline listener.
"""

from __future__ import annotations

from typing import Any, Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from edge.runtime.outputs.changes import LabelChanges

CONTENT_TYPE = CONTENT_TYPE_LATEST

# milliseconds on a Jetson / CPU: 1 ms (TensorRT squeezenet) .. 2 s (eager AlexNet on a loaded Nano)
_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0)

# stats() key -> (metric name, kind, help)
_LIVE = {
    "frames_captured": ("edge_frames_captured", "counter", "Frames delivered by the video source"),
    "frames_processed": ("edge_frames_processed", "counter", "Frames classified by the pipeline"),
    "frames_dropped": ("edge_frames_dropped", "counter",
                       "Frames replaced by a newer one before inference (latest-frame-only policy)"),
    "source_reconnects": ("edge_source_reconnects", "counter", "Times the video source was reopened"),
    "source_errors": ("edge_source_errors", "counter", "Video source read/open errors"),
    "fps": ("edge_fps", "gauge", "Classified frames per second (recent average)"),
    "frame_age_seconds": ("edge_frame_age_seconds", "gauge", "Age of the newest captured frame"),
    "healthy": ("edge_healthy", "gauge", "1 while frames and predictions are fresh (same as /healthz)"),
    "stream_clients": ("edge_http_stream_clients", "gauge", "Connected /stream.mjpg clients"),
}


class _LiveCollector:
    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats

    def collect(self):
        s = self._stats()
        for key, (name, kind, help_) in _LIVE.items():
            v = s.get(key)
            if v is None:
                continue
            fam = CounterMetricFamily(name, help_) if kind == "counter" else GaugeMetricFamily(name, help_)
            fam.add_metric([], float(v))
            yield fam
        outputs = s.get("outputs") or {}
        if outputs:
            fam = GaugeMetricFamily("edge_output_alive", "1 while an output works (0 after it failed and was dropped)",
                                    labels=["output"])
            for name, alive in outputs.items():
                fam.add_metric([name], 1.0 if alive else 0.0)
            yield fam
        model = s.get("model")
        if model:
            fam = GaugeMetricFamily("edge_model_info", "The model being served (value is always 1)",
                                    labels=list(model))
            fam.add_metric([str(v) for v in model.values()], 1.0)
            yield fam

    def describe(self):  # no fixed description: labels of edge_model_info vary
        return []


class ServiceMetrics:
    """The registry plus the metrics `edge serve` updates itself. `changes`: the service's shared label-change
    decider, so edge_label_changes_total counts exactly the changes --events and --on-change see."""

    def __init__(self, stats: Callable[[], dict[str, Any]], changes: LabelChanges | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.inference = Histogram("edge_inference_seconds", "Model inference time per frame (backend.infer)",
                                   buckets=_BUCKETS, registry=self.registry)
        self.latency = Histogram("edge_latency_seconds", "Frame arrival to prediction (queueing + preprocess + infer)",
                                 buckets=_BUCKETS, registry=self.registry)
        self.label_changes = Counter("edge_label_changes", "Changes of the shown (smoothed) label, the first "
                                     "label included (one per --events line)", registry=self.registry)
        self.reloads = Counter("edge_model_reloads", "Model reloads (SIGHUP) by result", ["result"],
                               registry=self.registry)
        for r in ("ok", "failed"):
            self.reloads.labels(r)  # export both series from the start (0), so rate() works at once
        self.registry.register(_LiveCollector(stats))
        self.changes = changes or LabelChanges()

    def listener(self, prediction: Any, timings: Any = None) -> None:
        """Pipeline listener: called on the inference thread after each prediction (cheap: a few adds)."""
        infer_ms = getattr(prediction, "infer_ms", None)
        if infer_ms is not None:
            self.inference.observe(infer_ms / 1000.0)
        latency_ms = getattr(prediction, "latency_ms", None)
        if latency_ms is not None:
            self.latency.observe(latency_ms / 1000.0)
        if self.changes.observe(prediction) is not None:
            self.label_changes.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
