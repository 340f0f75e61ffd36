"""edge.runtime.camera.Camera: latest frame only, traits, retries with backoff, stall watchdog, device always
released."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from runtime_helpers import MjpegServer, wait_until

from edge.runtime import camera as camera_mod
from edge.runtime.camera import Camera
from edge.runtime.sources import FrameSource


class FakeSource(FrameSource):
    """Frames whose first pixel row encodes a running index; scripted failures; records close()."""

    def __init__(self, log, period=0.005, fail_reads=(), end_after=None, block=None, is_live=True):
        self.uri, self.fps, self.is_live = "fake://", None, is_live
        self.period, self.fail_reads, self.end_after, self.block = period, set(fail_reads), end_after, block
        self.reads = 0
        self.closed = False
        log.append(self)

    def read(self):
        assert not self.closed, "read after close"
        n = self.reads
        self.reads += 1
        if self.block is not None and n == 3:
            self.block.wait()
            raise OSError("device vanished")
        if n in self.fail_reads:
            raise OSError(f"read {n} failed")
        if self.end_after is not None and n >= self.end_after:
            return None
        time.sleep(self.period)
        frame = np.zeros((8, 8, 3), np.uint8)
        frame[0, :4, 0] = np.frombuffer(np.uint32(n).tobytes(), np.uint8)
        return frame

    def close(self):
        self.closed = True


def index_of(frame) -> int:
    return int(np.frombuffer(frame[0, :4, 0].tobytes(), np.uint32)[0])


def make_camera(opener, **kw):
    kw.setdefault("stall_timeout", 2.0)
    kw.setdefault("max_backoff", 0.05)
    return Camera("fake://", opener=opener, **kw)


def test_value_updates_while_running_and_stops_releasing_the_device():
    opened: list[FakeSource] = []
    cam = make_camera(lambda: FakeSource(opened))
    values = []
    cam.observe(lambda change: values.append(change["new"]), "value")
    cam.running = True
    assert wait_until(lambda: len(values) >= 3)
    assert cam.state == "streaming"
    assert all(isinstance(v, np.ndarray) and v.shape == (8, 8, 3) for v in values)
    cam.running = False
    assert cam.state == "stopped"
    assert not cam._reader.is_alive()
    assert len(opened) == 1 and opened[0].closed
    n = len(values)
    time.sleep(0.1)
    assert len(values) == n  # no more frames once stopped


def test_context_manager_releases_device_even_when_the_body_raises():
    opened: list[FakeSource] = []
    with pytest.raises(RuntimeError):
        with make_camera(lambda: FakeSource(opened)) as cam:
            assert cam.read_latest(timeout=5) is not None
            raise RuntimeError("user code failed")
    assert cam.running is False and opened[0].closed


def test_read_errors_are_counted_retried_and_frames_resume():
    opened: list[FakeSource] = []
    # the first source fails on its 3rd read; opening then fails twice; the third source works
    attempts = []

    def opener():
        attempts.append(1)
        if len(attempts) in (2, 3):
            raise OSError("device busy")
        return FakeSource(opened, fail_reads={2} if len(attempts) == 1 else ())

    with make_camera(opener) as cam:
        assert wait_until(lambda: cam.reconnects >= 3 and cam.state == "streaming")
        got = cam.read_latest(timeout=5)
        assert got is not None
        assert cam.errors == 3  # one failed read, two failed opens
        assert "device busy" in cam.last_error
        assert cam.running
    assert all(s.closed for s in opened)


def test_state_is_reconnecting_during_an_outage():
    states = []
    cam = make_camera(lambda: (_ for _ in ()).throw(OSError("no camera")), max_backoff=0.05)
    cam.observe(lambda change: states.append(change["new"]), "state")
    with cam:
        assert wait_until(lambda: cam.errors >= 3)
        assert cam.state == "reconnecting" and cam.running
        assert cam.read_latest(timeout=0.1) is None
    assert states[:2] == ["starting", "reconnecting"] and states[-1] == "stopped"


def test_outage_is_logged_once_not_per_attempt(caplog):
    cam = make_camera(lambda: (_ for _ in ()).throw(OSError("no camera")), max_backoff=0.01)
    with caplog.at_level("WARNING", logger="edge.runtime.camera"), cam:
        assert wait_until(lambda: cam.errors >= 10)
    lines = [r for r in caplog.records if r.name == "edge.runtime.camera" and "no camera" in r.getMessage()]
    assert len(lines) == 1


class _RecordingEvent(threading.Event):
    """The camera's stop event, recording how long each backoff asked to wait."""

    def __init__(self):
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout=None):
        self.waits.append(timeout)
        return super().wait(timeout)


