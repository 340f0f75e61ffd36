"""Pipeline outputs (as in picamera2's `outputs/`): each takes the overlaid frame and its prediction.

One module per output, all built on `Output` (base.py): `record` (--record), `stream` (/stream.mjpg),
`events` (--events), `on_change` (--on-change), `display` (--display), `mqtt` (--mqtt; its topics, payloads and
Home Assistant discovery configs in `mqtt_topics`). Heavy ones import only when used.
`changes.LabelChanges` is the one decision of "the label changed" that events, on-change and metrics share.
"""

from __future__ import annotations

import importlib

from edge.runtime.outputs.base import CallbackOutput, Output

# class name -> module that defines it, imported on first use (cv2 windows, encoder threads...)
_LAZY = {
    "RecordOutput": "edge.runtime.outputs.record",
    "StreamOutput": "edge.runtime.outputs.stream",
    "EventsOutput": "edge.runtime.outputs.events",
    "OnChangeOutput": "edge.runtime.outputs.on_change",
    "DisplayOutput": "edge.runtime.outputs.display",
    "MqttOutput": "edge.runtime.outputs.mqtt",
}

__all__ = ["Output", "CallbackOutput", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
