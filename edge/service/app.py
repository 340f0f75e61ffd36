"""`edge serve`: camera -> pipeline -> outputs, kept running unattended (signals, health, systemd, reload).

Threads: the camera's capture thread (latest frame only, reconnects forever), the pipeline's inference thread
(outputs and listeners run there and return quickly), the HTTP server and its clients, one thread per service
output, and a reload thread on SIGHUP. The main thread only supervises: signal handlers set flags, and the main
loop (every 0.2 s) acts on them, sends READY/WATCHDOG/STATUS to systemd and logs health changes once each.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.errors import EdgeError, brief
from edge.service.config import ServeConfig
from edge.service.metrics import CONTENT_TYPE, ServiceMetrics
from edge.service.sdnotify import Notifier

log = logging.getLogger(__name__)

TICK_S = 0.2  # main loop period: signal reaction time and health-check resolution
SHUTDOWN_GRACE_S = 4.5  # SIGTERM must end the process within 5 s; past this it exits without finishing cleanup


def _check_model(backend: Any) -> None:
    """Run one dummy inference so a model that loads but cannot run is refused before it replaces a good one."""
    spec = backend.meta.preprocess
    probs = np.asarray(backend.infer(np.zeros((1, 3, spec.input_size, spec.input_size), np.float32)))
    n = backend.meta.num_classes
    if probs.shape != (1, n) or not np.all(np.isfinite(probs)):
        raise EdgeError(f"test inference returned shape {probs.shape} (expected (1, {n})) or non-finite values")


def _redact(uri: str) -> str:
    """A source URI for logs: credentials in `user:pass@` or `?token=` are not for the journal."""
    uri = re.sub(r"(?<=://)[^/@]+@", "***@", uri)
    return re.sub(r"(?i)(token|password|pass|key)=[^&]*", r"\1=***", uri)


def _looks_like_path(uri: str) -> bool:
    return "://" not in uri and not uri.isdigit() and not uri.startswith("/dev/")


def _one_line(e: BaseException) -> str:
    """An EdgeError's own message; `Type: first line` for anything else (library messages can span pages)."""
    return str(e) if isinstance(e, EdgeError) else brief(e)