def test_backoff_is_capped_and_grows(monkeypatch):
    """The waits between reopen attempts double up to the cap (what the camera asks for, not the wall clock's
    gaps, which a busy machine stretches); the attempts really are spaced by at least those waits."""
    monkeypatch.setattr(camera_mod, "INITIAL_BACKOFF_S", 0.02)
    times = []

    def opener():
        times.append(time.monotonic())
        raise OSError("gone")

    cam = make_camera(opener, max_backoff=0.1)
    cam._stop_event = _RecordingEvent()
    with cam:
        assert wait_until(lambda: len(times) >= 7, timeout=30)
    waits = [w for w in cam._stop_event.waits if w is not None][:6]
    assert waits == pytest.approx([0.02, 0.04, 0.08, 0.1, 0.1, 0.1])
    gaps = np.diff(times)
    assert all(g >= w * 0.9 for g, w in zip(gaps, waits))  # never sooner than the backoff


def test_end_of_a_file_source_ends_capture_and_releases_it():
    opened: list[FakeSource] = []
    cam = make_camera(lambda: FakeSource(opened, end_after=5, is_live=False))
    cam.start()
    last = None
    while (got := cam.read_latest(-1 if last is None else last[1], timeout=5)) is not None:
        last = got
    assert index_of(last[0]) == 4
    assert wait_until(lambda: cam.state == "ended" and cam.running is False)
    assert wait_until(lambda: opened[0].closed)
    cam.stop()
    assert cam.state == "ended"


def test_a_live_source_that_ends_is_reopened():
    opened: list[FakeSource] = []
    with make_camera(lambda: FakeSource(opened, end_after=3, is_live=True)) as cam:
        assert wait_until(lambda: len(opened) >= 3)
        assert cam.running and cam.errors >= 2
    assert all(s.closed for s in opened)


def test_a_silent_source_is_abandoned_after_stall_timeout_and_capture_goes_on():
    opened: list[FakeSource] = []
    release = threading.Event()
    cam = make_camera(lambda: FakeSource(opened, block=release if not opened else None), stall_timeout=0.3)
    try:
        with cam:
            assert wait_until(lambda: len(opened) >= 2, timeout=5)  # the watchdog gave up and reopened
            assert "no frame" in cam.last_error
            assert wait_until(lambda: cam.state == "streaming")
            assert cam.read_latest(2, timeout=2) is not None  # ids 0-2 came from the stuck source
            assert opened[1].reads >= 1
            assert not opened[0].closed  # still stuck in read()...
    finally:
        release.set()
    assert wait_until(lambda: opened[0].closed)  # ...and released as soon as the read returns


def test_slow_consumer_gets_the_latest_frame_not_a_backlog():
    opened: list[FakeSource] = []
    with make_camera(lambda: FakeSource(opened, period=0.005)) as cam:
        got = cam.read_latest(timeout=5)
        ids = []
        for _ in range(4):
            before = opened[0].reads
            # slow consumer: 10 frames arrive
            assert wait_until(lambda before=before: opened[0].reads >= before + 10, timeout=30)
            produced = opened[0].reads  # frame produced-1 is being read, so produced-2 was already handed over
            got = cam.read_latest(got[1], timeout=5)
            assert index_of(got[0]) >= produced - 2  # the newest frame, not the next one in a queue
            ids.append(got[1])
    assert min(np.diff(ids)) > 5  # frames in between were dropped, not queued


def test_read_latest_times_out_and_returns_none_when_stopped():
    cam = make_camera(lambda: FakeSource([], period=0.2))
    assert cam.read_latest(timeout=0.01) is None  # not started
    with cam:
        first = cam.read_latest(timeout=5)
        t0 = time.monotonic()
        assert cam.read_latest(first[1], timeout=0.05) is None  # the next frame (0.2 s away) was not waited for
        assert time.monotonic() - t0 < 2.0  # only a hang would take this long, however busy the machine


def test_poll_latest_never_waits_and_frame_callbacks_wake_a_consumer():
    opened: list[FakeSource] = []
    cam = make_camera(lambda: FakeSource(opened, period=0.01, end_after=20, is_live=False))
    assert cam.poll_latest() is None  # nothing captured yet, and no waiting for it
    rang = threading.Event()
    calls = []

    def ring():
        calls.append(cam.state)
        rang.set()

    cam.add_frame_callback(ring)
    with cam:
        assert rang.wait(5)
        frame, fid, _ = cam.poll_latest()
        assert index_of(frame) == fid
        t = time.monotonic()
        # frame fid+1000 is 10 s away (and never comes: the source ends): returning at all means it did not wait
        assert cam.poll_latest(after_id=fid + 1000) is None and time.monotonic() - t < 2.0
        assert wait_until(lambda: cam.state == "ended")
    assert len(calls) >= 21 and "ended" in calls  # one per frame, and the end wakes the consumer too
    cam.remove_frame_callback(ring)
    seen = len(calls)
    with cam:  # restarted: callbacks removed are not called again
        assert cam.read_latest(timeout=5) is not None
    assert len(calls) == seen


