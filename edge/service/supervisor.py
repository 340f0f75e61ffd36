"""`Supervisor`: the main thread of a running service: signals, the main loop, systemd, health logs, reload, shutdown.

Signal handlers only set flags; the main loop (every TICK_S) acts on them, sends READY/WATCHDOG/STATUS to systemd
and logs each health change once. READY=1 goes out once the model is loaded and the HTTP server listens, whatever
the camera does (see edge.service.app). SIGHUP reloads the model on a thread of its own (`LiveModel.reload`); a
SIGHUP during a reload is served after it. Shutdown ends within SHUTDOWN_GRACE_S whatever hangs.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Protocol, Sequence

from edge.runtime.sources import redact_uri
from edge.service.assembly import Sources, close_quietly, one_line
from edge.service.health import CameraStatus, ServiceHealth
from edge.service.model import LiveModel
from edge.service.sdnotify import Notifier
from edge.service.state import LiveState

if TYPE_CHECKING:
    from edge.runtime.backends.base import Backend
    from edge.service.http import HttpServer

log = logging.getLogger(__name__)

TICK_S = 0.2  # main loop period: signal reaction time and health-check resolution
SHUTDOWN_GRACE_S = 4.5  # SIGTERM must end the process within 5 s; past this it exits without finishing cleanup


class Loop(Protocol):
    """What the supervisor watches and stops of the pipeline (edge.runtime.pipeline.Pipeline)."""

    heartbeat: float  # time.monotonic() of the loop's last turn

    @property
    def running(self) -> bool: ...

    @property
    def backend(self) -> Backend: ...

    def stop(self, timeout: float = 5.0) -> None: ...


class Stoppable(CameraStatus, Protocol):
    def stop(self) -> None: ...


@dataclass
class Running:
    """The started parts a supervisor watches and stops: the pipeline, its cameras, their sources, the HTTP server."""

    pipeline: Loop
    cameras: Sequence[Stoppable]
    sources: Sources
    http: HttpServer | None = None


class Supervisor:
    """Supervises one service. `install_signals()` first; `stop_signal` is set once SIGTERM/SIGINT came."""

    def __init__(self, notifier: Notifier, state: LiveState, model: LiveModel) -> None:
        self.notifier = notifier
        self.state = state
        self.model = model
        self.stop_signal: str | None = None
        self._reload_requested = False
        self._reload_thread: threading.Thread | None = None
        self._ready = False
        self._healthy: dict[str, bool] = {}  # "" (the service) or "camera N " -> healthy when last logged
        self._status_sent: str | None = None

    # ------------------------------------------------------------------ signals (flags only; the main loop acts)
    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.stop_signal is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: the user gives up on a clean stop
                os.write(2, b"SIGINT again: exiting now\n")
                os._exit(130)
            return  # repeated SIGTERMs (e.g. forwarded by a wrapper) change nothing: the stop is under way
        self.stop_signal = name

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reload_requested = True

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)

    # ------------------------------------------------------------------ the main loop
    def supervise(self, running: Running) -> int:
        """Until a stop signal (0), the end of every non-looping source (0) or a dead inference loop (1); a source
        refused at its first open raises its SourceConfigError (one line, exit 2)."""
        wd = self.notifier.watchdog_s
        last_ping = 0.0
        self._send_ready(running)
        while True:
            if self.stop_signal:
                log.info("%s received: stopping", self.stop_signal)
                return 0
            if running.sources.fatal is not None:
                raise running.sources.fatal  # one line and exit 2 (after the shutdown), like `capture`
            if self._reload_requested and not (self._reload_thread is not None and self._reload_thread.is_alive()):
                # a SIGHUP during a reload is served after it (the file may have changed again meanwhile)
                self._reload_requested = False
                self._start_reload()
            now = time.monotonic()
            pipe = running.pipeline
            if wd is not None and now - last_ping >= wd / 2 and now - pipe.heartbeat < wd / 2:
                # only a pipeline that is still looping earns a ping; a hung one lets systemd restart us
                self.notifier.watchdog()
                last_ping = now
            self._report_health()
            if not pipe.running:  # Pipeline.start() sets it before returning: not running means the loop ended
                if all(camera.state == "ended" for camera in running.cameras):
                    log.info("source ended (not looping): stopping")
                    return 0
                log.error("the inference loop stopped unexpectedly (see the error above); exiting for a restart")
                return 1
            time.sleep(TICK_S)

    def status_line(self, health: ServiceHealth) -> str:
        """systemd's STATUS=: what we serve, or what is wrong (without ages, so it changes only with the state)."""
        return self.model.status() if health.ok else (
            health.summary if health.status == "starting" else f"unhealthy: {health.summary}")

    def _send_ready(self, running: Running) -> None:
        """READY=1 once the model is loaded and HTTP listens: the camera may still be missing."""
        if self._ready:
            return
        self._ready = True
        health = self.state.freshness()
        log.info("ready: model loaded%s; source %s",
                 f", http on {running.http.url}" if running.http is not None else "", health.source_state)
        self._status_sent = self.status_line(health)
        self.notifier.ready(self._status_sent)

    def _report_health(self) -> None:
        """STATUS= whenever the state changes (camera reconnecting, serving, unhealthy); health changes logged once."""
        health = self.state.freshness()
        line = self.status_line(health)
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
        log.info("SIGHUP: reloading %s", self.model.path or "(no model yet)")
        self._reload_thread = threading.Thread(target=self._reload, name="reload", daemon=True)
        self._reload_thread.start()

    def _reload(self) -> None:
        try:
            new = self.model.reload()
        except Exception as e:  # noqa: BLE001 - any failure: keep the model we have
            log.error("reload failed, still serving the previous model: %s", one_line(e))
            self.state.prom.reloads.labels("failed").inc()
        else:
            self.state.prom.reloads.labels("ok").inc()
            log.info("reloaded %s (%s)", self.model.path, ", ".join(new.meta.class_names))
        self.notifier.ready(self.status_line(self.state.freshness()))

    # ------------------------------------------------------------------ shutdown
    def shutdown(self, running: Running) -> None:
        """Stop everything within SHUTDOWN_GRACE_S: the pipeline (it finalizes the outputs), HTTP, the model, the
        cameras and their sources."""
        self.notifier.stopping()
        self.notifier.status("stopping")
        # a stuck driver or disk must not turn SIGTERM into systemd's SIGKILL: exit anyway before 5 s
        deadline = time.monotonic() + SHUTDOWN_GRACE_S - 0.5
        timer = threading.Timer(SHUTDOWN_GRACE_S, _force_exit)
        timer.daemon = True
        timer.start()
        pipe, http = running.pipeline, running.http
        if http is not None:
            http.stopping = True  # stream clients end their loops within a second
        pipe.stop(timeout=2.0)  # ends inference and closes (finalizes) the outputs: the recording is safe now
        if http is not None:
            http.stop()
        close_quietly(pipe.backend)
        running.sources.interrupt()  # a read waiting on a slow source ends now instead of holding the stop
        for camera in running.cameras:
            try:
                camera.stop()
            except Exception:  # one camera's failure must not keep the others running
                log.warning("stopping %r failed", camera, exc_info=True)
        for source in running.sources.opened:  # released on their reading thread: the device, the decoder's threads
            if not source.wait_closed(max(0.0, deadline - time.monotonic())):
                log.warning("%s is still blocked in a read; exiting without waiting for it", redact_uri(source.uri))
        self.notifier.close()
        timer.cancel()
        log.info("stopped")


def _force_exit() -> None:
    log.error("shutdown did not finish within %.1f s; exiting without finishing cleanup", SHUTDOWN_GRACE_S)
    logging.shutdown()
    os._exit(1)
