"""Several cameras, one model, one inference thread: batches, per-camera smoothing/outputs/stats, and a camera that
goes away while the others keep their frame rate."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from runtime_helpers import FakeBackend, ListSource, MjpegServer, frame, wait_until

from edge.core.errors import EdgeError
from edge.runtime.camera import Camera
from edge.runtime.outputs.base import CallbackOutput
from edge.runtime.pipeline import CameraSlot, Pipeline
from edge.runtime.smoothing import Smoother
from edge.runtime.sources import FrameSource


class RecordingBackend(FakeBackend):
    """FakeBackend that records the batch size of every inference call."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.sizes: list[int] = []

    def run(self, batch):
        self.sizes.append(batch.shape[0])
        return super().run(batch)


class ScriptedCamera:
    """A camera whose frames are all there from the start: every poll gets the next one (deterministic batches)."""

    def __init__(self, frames, uri="scripted://"):
        self.frames, self.uri = list(frames), uri
        self.state, self.running = "streaming", True

    def poll_latest(self, after_id=-1):
        if after_id + 1 < len(self.frames):
            return self.frames[after_id + 1], after_id + 1, time.monotonic()
        self.state = "ended"
        return None

    def read_latest(self, after_id=-1, timeout=None):
        return self.poll_latest(after_id)

    def add_frame_callback(self, callback):
        pass

    def remove_frame_callback(self, callback):
        pass


def by_camera(preds):
    out: dict[int, list] = {}
    for p in preds:
        out.setdefault(p.camera, []).append(p)
    return out


def test_three_cameras_make_one_inference_call_per_batch():
    backend = RecordingBackend()
    cams = [ScriptedCamera([frame(v)] * 4, f"cam{i}://") for i, v in enumerate((255, 0, 255))]
    preds = []
    pipe = Pipeline(cams, backend, listeners=[lambda p, t: preds.append((p, t))])
    pipe.run()  # returns when every camera has ended
    pipe.stop()
    assert backend.sizes == [3, 3, 3, 3] and backend.calls == 4
    per_cam = by_camera(p for p, _ in preds)
    assert sorted(per_cam) == [0, 1, 2]
    for cam, expected in zip(range(3), ("bright", "dark", "bright")):
        assert [p.frame_id for p in per_cam[cam]] == [0, 1, 2, 3]
        assert {p.label for p in per_cam[cam]} == {expected}
    assert all(t["batch"] == 3 for _, t in preds)
    s = pipe.stats
    assert s["frames"] == 12 and s["batches"] == 4 and s["batch_avg"] == 3 and s["drops"] == 0
    assert [c["frames"] for c in s["cameras"]] == [4, 4, 4]
    assert [c["name"] for c in s["cameras"]] == ["cam0://", "cam1://", "cam2://"]
    assert [c["label"] for c in s["cameras"]] == ["bright", "dark", "bright"]
    assert [slot.latest.camera for slot in pipe.slots] == [0, 1, 2]


def test_max_batch_caps_the_batch_and_takes_cameras_in_turn():
    backend = RecordingBackend()
    cams = [ScriptedCamera([frame(0)] * 4) for _ in range(3)]
    order = []
    pipe = Pipeline(cams, backend, max_batch=2, overlay=False, listeners=[lambda p, t: order.append(p.camera)])
    pipe.run()
    assert backend.sizes == [2] * 6
    assert order == [0, 1, 2, 0, 1, 2] * 2  # round robin: no camera waits two batches in a row
    with pytest.raises(EdgeError, match="max_batch must be >= 1"):
        Pipeline(cams, backend, max_batch=0)


def test_each_camera_has_its_own_smoother():
    """A bright camera and a dark one: with one shared smoother (min_dwell 3) the dark one would show 'bright'."""
    template = Smoother(["bright", "dark"], smoothing=0.8, min_dwell=3)
    cams = [ScriptedCamera([frame(255)] * 6), ScriptedCamera([frame(0)] * 6)]
    preds = []
    pipe = Pipeline(cams, FakeBackend(), smoother=template, overlay=False, listeners=[lambda p, t: preds.append(p)])
    pipe.run()
    per_cam = by_camera(preds)
    assert [p.label for p in per_cam[0]] == ["bright"] * 6
    assert [p.label for p in per_cam[1]] == ["dark"] * 6
    assert pipe.smoother is template and pipe.slots[1].smoother is not template
    assert pipe.slots[1].smoother.min_dwell == 3 and pipe.slots[1].smoother.smoothing == 0.8  # same settings


