"""`--mqtt`: publish each camera's state, label changes, availability and snapshots to an MQTT broker (paho-mqtt).

Topics and payloads: edge.runtime.outputs.mqtt_topics. `write` never waits on the network: it records the newest
prediction per camera and appends label changes to a bounded queue (the oldest is dropped, and counted, when it is
full); a publisher thread sends them, and paho's own network thread connects and reconnects with backoff. While
the broker is away, label changes wait in the queue and go out in order once it is back; the retained state,
availability, snapshots and Home Assistant discovery configs are published again on every (re)connect (a broker
restarted without persistence has forgotten them). SIGTERM (close) publishes `offline` before disconnecting; a
crash leaves it to the last will.
"""

from __future__ import annotations

import collections
import logging
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.core.errors import EdgeError
from edge.runtime.outputs.base import Output
from edge.runtime.outputs.changes import LabelChanges
from edge.runtime.outputs.mqtt_topics import (
    OFFLINE,
    ONLINE,
    MqttTarget,
    discovery_configs,
    event_payload,
    state_payload,
)

log = logging.getLogger(__name__)

STATE_INTERVAL_S = 1.0  # the retained state is refreshed at most this often (at once on a label change)
TICK_S = 0.2  # publisher's period for states and availability


def _paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise EdgeError("--mqtt needs paho-mqtt: pip install 'jetson-edge-classifier[mqtt]' "
                        "(or pip install paho-mqtt)") from None
    if not hasattr(mqtt, "CallbackAPIVersion"):
        raise EdgeError("--mqtt needs paho-mqtt 2.0 or newer: pip install -U paho-mqtt")
    return mqtt


def make_client(target: MqttTarget, client_id: str = "", ca_file: str | None = None) -> Any:
    """A paho client with the target's credentials and TLS set (not connected)."""
    mqtt = _paho()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    if target.username is not None:
        client.username_pw_set(target.username, target.password)
    if target.tls:
        try:
            client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
        except (OSError, ssl.SSLError) as e:
            raise EdgeError(f"--mqtt-ca {ca_file!r}: cannot load the CA file ({e})") from None
    return client


@dataclass
class _Camera:
    """What the publisher still has to send for one camera (guarded by MqttOutput._lock)."""

    prediction: Any = None  # newest
    state_due: bool = False  # a label change: publish the state at once
    last_seen: float = -1e9  # monotonic time of its newest prediction
    image: np.ndarray | None = None  # annotated frame of the newest label change, not encoded yet
    jpeg: bytes | None = None  # the newest snapshot sent (published again after a reconnect)
    sent_state: Any = None  # publisher only: the prediction whose state went out last
    sent_state_at: float = -1e9
    sent_online: str | None = None


