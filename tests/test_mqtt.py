"""`edge serve --mqtt`: against a real Mosquitto broker (skipped with a reason where it is not installed).

What a Home Assistant user sees: discovery configs that parse with the keys Home Assistant requires, a state that
follows the test:// scene's arrow, label changes in order, `offline` after SIGTERM, events from a broker outage
delivered once it is back (while the pipeline kept classifying), and one clear line for a wrong password, an
unreachable broker and a malformed URL.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from mqtt_helpers import FPS, PERIOD, SOURCE, Broker, Subscriber, arrow_model, make_tls, need_mosquitto
from serve_helpers import Served, free_port

from edge.core.synthetic import SceneRenderer
from edge.runtime.outputs.mqtt_topics import ENTITIES, MqttTarget, discovery_configs, parse_mqtt_url

ROOT = "edge/testcam"


def true_arrow(frame: int) -> str:
    return SceneRenderer(8, 8, period_s=PERIOD).label_at(frame / FPS)


# Home Assistant's MQTT integration docs: sensor and binary_sensor need state_topic; image needs exactly one of
# image_topic / url_topic; an entity that belongs to a device needs unique_id, and device needs identifiers or
# connections.
REQUIRED = {"sensor": ("state_topic",), "binary_sensor": ("state_topic",), "image": ()}


def check_discovery_config(component: str, payload: dict) -> None:
    for key in REQUIRED[component]:
        assert isinstance(payload.get(key), str) and payload[key], (component, key, payload)
    if component == "image":
        assert ("image_topic" in payload) != ("url_topic" in payload), payload
    assert isinstance(payload.get("unique_id"), str) and payload["unique_id"]
    assert isinstance(payload["device"]["identifiers"], list) and payload["device"]["identifiers"]
    for avail in payload.get("availability", []):
        assert avail["topic"] and avail["payload_available"] and avail["payload_not_available"]
    assert payload.get("availability_mode", "all") in ("all", "any", "latest")


# ------------------------------------------------------------------------------------------------ no broker needed
def test_url_parsing_defaults_and_errors():
    t = parse_mqtt_url("mqtt://ha.local")
    assert (t.host, t.port, t.tls, t.username, t.password) == ("ha.local", 1883, False, None, None)
    assert t.root.startswith("edge/")
    t = parse_mqtt_url("mqtts://bob:s%40cret@broker:9000/home/garage/")
    assert (t.port, t.tls, t.username, t.password, t.root) == (9000, True, "bob", "s@cret", "home/garage")
    assert "s@cret" not in repr(t) and "s@cret" not in t.display
    for bad in ("http://x", "mqtt://", "mqtt://h:70000", "mqtt://h/a/#", "mqtt://h?x=1"):
        with pytest.raises(Exception) as e:
            parse_mqtt_url(bad)
        assert "--mqtt" in str(e.value)


def test_discovery_configs_are_what_home_assistant_requires():
    target = MqttTarget("h", 1883, False, None, None, ROOT)
    configs = discovery_configs(target, 1)
    assert [t.split("/")[1] for t, _ in configs] == [c for _, c in ENTITIES]
    ids = set()
    for topic, payload in configs:
        prefix, component, node, object_id, last = topic.split("/")
        assert (prefix, node, last) == ("homeassistant", "edge_testcam_cam1", "config")
        p = json.loads(payload)
        check_discovery_config(component, p)
        ids.add(p["unique_id"])
    assert len(ids) == len(configs)
    assert configs == discovery_configs(target, 1)  # stable across restarts
    assert "image" not in {t.split("/")[1] for t, _ in discovery_configs(target, 0, images=False)}


def test_password_from_file_or_environment(tmp_path):
    from edge.service.mqtt_setup import mqtt_target

    f = tmp_path / "pw"
    f.write_text("from-file\n")
    assert mqtt_target("mqtt://u@h", str(f), env={"EDGE_MQTT_PASSWORD": "env"}).password == "from-file"
    assert mqtt_target("mqtt://u:url@h", None, env={"EDGE_MQTT_PASSWORD": "env"}).password == "env"
    assert mqtt_target("mqtt://u:url@h", None, env={}).password == "url"


def test_malformed_url_exits_2_with_one_line(capsys):
    from edge.cli.serve import main

    assert main(["--model", "m.onnx", "--source", "test://", "--mqtt", "mqtt://u:hunter2@h:99999"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--mqtt" in err and "hunter2" not in err


# ------------------------------------------------------------------------------------------------ real broker
@pytest.fixture
def broker(tmp_path):
    need_mosquitto()
    b = Broker(tmp_path, free_port()).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return arrow_model(tmp_path_factory.mktemp("arrows") / "arrows.onnx")


def serve_args(model, port: int, *extra: str) -> list[str]:
    return ["--model", str(model), "--source", SOURCE, "--mqtt", f"mqtt://127.0.0.1:{port}/{ROOT}",
            "--min-dwell", "3", "--max-batch", "1", "--max-backoff", "1", *extra]


@pytest.mark.slow
def test_home_assistant_sees_the_camera_follow_the_scene_and_go_offline(tmp_path, broker, model):
    sub = Subscriber(broker.port, ["homeassistant/#", f"{ROOT}/#"])
    served = Served(tmp_path, "serve", serve_args(model, broker.port)).start()
    try:
        events = f"{ROOT}/cam0/event"
        sub.wait("four label changes", lambda: len(sub.json(events)) >= 4, timeout=90, log=served.log)
        rc, _ = served.terminate()
        assert rc == 0
    finally:
        served.kill()
    configs = [(t, json.loads(p)) for _, t, p, _ in sub.messages if t.startswith("homeassistant/") and p]
    assert {t.split("/")[1] for t, _ in configs} == {"sensor", "binary_sensor", "image"} and len(configs) >= 5
    for topic, payload in configs:
        check_discovery_config(topic.split("/")[1], payload)
    # the state follows the arrow the scene shows (--min-dwell 3: up to 3 frames after a flip it may lag)
    states = sub.json(f"{ROOT}/cam0/state")
    settled = [s for s in states if s["frame"] % int(PERIOD * FPS) >= 3]
    assert len(settled) >= 4 and all(s["label"] == true_arrow(s["frame"]) for s in settled), states
    assert set(states[0]) >= {"label", "confidence", "top_label", "novelty", "unknown", "fps", "time"}
    # label changes in order: each one's `previous` is the label before it, frames increase
    evs = sub.json(events)
    assert evs[0]["previous"] is None
    assert all(e["label"] == true_arrow(e["frame"]) for e in evs), evs
    for a, b in zip(evs, evs[1:]):
        assert b["previous"] == a["label"] != b["label"] and b["frame"] > a["frame"]
    assert sub.on(f"{ROOT}/cam0/image") and sub.on(f"{ROOT}/cam0/image")[-1][:2] == b"\xff\xd8"  # a JPEG
    sub.close()
    # after SIGTERM a newcomer (Home Assistant restarting) reads `offline` from the retained availability
    late = Subscriber(broker.port, [f"{ROOT}/availability", f"{ROOT}/cam0/availability"])
    late.wait("retained availability", lambda: late.last(f"{ROOT}/availability") and
              late.last(f"{ROOT}/cam0/availability"))
    assert late.last(f"{ROOT}/availability") == b"offline" and late.last(f"{ROOT}/cam0/availability") == b"offline"
    late.close()
    # --mqtt-discovery-remove clears the configs: Home Assistant drops the device
    from edge.cli.serve import main

    assert main(["--mqtt", f"mqtt://127.0.0.1:{broker.port}/{ROOT}", "--mqtt-discovery-remove"]) == 0
    check = Subscriber(broker.port, ["homeassistant/#"])
    time.sleep(1.0)
    assert [t for _, t, p, _ in check.messages if p] == []
    check.close()


@pytest.mark.slow
def test_broker_outage_events_arrive_after_in_order_and_the_pipeline_goes_on(tmp_path, broker, model):
    port = free_port()
    sub = Subscriber(broker.port, [f"{ROOT}/cam0/event"], client_id="test-outage")  # persistent session
    served = Served(tmp_path, "serve", serve_args(model, broker.port, "--http", f"127.0.0.1:{port}")).start()
    try:
        events = f"{ROOT}/cam0/event"
        sub.wait("the first label change", lambda: sub.json(events), timeout=90, log=served.log)
        frame = lambda: served.json("api/prediction", token=None)[1]["frame"]  # noqa: E731 - a one-line probe
        broker.stop()
        down_at = time.time()
        first = frame()
        time.sleep(2.5 * PERIOD)  # at least two flips of the arrow while the broker is away
        assert frame() > first + 5, "the pipeline stopped classifying while the broker was away"
        up_at = time.time()
        broker.start()
        sub.wait("an event from the outage", lambda: any(down_at < e["timestamp"] < up_at for e in sub.json(events)),
                 timeout=30, log=served.log)
        sub.wait("a label change after the outage", lambda: sub.json(events)[-1]["timestamp"] > up_at + 0.5,
                 timeout=3 * PERIOD + 10, log=served.log)
        metrics = served.get("metrics", token=None)[2].decode()
        assert "edge_mqtt_connected 1.0" in metrics and "edge_mqtt_events_dropped_total 0.0" in metrics
        assert served.terminate()[0] == 0
    finally:
        served.kill()
        sub.close()
    evs = sub.json(f"{ROOT}/cam0/event")
    unique = list({e["frame"]: e for e in evs}.values())  # QoS 1 is at least once
    assert [e["frame"] for e in unique] == sorted(e["frame"] for e in unique)
    for a, b in zip(unique, unique[1:]):
        assert b["previous"] == a["label"], unique
    assert "lost the broker" in served.log()


@pytest.mark.slow
def test_wrong_password_and_unreachable_broker_are_one_line_and_serving_goes_on(tmp_path, model):
    need_mosquitto()
    secured = Broker(tmp_path, free_port(), users={"cam": "right"}).start()
    nobody = free_port()
    try:
        wrong = Served(tmp_path, "wrong", serve_args(model, secured.port, "--http", f"127.0.0.1:{free_port()}"),
                       env={"EDGE_MQTT_PASSWORD": "wrong"})
        wrong.args[wrong.args.index("--mqtt") + 1] = f"mqtt://cam@127.0.0.1:{secured.port}/{ROOT}"
        away = Served(tmp_path, "away", serve_args(model, nobody, "--http", f"127.0.0.1:{free_port()}"))
        for s in (wrong.start(), away.start()):
            s.wait_healthy()
        time.sleep(4)  # several retries (backoff 1 s)
        for s, what in ((wrong, "refused the connection"), (away, "cannot reach the broker")):
            lines = [ln for ln in s.log().splitlines() if "mqtt" in ln and ("ERROR" in ln or "WARNING" in ln)]
            assert len(lines) == 1 and what in lines[0], s.log()
            assert "wrong" not in lines[0].split("refused")[0] or what != "refused the connection"
            assert s.get("healthz", token=None)[0] == 200  # still serving
            assert s.terminate()[0] == 0
    finally:
        for s in (wrong, away):
            s.kill()
        secured.stop()


@pytest.mark.slow
def test_doctor_checks_the_broker_and_the_credentials(tmp_path, monkeypatch):
    from edge.service import doctor_checks as dc

    need_mosquitto()
    secured = Broker(tmp_path, free_port(), users={"cam": "right"}).start()
    try:
        def check(url: str, password: str | None = None) -> dc.CheckResult:
            monkeypatch.delenv("EDGE_MQTT_PASSWORD", raising=False)
            if password:
                monkeypatch.setenv("EDGE_MQTT_PASSWORD", password)
            return dc.check_mqtt(dc.Machine(root=tmp_path / "nothing-installed", mqtt=url))

        url = f"mqtt://cam@127.0.0.1:{secured.port}"
        assert check(url, "right").status == dc.PASS
        wrong = check(url, "wrong")
        assert wrong.status == dc.FAIL and "refused" in wrong.detail and "wrong" not in wrong.detail
        away = check(f"mqtt://127.0.0.1:{free_port()}")
        assert away.status == dc.FAIL and "cannot reach" in away.detail
        assert dc.check_mqtt(dc.Machine(root=tmp_path / "nothing-installed")).status == dc.PASS  # none configured
    finally:
        secured.stop()


def _pred(label: str, frame: int, camera: int = 0):
    from edge.runtime.prediction import Prediction

    return Prediction(label=label, confidence=0.9, probabilities={"up": 0.9, "down": 0.1}, frame_id=frame,
                      timestamp=time.time(), fps=10.0, infer_ms=1.0, latency_ms=1.0, frame_age_ms=1.0,
                      raw_label=label, camera=camera)


def test_queue_is_bounded_while_the_broker_is_away_and_sent_in_order_after(tmp_path):
    """In process: two cameras; 5 changes while no broker listens and a queue of 3 -> the oldest 2 dropped (and
    counted), the other 3 sent in order once the broker is there; a camera that stops goes `offline`."""
    from edge.runtime.outputs.mqtt import MqttOutput

    need_mosquitto()
    port = free_port()
    target = parse_mqtt_url(f"mqtt://127.0.0.1:{port}/{ROOT}")
    out = MqttOutput(target, cameras=2, queue_size=3, stale_s=1.0, max_backoff=1, images=False)
    broker = Broker(tmp_path, port)
    frame = np.zeros((48, 64, 3), np.uint8)
    try:
        t0 = time.monotonic()
        for i, label in enumerate(["up", "down", "up", "down", "up"]):
            out.write(frame, _pred(label, i, camera=1))
        assert time.monotonic() - t0 < 0.5  # never waits on the network
        assert out.stats()["dropped"] == 2 and out.stats()["queued"] == 3
        broker.start()
        sub = Subscriber(port, [f"{ROOT}/#"])
        sub.wait("the queued events", lambda: len(sub.json(f"{ROOT}/cam1/event")) >= 3)
        assert [e["frame"] for e in sub.json(f"{ROOT}/cam1/event")] == [2, 3, 4]
        for i in range(20):  # camera 0 runs, camera 1 has stopped
            out.write(frame, _pred("up", 10 + i, camera=0))
            time.sleep(0.1)
        sub.wait("camera 1 offline", lambda: sub.last(f"{ROOT}/cam1/availability") == b"offline")
        assert sub.last(f"{ROOT}/cam0/availability") == b"online"
        assert sub.json(f"{ROOT}/cam0/state")[-1]["label"] == "up"
        sub.close()
    finally:
        out.close()
        broker.stop()


@pytest.mark.slow
def test_mqtts_with_a_ca_file(tmp_path):
    from edge.runtime.outputs.mqtt import connect_check

    need_mosquitto()
    ca, cert, key = make_tls(tmp_path / "tls")
    broker = Broker(tmp_path, free_port(), tls=(ca, cert, key)).start()
    try:
        target = parse_mqtt_url(f"mqtts://127.0.0.1:{broker.port}/{ROOT}")
        assert connect_check(target, str(ca)) is None
        problem = connect_check(target, None)  # the system's CAs do not know our test CA
        assert problem and "certificate" in problem.lower(), problem
    finally:
        broker.stop()
