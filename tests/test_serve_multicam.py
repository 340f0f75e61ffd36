"""`edge serve` with several cameras: one model, per-camera HTTP/recording/health/metrics/events, and a camera that
goes down and comes back on its own while the other keeps its frame rate.

The end-to-end tests run `edge serve` as a subprocess (helpers from serve_helpers.py): camera 0 is `test://`, camera 1
the MJPEG stream of another `edge serve` (the brightness model on the white/black/grey video), which the test stops
and restarts. The rest is in-process: label changes, --on-change, health, metrics and config per camera.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from serve_helpers import (
    SIZE,
    STOP_LIMIT_S,
    TOKEN,
    Served,
    brightness_model,
    find_chromium,
    free_port,
    make_video,
    metric,
    read_events,
    rendered_page,
)

from edge.core.errors import EdgeError
from edge.runtime.outputs.changes import LabelChanges
from edge.runtime.outputs.record import camera_path
from edge.service.health import ServiceHealth, assess, assess_all
from edge.service.metrics import ServiceMetrics

TEST_SIZE = (200, 150)  # camera 0's frames; camera 1 (the video) is SIZE = 160x120, so each stream is told apart


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("multicam")
    grey = make_video(d / "video.avi")
    brightness_model(d / "model.pt", grey)
    return SimpleNamespace(dir=d, video=d / "video.avi", model=d / "model.pt")


def _cameras(svc: Served) -> list[dict]:
    return svc.json("api/cameras", None)[1]


def _frames(svc: Served, camera: int, seconds: float) -> float:
    """Camera `camera`'s classified frames per second over the next `seconds` (from /api/cameras)."""
    before = _cameras(svc)[camera]["frames"]
    time.sleep(seconds)
    return (_cameras(svc)[camera]["frames"] - before) / seconds


