"""`edge serve`: cameras -> pipeline -> outputs, kept running unattended (signals, health, systemd, reload).

Threads: each camera's capture thread (latest frame only, reconnects forever, on its own), the pipeline's one
inference thread (the newest frame of every camera in one batch; outputs and listeners run there and return
quickly), the HTTP server and its clients, one thread per service output, and a reload thread on SIGHUP. The
main thread only supervises: signal handlers set flags, and the main loop (every 0.2 s) acts on them, sends
READY/WATCHDOG/STATUS to systemd and logs health changes once each.

Readiness: READY=1 goes out once the model is loaded and the HTTP server listens, whatever the camera does; the
camera's state travels in STATUS= and /healthz. (Waiting for a first frame would turn a camera unplugged at boot
into a kill-and-restart loop every TimeoutStartSec.) A wrong source (bad scheme or option, missing file, csi://
without GStreamer) is refused at start with one line and exit code 2; an absent camera or stream is an outage,
waited out by reconnecting.

Several cameras (`--source A --source B`): one model, per-camera smoothing, overlay, recording (`run.cam1.mp4`) and
HTTP stream (`?camera=1`); --events and --on-change are shared and say which camera changed. The service is healthy
only while every camera is (/healthz lists each), so a device whose second camera died says so.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.errors import EdgeError, brief
from edge.runtime.outputs.changes import LabelChanges
from edge.runtime.sources import SourceConfigError, redact_uri
from edge.service.config import ServeConfig
from edge.service.health import ServiceHealth, assess_all
from edge.service.metrics import CONTENT_TYPE, ServiceMetrics
from edge.service.sdnotify import Notifier
from edge.service.views import cameras_json, metrics_stats

log = logging.getLogger(__name__)

TICK_S = 0.2  # main loop period: signal reaction time and health-check resolution
SHUTDOWN_GRACE_S = 4.5  # SIGTERM must end the process within 5 s; past this it exits without finishing cleanup


def _check_model(backend: Any, batch: int = 1) -> None:
    """Run one dummy inference, of the batch size the pipeline will use, so a model that loads but cannot run is
    refused before it replaces a good one."""
    spec = backend.meta.preprocess
    probs = np.asarray(backend.run(np.zeros((batch, 3, spec.input_size, spec.input_size), np.float32))[0])
    n = backend.meta.num_classes
    if probs.shape != (batch, n) or not np.all(np.isfinite(probs)):
        raise EdgeError(f"test inference returned shape {probs.shape} (expected ({batch}, {n})) or non-finite values")


def _one_line(e: BaseException) -> str:
    """An EdgeError's own message; `Type: first line` for anything else (library messages can span pages)."""
    return str(e) if isinstance(e, EdgeError) else brief(e)


