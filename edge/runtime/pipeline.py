"""The real-time pipeline: newest frame -> preprocess -> infer -> smooth -> overlay -> outputs.

The camera's capture thread keeps only the latest frame (`edge.runtime.camera.Camera`); the inference loop here always
takes the newest one, so latency never builds up: when inference is slower than the camera, the frames it never
saw are counted as drops, not queued. Per frame nothing large is allocated: the input tensor and the overlay
canvas are reused buffers.

Used by `edge serve` (start/stop on a thread, listeners for metrics/events, `swap_backend` on SIGHUP) and by
`edge bench` (`run(max_frames=N)` on the calling thread).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable, Protocol

import numpy as np

from edge.core.preprocess import preprocess_image
from edge.runtime.backends.base import run_model
from edge.runtime.outputs.base import Output
from edge.runtime.overlay import draw_overlay
from edge.runtime.prediction import Prediction
from edge.runtime.smoothing import Smoother
from edge.runtime.sources.adapters import SyncSource
from edge.runtime.timings import TimingWindow

log = logging.getLogger(__name__)

Listener = Callable[["Prediction", dict[str, float]], None]


class _CameraLike(Protocol):  # what the pipeline needs from edge.runtime.camera.Camera
    def read_latest(self, after_id: int = -1, timeout: float | None = None): ...


class Pipeline:
    """Classify the newest camera frame, forever (or `max_frames`), fanning results out to outputs and listeners.

    camera: an `edge.runtime.camera.Camera` (anything with `read_latest(after_id, timeout)`), or a plain FrameSource
    (wrapped in `SyncSource`). backend: an `edge.runtime.backends.Backend`. smoother: an `edge.runtime.smoothing.Smoother`
    (default: plain argmax). outputs: `edge.runtime.outputs.Output`s, given the overlaid frame. listeners: callables
    `(prediction, timings)` called after each frame (timings in ms: preprocess, infer, overlay, outputs,
    latency, e2e, frame_age; and drops: frames skipped before this one).

    `stop()` ends the loop, stops the camera if the pipeline started it, and closes the outputs; the backend is
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
    ) -> None:
        if not hasattr(camera, "read_latest") and hasattr(camera, "read"):
            camera = SyncSource(camera)
        self.camera = camera
        self._backend = backend
        self.smoother = smoother or Smoother(backend.meta.class_names)
        self.outputs: list[Output] = list(outputs)
        self.overlay = overlay
        self.listeners: list[Listener] = list(listeners)
        self.top_k = top_k
        self.poll_s = poll_s
        self.latest: Prediction | None = None
        self.heartbeat: float = time.monotonic()
        self._lock = threading.Lock()  # held while the backend is in use; swap_backend waits on it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_camera = False
        self._running = False
        self._canvas: np.ndarray | None = None
        self._alloc_input(backend)
        self._frames = 0
        self._drops = 0
        self._errors = 0  # frames whose processing raised (counted, skipped)
        self._failures = 0  # consecutive ones; at max_failures the loop gives up (the watchdog restarts us)
        self.max_failures = 50
        self._swaps = 0
        self._t_first: float | None = None
        self._t_last: float | None = None
        self._interval_ema: float | None = None
        self._last_infer_ms = 0.0
        self._last_latency_ms = 0.0
        self._last_age_ms = 0.0
        self._recent = TimingWindow(("e2e_ms", "infer_ms"), size=window)  # for stats' percentiles
        self._dead_listeners: set[int] = set()

    # ------------------------------------------------------------------ setup
    def _alloc_input(self, backend: Any) -> None:
        spec = backend.meta.preprocess
        self._spec = spec
        self._names = list(backend.meta.class_names)
        self._batch = np.zeros((1, 3, spec.input_size, spec.input_size), np.float32)

    @property
    def backend(self) -> Any:
        return self._backend

    def swap_backend(self, new: Any) -> None:
        """Replace the model between two frames (SIGHUP reload); the old backend is closed, smoothing restarts."""
        with self._lock:
            old = self._backend
            self._backend = new
            self._alloc_input(new)
            self.smoother.reset(new.meta.class_names)
            self._swaps += 1
        log.info("model swapped: %s -> %s (%s)", getattr(old, "name", "?"), new.name,
                 ", ".join(new.meta.class_names))
        if old is not new:
            try:
                old.close()
            except Exception:  # noqa: BLE001 - a failing close of the old model must not stop the service
                log.warning("closing the previous backend failed", exc_info=True)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Pipeline":
        """Start the camera (if it is not running) and the inference loop on a daemon thread."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._start_camera()
        self._running = True  # until the loop ends (stop, end of stream, crash)
        self._thread = threading.Thread(target=self._run_safe, name="edge-inference", daemon=True)
        self._thread.start()
        return self

    def _start_camera(self) -> None:
        if not getattr(self.camera, "running", False) and hasattr(self.camera, "start"):
            self.camera.start()
            self._started_camera = True

    def _run_safe(self) -> None:
        try:
            self.run()
        except Exception:  # noqa: BLE001 - the thread must not die silently: log it; heartbeat goes stale
            log.exception("inference loop crashed")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop, the camera (if started here) and close the outputs. Safe to call twice."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("inference thread did not stop within %.1f s", timeout)
        self._thread = None
        if self._started_camera:
            try:
                self.camera.stop()
            except Exception:  # noqa: BLE001
                log.warning("stopping the camera failed", exc_info=True)
            self._started_camera = False
        for o in self.outputs:
            try:
                o.close()
            except Exception:  # noqa: BLE001 - one output's failure must not keep the others open
                log.warning("closing output %s failed", o.name, exc_info=True)

    def __enter__(self) -> "Pipeline":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._running

    def _camera_ended(self) -> bool:
        state = getattr(self.camera, "state", None)
        return state == "ended" or not getattr(self.camera, "running", True)

    def run(self, max_frames: int | None = None) -> None:
        """Run the loop on this thread until `stop()`, the end of the stream, or `max_frames` processed frames."""
        self._start_camera()
        self._running = True
        last_id = -1
        target = None if max_frames is None else self._frames + max_frames
        try:
            while not self._stop.is_set():
                self.heartbeat = time.monotonic()
                got = self.camera.read_latest(after_id=last_id, timeout=self.poll_s)
                if got is None:
                    if self._camera_ended():
                        log.info("source ended after %d frames", self._frames)
                        break
                    continue
                frame, fid, ftime = got
                drops = fid - last_id - 1 if last_id >= 0 and fid > last_id else 0
                self._drops += drops
                last_id = fid
                try:
                    self._process(frame, fid, ftime, drops)
                    self._failures = 0
                except Exception as e:  # noqa: BLE001 - one bad frame must not end the service
                    self._errors += 1
                    self._failures += 1
                    if self._failures == 1:
                        log.error("frame %d failed: %s: %s (further failures counted in stats['errors'])",
                                  fid, type(e).__name__, e)
                    if self._failures >= self.max_failures:
                        raise RuntimeError(f"{self._failures} frames in a row failed; last: {e}") from e
                    continue
                if target is not None and self._frames >= target:
                    break
        finally:
            self._running = False
            self.heartbeat = time.monotonic()

    # ------------------------------------------------------------------ one frame
    def _process(self, frame: np.ndarray, fid: int, ftime: float, drops: int) -> Prediction:
        t0 = time.monotonic()
        with self._lock:
            backend = self._backend
            preprocess_image(frame, self._spec, "BGR", out=self._batch[0])
            t1 = time.monotonic()
            probs, novelty = run_model(backend, self._batch)
            probs, novelty = probs[0], None if novelty is None else float(novelty[0])
            t2 = time.monotonic()
            names = self._names
            label, conf = self.smoother.update(probs, novelty, getattr(backend, "novelty_threshold", None))
        top = int(np.argmax(probs))
        t3 = time.monotonic()
        if self._t_last is not None:
            dt = t3 - self._t_last
            self._interval_ema = dt if self._interval_ema is None else 0.9 * self._interval_ema + 0.1 * dt
        else:
            self._t_first = t3
        self._t_last = t3
        fps = 1.0 / self._interval_ema if self._interval_ema else 0.0
        infer_ms = (t2 - t1) * 1e3
        pred = Prediction(
            label=label,
            confidence=conf,
            probabilities={n: float(p) for n, p in zip(names, probs)},
            frame_id=fid,
            timestamp=time.time(),
            fps=fps,
            infer_ms=infer_ms,
            latency_ms=(t3 - ftime) * 1e3,
            frame_age_ms=(t0 - ftime) * 1e3,
            raw_label=names[top],
            novelty=novelty,
        )
        self.latest = pred
        self._frames += 1

        out = frame
        if self.overlay:
            canvas = self._canvas
            if canvas is None or canvas.shape != frame.shape:
                canvas = self._canvas = np.empty_like(frame)
            np.copyto(canvas, frame)
            out = draw_overlay(canvas, pred, self.top_k)
        t4 = time.monotonic()
        for o in self.outputs:
            if not o.alive:
                continue
            try:
                o.write(out, pred)
            except Exception as e:  # noqa: BLE001 - one broken output must not stop the others
                o.alive = False
                log.error("output %s failed and is disabled: %s: %s", o.name, type(e).__name__, e)
        t5 = time.monotonic()
        e2e = (t5 - ftime) * 1e3
        self._last_infer_ms, self._last_latency_ms, self._last_age_ms = infer_ms, pred.latency_ms, pred.frame_age_ms
        timings = {
            "preprocess_ms": (t1 - t0) * 1e3,
            "infer_ms": infer_ms,
            "overlay_ms": (t4 - t3) * 1e3,
            "outputs_ms": (t5 - t4) * 1e3,
            "latency_ms": pred.latency_ms,
            "e2e_ms": e2e,
            "frame_age_ms": pred.frame_age_ms,
            "drops": float(drops),
        }
        self._recent.add(timings)
        if self.listeners:
            for i, fn in enumerate(self.listeners):
                if i in self._dead_listeners:
                    continue
                try:
                    fn(pred, timings)
                except Exception as e:  # noqa: BLE001
                    self._dead_listeners.add(i)
                    log.error("listener %r failed and is disabled: %s: %s", fn, type(e).__name__, e)
        return pred

    # ------------------------------------------------------------------ stats
    @property
    def stats(self) -> dict[str, Any]:
        """A JSON-friendly snapshot: frames, drops, fps (smoothed and average), recent latency percentiles..."""
        elapsed = (self._t_last - self._t_first) if self._t_first is not None and self._t_last is not None else 0.0
        inf50, inf95 = self._recent.percentiles("infer_ms")
        e2e50, e2e95 = self._recent.percentiles("e2e_ms")
        return {
            "frames": self._frames,
            "drops": self._drops,
            "errors": self._errors,
            "fps": round(1.0 / self._interval_ema, 3) if self._interval_ema else 0.0,
            "fps_avg": round((self._frames - 1) / elapsed, 3) if elapsed > 0 else 0.0,
            "infer_ms": round(self._last_infer_ms, 3),
            "latency_ms": round(self._last_latency_ms, 3),
            "frame_age_ms": round(self._last_age_ms, 3),
            "infer_ms_p50": inf50,
            "infer_ms_p95": inf95,
            "e2e_ms_p50": e2e50,
            "e2e_ms_p95": e2e95,
            "backend": getattr(self._backend, "name", "?"),
            "swaps": self._swaps,
            "running": self._running,
            "outputs": {o.name: o.alive for o in self.outputs},
            "label": self.latest.label if self.latest else None,
        }