def test_per_camera_outputs_get_only_their_camera_and_shared_outputs_get_all():
    got: dict[str, list] = {"door": [], "belt": [], "all": []}

    def keep(name):
        return CallbackOutput(lambda f, p: got[name].append((f.shape, int(f[-1, -1, 0]), p.camera)), name=name)

    door = CameraSlot(ScriptedCamera([frame(255, 120, 160)] * 3), outputs=[keep("door")], name="door")
    belt = CameraSlot(ScriptedCamera([frame(0, 240, 320)] * 3), outputs=[keep("belt")], name="belt")
    pipe = Pipeline([door, belt], FakeBackend(), outputs=[keep("all")])
    pipe.run()
    pipe.stop()
    assert got["door"] == [((120, 160, 3), 255, 0)] * 3  # overlaid (corner untouched), its own size and id
    assert got["belt"] == [((240, 320, 3), 0, 1)] * 3
    assert sorted(c for _, _, c in got["all"]) == [0, 0, 0, 1, 1, 1]
    s = pipe.stats
    assert s["outputs"] == {"all": True}
    assert [c["outputs"] for c in s["cameras"]] == [{"door": True}, {"belt": True}]
    assert [c["name"] for c in s["cameras"]] == ["door", "belt"]


def test_a_bad_frame_fails_alone_and_a_failed_batch_counts_each_frame(caplog):
    good = ScriptedCamera([frame(255)] * 3)
    gray = ScriptedCamera([np.zeros((48, 64), np.uint8)] * 3)  # not a BGR frame: preprocessing raises
    preds = []
    pipe = Pipeline([good, gray], RecordingBackend(), listeners=[lambda p, t: preds.append(p)])
    pipe.run()
    assert [(p.camera, p.frame_id) for p in preds] == [(0, 0), (0, 1), (0, 2)]
    assert pipe.backend.sizes == [1, 1, 1]  # the bad frame never reached the model
    s = pipe.stats
    assert s["errors"] == 3 and [c["errors"] for c in s["cameras"]] == [0, 3]
    assert "camera 1 frame 0 failed" in caplog.text

    class FailsOnce(RecordingBackend):
        def run(self, batch):
            if len(self.sizes) == 1:
                self.sizes.append(batch.shape[0])
                raise RuntimeError("cuda hiccup")
            return super().run(batch)

    preds.clear()
    pipe = Pipeline([ScriptedCamera([frame(0)] * 3) for _ in range(2)], FailsOnce(),
                    listeners=[lambda p, t: preds.append(p)])
    pipe.run()
    assert sorted((p.camera, p.frame_id) for p in preds) == [(0, 0), (0, 2), (1, 0), (1, 2)]
    assert pipe.stats["errors"] == 2 and [c["errors"] for c in pipe.stats["cameras"]] == [1, 1]


def test_plain_sources_are_prefetched_and_a_camera_that_cannot_be_polled_is_refused():
    preds = []
    pipe = Pipeline([ListSource([frame(255)] * 5), ListSource([frame(0)] * 3)], FakeBackend(delay=0.005),
                    listeners=[lambda p, t: preds.append(p)])
    pipe.run()
    pipe.stop()
    per_cam = by_camera(preds)
    assert [p.frame_id for p in per_cam[0]] == list(range(5)) and [p.frame_id for p in per_cam[1]] == list(range(3))
    assert {p.label for p in per_cam[0]} == {"bright"} and {p.label for p in per_cam[1]} == {"dark"}

    class BlockingOnly:
        def read_latest(self, after_id=-1, timeout=None):
            return None

    with pytest.raises(EdgeError, match="camera 1 .* cannot be polled"):
        Pipeline([ScriptedCamera([]), BlockingOnly()], FakeBackend())
    with pytest.raises(EdgeError, match="at least one camera"):
        Pipeline([], FakeBackend())


def test_test_uri_cameras_are_batched_on_one_thread():
    """Two live test:// cameras at 60 fps, inference at ~30 ms: every call takes both cameras' newest frames."""
    backend = RecordingBackend(delay=0.03)
    cams = [Camera(f"test://?width=64&height=48&fps=60&seed={i}") for i in range(2)]
    preds = []
    pipe = Pipeline(cams, backend, listeners=[lambda p, t: preds.append(p)]).start()
    try:
        assert wait_until(lambda: all(len(v) >= 10 for v in by_camera(list(preds)).values())
                          and len(by_camera(list(preds))) == 2, timeout=20)
    finally:
        pipe.stop()
    assert not pipe.running and all(c.state == "stopped" for c in cams), [c.state for c in cams]  # started here
    sizes = backend.sizes
    assert max(sizes) == 2 and sizes.count(2) >= len(sizes) * 0.5  # mostly full batches, even on a busy machine
    s = pipe.stats
    assert s["batches"] == len(sizes) and s["frames"] == sum(sizes) == len(preds)
    for cam, ps in by_camera(preds).items():
        ids = [p.frame_id for p in ps]
        assert ids == sorted(set(ids))
        assert s["cameras"][cam]["drops"] > 0  # 60 fps in, ~30 fps out: the newest frame wins
        assert s["cameras"][cam]["state"] == "stopped" and s["cameras"][cam]["fps"] > 0