class MqttOutput(Output):
    """Publishes to MQTT on its own thread; see the module docstring. `changes`: the service's shared decider."""

    name = "mqtt"

    def __init__(self, target: MqttTarget, cameras: int = 1, *, ca_file: str | None = None,
                 discovery: bool = True, discovery_prefix: str = "homeassistant", images: bool = True,
                 changes: LabelChanges | None = None, queue_size: int = 1000, stale_s: float = 3.0,
                 max_backoff: float = 30.0, model: str = "", jpeg_quality: int = 80) -> None:
        super().__init__()
        self.target = target
        self.cameras = cameras
        self.discovery = discovery
        self.discovery_prefix = discovery_prefix
        self.images = images
        self.changes = changes or LabelChanges()
        self.stale_s = float(stale_s)
        self.model = model
        self.jpeg_quality = int(jpeg_quality)
        self.published = 0
        self.dropped = 0  # label changes pushed out of the full queue
        self.connects = 0
        self.connected = False
        self._lock = threading.Lock()
        self._events: collections.deque[tuple[int, str]] = collections.deque()
        self._queue_size = int(queue_size)
        self._cams = {i: _Camera() for i in range(cameras)}
        self._wake = threading.Event()
        self._announce = False
        self._closed = False
        self._logged: set[str] = set()  # connection problems already logged (each once until connected)
        self.client = make_client(target, client_id=f"edge-{target.node}", ca_file=ca_file)
        self.client.will_set(target.availability, OFFLINE, qos=1, retain=True)
        self.client.reconnect_delay_set(1, max(1, int(max_backoff)))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.connect_async(target.host, target.port, keepalive=30)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._worker, name="mqtt-publisher", daemon=True)
        self._thread.start()
        log.info("mqtt: publishing to %s", target.display)

    # ------------------------------------------------------------------ pipeline side (must return at once)
    def write(self, frame: np.ndarray, prediction: Any) -> None:
        change = self.changes.observe(prediction)
        camera = int(getattr(prediction, "camera", 0))
        with self._lock:
            cam = self._cams.setdefault(camera, _Camera())
            cam.prediction = prediction
            cam.last_seen = time.monotonic()
            if change is None:
                return
            cam.state_due = True
            if len(self._events) >= self._queue_size:
                self._events.popleft()
                self.dropped += 1
                if self.dropped == 1:
                    log.warning("mqtt: the event queue is full (broker away?); dropping the oldest events")
            self._events.append((camera, event_payload(change, getattr(prediction, "novelty", None))))
            if self.images:  # only the newest change's snapshot is kept (replaced, like the state)
                cam.image = frame.copy()  # the pipeline reuses its buffer
        self._wake.set()

    # ------------------------------------------------------------------ paho's network thread
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any = None) -> None:
        if getattr(reason_code, "is_failure", False):
            why = str(reason_code)
            hint = " (check the user name and password)" if "auth" in why.lower() or "password" in why.lower() else ""
            self._log_once(f"refused:{why}", f"mqtt: broker {self.target.display} refused the connection: "
                                             f"{why}{hint}; retrying")
            return
        self.connects += 1
        if self.connects > 1 or self._logged:
            log.info("mqtt: connected to %s", self.target.display)
        self._logged.clear()
        self.connected = True
        self._announce = True
        self._wake.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any = None) -> None:
        was, self.connected = self.connected, False
        if was:
            self._logged.add("unreachable")  # the retries that follow are this outage, already logged
        if was and not self._closed:
            log.warning("mqtt: lost the broker %s (%s); reconnecting, events are kept until it is back",
                        self.target.display, reason_code)

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._log_once("unreachable", f"mqtt: cannot reach the broker {self.target.display}; the service goes on "
                                      "and retries in the background")

    def _log_once(self, key: str, message: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.error("%s", message)

    # ------------------------------------------------------------------ publisher thread
    def _publish(self, topic: str, payload: str | bytes, qos: int = 0, retain: bool = False) -> bool:
        """False when the connection is gone (a QoS 1 message is then kept by paho and sent after reconnecting)."""
        rc = self.client.publish(topic, payload, qos=qos, retain=retain).rc
        if rc == 0 or (qos > 0 and rc == 4):  # 4: MQTT_ERR_NO_CONN, kept in paho's queue for QoS 1
            self.published += 1
            return rc == 0
        return False

    def _worker(self) -> None:
        while True:
            self._wake.wait(TICK_S)
            self._wake.clear()
            if self._closed:
                return
            if not self.connected:
                continue
            try:
                self._send_pending()
            except Exception:  # a bug here must not end publishing for good
                log.exception("mqtt: publishing failed")
                time.sleep(1.0)

    def _send_pending(self) -> None:
        if self._announce:
            self._announce = False
            self._send_announce()
        while self.connected:  # label changes, oldest first
            with self._lock:
                if not self._events:
                    break
                camera, payload = self._events[0]
            if not self._publish(self.target.camera_topic(camera, "event"), payload, qos=1):
                return  # gone: wait for the reconnect (a message paho kept is not sent twice: see _publish)
            with self._lock:
                if self._events and self._events[0][1] is payload:
                    self._events.popleft()
        now = time.monotonic()
        for camera, cam in list(self._cams.items()):
            with self._lock:
                pred, due, image, seen = cam.prediction, cam.state_due, cam.image, cam.last_seen
                cam.state_due, cam.image = False, None
            online = ONLINE if now - seen < self.stale_s else OFFLINE
            if online != cam.sent_online and self._publish(self.target.camera_topic(camera, "availability"),
                                                           online, qos=1, retain=True):
                cam.sent_online = online
            if pred is not None and pred is not cam.sent_state and (due or now - cam.sent_state_at >= STATE_INTERVAL_S):
                if self._publish(self.target.camera_topic(camera, "state"), state_payload(pred), qos=0, retain=True):
                    cam.sent_state, cam.sent_state_at = pred, now
            if image is not None:
                self._send_image(camera, cam, image)

    def _send_image(self, camera: int, cam: _Camera, image: np.ndarray) -> None:
        import cv2

        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if ok:
            cam.jpeg = buf.tobytes()
            self._publish(self.target.camera_topic(camera, "image"), cam.jpeg, qos=0, retain=True)

    def _send_announce(self) -> None:
        """After each (re)connect: discovery configs, `online`, and what a restarted broker may have forgotten."""
        if self.discovery:
            for camera in range(self.cameras):
                for topic, payload in discovery_configs(self.target, camera, self.discovery_prefix, self.images,
                                                        model=self.model):
                    self._publish(topic, payload, qos=1, retain=True)
        self._publish(self.target.availability, ONLINE, qos=1, retain=True)
        for camera, cam in list(self._cams.items()):
            cam.sent_online, cam.sent_state = None, None  # sent again below
            if cam.jpeg is not None:
                self._publish(self.target.camera_topic(camera, "image"), cam.jpeg, qos=0, retain=True)

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Send what is queued (briefly), mark every camera and the service `offline`, disconnect."""
        deadline = time.monotonic() + 1.5
        while self.connected and self._events and time.monotonic() < deadline - 1.0:
            self._wake.set()
            time.sleep(0.05)
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=1.0)
        if self.connected:
            infos = [self.client.publish(self.target.camera_topic(c, "availability"), OFFLINE, qos=1, retain=True)
                     for c in list(self._cams)]
            infos.append(self.client.publish(self.target.availability, OFFLINE, qos=1, retain=True))
            for info in infos:
                try:
                    info.wait_for_publish(max(0.05, deadline - time.monotonic()))
                except (RuntimeError, ValueError):  # not queued (connection just went): the last will says it
                    break
        self.client.disconnect()
        self.client.loop_stop()

    def stats(self) -> dict[str, Any]:
        """For /metrics: connected (0/1), messages published, dropped, label changes waiting."""
        with self._lock:
            queued = len(self._events)
        return {"connected": 1 if self.connected else 0, "published": self.published, "dropped": self.dropped,
                "queued": queued, "connects": self.connects}


def connect_check(target: MqttTarget, ca_file: str | None = None, timeout: float = 5.0) -> str | None:
    """Connect once and wait for the broker's answer: None when it accepts us, else what went wrong (one line)."""
    client = make_client(target, client_id="", ca_file=ca_file)
    result: list[str | None] = []
    done = threading.Event()

    def on_connect(c: Any, u: Any, flags: Any, reason_code: Any, properties: Any = None) -> None:
        result.append(f"the broker refused the connection: {reason_code}"
                      if getattr(reason_code, "is_failure", False) else None)
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(target.host, target.port, keepalive=10)
    except (OSError, ssl.SSLError) as e:
        return f"cannot reach {target.host}:{target.port}: {e}"
    client.loop_start()
    try:
        if not done.wait(timeout):
            return f"no answer from {target.host}:{target.port} within {timeout:g} s (not an MQTT broker?)"
        return result[0]
    finally:
        client.disconnect()
        client.loop_stop()


def remove_discovery(target: MqttTarget, ca_file: str | None = None, prefix: str = "homeassistant",
                     wait_s: float = 1.5) -> int:
    """Clear every retained discovery config of this device (any camera count) -> how many were removed."""
    problem = connect_check(target, ca_file)
    if problem:
        raise EdgeError(f"--mqtt-discovery-remove: {problem}")
    client = make_client(target, ca_file=ca_file)
    found: set[str] = set()
    mine = f"{target.node}_cam"

    def on_message(c: Any, u: Any, msg: Any) -> None:
        levels = msg.topic.split("/")
        if msg.retain and msg.payload and len(levels) >= 3 and levels[-3].startswith(mine):
            found.add(msg.topic)

    client.on_message = on_message
    client.connect(target.host, target.port, keepalive=10)
    client.loop_start()
    try:
        client.subscribe(f"{prefix}/+/+/+/config", qos=1)
        time.sleep(wait_s)  # retained messages arrive right after subscribing
        infos = [client.publish(topic, b"", qos=1, retain=True) for topic in sorted(found)]
        for info in infos:
            info.wait_for_publish(5.0)
    finally:
        client.disconnect()
        client.loop_stop()
    return len(found)
