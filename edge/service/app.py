"""`edge serve`: cameras -> pipeline -> outputs, kept running unattended (signals, health, systemd, reload).

`Service` only puts parts together: `assembly` builds them from the config, `LiveModel` (model) holds the served
model and swaps it (SIGHUP, teach's go-live), `LiveState` (state) is what HTTP, metrics and systemd read, and
`Supervisor` (supervisor) runs the main thread. `edge teach` composes the same parts through the same public
interfaces (a Service started without a model, with its page, API routes and a listener of its own).

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
from typing import TYPE_CHECKING, Sequence

from edge.runtime.sources import redact_uri
from edge.service.assembly import (
    Outputs,
    Sources,
    build_cameras,
    build_http,
    build_outputs,
    build_pipeline,
    close_quietly,
    validate_sources,
)
from edge.service.config import ServeConfig
from edge.service.model import LiveModel
from edge.service.sdnotify import Notifier
from edge.service.state import LiveState
from edge.service.supervisor import Running, Supervisor

if TYPE_CHECKING:
    from edge.runtime.backends.base import Backend
    from edge.runtime.camera import Camera
    from edge.runtime.pipeline import Listener, Pipeline
    from edge.service.http import HttpServer, RouteHandler

log = logging.getLogger(__name__)


class Service:
    """One running `edge serve`. `run()` blocks until SIGTERM/SIGINT (or the end of a non-looping file).

    without_model: start on NullBackend (no model yet) until `model.go_live(path)`; `page` and `routes`: the HTTP
    server's page at `/` and its extra routes (edge.service.http); `listeners`: more pipeline listeners. Parts:
    `state` (LiveState), `model` (LiveModel), `supervisor`; once running, `cameras`, `outputs`, `pipeline`, `http`.
    """

    def __init__(self, cfg: ServeConfig, *, without_model: bool = False, page: bytes | None = None,
                 routes: RouteHandler | None = None, listeners: Sequence[Listener] = ()) -> None:
        self.cfg = cfg
        self.state = LiveState(cfg.sources, cfg.health_max_age)
        self.model = LiveModel(cfg, None if without_model else cfg.model, self.state)
        self.supervisor = Supervisor(Notifier(), self.state, self.model)
        self.sources = Sources(cfg)
        self.page = page
        self.routes = routes
        self.listeners = list(listeners)
        self.cameras: list[Camera] = []  # camera i reads cfg.sources[i]
        self.outputs = Outputs()
        self.pipeline: Pipeline | None = None
        self.http: HttpServer | None = None

    def build(self, backend: Backend) -> None:
        """Build the outputs, the HTTP server (bound), the cameras and the pipeline on `backend`; nothing starts."""
        cfg, state = self.cfg, self.state
        self.outputs = build_outputs(cfg, state.changes, state.prom.registry)
        state.streams = self.outputs.streams
        self.http = build_http(cfg, state, page=self.page, routes=self.routes)
        self.cameras = build_cameras(cfg, self.sources)
        state.cameras = self.cameras
        self.pipeline = build_pipeline(cfg, backend, self.cameras, self.outputs,
                                       [state.on_prediction, state.prom.listener, *self.listeners])
        state.pipeline = self.pipeline
        self.model.attach(self.pipeline)

    def _close_unstarted(self, backend: Backend | None) -> None:
        """Release what setup built before anything was started (outputs, the bound HTTP socket, the model)."""
        self.outputs.close()
        if self.http is not None:
            self.http.server_close()
        if backend is not None:
            close_quietly(backend)

    def run(self) -> int:
        cfg, supervisor = self.cfg, self.supervisor
        supervisor.install_signals()
        validate_sources(cfg)
        supervisor.notifier.status("loading model")
        backend = None
        try:
            backend = self.model.load()
            log.info("model %s: %s, classes %s", self.model.path or "(none yet)", backend.describe(),
                     ", ".join(backend.meta.class_names))
            self.build(backend)
        except BaseException:
            self._close_unstarted(backend)
            raise
        assert self.pipeline is not None
        if supervisor.stop_signal:  # SIGTERM while the model was loading: nothing was started yet
            log.info("%s received during startup: exiting", supervisor.stop_signal)
            self._close_unstarted(backend)
            return 0
        if self.http is not None:
            self.http.start()
            log.info("http: %s%s", self.http.url, " (token required)" if cfg.token else "")
        # started here, not by the pipeline, so shutdown can finalize the outputs before waiting on the driver
        for camera in self.cameras:
            camera.start()
        self.pipeline.start()
        log.info("serving %s from %s", self.model.path or "no model yet", ", ".join(redact_uri(s) for s in cfg.sources))
        running = Running(self.pipeline, self.cameras, self.sources, self.http)
        try:
            return supervisor.supervise(running)
        finally:
            supervisor.shutdown(running)


def serve(cfg: ServeConfig) -> int:
    """Run the service until a stop signal; 0 on a clean stop."""
    return Service(cfg).run()