class Service:
    """One running `edge serve`. `run()` blocks until SIGTERM/SIGINT (or the end of a non-looping file)."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.notifier = Notifier()
        self.camera: Any = None
        self.pipeline: Any = None
        self.http: Any = None
        self.stream: Any = None
        self.outputs: list[Any] = []
        self.prom = ServiceMetrics(self._live_stats)
        self._stop_signal: str | None = None
        self._reload_requested = False
        self._reload_thread: threading.Thread | None = None
        self._ready = False
        self._seen_running = False
        self._healthy: bool | None = None
        self._started_at = time.monotonic()
        self._model_info: dict[str, str] = {}

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

        backend = load_backend(self.cfg.model, self.cfg.backend, self.cfg.device)
        try:
            _check_model(backend)
        except Exception as e:
            backend.close()
            raise EdgeError(f"model {self.cfg.model!r} loads but cannot run: {_one_line(e)}") from e
        return backend

    def _set_model_info(self, backend: Any) -> None:
        meta = backend.meta
        self._model_info = {"arch": meta.arch, "backend": getattr(backend, "name", "?"),
                            "classes": ",".join(meta.class_names), "file": Path(self.cfg.model).name}

    def _serving_status(self) -> str:
        return f"serving {Path(self.cfg.model).name} on {_redact(self.cfg.source)}"

    def _close_unstarted(self, backend: Any) -> None:
        """Release what setup built before anything was started (outputs, the bound HTTP socket, the model)."""
        for o in self.outputs:
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
        if cfg.record:
            from edge.runtime.outputs.record import RecordOutput

            # realtime recording repeats/skips frames to follow the wall clock, so the file rate need not match the source
            self.outputs.append(RecordOutput(cfg.record, fps=cfg.fps or 15.0))
        if cfg.events:
            self.outputs.append(EventsOutput(cfg.events))
        if cfg.on_change:
            self.outputs.append(OnChangeOutput(cfg.on_change, cfg.on_change_interval, cfg.on_change_timeout))
        if cfg.display:
            self.outputs.append(DisplayOutput())
        if cfg.http is not None:
            from edge.runtime.outputs.stream import StreamOutput
            from edge.service.http import HttpServer

            self.stream = StreamOutput(cfg.jpeg_quality)
            self.outputs.append(self.stream)
            host, port = cfg.http_address  # type: ignore[misc]
            self.http = HttpServer(host, port, self, token=cfg.token)

    def _build_pipeline(self, backend: Any) -> None:
        from edge.runtime.camera import Camera
        from edge.runtime.pipeline import Pipeline
        from edge.runtime.smoothing import Smoother

        cfg = self.cfg
        self.camera = Camera(cfg.source, width=cfg.width, height=cfg.height, fps=cfg.fps, loop=cfg.loop,
                             realtime=True, stall_timeout=cfg.stall_timeout, max_backoff=cfg.max_backoff)
        smoother = Smoother(backend.meta.class_names, smoothing=cfg.smoothing, threshold=cfg.threshold,
                            hysteresis=cfg.hysteresis, min_dwell=cfg.min_dwell)
        self.pipeline = Pipeline(self.camera, backend, smoother=smoother, outputs=self.outputs, overlay=cfg.overlay,
                                 listeners=[self.prom.listener], top_k=cfg.top_k)

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        cfg = self.cfg
        self._install_signals()
        if _looks_like_path(cfg.source) and not Path(cfg.source).expanduser().exists():
            raise EdgeError(f"source {cfg.source!r}: no such file or folder")
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
        self.notifier.status(f"waiting for the first frame from {_redact(cfg.source)}")
        # started here, not by the pipeline, so shutdown can finalize the outputs before waiting on the driver
        self.camera.start()
        self.pipeline.start()
        self._started_at = time.monotonic()
        log.info("serving %s from %s", cfg.model, _redact(cfg.source))
        try:
            return self._supervise()
        finally:
            self._shutdown()

    def _supervise(self) -> int:
        wd = self.notifier.watchdog_s
        last_ping = 0.0
        while True:
            if self._stop_signal:
                log.info("%s received: stopping", self._stop_signal)
                return 0
            if self._reload_requested and not (self._reload_thread is not None and self._reload_thread.is_alive()):
                # a SIGHUP during a reload is served after it (the file may have changed again meanwhile)
                self._reload_requested = False
                self._start_reload()
            now = time.monotonic()
            pipe = self.pipeline
            if not self._ready and pipe.latest is not None:
                self._ready = True
                log.info("ready: first frame classified (%s)", pipe.latest.label)
                self.notifier.ready(self._serving_status())
            if wd is not None and now - last_ping >= wd / 2 and now - pipe.heartbeat < wd / 2:
                # only a pipeline that is still looping earns a ping; a hung one lets systemd restart us
                self.notifier.watchdog()
                last_ping = now
            self._log_health_change()
            if pipe.running:
                self._seen_running = True
            elif self._seen_running or self._ready or now - self._started_at > 5.0:
                if getattr(self.camera, "state", "") == "ended":
                    log.info("source ended (not looping): stopping")
                    return 0
                log.error("the inference loop stopped unexpectedly (see the error above); exiting for a restart")
                return 1
            time.sleep(TICK_S)

    def _log_health_change(self) -> None:
        ok, info = self.health()
        if ok != self._healthy and (self._healthy is not None or not ok) and info["status"] != "starting":
            if ok:
                log.info("healthy again: frames are fresh")
                self.notifier.status(self._serving_status())
            else:
                log.warning("unhealthy: %s", info.get("reason", "stale"))
                self.notifier.status(f"unhealthy: {info.get('reason', 'stale')}")
        if info["status"] != "starting":
            self._healthy = ok

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
        self.notifier.ready(self._serving_status())

    # ------------------------------------------------------------------ shutdown
    def _shutdown(self) -> None:
        self.notifier.stopping()
        self.notifier.status("stopping")
        # a stuck driver or disk must not turn SIGTERM into systemd's SIGKILL: exit anyway before 5 s
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
        if self.camera is not None:
            _stop_quietly(self.camera)  # releases the device; the timer covers a driver that never returns
        self.notifier.close()
        timer.cancel()
        log.info("stopped")

    # ------------------------------------------------------------------ what HTTP and metrics read
    def prediction_json(self) -> dict[str, Any] | None:
        pred = self.pipeline.latest if self.pipeline is not None else None
        if pred is None:
            return None
        ok, info = self.health()
        return {
            "label": pred.label,
            "confidence": round(float(pred.confidence), 6),
            "probabilities": {k: round(float(v), 6) for k, v in pred.probabilities.items()},
            "raw_label": pred.raw_label,
            "frame": int(pred.frame_id),
            "timestamp": float(pred.timestamp),
            "fps": round(float(pred.fps), 3),
            "infer_ms": round(float(pred.infer_ms), 3),
            "latency_ms": round(float(pred.latency_ms), 3),
            "frame_age_ms": round(float(pred.frame_age_ms), 3),
            "stale": not ok,
            "source_state": info.get("source_state"),
            "model": dict(self._model_info),
        }

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy = the newest frame and the newest prediction are both younger than --health-max-age."""
        max_age = self.cfg.health_max_age
        cam, pipe = self.camera, self.pipeline
        state = str(getattr(cam, "state", "stopped"))
        info: dict[str, Any] = {"source_state": state}
        pred = pipe.latest if pipe is not None else None
        if pred is None:
            info.update(status="starting", reason="no frame classified yet")
            return False, info
        frame_time = float(getattr(cam, "frame_time", 0.0) or 0.0)
        frame_age = time.monotonic() - frame_time if frame_time else float("inf")
        pred_age = max(0.0, time.time() - float(pred.timestamp))
        info.update(frame_age_s=round(frame_age, 3), prediction_age_s=round(pred_age, 3))
        if frame_age > max_age:
            info.update(status="stale", reason=f"no frame for {frame_age:.1f} s (source {state})")
            return False, info
        if pred_age > max_age:
            info.update(status="stale", reason=f"no prediction for {pred_age:.1f} s (inference stalled)")
            return False, info
        info["status"] = "ok"
        return True, info

    def metrics(self) -> tuple[bytes, str]:
        return self.prom.render(), CONTENT_TYPE

    def _live_stats(self) -> dict[str, Any]:
        cam, pipe = self.camera, self.pipeline
        if pipe is None:
            return {}
        st = pipe.stats
        ok, _ = self.health()
        frame_time = float(getattr(cam, "frame_time", 0.0) or 0.0)
        return {
            "frames_captured": max(0, int(getattr(cam, "frame_id", -1)) + 1),
            "frames_processed": st.get("frames", 0),
            "frames_dropped": st.get("drops", 0),
            "source_reconnects": getattr(cam, "reconnects", None),
            "source_errors": getattr(cam, "errors", None),
            "fps": st.get("fps", 0.0) if ok else 0.0,
            "frame_age_seconds": (time.monotonic() - frame_time) if frame_time else None,
            "healthy": 1 if ok else 0,
            "stream_clients": self.stream.clients if self.stream is not None else None,
            "outputs": st.get("outputs") or {},
            "model": dict(self._model_info),
        }


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
