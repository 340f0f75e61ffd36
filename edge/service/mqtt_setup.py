"""`edge serve --mqtt`: the broker target from the config (the password from the URL, $EDGE_MQTT_PASSWORD or
--mqtt-password-file), the MqttOutput it builds, and its /metrics series.

Metrics: edge_mqtt_connected (0/1), edge_mqtt_messages_published_total, edge_mqtt_events_dropped_total (label
changes pushed out of the full queue while the broker was away), edge_mqtt_events_queued (label changes waiting
for the broker). State and snapshots are not queued: only the newest is kept.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

from edge.core.errors import EdgeError
from edge.runtime.outputs.mqtt_topics import MqttTarget, parse_mqtt_url
from edge.service.config import MQTT_PASSWORD_ENV, ServeConfig


def mqtt_target(url: str, password_file: str | None = None, env: Mapping[str, str] | None = None) -> MqttTarget:
    """The parsed URL with its password: --mqtt-password-file, else $EDGE_MQTT_PASSWORD, else the URL's."""
    env = os.environ if env is None else env
    target = parse_mqtt_url(url)
    password = target.password
    if password_file:
        try:
            password = Path(password_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise EdgeError(f"--mqtt-password-file: cannot read {password_file!r} "
                            f"({getattr(e, 'strerror', None) or e})") from None
    elif env.get(MQTT_PASSWORD_ENV):
        password = env[MQTT_PASSWORD_ENV]
    if password is not None and target.username is None:
        raise EdgeError("--mqtt: a password is given but the URL has no user name; write mqtt://USER@HOST")
    return dataclasses.replace(target, password=password)


class MqttCollector:
    """The MQTT output's counters, read at scrape time (one source of truth)."""

    def __init__(self, output: Any) -> None:
        self.output = output

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.output.stats()
        for name, cls, key, help_ in (
            ("edge_mqtt_connected", GaugeMetricFamily, "connected", "1 while connected to the MQTT broker"),
            ("edge_mqtt_messages_published", CounterMetricFamily, "published", "MQTT messages handed to the broker"),
            ("edge_mqtt_events_dropped", CounterMetricFamily, "dropped",
             "Label changes dropped from the full MQTT queue (the oldest first) while the broker was away"),
            ("edge_mqtt_events_queued", GaugeMetricFamily, "queued", "Label changes waiting for the MQTT broker"),
        ):
            fam = cls(name, help_)
            fam.add_metric([], float(s[key]))
            yield fam

    def describe(self):
        return []


def build_mqtt_output(cfg: ServeConfig, changes: Any, registry: Any = None) -> Any:
    """The MqttOutput for `cfg` (sharing the service's label-change decider), its metrics in `registry`."""
    from edge.runtime.outputs.mqtt import MqttOutput

    assert cfg.mqtt is not None
    output = MqttOutput(mqtt_target(cfg.mqtt, cfg.mqtt_password_file), cameras=len(cfg.sources),
                        ca_file=cfg.mqtt_ca, discovery=cfg.mqtt_discovery,
                        discovery_prefix=cfg.mqtt_discovery_prefix, images=cfg.mqtt_images, changes=changes,
                        stale_s=cfg.health_max_age, max_backoff=max(cfg.max_backoff, 1.0),
                        model=Path(cfg.model).name, jpeg_quality=cfg.jpeg_quality)
    if registry is not None:
        registry.register(MqttCollector(output))
    return output


def remove_discovery_from_args(ns: Any) -> str:
    """`edge serve --mqtt-discovery-remove`: clear this device's Home Assistant configs (the --mqtt options from
    flags and/or --config; no model or source needed) -> the line to print."""
    from edge.runtime.outputs.mqtt import remove_discovery
    from edge.service.config import load_config_file

    values: dict[str, Any] = load_config_file(ns.config) if getattr(ns, "config", None) else {}
    values.update({k: v for k, v in vars(ns).items() if k.startswith("mqtt") and k != "mqtt_discovery_remove"})
    if not values.get("mqtt"):
        raise EdgeError("--mqtt-discovery-remove needs the broker: pass --mqtt URL (or set `mqtt` in --config)")
    target = mqtt_target(values["mqtt"], values.get("mqtt_password_file"))
    n = remove_discovery(target, values.get("mqtt_ca"), values.get("mqtt_discovery_prefix") or "homeassistant")
    return f"removed {n} Home Assistant discovery config(s) of {target.node} from {target.display}"