# ---------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_two_cameras_one_goes_down_and_comes_back_the_other_keeps_its_rate(assets, tmp_path):
    d = tmp_path
    up_port, port = free_port(), free_port()
    up_args = ["--model", str(assets.model), "--source", str(assets.video), "--loop", "--no-overlay",
               "--http", f"127.0.0.1:{up_port}", "--token", TOKEN]
    stream = f"http://127.0.0.1:{up_port}/stream.mjpg?token={TOKEN}"  # credentials: never shown or logged
    upstream = Served(d, "upstream", up_args).start()
    svc = Served(d, "multi", [
        "--model", str(assets.model),
        "--source", f"test://?width={TEST_SIZE[0]}&height={TEST_SIZE[1]}&fps=12", "--source", stream,
        "--http", f"127.0.0.1:{port}", "--stall-timeout", "1", "--max-backoff", "0.5", "--health-max-age", "1.5",
        "--events", "events.jsonl", "--record", "rec.avi",
        "--on-change", 'echo "$EDGE_CAMERA $EDGE_LABEL" >> changes.txt', "--on-change-interval", "0",
    ])
    svc.start()
    upstream2 = None
    try:
        upstream.wait_healthy()
        svc.wait_healthy()
        cams = _cameras(svc)
        assert [c["camera"] for c in cams] == [0, 1] and all(c["status"] == "ok" for c in cams), cams
        assert cams[1]["source"] == f"http://127.0.0.1:{up_port}/stream.mjpg?token=***"
        assert cams[0]["state"] == cams[1]["state"] == "streaming"
        status, health = svc.json("healthz", None)
        assert status == 200 and [c["status"] for c in health["cameras"]] == ["ok", "ok"]

        # each camera its own prediction and its own overlaid stream, at its own frame size
        for camera in (0, 1):
            status, p = svc.json(f"api/prediction?camera={camera}", None)
            assert status == 200 and p["camera"] == camera and p["stale"] is False
        svc.wait_for("camera 1 labels the video", lambda: svc.json("api/prediction?camera=1", None)[1]["label"]
                     in ("up", "down"), 20)
        for camera, (w, h) in ((0, TEST_SIZE), (1, SIZE)):
            status, _, body = svc.get(f"snapshot.jpg?camera={camera}", None)
            assert status == 200
            assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape == (h, w, 3)
        assert svc.get("snapshot.jpg?camera=2", None)[0] == 404

        rate_before = _frames(svc, 0, 3.0)
        assert rate_before > 5, rate_before
        rc, _ = upstream.terminate()
        assert rc == 0
        svc.wait_for("camera 1 reconnecting", lambda: _cameras(svc)[1]["state"] == "reconnecting", 15)
        rate_during = _frames(svc, 0, 3.0)
        # waiting for the lost camera would cut camera 0 to a few frames a second; a busy machine makes both rates
        # wobble, so only a big drop counts
        assert rate_during >= 0.5 * rate_before, (rate_before, rate_during)
        status, health = svc.json("healthz", None)
        assert status == 503 and health["status"] == "stale", health  # one camera down: the device says so
        assert [c["status"] for c in health["cameras"]] == ["ok", "stale"], health
        assert health["cameras"][1]["source_state"] == "reconnecting" and health["reason"].startswith("camera 1: ")
        cams = _cameras(svc)
        assert cams[0]["status"] == "ok" and cams[1]["fps"] == 0.0
        assert svc.json("api/prediction?camera=1", None)[1]["stale"] is True
        assert svc.json("api/prediction", None)[1]["stale"] is False
        text = svc.get("metrics", None)[2].decode()
        assert metric(text, "edge_healthy") == 0
        assert metric(text, "edge_camera_healthy", camera="0") == 1
        assert metric(text, "edge_camera_healthy", camera="1") == 0
        assert "camera 1 unhealthy" in svc.log()
        for path in ("api/cameras", "healthz", "metrics"):  # the stream's ?token= is redacted everywhere we answer
            assert TOKEN not in svc.get(path, None)[2].decode(), path

        upstream2 = Served(d, "upstream2", up_args).start()
        upstream2.wait_healthy()
        svc.wait_healthy(60)
        frames1 = _cameras(svc)[1]["frames"]
        svc.wait_for("camera 1 classifies again", lambda: _cameras(svc)[1]["frames"] > frames1 + 5, 20)
        cams = _cameras(svc)
        assert cams[1]["state"] == "streaming" and cams[1]["reconnects"] >= 1 and cams[0]["reconnects"] == 0
        text = svc.get("metrics", None)[2].decode()
        assert metric(text, "edge_source_reconnects_total", camera="1") >= 1
        assert metric(text, "edge_source_reconnects_total", camera="0") == 0
        assert metric(text, "edge_frames_processed_total", camera="0") > 0
        assert f'edge_camera_info{{camera="1",source="http://127.0.0.1:{up_port}/stream.mjpg?token=***"}} 1.0' in text
        assert metric(text, "edge_healthy") == 1 and "camera 1 healthy again" in svc.log()

        rc, took = svc.terminate()
        assert rc == 0 and took < STOP_LIMIT_S, (rc, took, svc.log()[-3000:])
    finally:
        for s in (upstream, svc, upstream2):
            if s is not None:
                s.kill()

    # one recording per camera, at its own size; no file under the plain name
    assert not (d / "rec.avi").exists() and not list(d.glob(".tmp-*"))
    for camera, (w, h) in ((0, TEST_SIZE), (1, SIZE)):
        cap = cv2.VideoCapture(str(d / f"rec.cam{camera}.avi"))
        ok, frame = cap.read()
        cap.release()
        assert ok and frame.shape == (h, w, 3), camera

    # label changes are per camera: each camera's first event has no previous label, whatever the other showed
    events = read_events(d / "events.jsonl")
    by_camera = {c: [e for e in events if e["camera"] == c] for c in (0, 1)}
    assert by_camera[0] and len(by_camera[1]) >= 2, events
    assert by_camera[0][0]["previous"] is None and by_camera[1][0]["previous"] is None
    for a, b in zip(by_camera[1], by_camera[1][1:]):
        assert b["previous"] == a["label"] != b["label"]
    runs = [line.split() for line in (d / "changes.txt").read_text().splitlines()]
    assert {c for c, _ in runs} == {"0", "1"} and all(label in ("up", "down", "unknown") for _, label in runs)