class Service:
    """One running `edge serve`. `run()` blocks until SIGTERM/SIGINT (or the end of a non-looping file)."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.notifier = Notifier()
        self.cameras: list[Any] = []  # camera i reads cfg.sources[i]
        self.pipeline: Any = None
        self.http: Any = None
        self.streams: list[Any] = []  # each camera's StreamOutput (with --http)
        self.outputs: list[Any] = []  # given every camera's frames: events, on-change, display
        self.camera_outputs: list[list[Any]] = []  # each camera's own: its recording, its HTTP stream
        self.changes = LabelChanges()  # the one decision of a label change: events, on-change and the metric
        self.prom = ServiceMetrics(self._live_stats, self.changes, cameras=len(cfg.sources))
        self._stop_signal: str | None = None
        self._reload_requested = False
        self._reload_thread: threading.Thread | None = None
        self._ready = False
        self._healthy: dict[str, bool] = {}  # "" (the service) or "camera N " -> healthy when last logged
        self._status_sent: str | None = None
        self._model_info: dict[str, str] = {}
        self._latest: dict[int, tuple[Any, float]] = {}  # camera -> (its newest prediction, time.monotonic() then)
        self._source_opens = [0] * len(cfg.sources)
        self._source_fatal: SourceConfigError | None = None  # the first open found the source itself wrong
        self._closing_source = threading.Event()  # set on shutdown: ends a camera read that blocks (slow source)
        self._sources: list[Any] = []  # what _open_source opened (InterruptibleSource), to see them released

    @property
    def camera(self) -> Any:
        """The first (or only) camera."""
        return self.cameras[0] if self.cameras else None

    @camera.setter
    def camera(self, camera: Any) -> None:
        self.cameras = [camera]

    # ------------------------------------------------------------------ signals (flags only; the main loop acts)
    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self._stop_signal is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: the user gives up on a clean stop
                os.write(2, b"SIGINT again: exiting now\n")
                os._exit(130)
            return  # repeated SIGTERMs (e.g. forwarded by a wrapper) change nothing: the stop is under way
        self._stop_signal = name

    def _on_hup(self, signum: int, frame: Any) -> None:
        self._reload_requested = True

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)

    # ------------------------------------------------------------------ setup
    def _load_backend(self) -> Any:
        from edge.runtime.backends import load_backend

        backend = load_backend(self.cfg.model, self.cfg.backend, self.cfg.device,
                               novelty_threshold=self.cfg.novelty_threshold)
        try:
            _check_model(backend, self._batch_size)
        except Exception as e:
            backend.close()
            raise EdgeError(f"model {self.cfg.model!r} loads but cannot run: {_one_line(e)}") from e
        return backend

    @property
    def _batch_size(self) -> int:
        """Frames per inference call at most: one per camera, or --max-batch."""
        cameras = len(self.cfg.sources)
        return min(cameras, self.cfg.max_batch or cameras)

    def _set_model_info(self, backend: Any) -> None:
        meta = backend.meta
        self._model_info = {"arch": meta.arch, "backend": getattr(backend, "name", "?"),
                            "classes": ",".join(meta.class_names), "file": Path(self.cfg.model).name}

    def _serving_status(self) -> str:
        return f"serving {Path(self.cfg.model).name} on {', '.join(redact_uri(s) for s in self.cfg.sources)}"

    def _status_line(self, health: ServiceHealth) -> str:
        """systemd's STATUS=: what we serve, or what is wrong (without ages, so it changes only with the state)."""
        return self._serving_status() if health.ok else (
            health.summary if health.status == "starting" else f"unhealthy: {health.summary}")

    def _close_unstarted(self, backend: Any) -> None:
        """Release what setup built before anything was started (outputs, the bound HTTP socket, the model)."""
        for o in [*self.outputs, *(o for outs in self.camera_outputs for o in outs)]:
            _close_quietly(o)
        if self.http is not None:
            self.http.server_close()
        if backend is not None:
            _close_quietly(backend)

    def _build_outputs(self) -> None:
        from edge.runtime.outputs.display import DisplayOutput
        from edge.runtime.outputs.events import EventsOutput
        from edge.runtime.outputs.on_change import OnChangeOutput

        cfg = self.cfg
        if cfg.events:
            self.outputs.append(EventsOutput(cfg.events, changes=self.changes))
        if cfg.on_change:
            self.outputs.append(OnChangeOutput(cfg.on_change, cfg.on_change_interval, cfg.on_change_timeout,
                                               changes=self.changes))
        if cfg.display:
            self.outputs.append(DisplayOutput())
        for camera in range(len(cfg.sources)):
            self.camera_outputs.append([])  # before building them: what is built is closed if a later one fails
            self._build_camera_outputs(camera, self.camera_outputs[-1])
        if cfg.http is not None:
            from edge.service.http import HttpServer

            host, port = cfg.http_address  # type: ignore[misc]
            self.http = HttpServer(host, port, self, token=cfg.token, allowed_hosts=cfg.allowed_host_names)

    def _build_camera_outputs(self, camera: int, outputs: list[Any]) -> None:
        cfg = self.cfg
        if cfg.record:
            from edge.runtime.outputs.record import RecordOutput, camera_path

            # realtime recording repeats/skips frames to follow the wall clock: the file rate need not match the source
            outputs.append(RecordOutput(camera_path(cfg.record, camera, len(cfg.sources)), fps=cfg.fps or 15.0))
        if cfg.http is not None:
            from edge.runtime.outputs.stream import StreamOutput

            self.streams.append(StreamOutput(cfg.jpeg_quality))
            outputs.append(self.streams[-1])

    def _build_pipeline(self, backend: Any) -> None:
        from edge.runtime.camera import Camera
        from edge.runtime.pipeline import Pipeline
        from edge.runtime.slots import CameraSlot
        from edge.runtime.smoothing import Smoother

        cfg = self.cfg
        # the camera's URI is only a name for its log lines (we open the source): no credentials in the journal
        self.cameras = [Camera(redact_uri(uri), width=cfg.width, height=cfg.height, fps=cfg.fps, loop=cfg.loop,
                               realtime=True, stall_timeout=cfg.stall_timeout, max_backoff=cfg.max_backoff,
                               opener=partial(self._open_source, i)) for i, uri in enumerate(cfg.sources)]
        slots = [CameraSlot(cam, outputs=outs, name=cam.uri) for cam, outs in zip(self.cameras, self.camera_outputs)]
        smoother = Smoother(backend.meta.class_names, smoothing=cfg.smoothing, threshold=cfg.threshold,
                            hysteresis=cfg.hysteresis, min_dwell=cfg.min_dwell)  # copied for each further camera
        self.pipeline = Pipeline(slots, backend, smoother=smoother, outputs=self.outputs, overlay=cfg.overlay,
                                 listeners=[self._on_prediction, self.prom.listener], top_k=cfg.top_k,
                                 max_batch=cfg.max_batch)

    def _open_source(self, camera: int) -> Any:
        """Camera `camera`'s opener (on its capture thread). A configuration error on its very first open is fatal
        (the supervisor exits 2); later ones, and every outage, are retried by the camera. Reads can be ended by
        shutdown, so a source that blocks (0.1 fps, a stalled stream) never holds the stop."""
        from edge.runtime.sources import open_source
        from edge.runtime.sources.adapters import InterruptibleSource

        cfg = self.cfg
        first = self._source_opens[camera] == 0
        self._source_opens[camera] += 1
        try:
            source = open_source(cfg.sources[camera], width=cfg.width, height=cfg.height, fps=cfg.fps, loop=cfg.loop)
        except SourceConfigError as e:
            if first:
                self._source_fatal = self._name_camera(camera, e)
            raise
        wrapped = InterruptibleSource(source, self._closing_source)
        self._sources = [s for s in self._sources if not s.wait_closed(0)] + [wrapped]
        return wrapped

    def _on_prediction(self, prediction: Any, timings: Any = None) -> None:
        """Pipeline listener: each camera's newest prediction and its monotonic time (never the wall clock: see
        health)."""
        self._latest[int(getattr(prediction, "camera", 0))] = (prediction, time.monotonic())

    def _name_camera(self, camera: int, e: SourceConfigError) -> SourceConfigError:
        """With several cameras an error about a source says which camera it is (`camera 1: ...`)."""
        return e if len(self.cfg.sources) == 1 else SourceConfigError(f"camera {camera}: {e}")

    def _validate_sources(self) -> None:
        """A wrong source is a configuration error, not an outage: one line, exit 2, before the model loads."""
        from edge.runtime.sources import validate_source_uri

        for camera, uri in enumerate(self.cfg.sources):
            try:
                validate_source_uri(uri)
            except SourceConfigError as e:
                raise self._name_camera(camera, e) from e

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        cfg = self.cfg
        self._install_signals()
        self._validate_sources()
        self.notifier.status("loading model")
        backend = None
        try:
            backend = self._load_backend()
            self._set_model_info(backend)
            log.info("model %s: %s, classes %s", cfg.model, backend.describe() if hasattr(backend, "describe")
                     else backend.name, ", ".join(backend.meta.class_names))
            self._build_outputs()
            self._build_pipeline(backend)
        except BaseException:
            self._close_unstarted(backend)
            raise
        if self._stop_signal:  # SIGTERM while the model was loading: nothing was started yet
            log.info("%s received during startup: exiting", self._stop_signal)
            self._close_unstarted(backend)
            return 0
        if self.http is not None:
            self.http.start()
            log.info("http: %s%s", self.http.url, " (token required)" if cfg.token else "")
        # started here, not by the pipeline, so shutdown can finalize the outputs before waiting on the driver
        for camera in self.cameras:
            camera.start()
        self.pipeline.start()
        log.info("serving %s from %s", cfg.model, ", ".join(redact_uri(s) for s in cfg.sources))
        try:
            return self._supervise()
        finally:
            self._shutdown()

    def _supervise(self) -> int:
        wd = self.notifier.watchdog_s
        last_ping = 0.0
        self._send_ready()
        while True:
            if self._stop_signal:
                log.info("%s received: stopping", self._stop_signal)
                return 0
            if self._source_fatal is not None:
                raise self._source_fatal  # one line and exit 2 (after the shutdown), like `capture`
            if self._reload_requested and not (self._reload_thread is not None and self._reload_thread.is_alive()):
                # a SIGHUP during a reload is served after it (the file may have changed again meanwhile)
                self._reload_requested = False
                self._start_reload()
            now = time.monotonic()
            pipe = self.pipeline
            if wd is not None and now - last_ping >= wd / 2 and now - pipe.heartbeat < wd / 2:
                # only a pipeline that is still looping earns a ping; a hung one lets systemd restart us
                self.notifier.watchdog()
                last_ping = now
            self._report_health()
            if not pipe.running:  # Pipeline.start() sets it before returning: not running means the loop ended
                if all(getattr(camera, "state", "") == "ended" for camera in self.cameras):
                    log.info("source ended (not looping): stopping")
                    return 0
                log.error("the inference loop stopped unexpectedly (see the error above); exiting for a restart")
                return 1
            time.sleep(TICK_S)

    def _send_ready(self) -> None:
        """READY=1 once the model is loaded and HTTP listens: the camera may still be missing (see the docstring)."""
        if self._ready:
            return
        self._ready = True
        health = self.freshness()
        log.info("ready: model loaded%s; source %s", f", http on {self.http.url}" if self.http is not None else "",
                 health.source_state)
        self._status_sent = self._status_line(health)
        self.notifier.ready(self._status_sent)

    def _report_health(self) -> None:
        """STATUS= whenever the state changes (camera reconnecting, serving, unhealthy); health changes logged once."""
        health = self.freshness()
        line = self._status_line(health)
        if line != self._status_sent:
            self._status_sent = line
            self.notifier.status(line)
        # one camera: the service's health; several: each camera's, so a second outage is logged too
        several = len(health.cameras) > 1
        units = [(f"camera {i} ", h) for i, h in enumerate(health.cameras)] if several else [("", health)]
        for name, unit in units:
            if unit.status == "starting":
                continue
            was = self._healthy.get(name)
            if unit.ok != was and (was is not None or not unit.ok):
                if unit.ok:
                    log.info("%shealthy again: frames are fresh", name)
                else:
                    log.warning("%sunhealthy: %s", name, unit.reason)
            self._healthy[name] = unit.ok

    # ------------------------------------------------------------------ reload (SIGHUP)
    def _start_reload(self) -> None:
        self.notifier.reloading()
        log.info("SIGHUP: reloading %s", self.cfg.model)
        self._reload_thread = threading.Thread(target=self._reload, name="reload", daemon=True)
        self._reload_thread.start()

    def _reload(self) -> None:
        try:
            new = self._load_backend()
        except Exception as e:  # noqa: BLE001 - any failure: keep the model we have
            log.error("reload failed, still serving the previous model: %s", _one_line(e))
            self.prom.reloads.labels("failed").inc()
        else:
            self.pipeline.swap_backend(new)
            self._set_model_info(new)
            self.prom.reloads.labels("ok").inc()
            log.info("reloaded %s (%s)", self.cfg.model, ", ".join(new.meta.class_names))
        self.notifier.ready(self._status_line(self.freshness()))

    # ------------------------------------------------------------------ shutdown
    def _shutdown(self) -> None:
        self.notifier.stopping()
        self.notifier.status("stopping")
        # a stuck driver or disk must not turn SIGTERM into systemd's SIGKILL: exit anyway before 5 s
        deadline = time.monotonic() + SHUTDOWN_GRACE_S - 0.5
        timer = threading.Timer(SHUTDOWN_GRACE_S, _force_exit)
        timer.daemon = True
        timer.start()
        pipe = self.pipeline
        if self.http is not None:
            self.http.stopping = True  # stream clients end their loops within a second
        if pipe is not None:
            pipe.stop(timeout=2.0)  # ends inference and closes (finalizes) the outputs: the recording is safe now
        if self.http is not None:
            self.http.stop()
        if pipe is not None:
            _close_quietly(pipe.backend)
        if self.cameras:
            self._closing_source.set()  # a read waiting on a slow source ends now instead of holding the stop
            for camera in self.cameras:
                _stop_quietly(camera)
            for source in self._sources:  # released on their reading thread: the device, the decoder's threads
                if not source.wait_closed(max(0.0, deadline - time.monotonic())):
                    log.warning("%s is still blocked in a read; exiting without waiting for it",
                                redact_uri(source.uri))
        self.notifier.close()
        timer.cancel()
        log.info("stopped")

    # ------------------------------------------------------------------ what HTTP and metrics read
    def freshness(self) -> ServiceHealth:
        """The one health decision (/healthz, `stale`, edge_healthy, STATUS=), from monotonic clocks only."""
        at = [self._latest[i][1] if i in self._latest else None for i in range(len(self.cameras))]
        return assess_all(self.cameras, at, self.cfg.health_max_age)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, the /healthz body)."""
        health = self.freshness()
        return health.ok, health.to_json()

    def prediction_json(self, camera: int = 0) -> dict[str, Any] | None:
        """Camera `camera`'s newest prediction as /api/prediction serves it; None before its first."""
        latest = self._latest.get(camera)
        if latest is None:
            return None
        pred, health = latest[0], self.freshness().cameras[camera]
        out = {
            "camera": camera,
            "label": pred.label,
            "confidence": round(float(pred.confidence), 6),
            "probabilities": {k: round(float(v), 6) for k, v in pred.probabilities.items()},
            "raw_label": pred.raw_label,
            "novelty": None if getattr(pred, "novelty", None) is None else round(float(pred.novelty), 6),
            "novelty_threshold": self._novelty_threshold(),
            "frame": int(pred.frame_id),
            "timestamp": float(pred.timestamp),
            "fps": round(float(pred.fps), 3),
            "infer_ms": round(float(pred.infer_ms), 3),
            "latency_ms": round(float(pred.latency_ms), 3),
            "frame_age_ms": round(float(pred.frame_age_ms), 3),
            "stale": not health.ok,
            "source_state": health.source_state,
            "model": dict(self._model_info),
        }
        if health.reason:
            out["reason"] = health.reason
        return out

    def _novelty_threshold(self) -> float | None:
        """Above this novelty the label is `unknown` (the served model's, or --novelty-threshold); None without."""
        threshold = getattr(self.pipeline.backend, "novelty_threshold", None) if self.pipeline is not None else None
        return None if threshold is None else round(float(threshold), 6)

    def metrics(self) -> tuple[bytes, str]:
        return self.prom.render(), CONTENT_TYPE

    def cameras_json(self) -> list[dict[str, Any]]:
        """/api/cameras (see edge.service.views)."""
        slots = self.pipeline.stats["cameras"] if self.pipeline is not None else None
        return cameras_json(self.cfg.sources, self.cameras, self.freshness(), slots)

    def _live_stats(self) -> dict[str, Any]:
        """What /metrics reports (see edge.service.views)."""
        if self.pipeline is None:
            return {}
        return metrics_stats(self.cfg.sources, self.cameras, self.freshness(), self.pipeline.stats, self.streams,
                             self._model_info)


def _force_exit() -> None:
    log.error("shutdown did not finish within %.1f s; exiting without finishing cleanup", SHUTDOWN_GRACE_S)
    logging.shutdown()
    os._exit(1)


def _close_quietly(obj: Any) -> None:
    try:
        obj.close()
    except Exception:  # noqa: BLE001 - cleanup of one part must not skip the others
        log.warning("closing %r failed", obj, exc_info=True)


def _stop_quietly(obj: Any) -> None:
    try:
        obj.stop()
    except Exception:  # noqa: BLE001
        log.warning("stopping %r failed", obj, exc_info=True)


def serve(cfg: ServeConfig) -> int:
    """Run the service until a stop signal; 0 on a clean stop."""
    return Service(cfg).run()
