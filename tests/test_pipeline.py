"""The real-time pipeline: newest frame only, drops counted, outputs fan out and fail alone, overlay, recording."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
from runtime_helpers import FakeBackend, ListSource, frame

from edge.core.errors import EdgeError
from edge.runtime.outputs.base import CallbackOutput, Output
from edge.runtime.overlay import draw_overlay
from edge.runtime.pipeline import Pipeline
from edge.runtime.prediction import Prediction
from edge.runtime.smoothing import Smoother
from edge.runtime.sources.adapters import PrefetchSource


def test_slow_inference_drops_frames_instead_of_queueing():
    """A camera at ~500 fps and inference at ~30 ms: the pipeline takes the newest frame, counts the rest."""
    from edge.runtime.camera import Camera

    class FastSource(ListSource):
        def __init__(self):
            super().__init__([])
            self.i = 0

        def read(self):
            time.sleep(0.002)
            self.i += 1
            return frame(200)

    cam = Camera("fast://", opener=FastSource)
    seen = []
    pipe = Pipeline(cam, FakeBackend(delay=0.03), overlay=False, listeners=[lambda p, t: seen.append((p, t))])
    pipe.run(max_frames=8)
    pipe.stop()
    ids = [p.frame_id for p, _ in seen]
    assert len(ids) == 8 and ids == sorted(set(ids))
    assert pipe.stats["drops"] == sum(t["drops"] for _, t in seen) >= 8  # several frames skipped per inference
    assert pipe.stats["drops"] == ids[-1] - ids[0] - (len(ids) - 1)
    # no backlog: a frame is at most about one inference old when picked up (generous bound for a busy CI box)
    assert np.median([p.frame_age_ms for p, _ in seen]) < 150
    assert cam.state == "stopped"  # the pipeline started the camera, so it stopped it


def test_every_frame_with_a_sync_source_and_end_of_stream():
    frames = [frame(255)] * 3 + [frame(0)] * 3
    preds = []
    src = ListSource(frames)
    pipe = Pipeline(src, FakeBackend(), listeners=[lambda p, t: preds.append(p)])
    pipe.run()  # returns at the end of the stream
    assert [p.label for p in preds] == ["bright"] * 3 + ["dark"] * 3
    assert [p.frame_id for p in preds] == list(range(6))
    assert pipe.stats["frames"] == 6 and pipe.stats["drops"] == 0
    assert pipe.latest is preds[-1]
    p = preds[0]
    assert isinstance(p, Prediction) and p.probabilities == pytest.approx({"bright": 1.0, "dark": 0.0})
    assert p.confidence == pytest.approx(1.0) and p.raw_label == "bright"
    assert p.latency_ms >= p.infer_ms >= 0 and p.timestamp > 0
    pipe.stop()
    assert src.closed


def test_prefetch_source_delivers_every_frame_in_order():
    preds = []
    pipe = Pipeline(PrefetchSource(ListSource([frame(i * 40) for i in range(6)])), FakeBackend(),
                    listeners=[lambda p, t: preds.append(p.frame_id)])
    pipe.run()
    pipe.stop()
    assert preds == list(range(6)) and pipe.stats["drops"] == 0


def test_smoother_threshold_gives_unknown():
    preds = []
    pipe = Pipeline(ListSource([frame(128)] * 2), FakeBackend(), smoother=Smoother(["bright", "dark"], threshold=0.8),
                    listeners=[lambda p, t: preds.append(p)])
    pipe.run()
    assert [p.label for p in preds] == ["unknown", "unknown"]


def test_outputs_get_the_overlaid_frame_and_a_broken_output_is_disabled_alone(caplog):
    got = []

    def keep(f, p):
        got.append((f, f.copy(), p))

    class Broken(Output):
        name = "broken"

        def __init__(self):
            super().__init__()
            self.calls = 0
            self.closed = False

        def write(self, f, p):
            self.calls += 1
            raise OSError("disk full")

        def close(self):
            self.closed = True

    broken = Broken()
    good = CallbackOutput(keep, name="good")
    raw = frame(0, 240, 320)
    pipe = Pipeline(ListSource([raw.copy() for _ in range(4)]), FakeBackend(), outputs=[broken, good], top_k=2)
    pipe.run()
    pipe.stop()
    assert broken.calls == 1 and not broken.alive and broken.closed
    assert "broken failed and is disabled" in caplog.text and "disk full" in caplog.text
    assert len(got) == 4 and good.alive
    assert pipe.stats["outputs"] == {"broken": False, "good": True}
    first_buf, first_copy, _ = got[0]
    assert not np.array_equal(first_copy, raw)  # overlay drawn
    assert np.array_equal(first_copy[200:, 200:], raw[200:, 200:])  # only the panel, not the whole frame
    assert all(f is first_buf for f, _, _ in got)  # one reused canvas (documented: outputs copy what they keep)


def test_overlay_off_passes_the_camera_frame():
    got = []
    raw = frame(10)
    pipe = Pipeline(ListSource([raw]), FakeBackend(), outputs=[CallbackOutput(lambda f, p: got.append(f.copy()))],
                    overlay=False)
    pipe.run()
    assert np.array_equal(got[0], raw)


def test_listeners_get_timings_and_a_failing_listener_is_disabled(caplog):
    rows, bad_calls = [], []

    def bad(p, t):
        bad_calls.append(1)
        raise RuntimeError("boom")

    pipe = Pipeline(ListSource([frame(0)] * 3), FakeBackend(), listeners=[bad, lambda p, t: rows.append(t)])
    pipe.run()
    assert len(bad_calls) == 1 and len(rows) == 3 and "boom" in caplog.text
    assert {"preprocess_ms", "infer_ms", "overlay_ms", "outputs_ms", "latency_ms", "e2e_ms", "frame_age_ms",
            "drops"} <= set(rows[0])
    assert rows[0]["e2e_ms"] >= rows[0]["latency_ms"]


def test_swap_backend_changes_labels_and_closes_the_old_one():
    from edge.runtime.camera import Camera

    class Endless(ListSource):
        def read(self):
            time.sleep(0.005)
            return frame(255)

    old = FakeBackend()
    new = FakeBackend(names=("light", "night"))
    pipe = Pipeline(Camera("endless://", opener=lambda: Endless([])), old).start()
    try:
        deadline = time.monotonic() + 10
        while pipe.latest is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pipe.latest.label == "bright"
        pipe.swap_backend(new)
        assert old.closed
        calls = new.calls
        while (new.calls <= calls + 1) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pipe.latest.label == "light"
        assert pipe.stats["swaps"] == 1 and pipe.stats["backend"] == "fake"
    finally:
        pipe.stop()
    assert not pipe.running


def test_heartbeat_advances_while_no_frame_arrives():
    class Never:
        running = True
        state = "reconnecting"

        def read_latest(self, after_id=-1, timeout=None):
            time.sleep(timeout)
            return None

    pipe = Pipeline(Never(), FakeBackend(), poll_s=0.05).start()
    try:
        time.sleep(0.1)
        h1 = pipe.heartbeat
        time.sleep(0.2)
        assert pipe.heartbeat > h1 and pipe.running
        assert pipe.stats["frames"] == 0
    finally:
        pipe.stop()
    assert not pipe.running


def make_pred(**kw) -> Prediction:
    d = dict(label="up", confidence=0.8, probabilities={"up": 0.8, "down": 0.2}, frame_id=1, timestamp=time.time(),
             fps=30.0, infer_ms=4.2, latency_ms=6.0, frame_age_ms=1.0)
    d.update(kw)
    return Prediction(**d)


@pytest.mark.parametrize("h, w", [(120, 160), (480, 640), (1080, 1920)])
def test_overlay_draws_a_panel_at_any_size(h, w):
    img = frame(255, h, w)
    out = draw_overlay(img, make_pred(), top_k=2)
    assert out is img  # in place
    assert (img[: h // 8, : w // 8] != 255).any()
    assert (img[h // 2:, w // 2:] == 255).all()


def test_overlay_confidence_bar_grows_with_confidence():
    def green(conf):
        img = frame(0, 480, 640)
        draw_overlay(img, make_pred(confidence=conf, label="x"))
        return int(((img[..., 1] > 150) & (img[..., 2] < 120)).sum())

    assert green(0.95) > green(0.8) > 0


def test_record_output_writes_a_playable_video_atomically(tmp_path):
    from edge.runtime.outputs.record import RecordOutput

    path = tmp_path / "out.mp4"
    rec = RecordOutput(path, fps=10, realtime=False)
    for i in range(12):
        rec.write(frame(i * 20, 120, 160), make_pred(frame_id=i))
    assert not path.exists()  # only the temporary file exists until close
    rec.close()
    assert path.is_file() and rec.frames_written == 12 and rec.dropped == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 12


def test_record_output_realtime_keeps_the_wall_clock(tmp_path):
    from edge.runtime.outputs.record import RecordOutput

    now = [1000.0]
    rec = RecordOutput(tmp_path / "rt.avi", fps=10, realtime=True, clock=lambda: now[0])
    for t in [0.0, 0.05, 0.5, 1.0]:  # a stall of 0.45 s and of 0.5 s
        now[0] = 1000.0 + t
        rec.write(frame(100), make_pred())
    rec.close()
    assert rec.frames_written == 11  # 1 s of video at 10 fps (+ the first frame)


def test_record_output_refuses_unknown_container(tmp_path):
    from edge.runtime.outputs.record import RecordOutput

    with pytest.raises(EdgeError, match=r"\.mp4, \.avi"):
        RecordOutput(tmp_path / "x.gif")


def test_record_output_queue_full_drops_and_counts(tmp_path, monkeypatch):
    from edge.runtime.outputs import record

    gate = threading.Event()
    real_loop = record.RecordOutput._loop

    def slow_loop(self):
        gate.wait(5)
        real_loop(self)

    monkeypatch.setattr(record.RecordOutput, "_loop", slow_loop)
    rec = record.RecordOutput(tmp_path / "q.mp4", fps=10, realtime=False, queue_size=3)
    t = time.monotonic()
    for i in range(10):
        rec.write(frame(50), make_pred(frame_id=i))
    assert time.monotonic() - t < 5.0  # write never blocks on the encoder (held for 5 s by the gate)
    assert rec.dropped == 7
    gate.set()
    rec.close()
    assert rec.frames_written == 3


def test_a_failing_frame_is_counted_and_skipped_but_endless_failure_stops(caplog):
    class Flaky(FakeBackend):
        def run(self, batch):
            if self.calls == 1:
                self.calls += 1
                raise RuntimeError("cuda hiccup")
            return super().run(batch)

    preds = []
    pipe = Pipeline(ListSource([frame(255)] * 4), Flaky(), listeners=[lambda p, t: preds.append(p.frame_id)])
    pipe.run()
    assert preds == [0, 2, 3] and pipe.stats["errors"] == 1 and "cuda hiccup" in caplog.text

    class Dead(FakeBackend):
        def run(self, batch):
            raise RuntimeError("gone")

    pipe = Pipeline(ListSource([frame(0)] * 10), Dead())
    pipe.max_failures = 5
    with pytest.raises(RuntimeError, match="5 frames in a row failed"):
        pipe.run()
    assert not pipe.running


def test_percentiles_round_and_handle_no_values():
    from collections import deque

    from edge.runtime.timings import percentiles

    assert percentiles([1.0, 2.0, 3.0, 4.0]) == [2.5, 3.85]
    assert percentiles(deque([1.0, 2.0, 3.0, 4.0]), (50,), ndigits=0) == [2.0]
    assert all(v != v for v in percentiles([]))  # NaN


def test_timing_window_keeps_the_last_values_and_is_json_friendly_when_empty():
    from edge.runtime.timings import TimingWindow

    window = TimingWindow(("infer_ms", "drops"), size=3)
    assert window.percentiles("infer_ms") == [None, None] and len(window) == 0
    for ms in (100.0, 1.0, 2.0, 3.0):  # the 100 ms outlier falls out of the window
        window.add({"infer_ms": ms, "drops": 2.0, "e2e_ms": 9.0})
    assert len(window) == 3 and window.percentiles("infer_ms", (50,)) == [2.0] and window.total("drops") == 6.0


def test_rate_meter_follows_the_rate_and_averages_the_run():
    from edge.runtime.timings import RateMeter

    meter = RateMeter(alpha=0.5)
    meter.tick(10.0)
    assert meter.fps == meter.fps_avg == 0.0  # one tick is no rate yet
    for t in (10.1, 10.2, 10.3):
        meter.tick(t)
    assert meter.fps == pytest.approx(10.0) and meter.fps_avg == pytest.approx(10.0)
    for t in (10.8, 11.3):  # slows down to 2 fps: the smoothed rate follows, the average lags
        meter.tick(t)
    assert 2.0 < meter.fps < 4.0 and meter.fps_avg == pytest.approx(5 / 1.3) and meter.count == 6


def test_stats_report_recent_latency_percentiles():
    pipe = Pipeline(ListSource([frame(0)] * 5), FakeBackend(delay=0.01), window=3)
    assert pipe.stats["infer_ms_p50"] is None  # no frame yet: null in JSON, not NaN
    pipe.run()
    s = pipe.stats
    assert 10 <= s["infer_ms_p50"] <= s["infer_ms_p95"] <= s["e2e_ms_p95"]