def test_a_failing_frame_callback_does_not_stop_capture(caplog):
    cam = make_camera(lambda: FakeSource([]))

    def broken():
        raise RuntimeError("consumer bug")

    cam.add_frame_callback(broken)
    with cam:
        assert wait_until(lambda: cam.frame_id >= 10)
        assert cam.state == "streaming"
    assert caplog.text.count("a frame callback raised") == 1


def test_a_failing_value_observer_does_not_stop_capture():
    def bad(change):
        raise ValueError("observer bug")

    cam = make_camera(lambda: FakeSource([]))
    cam.observe(bad, "value")
    with cam:
        first = cam.read_latest(timeout=5)
        assert cam.read_latest(first[1] + 5, timeout=5) is not None
        assert cam.state == "streaming"


def test_stop_returns_with_capture_stopped_while_frames_are_being_published():
    """stop() must not hand its work to the notifier thread (traitlets' hold_trait_notifications captures the
    `running` change of every thread while it holds): when it returns, capture has stopped, whatever the timing."""

    class Full(FrameSource):  # full-size frames: setting `value` takes long enough to be caught in the act
        uri, is_live = "full://", True

        def read(self):
            time.sleep(0.0005)
            return np.zeros((480, 640, 3), np.uint8)

    rng = np.random.default_rng(0)
    for _ in range(30):
        cam = make_camera(Full)
        cam.start()
        assert cam.read_latest(timeout=5) is not None
        time.sleep(rng.uniform(0, 0.01))
        cam.stop()
        assert cam.state == "stopped" and not cam._reader.is_alive() and not cam._notifier.is_alive()


def test_slow_observer_does_not_slow_capture():
    opened: list[FakeSource] = []
    cam = make_camera(lambda: FakeSource(opened, period=0.002))
    calls = []
    cam.observe(lambda change: (calls.append(1), time.sleep(0.2)), "value")
    with cam:
        assert wait_until(lambda: opened and opened[0].reads > 50, timeout=30)
        # capture ran ahead of the observer: had it waited for each 0.2 s call, 50 reads would take 50 calls
        assert len(calls) < 25, len(calls)


def test_interpreter_exit_hook_releases_running_cameras():
    opened: list[FakeSource] = []
    cam = make_camera(lambda: FakeSource(opened))
    cam.start()
    assert cam.read_latest(timeout=5) is not None
    camera_mod._stop_all()
    assert not cam.running and opened[0].closed


def test_from_source_starts_on_the_opened_source_then_reopens_by_uri(monkeypatch):
    opened: list[FakeSource] = []
    first = FakeSource(opened, fail_reads={2})
    reopens = []

    def reopen(uri, **options):
        reopens.append((uri, options))
        return FakeSource(opened)

    monkeypatch.setattr(camera_mod, "open_source", reopen)
    with Camera.from_source(first, "rtsp://cam/1", loop=True, realtime=False, max_backoff=0.05) as cam:
        assert cam.read_latest(timeout=5) is not None and opened == [first]  # no second open to start with
        assert wait_until(lambda: len(opened) == 2 and cam.state == "streaming")
        assert cam.errors == 1 and cam.read_latest(cam.frame_id, timeout=5) is not None
    assert reopens == [("rtsp://cam/1", {"width": None, "height": None, "fps": None, "loop": True, "realtime": False})]
    assert all(s.closed for s in opened)


def test_test_uri_through_camera():
    with Camera("test://?width=64&height=48&fps=60") as cam:
        frame, fid, t = cam.read_latest(timeout=5)
        assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
        assert wait_until(lambda: cam.frame_id >= 0 and cam.value is not None)


# ---- a real network source: an MJPEG server that goes away and comes back ----------------------------------




def test_mjpeg_stream_that_stops_and_restarts_resumes():
    server = MjpegServer()
    url = f"http://127.0.0.1:{server.port}/stream.mjpg"
    cam = Camera(url, stall_timeout=2.0, max_backoff=0.2)
    try:
        with cam:
            first = cam.read_latest(timeout=10)
            assert first is not None and first[0].shape == (48, 64, 3)
            server.stop()
            assert wait_until(lambda: cam.state == "reconnecting", timeout=10)
            server = MjpegServer(server.port)
            assert wait_until(lambda: cam.state == "streaming", timeout=10)
            assert cam.read_latest(cam.frame_id, timeout=5) is not None
            assert cam.reconnects >= 1 and cam.errors >= 1
    finally:
        server.stop()
