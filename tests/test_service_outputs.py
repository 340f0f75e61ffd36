"""`edge serve`'s outputs and service state, in process: events, on-change, display, finite sources, the one health
decision and the one label-change decision."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from serve_helpers import (
    metric,
    read_events,
)


# ---------------------------------------------------------------------------------------------- service outputs
def _pred(label: str, conf: float = 0.9, frame: int = 0):
    return SimpleNamespace(label=label, confidence=conf, timestamp=time.time(), frame_id=frame)


def test_events_output_writes_changes_only(tmp_path):
    from edge.runtime.outputs.events import EventsOutput

    path = tmp_path / "ev.jsonl"
    out = EventsOutput(str(path))
    frame = np.zeros((4, 4, 3), np.uint8)
    for i, label in enumerate(["a", "a", "b", "b", "a"]):
        out.write(frame, _pred(label, frame=i))
    out.close()
    events = read_events(path)
    assert [(e["label"], e["previous"], e["frame"]) for e in events] == [("a", None, 0), ("b", "a", 2), ("a", "b", 4)]
    assert events[0]["time"].endswith("+00:00")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_events_output_disk_full_marks_it_dead():
    from edge.runtime.outputs.events import EventsOutput

    out = EventsOutput("/dev/full")
    out.write(np.zeros((1, 1, 3), np.uint8), _pred("a"))
    deadline = time.monotonic() + 5
    while out.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not out.alive
    out.write(np.zeros((1, 1, 3), np.uint8), _pred("b"))  # still never raises into the pipeline
    out.close()


def test_on_change_never_blocks_and_coalesces(tmp_path):
    from edge.runtime.outputs.on_change import OnChangeOutput

    log = tmp_path / "runs.txt"
    out = OnChangeOutput(f'sleep 0.5; echo "$EDGE_PREVIOUS>$EDGE_LABEL" >> {log}', interval=0.0, timeout=10)
    frame = np.zeros((1, 1, 3), np.uint8)
    out.write(frame, _pred("a"))
    deadline = time.monotonic() + 5
    while out.runs == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.perf_counter()
    for i, label in enumerate(["b", "c", "d", "e"]):  # four changes while the first command still runs
        out.write(frame, _pred(label, frame=i))
    assert time.perf_counter() - t0 < 0.5  # never waits for the running command (it sleeps 0.5 s)
    deadline = time.monotonic() + 10
    while (not log.exists() or len(log.read_text().splitlines()) < 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.7)
    out.close()
    assert log.read_text().splitlines() == [">a", "a>e"]  # the first change, then the latest one: no backlog


def test_on_change_rate_limit_and_timeout(tmp_path):
    from edge.runtime.outputs.on_change import OnChangeOutput

    log = tmp_path / "runs.txt"
    out = OnChangeOutput(f"echo $1 >> {log}", interval=0.6, timeout=10)
    frame = np.zeros((1, 1, 3), np.uint8)
    out.write(frame, _pred("a"))
    time.sleep(0.2)
    out.write(frame, _pred("b"))  # within the interval: runs later
    time.sleep(0.2)
    assert log.read_text().splitlines() == ["a"]
    time.sleep(0.6)
    assert log.read_text().splitlines() == ["a", "b"]
    out.close()

    hung = OnChangeOutput("sleep 30", interval=0.0, timeout=0.3)
    hung.write(frame, _pred("a"))
    deadline = time.monotonic() + 5
    while hung.failures == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hung.failures == 1  # killed after its timeout, counted
    t0 = time.monotonic()
    hung.close()
    assert time.monotonic() - t0 < 2


def test_display_without_a_desktop_is_a_clear_error(monkeypatch):
    from edge.core.errors import EdgeError
    from edge.runtime.outputs.display import DisplayOutput

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(EdgeError, match="--display needs a desktop session"):
        DisplayOutput()


# ---------------------------------------------------------------------------------------------- service state
def _in_process_service(**cfg):
    """A Service with a fake camera, as its supervisor and HTTP handlers see it (nothing started)."""
    from edge.service.app import Service
    from edge.service.config import ServeConfig

    svc = Service(ServeConfig(model="m.pt", source="test://", **cfg))
    svc.state.cameras = [SimpleNamespace(state="streaming", frame_time=time.monotonic(), last_error="", frame_id=0,
                                         reconnects=0, errors=0)]
    return svc


def _prediction(label: str = "up", frame: int = 1):
    return SimpleNamespace(label=label, confidence=0.9, probabilities={"up": 0.9, "down": 0.1}, raw_label=label,
                           frame_id=frame, timestamp=time.time(), fps=10.0, infer_ms=1.0, latency_ms=2.0,
                           frame_age_ms=1.0, camera=0, novelty=None)


def test_healthz_and_api_agree_and_a_wall_clock_jump_changes_nothing(monkeypatch):
    """One staleness decision for /healthz and /api/prediction, on monotonic clocks: NTP setting the wall clock
    back an hour must not hide an inference stall (nor forward fake one)."""
    svc = _in_process_service(health_max_age=0.5)
    svc.state.on_prediction(_prediction())
    ok, health = svc.state.health()
    assert ok and health["status"] == "ok" and svc.state.prediction_json()["stale"] is False

    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() - 3600)  # NTP sync: the wall clock jumps back
    time.sleep(0.7)  # frames keep coming, but no prediction for 0.7 s
    svc.state.cameras[0].frame_time = time.monotonic()
    ok, health = svc.state.health()
    pred = svc.state.prediction_json()
    assert not ok and health["status"] == "stale" and "no prediction for 0.7 s" in health["reason"]
    assert pred["stale"] is True and pred["reason"] == health["reason"]

    monkeypatch.setattr(time, "time", lambda: real_time() + 86400)  # and forward a day: fresh stays fresh
    svc.state.on_prediction(_prediction(frame=2))
    ok, health = svc.state.health()
    assert ok and svc.state.prediction_json()["stale"] is False and "reason" not in svc.state.prediction_json()


def test_label_change_is_decided_once_for_events_on_change_and_metric(monkeypatch, tmp_path):
    """The service's events, on-change and edge_label_changes_total share one decision: same count, first included."""
    svc = _in_process_service(events=str(tmp_path / "ev.jsonl"),
                              on_change=f"echo $1 >> {tmp_path / 'runs.txt'}", on_change_interval=0.0)
    from edge.service.assembly import build_outputs

    outputs = build_outputs(svc.cfg, svc.state.changes).shared
    frame = np.zeros((4, 4, 3), np.uint8)
    for i, label in enumerate(["up", "up", "down", "down"]):
        pred = _prediction(label, i)
        for out in outputs:  # what the pipeline does per frame: outputs, then listeners
            out.write(frame, pred)
        svc.state.prom.listener(pred)
        time.sleep(0.3)  # let the on-change command of this change run before the next one
    for out in outputs:
        out.close()
    events = read_events(tmp_path / "ev.jsonl")
    assert [(e["label"], e["previous"]) for e in events] == [("up", None), ("down", "up")]
    assert metric(svc.state.prom.render().decode(), "edge_label_changes_total", camera="0") == 2
    assert (tmp_path / "runs.txt").read_text().split() == ["up", "down"]


