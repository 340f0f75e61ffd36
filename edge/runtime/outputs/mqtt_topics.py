"""MQTT without the network: the `--mqtt` URL, the topic layout, the messages and Home Assistant's discovery configs.

Topics (ROOT: the URL's path, default `edge/<hostname>`; N: the camera index):
  ROOT/availability        `online` / `offline`, retained; `offline` is also the connection's last will
  ROOT/camN/availability   `online` while camera N's predictions flow, `offline` when they stop; retained
  ROOT/camN/state          JSON {label, confidence, top_label, novelty, unknown, fps, frame, time}; retained
  ROOT/camN/event          JSON per label change {label, previous, confidence, novelty, frame, time}; QoS 1
  ROOT/camN/image          the annotated JPEG at each label change; retained (with images on)
Home Assistant discovery (`<prefix>/<component>/<node>_camN/<object>/config`, retained): one device per camera
with a label sensor, a confidence sensor, an `unknown` binary sensor, a connectivity binary sensor and an image.
Unique ids are `<node>_camN_<object>`, `node` made from ROOT, so they stay the same across restarts.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import socket
import urllib.parse
from dataclasses import dataclass
from typing import Any

from edge.core.errors import EdgeError

DEFAULT_PORT = {"mqtt": 1883, "mqtts": 8883}
ONLINE, OFFLINE = "online", "offline"
# discovery object id -> component; the order configs are published and removed in
ENTITIES = (("label", "sensor"), ("confidence", "sensor"), ("unknown", "binary_sensor"),
            ("connectivity", "binary_sensor"), ("image", "image"))


@dataclass(frozen=True)
class MqttTarget:
    """A parsed `--mqtt` URL (the password is kept out of repr: it must not reach a log line)."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None
    root: str  # topic root, no leading/trailing slash

    def __repr__(self) -> str:
        return f"MqttTarget({self.display})"

    @property
    def display(self) -> str:
        """The URL without the password, for log lines."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}/{self.root}"

    @property
    def node(self) -> str:
        """The id Home Assistant's unique ids and device identifiers start with (stable: made from the root)."""
        return re.sub(r"[^A-Za-z0-9_-]+", "_", self.root).strip("_") or "edge"

    @property
    def availability(self) -> str:
        return f"{self.root}/availability"

    def camera_topic(self, camera: int, what: str) -> str:
        """ROOT/camN/{state,event,availability,image}."""
        return f"{self.root}/cam{camera}/{what}"


def _default_root() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]+", "-", socket.gethostname().split(".")[0]).strip("-") or "device"
    return f"edge/{host}"


def parse_mqtt_url(url: str) -> MqttTarget:
    """`mqtt[s]://[user[:password]@]host[:port][/topic/root]` -> MqttTarget; EdgeError naming the problem."""
    example = "e.g. mqtt://homeassistant.local or mqtts://user@broker:8883/edge/garage"
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise EdgeError(f"--mqtt: malformed URL ({e}); {example}") from None
    if parts.scheme not in DEFAULT_PORT:
        raise EdgeError(f"--mqtt: the URL must start with mqtt:// or mqtts://, got {parts.scheme or 'no'} scheme; "
                        f"{example}")
    if not parts.hostname:
        raise EdgeError(f"--mqtt: the URL has no broker host; {example}")
    if parts.query or parts.fragment or "?" in url or "#" in url.partition("@")[2] or url.endswith("#"):
        raise EdgeError(f"--mqtt: the URL takes no ?query or #fragment; {example}")
    root = parts.path.strip("/")
    if any(c in root for c in "+#") or "//" in root:
        raise EdgeError(f"--mqtt: the topic root {root!r} must not hold '+', '#' or empty levels")
    return MqttTarget(
        host=parts.hostname, port=port or DEFAULT_PORT[parts.scheme], tls=parts.scheme == "mqtts",
        username=urllib.parse.unquote(parts.username) if parts.username else None,
        password=urllib.parse.unquote(parts.password) if parts.password is not None else None,
        root=root or _default_root())


