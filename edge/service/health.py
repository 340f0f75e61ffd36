"""Is `edge serve` (each of its cameras) healthy? The one decision behind /healthz, `stale` in /api/prediction,
`edge_healthy`, the systemd STATUS line and the health log lines, so that none of them can disagree with another.

Ages come from time.monotonic() only: a Jetson without an RTC boots with a wrong wall clock and jumps when NTP
syncs, which must neither fake a stall nor hide one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from edge.runtime.sources import redact_uri


class CameraStatus(Protocol):
    """What health and the camera views read of a camera (edge.runtime.camera.Camera has all of it)."""

    state: str  # starting, streaming, reconnecting, ended, stopped
    frame_time: float  # time.monotonic() of the newest frame (0 before the first)
    last_error: str
    frame_id: int  # the newest frame's id (-1 before the first)
    reconnects: int
    errors: int


@dataclass(frozen=True)
class Health:
    """The service's health at one moment."""

    status: str  # "ok", "starting" (nothing classified yet) or "stale"
    reason: str  # why it is not ok, with ages ("" when ok)
    summary: str  # the same without ages, for a status line that is sent only when it changes ("" when ok)
    source_state: str  # the camera's state: starting, streaming, reconnecting, ended, stopped
    source_error: str  # the camera's last error while it reconnects (credentials redacted), else ""
    frame_age_s: float | None  # since the newest frame arrived (None before the first)
    prediction_age_s: float | None  # since the newest prediction (None before the first)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        """The /healthz body."""
        out: dict[str, Any] = {"status": self.status, "source_state": self.source_state}
        if self.reason:
            out["reason"] = self.reason
        if self.source_error:
            out["source_error"] = self.source_error
        for key in ("frame_age_s", "prediction_age_s"):
            value = getattr(self, key)
            if value is not None:
                out[key] = round(value, 3)
        return out


def assess(camera: CameraStatus, prediction_at: float | None, max_age: float, now: float | None = None) -> Health:
    """Health from the camera (`state`, `frame_time` and `last_error`) and the time.monotonic() of the newest
    prediction (None before the first): ok while both the newest frame and prediction are at most `max_age` old."""
    now = time.monotonic() if now is None else now
    state = str(camera.state)
    error = redact_uri(str(camera.last_error or "")) if state == "reconnecting" else ""
    frame_time = float(camera.frame_time or 0.0)
    frame_age = now - frame_time if frame_time else None
    prediction_age = None if prediction_at is None else now - prediction_at
    camera = f"camera reconnecting: {error}" if error else f"source {state}"

    def health(status: str, reason: str = "", summary: str = "") -> Health:
        return Health(status, reason, summary, state, error, frame_age, prediction_age)

    if prediction_age is None:
        return health("starting", f"no frame classified yet ({camera})",
                      camera if error else "waiting for the first frame")
    if frame_age is None or frame_age > max_age:
        what = "no frame from the source" if frame_age is None else f"no frame for {frame_age:.1f} s"
        return health("stale", f"{what} ({camera})", camera if error else f"no fresh frames ({camera})")
    if prediction_age > max_age:
        return health("stale", f"no prediction for {prediction_age:.1f} s (inference stalled)", "inference stalled")
    return health("ok")


_WORST_FIRST = ("stale", "starting", "ok")


@dataclass(frozen=True)
class ServiceHealth:
    """The health of every camera of the service, and the overall answer: ok only while every camera is ok (an
    unattended device must say when one of its cameras is down); else the worst camera's status, stale before
    starting. With one camera everything reads exactly as that camera's `Health`."""

    cameras: tuple[Health, ...]

    def _prefixed(self, what: str) -> str:
        if len(self.cameras) == 1:
            return getattr(self.cameras[0], what)
        return "; ".join(f"camera {i}: {getattr(h, what)}" for i, h in enumerate(self.cameras) if not h.ok)

    @property
    def status(self) -> str:
        return min((h.status for h in self.cameras), key=_WORST_FIRST.index)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def reason(self) -> str:
        """Why it is not ok, per unhealthy camera (`camera 1: no frame for 6.0 s (...)`), "" when ok."""
        return self._prefixed("reason")

    @property
    def summary(self) -> str:
        return self._prefixed("summary")

    @property
    def source_state(self) -> str:
        if len(self.cameras) == 1:
            return self.cameras[0].source_state
        return ", ".join(f"camera {i} {h.source_state}" for i, h in enumerate(self.cameras))

    def to_json(self) -> dict[str, Any]:
        """The /healthz body: `status`, `reason` and `cameras` (each camera's own, with its id); with one camera also
        that camera's fields at the top (`source_state`, `frame_age_s`...), as a single-camera service always had."""
        out: dict[str, Any] = {"status": self.status}
        if len(self.cameras) == 1:
            out.update(self.cameras[0].to_json())
        elif self.reason:
            out["reason"] = self.reason
        out["cameras"] = [{"camera": i, **h.to_json()} for i, h in enumerate(self.cameras)]
        return out


def assess_all(cameras: Sequence[CameraStatus], prediction_at: Sequence[float | None], max_age: float,
               now: float | None = None) -> ServiceHealth:
    """`assess` for each camera (with the time.monotonic() of its newest prediction), at one `now`."""
    now = time.monotonic() if now is None else now
    return ServiceHealth(tuple(assess(c, t, max_age, now) for c, t in zip(cameras, prediction_at)))
