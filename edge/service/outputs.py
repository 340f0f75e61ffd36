"""The one table of `edge serve`'s outputs: `OUTPUTS`, one entry per output, read by edge.service.assembly.

An entry says which options turn the output on (`enabled(cfg)`), how to build it from the config (`build(cfg,
place)`), and whether each camera gets its own (its frames only: `per_camera`) or one is shared by every camera.
Adding an output is: its module in edge/runtime/outputs/ (an `Output` subclass), its options in
edge/service/config.py, and one entry here. The table's order is the order the outputs get each frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from edge.runtime.outputs.changes import LabelChanges

if TYPE_CHECKING:
    from edge.runtime.outputs.base import Output
    from edge.service.config import ServeConfig


@dataclass(frozen=True)
class Place:
    """Where an output being built goes: `camera` (its index; None for a shared output), of `cameras` in all, the
    service's one label-change decision (`changes`) that events, on-change and the metric share, and the /metrics
    registry (`registry`) where an output with counters of its own registers them (None: no /metrics)."""

    camera: int | None
    cameras: int
    changes: LabelChanges
    registry: Any = None


@dataclass(frozen=True)
class OutputEntry:
    options: tuple[str, ...]  # the ServeConfig options it reads (the first one turns it on, unless `enabled` says)
    build: Callable[["ServeConfig", Place], "Output"]  # imports its module itself: heavy ones load only when used
    per_camera: bool = False  # each camera its own (its frames only), or one shared by every camera
    enabled: Callable[["ServeConfig"], bool] | None = None  # default: the first option is set

    def wanted(self, cfg: "ServeConfig") -> bool:
        if self.enabled is not None:
            return self.enabled(cfg)
        value = getattr(cfg, self.options[0])
        return value is not None and value is not False


def _record(cfg: "ServeConfig", place: Place) -> "Output":
    from edge.runtime.outputs.record import RecordOutput, camera_path

    assert cfg.record is not None and place.camera is not None
    # realtime recording repeats/skips frames to follow the wall clock: the file rate need not match the source
    return RecordOutput(camera_path(cfg.record, place.camera, place.cameras), fps=cfg.fps or 15.0)


def _stream(cfg: "ServeConfig", place: Place) -> "Output":
    from edge.runtime.outputs.stream import StreamOutput

    return StreamOutput(cfg.jpeg_quality)


def _events(cfg: "ServeConfig", place: Place) -> "Output":
    from edge.runtime.outputs.events import EventsOutput

    assert cfg.events is not None
    return EventsOutput(cfg.events, changes=place.changes)


def _on_change(cfg: "ServeConfig", place: Place) -> "Output":
    from edge.runtime.outputs.on_change import OnChangeOutput

    assert cfg.on_change is not None
    return OnChangeOutput(cfg.on_change, cfg.on_change_interval, cfg.on_change_timeout, changes=place.changes)


def _display(cfg: "ServeConfig", place: Place) -> "Output":
    from edge.runtime.outputs.display import DisplayOutput

    return DisplayOutput()


def _mqtt(cfg: "ServeConfig", place: Place) -> "Output":
    from edge.service.mqtt_setup import build_mqtt_output

    return build_mqtt_output(cfg, place.changes, place.registry)


# name -> entry. The only place outputs are wired to the service.
OUTPUTS: dict[str, OutputEntry] = {
    "record": OutputEntry(("record", "fps"), _record, per_camera=True),  # run.mp4, or run.camN.mp4 per camera
    "stream": OutputEntry(("http", "jpeg_quality"), _stream, per_camera=True),  # /stream.mjpg?camera=N
    "events": OutputEntry(("events",), _events),
    "on_change": OutputEntry(("on_change", "on_change_interval", "on_change_timeout"), _on_change),
    "display": OutputEntry(("display",), _display),
    "mqtt": OutputEntry(("mqtt", "mqtt_password_file", "mqtt_ca", "mqtt_discovery", "mqtt_discovery_prefix",
                         "mqtt_images"), _mqtt),  # state, events, availability, Home Assistant discovery
}
