"""What /api/cameras and /metrics show of each camera: plain dicts built from the cameras, the pipeline's stats
(`Pipeline.stats`, one entry per camera) and the one health decision (`ServiceHealth`), so they cannot disagree.

A camera that is not healthy shows fps 0, not the last rate it had: a dashboard must not show a dead camera at 30 fps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from edge.runtime.sources import redact_uri
from edge.service.health import CameraStatus, ServiceHealth

if TYPE_CHECKING:
    from edge.runtime.outputs.stream import StreamOutput


def cameras_json(sources: Sequence[str], cameras: Sequence[CameraStatus], health: ServiceHealth,
                 slots: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """/api/cameras: each camera's id, source (credentials redacted), state, health status, reason and error, fps,
    frames, drops, reconnects and shown label. `slots`: the pipeline's per-camera stats (None before it exists)."""
    slots = slots or [{} for _ in cameras]
    return [{
        "camera": i,
        "source": redact_uri(uri),
        "state": h.source_state,
        "status": h.status,
        "reason": h.reason,  # why it is not ok ("" when it is)
        "error": h.source_error,  # the camera's last error while it reconnects, e.g. why it cannot be opened
        "fps": slot.get("fps", 0.0) if h.ok else 0.0,
        "frames": slot.get("frames", 0),
        "drops": slot.get("drops", 0),
        "reconnects": camera.reconnects,
        "label": slot.get("label"),
    } for i, (uri, camera, h, slot) in enumerate(zip(sources, cameras, health.cameras, slots))]


def metrics_stats(sources: Sequence[str], cameras: Sequence[CameraStatus], health: ServiceHealth,
                  stats: dict[str, Any], streams: Sequence[StreamOutput], model: dict[str, str]) -> dict[str, Any]:
    """What edge.service.metrics reads at scrape time: service-wide values and one entry per camera. `stats`:
    `Pipeline.stats`; `streams`: each camera's StreamOutput (empty without --http); `model`: edge_model_info."""
    per_camera = [{
        "camera": i,
        "source": redact_uri(uri),
        "frames_captured": max(0, int(cam.frame_id) + 1),
        "frames_processed": slot["frames"],
        "frames_dropped": slot["drops"],
        "source_reconnects": cam.reconnects,
        "source_errors": cam.errors,
        "fps": slot["fps"] if h.ok else 0.0,
        "frame_age_seconds": h.frame_age_s,
        "healthy": 1 if h.ok else 0,
        "stream_clients": streams[i].clients if streams else None,
        "outputs": slot["outputs"],
    } for i, (uri, cam, h, slot) in enumerate(zip(sources, cameras, health.cameras, stats["cameras"]))]
    return {"healthy": 1 if health.ok else 0, "outputs": stats.get("outputs") or {}, "model": dict(model),
            "cameras": per_camera}