@pytest.mark.slow
@pytest.mark.skipif(find_chromium() is None, reason="no Chromium binary (apt-get install chromium) for the page test")
def test_live_page_shows_every_camera_in_headless_chromium(assets, tmp_path):
    port = free_port()
    svc = Served(tmp_path, "page", ["--model", str(assets.model), "--source", str(assets.video), "--loop",
                                    "--source", f"test://?width={TEST_SIZE[0]}&height={TEST_SIZE[1]}&fps=10",
                                    "--http", f"127.0.0.1:{port}"]).start()
    try:
        svc.wait_healthy()
        dom, text_of = rendered_page(svc.url, tmp_path, 5000)
    finally:
        svc.kill()
    assert 'class="multi"' in dom
    assert text_of("label") in ("up", "down", "unknown") and text_of("status") == "live"
    assert text_of("label-1") in ("up", "down", "unknown") and text_of("status-1") == "live"
    assert text_of("video-size") == f"{SIZE[0]}x{SIZE[1]}"  # each tile plays its own camera's stream
    assert text_of("video-size-1") == f"{TEST_SIZE[0]}x{TEST_SIZE[1]}"
    assert text_of("title-1").startswith("camera 1 \u00b7 test://")


def test_a_wrong_second_source_names_its_camera_and_exits_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edge", "serve", "--model", str(tmp_path / "m.pt"), "--source", "test://",
                        "--source", "bogus://x"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr
    assert errors[0].startswith("error: camera 1: unknown source scheme 'bogus://'") and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------------- per camera, in-process
def _pred(label: str, camera: int, frame: int = 0):
    return SimpleNamespace(label=label, confidence=0.9, timestamp=time.time(), frame_id=frame, camera=camera)


def test_label_changes_are_decided_per_camera():
    changes = LabelChanges()
    seen = [changes.observe(_pred(label, cam, i)) for i, (label, cam) in
            enumerate([("a", 0), ("b", 1), ("a", 0), ("b", 1), ("b", 0), ("b", 1), ("a", 1)])]
    assert [(c.camera, c.previous, c.label) if c else None for c in seen] == [
        (0, None, "a"), (1, None, "b"), None, None, (0, "a", "b"), None, (1, "b", "a")]


def test_events_lines_say_which_camera(tmp_path):
    from edge.runtime.outputs.events import EventsOutput

    out = EventsOutput(str(tmp_path / "ev.jsonl"))
    frame = np.zeros((4, 4, 3), np.uint8)
    for i, (label, cam) in enumerate([("a", 0), ("a", 1), ("a", 0), ("b", 1)]):
        out.write(frame, _pred(label, cam, i))
    out.close()
    events = read_events(tmp_path / "ev.jsonl")
    assert [(e["camera"], e["label"], e["previous"]) for e in events] == [(0, "a", None), (1, "a", None), (1, "b", "a")]