def test_swap_backend_restarts_every_cameras_smoothing_with_the_new_labels():
    cams = [Camera(f"test://?width=64&height=48&fps=60&seed={i}") for i in range(2)]
    old, new = FakeBackend(), FakeBackend(names=("light", "night"))
    pipe = Pipeline(cams, old).start()
    try:
        assert wait_until(lambda: all(s.latest is not None for s in pipe.slots), timeout=10)
        pipe.swap_backend(new)
        assert old.closed
        calls = new.calls
        assert wait_until(lambda: new.calls > calls + 2, timeout=10)
        assert wait_until(lambda: all(s.latest.label in ("light", "night") for s in pipe.slots), timeout=10)
        assert all(s.smoother.class_names == ["light", "night"] for s in pipe.slots)
        assert pipe.stats["swaps"] == 1
    finally:
        pipe.stop()


class Switchable(FrameSource):
    """A live source that can be taken down: 'fails' (reads and opens raise) or 'hangs' (reads block)."""

    def __init__(self, ctl: dict):
        self.uri, self.fps, self.is_live, self.ctl = "switch://", 40.0, True, ctl
        if ctl["down"] == "fails":
            raise OSError("connection refused")

    def read(self):
        if self.ctl["down"] == "fails":
            raise OSError("connection reset")
        if self.ctl["down"] == "hangs":
            self.ctl["back"].wait(10)
        time.sleep(1 / 40)
        return frame(0, 48, 64)


def _rate(preds, cam, seconds):
    """Predictions per second of `cam` over the next `seconds`."""
    before = sum(1 for p in list(preds) if p.camera == cam)
    time.sleep(seconds)
    return (sum(1 for p in list(preds) if p.camera == cam) - before) / seconds


@pytest.mark.parametrize("outage", ["fails", "hangs", "mjpeg"])
def test_a_lost_camera_does_not_slow_the_others_and_comes_back(outage):
    ctl = {"down": None, "back": threading.Event()}
    server = None
    if outage == "mjpeg":  # a real network stream, killed and restarted on the same port
        server = MjpegServer()
        lost = Camera(f"http://127.0.0.1:{server.port}/stream.mjpg", stall_timeout=1.0, max_backoff=0.2)
    else:
        lost = Camera("switch://", opener=lambda: Switchable(ctl), stall_timeout=0.3, max_backoff=0.1)
    steady = Camera("test://?width=64&height=48&fps=30")
    preds = []
    pipe = Pipeline([steady, lost], FakeBackend(delay=0.005), listeners=[lambda p, t: preds.append(p)]).start()
    try:
        assert wait_until(lambda: {0, 1} <= {p.camera for p in list(preds)}, timeout=15)
        rate_before = _rate(preds, 0, 1.5)
        if server is not None:
            server.stop()
        else:
            ctl["back"].clear()
            ctl["down"] = outage
        assert wait_until(lambda: lost.state == "reconnecting", timeout=10)
        lost_seen = pipe.slots[1].frames
        rate_during = _rate(preds, 0, 1.5)
        # waiting for the lost camera would cut the rate to a few per second (its stall timeout); a busy machine
        # makes both rates wobble, so only a big drop counts
        assert rate_during >= 0.5 * rate_before, (rate_before, rate_during)
        assert pipe.stats["cameras"][1]["state"] == "reconnecting"
        assert pipe.slots[1].frames - lost_seen <= 1  # at most one frame that was in flight
        if server is not None:
            server = MjpegServer(server.port)
        else:
            ctl["down"] = None
            ctl["back"].set()
        assert wait_until(lambda: pipe.slots[1].frames >= lost_seen + 5, timeout=15)  # its predictions resume
        assert pipe.slots[1].latest.camera == 1 and lost.reconnects >= 1
        assert pipe.stats["cameras"][1]["state"] == "streaming"
        assert pipe.stats["cameras"][1]["reconnects"] >= 1 and pipe.stats["cameras"][0]["reconnects"] == 0
        assert pipe.running and pipe.stats["errors"] == 0
    finally:
        ctl["back"].set()
        pipe.stop()
        if server is not None:
            server.stop()