# ---------------------------------------------------------------------------------------------- the outputs table
def test_every_output_entry_reads_options_the_config_has():
    from edge.service.config import OPTIONS
    from edge.service.outputs import OUTPUTS

    names = {o.name for o in OPTIONS}
    assert {opt for entry in OUTPUTS.values() for opt in entry.options} <= names
    assert {"record", "stream", "events", "on_change", "display"} <= set(OUTPUTS)


def test_a_new_output_is_one_table_entry(monkeypatch):
    """One entry in OUTPUTS is all the service needs to build an output, shared or one per camera."""
    from edge.runtime.outputs.base import CallbackOutput
    from edge.service import outputs as outputs_mod
    from edge.service.assembly import build_outputs
    from edge.service.config import ServeConfig

    table = dict(outputs_mod.OUTPUTS)
    table["fake"] = outputs_mod.OutputEntry(("events",), lambda cfg, place: CallbackOutput(
        lambda f, p: None, name=f"fake{place.camera}"), per_camera=True)
    table["fake_shared"] = outputs_mod.OutputEntry(("overlay",), lambda cfg, place: CallbackOutput(
        lambda f, p: None, name="shared"), enabled=lambda cfg: cfg.overlay)
    monkeypatch.setattr(outputs_mod, "OUTPUTS", table)
    monkeypatch.setattr("edge.service.assembly.OUTPUTS", table)
    svc = _in_process_service()
    built = build_outputs(ServeConfig(model="m.pt", source=("test://", "test://?seed=2"), events="-"),
                          svc.state.changes)
    try:
        assert [o.name for o in built.shared] == ["events", "shared"]
        assert [[o.name for o in outs] for outs in built.per_camera] == [["fake0"], ["fake1"]]
    finally:
        built.close()
    assert not build_outputs(ServeConfig(model="m.pt", source="test://", overlay=False), svc.state.changes).all()


def test_teach_composes_the_service_through_public_names_only():
    """Teach builds on the Service's parts, never by subclassing it or reaching into a private name of another
    package's object (only its own `self._x`)."""
    import ast

    import edge.teach

    folder = Path(edge.teach.__file__).parent
    reached = []
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                assert not any(isinstance(b, ast.Name) and b.id == "Service" for b in node.bases), path.name
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value
                if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls", "os")):  # os._exit: stdlib's
                    reached.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert reached == []