def test_on_change_gets_the_camera_and_rate_limits_each_camera_alone(tmp_path):
    """A 2 s interval: camera 1's change runs at once although camera 0's command just ran; camera 0's next change
    waits out its own interval, then reports what camera 0 showed before (not camera 1's label)."""
    from edge.runtime.outputs.on_change import OnChangeOutput

    log = tmp_path / "runs.txt"

    def runs_after(n: int, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while out.runs < n and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # the command itself
        return log.read_text().splitlines() if log.exists() else []

    out = OnChangeOutput(f'echo "$EDGE_CAMERA $EDGE_PREVIOUS>$EDGE_LABEL" >> {log}', interval=2.0, timeout=10)
    frame = np.zeros((1, 1, 3), np.uint8)
    try:
        out.write(frame, _pred("a", 0))
        assert runs_after(1, 3) == ["0 >a"]
        t0 = time.monotonic()
        out.write(frame, _pred("x", 1))
        out.write(frame, _pred("b", 0))  # within camera 0's interval: waits
        assert runs_after(2, 3) == ["0 >a", "1 >x"] and time.monotonic() - t0 < 1.5
        assert runs_after(3, 4) == ["0 >a", "1 >x", "0 a>b"]
    finally:
        out.close()


def _health(state: str, frame_age: float | None, prediction_age: float | None, now: float):
    cam = SimpleNamespace(state=state, frame_time=0.0 if frame_age is None else now - frame_age, last_error="")
    return cam, None if prediction_age is None else now - prediction_age


def test_service_health_is_ok_only_while_every_camera_is():
    now = time.monotonic()
    fresh, stale, new = _health("streaming", 0.1, 0.1, now), _health("reconnecting", 9.0, 9.0, now), \
        _health("starting", None, None, now)
    one = assess_all([fresh[0]], [fresh[1]], 1.0, now)
    assert one.ok and one.to_json() == {**assess(fresh[0], fresh[1], 1.0, now).to_json(),
                                        "cameras": [{"camera": 0, **assess(fresh[0], fresh[1], 1.0, now).to_json()}]}
    both = assess_all([fresh[0], stale[0]], [fresh[1], stale[1]], 1.0, now)
    body = both.to_json()
    assert not both.ok and body["status"] == "stale" and body["reason"].startswith("camera 1: no frame for 9.0 s")
    assert [c["camera"] for c in body["cameras"]] == [0, 1]
    assert [c["status"] for c in body["cameras"]] == ["ok", "stale"]
    assert "source_state" not in body  # with several cameras it is per camera only
    assert assess_all([fresh[0], new[0]], [fresh[1], new[1]], 1.0, now).status == "starting"
    assert assess_all([new[0], stale[0]], [new[1], stale[1]], 1.0, now).status == "stale"  # the worst wins
    assert isinstance(both, ServiceHealth) and both.summary.startswith("camera 1: ")


def test_metrics_carry_the_camera_label():
    stats = {"healthy": 0, "outputs": {"events": True}, "cameras": [
        {"camera": 0, "frames_processed": 10, "healthy": 1, "outputs": {"record": True}},
        {"camera": 1, "frames_processed": 4, "healthy": 0, "outputs": {"record": False}}]}
    prom = ServiceMetrics(lambda: stats, cameras=2)
    for i, (label, cam) in enumerate([("a", 0), ("a", 1), ("b", 1)]):
        p = SimpleNamespace(label=label, confidence=0.9, timestamp=time.time(), frame_id=i, camera=cam,
                            infer_ms=40.0, latency_ms=50.0)
        prom.listener(p, {"batch": 2.0})
    text = prom.render().decode()
    assert metric(text, "edge_frames_processed_total", camera="0") == 10
    assert metric(text, "edge_frames_processed_total", camera="1") == 4
    assert metric(text, "edge_healthy") == 0 and metric(text, "edge_camera_healthy", camera="1") == 0
    assert metric(text, "edge_label_changes_total", camera="0") == 1
    assert metric(text, "edge_label_changes_total", camera="1") == 2
    assert metric(text, "edge_latency_seconds_count", camera="1") == 2
    # a batch of 2 took 40 ms: each frame's share is 20 ms, so the histogram's sum is the time spent inferring
    assert metric(text, "edge_inference_seconds_count") == 3 and metric(text, "edge_inference_seconds_sum") == \
        pytest.approx(0.06)
    assert 'edge_output_alive{output="events"} 1.0' in text
    assert 'edge_output_alive{camera="1",output="record"} 0.0' in text


def test_record_file_per_camera():
    assert camera_path("run.mp4", 0, 1) == Path("run.mp4")
    assert camera_path("out/run.mp4", 0, 2) == Path("out/run.cam0.mp4")
    assert camera_path("out/run.mp4", 1, 2) == Path("out/run.cam1.mp4")


def _service(**cfg):
    from edge.service.app import Service
    from edge.service.config import ServeConfig

    cfg.setdefault("source", ("test://", "rtsp://user:pw@cam.local/live"))
    svc = Service(ServeConfig(model="m.pt", **cfg))
    now = time.monotonic()
    svc.state.cameras = [SimpleNamespace(state="streaming", frame_time=now, last_error="", frame_id=5,
                                         reconnects=0, errors=0),
                         SimpleNamespace(state="reconnecting", frame_time=now - 10, last_error="timeout", frame_id=3,
                                         reconnects=2, errors=4)]
    return svc


def test_service_answers_per_camera(tmp_path):
    svc = _service(health_max_age=1.0)
    p0 = SimpleNamespace(label="up", confidence=0.9, probabilities={"up": 0.9, "down": 0.1}, raw_label="up",
                         frame_id=5, timestamp=time.time(), fps=10.0, infer_ms=1.0, latency_ms=2.0, frame_age_ms=1.0,
                         camera=0, novelty=None)
    svc.state.on_prediction(p0)
    assert svc.state.prediction_json(0)["camera"] == 0 and svc.state.prediction_json(0)["stale"] is False
    assert svc.state.prediction_json(1) is None  # camera 1 never classified a frame
    svc.state.on_prediction(SimpleNamespace(**{**vars(p0), "label": "down", "camera": 1}))
    assert svc.state.prediction_json(1)["label"] == "down" and svc.state.prediction_json(0)["label"] == "up"
    ok, body = svc.state.health()
    assert not ok and [c["status"] for c in body["cameras"]] == ["ok", "stale"]
    cams = svc.state.cameras_json()
    assert [c["source"] for c in cams] == ["test://", "rtsp://***@cam.local/live"]
    assert [c["state"] for c in cams] == ["streaming", "reconnecting"] and cams[1]["reconnects"] == 2
    assert "pw" not in json.dumps(cams)
    assert svc.model.status() == "serving m.pt on test://, rtsp://***@cam.local/live"


def test_several_cameras_record_to_one_file_each_and_stream_each(tmp_path):
    svc = _service(record=str(tmp_path / "run.mp4"), http="127.0.0.1:0", events=str(tmp_path / "ev.jsonl"))
    from edge.service.assembly import build_outputs

    outputs = build_outputs(svc.cfg, svc.state.changes)
    try:
        assert [o.name for o in outputs.shared] == ["events"]  # shared: every camera's label changes
        assert [[o.name for o in outs] for outs in outputs.per_camera] == [["record", "http-stream"]] * 2
        assert [o.path.name for o, _ in outputs.per_camera] == ["run.cam0.mp4", "run.cam1.mp4"]
        assert outputs.streams == [outs[1] for outs in outputs.per_camera]
    finally:
        outputs.close()


def test_config_with_several_sources_builds_one_pipeline_of_several_cameras():
    from edge.service.config import build_config

    cfg = build_config({"source": ["test://?seed=1", "test://?seed=2"]}, {"model": "m.pt", "max_batch": 1}, env={})
    svc = _service(source=cfg.source, max_batch=cfg.max_batch)
    backend = SimpleNamespace(meta=SimpleNamespace(class_names=["up", "down"], preprocess=SimpleNamespace(
        input_size=8)), name="fake")
    svc.build(backend)
    assert [c.uri for c in svc.cameras] == ["test://?seed=1", "test://?seed=2"]
    assert len(svc.pipeline.slots) == 2 and svc.pipeline.max_batch == 1
    assert svc.pipeline.slots[1].smoother is not svc.pipeline.slots[0].smoother
    with pytest.raises(EdgeError, match="--display shows one camera"):
        build_config({}, {"model": "m", "source": ["test://?seed=1", "test://?seed=2"], "display": True}, env={})


@pytest.mark.slow
def test_sigterm_with_two_cameras_exits_0_and_finalizes_both_recordings(assets, tmp_path):
    svc = Served(tmp_path, "two", ["--model", str(assets.model), "--source", "test://?width=160&height=120&fps=15",
                                   "--source", "test://?width=96&height=64&fps=15&seed=3", "--record", "r.mp4",
                                   "--events", "ev.jsonl", "--max-batch", "1"]).start()
    try:
        svc.wait_for("both cameras classified", lambda: {e["camera"] for e in read_events(tmp_path / "ev.jsonl")}
                     == {0, 1}, 60)
        time.sleep(1.0)
        rc, took = svc.terminate(sig=signal.SIGTERM)
    finally:
        svc.kill()
    assert rc == 0 and took < STOP_LIMIT_S, (rc, took, svc.log()[-2000:])
    for name, shape in (("r.cam0.mp4", (120, 160, 3)), ("r.cam1.mp4", (64, 96, 3))):
        cap = cv2.VideoCapture(str(tmp_path / name))
        ok, frame = cap.read()
        cap.release()
        assert ok and frame.shape == shape, name
