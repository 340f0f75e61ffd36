"""The real-time pipeline: newest frame(s) -> preprocess -> infer (one batch) -> smooth -> overlay -> outputs.

The camera's capture thread keeps only the latest frame (`edge.runtime.camera.Camera`); the inference loop here always
takes the newest one, so latency never builds up: when inference is slower than the camera, the frames it never
saw are counted as drops, not queued. Per frame nothing large is allocated: the input tensor and the overlay
canvas are reused buffers.

Several cameras (a door and a conveyor; a robot's two) share one model and one inference thread, batched the way
DeepStream batches streams: the thread sleeps on one event that every camera sets when it has a new frame, takes
the newest frame of each camera that has one, and runs them all as one Nx3xSxS batch; smoothing, overlay, outputs
and stats are per camera (`CameraSlot`). A camera that is reconnecting or silent is simply not in the batch, so
it never holds the others up. With one camera the loop blocks on that camera's `read_latest`, as it always did.

Used by `edge serve` (start/stop on a thread, listeners for metrics/events, `swap_backend` on SIGHUP) and by
`edge bench` (`run(max_frames=N)` on the calling thread).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np

from edge.core.errors import EdgeError
from edge.core.preprocess import preprocess_image
from edge.runtime.outputs.base import Output
from edge.runtime.overlay import draw_overlay
from edge.runtime.prediction import Prediction
from edge.runtime.slots import CameraSlot
from edge.runtime.smoothing import Smoother
from edge.runtime.sources.adapters import PrefetchSource, SyncSource
from edge.runtime.timings import TimingWindow

log = logging.getLogger(__name__)

__all__ = ["CameraSlot", "Listener", "Pipeline"]

Listener = Callable[["Prediction", dict[str, float]], None]


def _ended(camera: Any) -> bool:
    return getattr(camera, "state", None) == "ended" or not getattr(camera, "running", True)


class _Taken(NamedTuple):  # one frame taken from a camera for the next batch
    slot: CameraSlot
    frame: np.ndarray
    fid: int
    ftime: float
    drops: int


class Pipeline:
    """Classify the newest frame of each camera, forever (or `max_frames`), fanning results out to outputs and
    listeners.

    camera: an `edge.runtime.camera.Camera` (anything with `read_latest(after_id, timeout)`), or a plain FrameSource
    (wrapped in `SyncSource`); or a list of cameras and/or `CameraSlot`s, classified together in batches (each
    needs `poll_latest` and `add_frame_callback`, as Camera has; a plain FrameSource is wrapped in `PrefetchSource`).
    backend: an `edge.runtime.backends.Backend`. smoother: an `edge.runtime.smoothing.Smoother` (default: plain
    argmax); with several cameras each gets its own copy. outputs: `edge.runtime.outputs.Output`s, given every
    camera's overlaid frame (`CameraSlot.outputs` get one camera's). listeners: callables `(prediction, timings)`
    called after each frame (timings in ms: preprocess, infer (the whole batch), overlay, outputs, latency, e2e,
    frame_age; drops: frames of that camera skipped before this one; batch: frames in the inference call).
    max_batch: at most this many frames per inference call (default: one per camera).

    `stop()` ends the loop, stops the cameras the pipeline started, and closes the outputs; the backend is
    the caller's to close (except backends replaced by `swap_backend`, which the pipeline closes).
    """

    def __init__(
        self,
        camera: Any,
        backend: Any,
        *,
        smoother: Smoother | None = None,
        outputs: Iterable[Output] = (),
        overlay: bool = True,
        listeners: Iterable[Listener] = (),
        top_k: int = 0,
        poll_s: float = 0.5,
        window: int = 512,
        max_batch: int | None = None,
    ) -> None:
        cameras = list(camera) if isinstance(camera, (list, tuple)) else [camera]
        if not cameras:
            raise EdgeError("a pipeline needs at least one camera; got an empty list")
        if max_batch is not None and max_batch < 1:
            raise EdgeError(f"max_batch must be >= 1 (frames per inference call), got {max_batch}")
        self.slots: list[CameraSlot] = [self._slot(c, i, len(cameras), window) for i, c in enumerate(cameras)]
        self._backend = backend
        self._share_smoother(smoother or Smoother(backend.meta.class_names))
        self.outputs: list[Output] = list(outputs)
        self.overlay = overlay
        self.listeners: list[Listener] = list(listeners)
        self.top_k = top_k
        self.poll_s = poll_s
        self.max_batch = max_batch
        self.latest: Prediction | None = None  # the newest prediction, of any camera
        self.heartbeat: float = time.monotonic()
        self._lock = threading.Lock()  # held while the backend is in use; swap_backend waits on it
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by every camera on a new frame (several cameras) and by stop()
        self._thread: threading.Thread | None = None
        self._running = False
        self._next_slot = 0  # round robin when more cameras have a frame than a batch takes
        self._alloc_input(backend)
        self._frames = 0
        self._drops = 0
        self._errors = 0  # frames whose processing raised (counted, skipped)
        self._failures = 0  # consecutive ones; at max_failures the loop gives up (the watchdog restarts us)
        self.max_failures = 50
        self._swaps = 0
        self._batches = 0
        self._last_infer_ms = 0.0
        self._recent = TimingWindow(("e2e_ms", "infer_ms"), size=window)  # for stats' percentiles
        self._dead_listeners: set[int] = set()

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _slot(camera: Any, index: int, count: int, window: int) -> CameraSlot:
        slot = camera if isinstance(camera, CameraSlot) else CameraSlot(camera)
        cam = slot.camera
        if not hasattr(cam, "read_latest") and hasattr(cam, "read"):  # a plain FrameSource
            slot.camera = cam = SyncSource(cam) if count == 1 else PrefetchSource(cam)
        if count > 1 and not (hasattr(cam, "poll_latest") and hasattr(cam, "add_frame_callback")):
            raise EdgeError(f"camera {index} ({slot.name or type(cam).__name__}) cannot be polled: a pipeline of "
                            f"several cameras needs edge.runtime.camera.Camera objects (or plain FrameSources)")
        slot.index = index
        slot.recent = TimingWindow(("latency_ms", "e2e_ms"), size=window)
        return slot

    def _share_smoother(self, template: Smoother) -> None:
        """Every camera its own smoother: a camera's history must not move another camera's label."""
        used: set[int] = set()
        for slot in self.slots:
            if slot.smoother is None and slot.index == 0:
                slot.smoother = template
            elif slot.smoother is None or id(slot.smoother) in used:
                slot.smoother = copy.deepcopy(template)
                slot.smoother.reset()
            used.add(id(slot.smoother))

    def _alloc_input(self, backend: Any) -> None:
        spec = backend.meta.preprocess
        self._spec = spec
        self._names = list(backend.meta.class_names)
        capacity = min(len(self.slots), self.max_batch or len(self.slots))
        self._batch = np.zeros((capacity, 3, spec.input_size, spec.input_size), np.float32)

    @property
    def backend(self) -> Any:
        return self._backend

    @property
    def smoother(self) -> Smoother:
        """The first (or only) camera's smoother."""
        return self.slots[0].smoother  # type: ignore[return-value]

    def swap_backend(self, new: Any) -> None:
        """Replace the model between two batches (SIGHUP reload); the old backend is closed, smoothing restarts."""
        with self._lock:
            old = self._backend
            self._backend = new
            self._alloc_input(new)
            for slot in self.slots:
                slot.smoother.reset(new.meta.class_names)  # type: ignore[union-attr]
            self._swaps += 1
        log.info("model swapped: %s -> %s (%s)", getattr(old, "name", "?"), new.name,
                 ", ".join(new.meta.class_names))
        if old is not new:
            try:
                old.close()
            except Exception:  # a failing close of the old model must not stop the service
                log.warning("closing the previous backend failed", exc_info=True)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Pipeline":
        """Start the cameras (those not running) and the inference loop on a daemon thread."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._start_cameras()
        self._running = True  # until the loop ends (stop, end of stream, crash)
        self._thread = threading.Thread(target=self._run_safe, name="edge-inference", daemon=True)
        self._thread.start()
        return self

    def _start_cameras(self) -> None:
        for slot in self.slots:
            if not getattr(slot.camera, "running", False) and hasattr(slot.camera, "start"):
                slot.camera.start()
                slot.started_camera = True

    def _run_safe(self) -> None:
        try:
            self.run()
        except Exception:  # the thread must not die silently: log it; heartbeat goes stale
            log.exception("inference loop crashed")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop, the cameras (those started here) and close the outputs. Safe to call twice."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("inference thread did not stop within %.1f s", timeout)
        self._thread = None
        for slot in self.slots:
            if slot.started_camera:
                try:
                    slot.camera.stop()
                except Exception:
                    log.warning("stopping camera %d failed", slot.index, exc_info=True)
                slot.started_camera = False
        for o in [*self.outputs, *(o for s in self.slots for o in s.outputs)]:
            try:
                o.close()
            except Exception:  # one output's failure must not keep the others open
                log.warning("closing output %s failed", o.name, exc_info=True)

    def __enter__(self) -> "Pipeline":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._running

    def run(self, max_frames: int | None = None) -> None:
        """Run the loop on this thread until `stop()`, the end of every stream, or `max_frames` processed frames
        (of all cameras together)."""
        self._start_cameras()
        self._running = True
        for slot in self.slots:
            slot.last_id = -1
        target = None if max_frames is None else self._frames + max_frames
        try:
            if len(self.slots) == 1:
                self._run_one(target)
            else:
                self._run_many(target)
        finally:
            self._running = False
            self.heartbeat = time.monotonic()

    def _run_one(self, target: int | None) -> None:
        slot = self.slots[0]
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            got = slot.camera.read_latest(after_id=slot.last_id, timeout=self.poll_s)
            if got is None:
                if _ended(slot.camera):
                    log.info("source ended after %d frames", self._frames)
                    break
                continue
            self._process([self._take(slot, got)])
            if target is not None and self._frames >= target:
                break

    def _run_many(self, target: int | None) -> None:
        wake = self._wake.set  # one bound method, so that remove_frame_callback finds it again
        for slot in self.slots:
            slot.camera.add_frame_callback(wake)
        try:
            while not self._stop.is_set():
                self.heartbeat = time.monotonic()
                self._wake.clear()  # before polling: a frame that lands after the poll sets it again
                taken = self._gather()
                if taken:
                    self._process(taken)
                    if target is not None and self._frames >= target:
                        break
                elif all(_ended(s.camera) for s in self.slots):
                    log.info("all %d sources ended after %d frames", len(self.slots), self._frames)
                    break
                else:
                    self._wake.wait(self.poll_s)
        finally:
            for slot in self.slots:
                slot.camera.remove_frame_callback(wake)

    def _gather(self) -> list[_Taken]:
        """The newest frame of each camera that has a new one, at most a batch of them, fairly (round robin)."""
        n, capacity = len(self.slots), len(self._batch)
        taken: list[_Taken] = []
        for k in range(n):
            slot = self.slots[(self._next_slot + k) % n]
            got = slot.camera.poll_latest(slot.last_id)
            if got is None:
                continue
            taken.append(self._take(slot, got))
            if len(taken) == capacity:
                self._next_slot = (slot.index + 1) % n
                break
        return taken

    def _take(self, slot: CameraSlot, got: tuple[np.ndarray, int, float]) -> _Taken:
        frame, fid, ftime = got
        drops = fid - slot.last_id - 1 if slot.last_id >= 0 and fid > slot.last_id else 0
        slot.drops += drops
        self._drops += drops
        slot.last_id = fid
        return _Taken(slot, frame, fid, ftime, drops)

    # ------------------------------------------------------------------ one batch
    def _process(self, taken: Sequence[_Taken]) -> None:
        """Preprocess the frames into the batch buffer, infer them in one call, then finish each frame."""
        t0 = time.monotonic()
        with self._lock:
            backend = self._backend
            ready: list[tuple[_Taken, float]] = []  # (frame, its preprocess ms)
            for item in taken:
                t = time.monotonic()
                try:
                    preprocess_image(item.frame, self._spec, "BGR", out=self._batch[len(ready)])
                except Exception as e:  # noqa: BLE001 - one bad frame must not sink the batch
                    self._failed(item, e)
                    continue
                ready.append((item, (time.monotonic() - t) * 1e3))
            if not ready:
                return
            t1 = time.monotonic()
            try:
                probs, novelty = backend.run(self._batch[:len(ready)])
            except Exception as e:  # noqa: BLE001 - a failed batch must not end the service
                for item, _ in ready:
                    self._failed(item, e)
                return
            t2 = time.monotonic()
            self._batches += 1
            self._last_infer_ms = infer_ms = (t2 - t1) * 1e3
            names = self._names
            threshold = getattr(backend, "novelty_threshold", None)
            smoothed = []
            for i, ((item, prep_ms), p) in enumerate(zip(ready, probs)):
                nov = None if novelty is None else float(novelty[i])
                try:
                    label_conf = item.slot.smoother.update(p, nov, threshold)  # type: ignore[union-attr]
                    smoothed.append((item, prep_ms, p, nov, *label_conf))
                except Exception as e:  # noqa: BLE001 - counted and logged; max_failures decides when to stop
                    self._failed(item, e)
        for item, prep_ms, p, nov, label, conf in smoothed:
            self._finish(item, p, nov, names, label, conf, t0, prep_ms, infer_ms, len(ready))
            self._failures = 0

    def _failed(self, item: _Taken, e: Exception) -> None:
        self._errors += 1
        item.slot.errors += 1
        self._failures += 1
        if self._failures == 1:
            where = f"camera {item.slot.index} " if len(self.slots) > 1 else ""
            log.error("%sframe %d failed: %s: %s (further failures counted in stats['errors'])",
                      where, item.fid, type(e).__name__, e)
        if self._failures >= self.max_failures:
            raise RuntimeError(f"{self._failures} frames in a row failed; last: {e}") from e

    def _finish(self, item: _Taken, probs: np.ndarray, novelty: float | None, names: list[str], label: str,
                conf: float, t0: float, prep_ms: float, infer_ms: float, batch: int) -> Prediction:
        """One frame's prediction, overlay, outputs, stats and listeners."""
        slot, frame, ftime = item.slot, item.frame, item.ftime
        top = int(np.argmax(probs))
        t3 = time.monotonic()
        slot.rate.tick(t3)
        pred = Prediction(
            label=label,
            confidence=conf,
            probabilities={n: float(p) for n, p in zip(names, probs)},
            frame_id=item.fid,
            timestamp=time.time(),
            fps=slot.rate.fps,
            infer_ms=infer_ms,
            latency_ms=(t3 - ftime) * 1e3,
            frame_age_ms=(t0 - ftime) * 1e3,
            raw_label=names[top],
            camera=slot.index,
            novelty=novelty,
        )
        slot.latest = self.latest = pred
        slot.frames += 1
        self._frames += 1

        out = frame
        if self.overlay:
            canvas = slot.canvas
            if canvas is None or canvas.shape != frame.shape:
                canvas = slot.canvas = np.empty_like(frame)
            np.copyto(canvas, frame)
            out = draw_overlay(canvas, pred, self.top_k)
        t4 = time.monotonic()
        for outputs in (self.outputs, slot.outputs):
            for o in outputs:
                if not o.alive:
                    continue
                try:
                    o.write(out, pred)
                except Exception as e:  # noqa: BLE001 - one broken output must not stop the others
                    o.alive = False
                    log.error("output %s failed and is disabled: %s: %s", o.name, type(e).__name__, e)
        t5 = time.monotonic()
        timings = {
            "preprocess_ms": prep_ms,
            "infer_ms": infer_ms,
            "overlay_ms": (t4 - t3) * 1e3,
            "outputs_ms": (t5 - t4) * 1e3,
            "latency_ms": pred.latency_ms,
            "e2e_ms": (t5 - ftime) * 1e3,
            "frame_age_ms": pred.frame_age_ms,
            "drops": float(item.drops),
            "batch": float(batch),
        }
        self._recent.add(timings)
        slot.recent.add(timings)
        if self.listeners:
            for i, fn in enumerate(self.listeners):
                if i in self._dead_listeners:
                    continue
                try:
                    fn(pred, timings)
                except Exception as e:  # noqa: BLE001 - a broken listener is dropped, the pipeline goes on
                    self._dead_listeners.add(i)
                    log.error("listener %r failed and is disabled: %s: %s", fn, type(e).__name__, e)
        return pred

    # ------------------------------------------------------------------ stats
    @property
    def stats(self) -> dict[str, Any]:
        """A JSON-friendly snapshot: frames, drops, fps (smoothed and average, all cameras together), recent
        latency percentiles, batches..., and `cameras`: each camera's own (`CameraSlot.stats`)."""
        inf50, inf95 = self._recent.percentiles("infer_ms")
        e2e50, e2e95 = self._recent.percentiles("e2e_ms")
        latest = self.latest
        return {
            "frames": self._frames,
            "drops": self._drops,
            "errors": self._errors,
            "fps": round(sum(s.rate.fps for s in self.slots), 3),
            "fps_avg": round(sum(s.rate.fps_avg for s in self.slots), 3),
            "infer_ms": round(self._last_infer_ms, 3),
            "latency_ms": round(latest.latency_ms, 3) if latest else 0.0,
            "frame_age_ms": round(latest.frame_age_ms, 3) if latest else 0.0,
            "infer_ms_p50": inf50,
            "infer_ms_p95": inf95,
            "e2e_ms_p50": e2e50,
            "e2e_ms_p95": e2e95,
            "batches": self._batches,
            "batch_avg": round(self._frames / self._batches, 3) if self._batches else 0.0,
            "backend": getattr(self._backend, "name", "?"),
            "swaps": self._swaps,
            "running": self._running,
            "outputs": {o.name: o.alive for o in self.outputs},
            "label": latest.label if latest else None,
            "cameras": [s.stats for s in self.slots],
        }