def split_password(url: str) -> tuple[str, str | None]:
    """`mqtt://user:pw@host/x` -> (`mqtt://user@host/x`, `pw`): the URL to write into a config file, and the
    password for a 0640 environment file. The URL is checked first (EdgeError)."""
    target = parse_mqtt_url(url)
    if target.password is None:
        return url.strip(), None
    parts = urllib.parse.urlsplit(url.strip())
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}@{host}")), target.password


def iso_time(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="milliseconds")


def _round(v: Any) -> float | None:
    return None if v is None else round(float(v), 4)


def state_payload(prediction: Any, unknown_label: str = "unknown") -> str:
    """The retained state of one camera, from its newest prediction."""
    probs = getattr(prediction, "probabilities", None) or {}
    top = max(probs, key=probs.get) if probs else getattr(prediction, "raw_label", None)
    return json.dumps({
        "label": prediction.label,
        "confidence": _round(prediction.confidence),
        "top_label": top,
        "novelty": _round(getattr(prediction, "novelty", None)),
        "unknown": prediction.label == unknown_label,
        "fps": round(float(getattr(prediction, "fps", 0.0)), 2),
        "frame": int(prediction.frame_id),
        "time": iso_time(float(prediction.timestamp)),
    })


def event_payload(change: Any, novelty: float | None) -> str:
    """One label change (edge.runtime.outputs.changes.LabelChange)."""
    return json.dumps({
        "label": change.label, "previous": change.previous, "confidence": _round(change.confidence),
        "novelty": _round(novelty), "frame": int(change.frame), "timestamp": round(float(change.timestamp), 3),
        "time": iso_time(float(change.timestamp)),
    })


def discovery_topic(prefix: str, target: MqttTarget, camera: int, object_id: str, component: str) -> str:
    return f"{prefix}/{component}/{target.node}_cam{camera}/{object_id}/config"


def discovery_configs(target: MqttTarget, camera: int, prefix: str = "homeassistant", images: bool = True,
                      camera_name: str | None = None, model: str = "") -> list[tuple[str, str]]:
    """[(config topic, JSON payload)] for one camera's device (see the module docstring)."""
    uid = f"{target.node}_cam{camera}"
    device = {"identifiers": [uid], "name": camera_name or f"{target.root.rsplit('/', 1)[-1]} camera {camera}",
              "manufacturer": "jetson-edge-classifier", "model": model or "edge serve"}
    service = {"topic": target.availability, "payload_available": ONLINE, "payload_not_available": OFFLINE}
    cam_avail = {"topic": target.camera_topic(camera, "availability"), "payload_available": ONLINE,
                 "payload_not_available": OFFLINE}
    state = target.camera_topic(camera, "state")
    common = {"device": device, "availability": [service, cam_avail], "availability_mode": "all"}
    configs: dict[str, dict[str, Any]] = {
        "label": {"name": "Label", "state_topic": state, "value_template": "{{ value_json.label }}",
                  "json_attributes_topic": state, "icon": "mdi:label", **common},
        "confidence": {"name": "Confidence", "state_topic": state, "unit_of_measurement": "%",
                       "value_template": "{{ (value_json.confidence * 100) | round(1) }}",
                       "state_class": "measurement", "icon": "mdi:percent", **common},
        "unknown": {"name": "Unknown", "state_topic": state, "payload_on": "ON", "payload_off": "OFF",
                    "value_template": "{{ 'ON' if value_json.unknown else 'OFF' }}", "icon": "mdi:help-circle",
                    **common},
        # connectivity: is the camera delivering? Available while the service is (its last will says when not)
        "connectivity": {"name": "Camera", "state_topic": cam_avail["topic"], "payload_on": ONLINE,
                         "payload_off": OFFLINE, "device_class": "connectivity", "entity_category": "diagnostic",
                         "device": device, "availability": [service]},
        "image": {"name": "Snapshot", "image_topic": target.camera_topic(camera, "image"),
                  "content_type": "image/jpeg", **common},
    }
    out = []
    for object_id, component in ENTITIES:
        if object_id == "image" and not images:
            continue
        payload = {**configs[object_id], "unique_id": f"{uid}_{object_id}"}
        out.append((discovery_topic(prefix, target, camera, object_id, component), json.dumps(payload)))
    return out
