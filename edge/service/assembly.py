"""Building `edge serve`'s parts from its config: the model, the cameras, the outputs, the pipeline, the HTTP server.

Plain functions (and `Sources`, the cameras' opener), so that `edge serve` (edge.service.app) and `edge teach`
assemble the same parts the same way. Nothing here starts a thread: the caller starts what it built, in order.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from edge.core.errors import EdgeError, brief
from edge.runtime.backends.base import Backend
from edge.runtime.backends.null import is_null
from edge.runtime.outputs.base import Output
from edge.runtime.sources import FrameSource, SourceConfigError, redact_uri
from edge.service.config import ServeConfig
from edge.service.outputs import OUTPUTS, Place

if TYPE_CHECKING:
    from edge.runtime.camera import Camera
    from edge.runtime.outputs.changes import LabelChanges
    from edge.runtime.outputs.stream import StreamOutput
    from edge.runtime.pipeline import Listener, Pipeline
    from edge.runtime.sources.adapters import InterruptibleSource
    from edge.service.http import HttpApp, HttpServer, RouteHandler

log = logging.getLogger(__name__)


def one_line(e: BaseException) -> str:
    """An EdgeError's own message; `Type: first line` for anything else (library messages can span pages)."""
    return str(e) if isinstance(e, EdgeError) else brief(e)


# ---------------------------------------------------------------------------------------------------- the model
def batch_size(cfg: ServeConfig) -> int:
    """Frames per inference call at most: one per camera, or --max-batch."""
    cameras = len(cfg.sources)
    return min(cameras, cfg.max_batch or cameras)


def check_model(backend: Backend, batch: int = 1) -> None:
    """Run one dummy inference, of the batch size the pipeline will use, so a model that loads but cannot run is
    refused before it replaces a good one."""
    spec = backend.meta.preprocess
    probs = np.asarray(backend.run(np.zeros((batch, 3, spec.input_size, spec.input_size), np.float32))[0])
    n = backend.meta.num_classes
    if probs.shape != (batch, n) or not np.all(np.isfinite(probs)):
        raise EdgeError(f"test inference returned shape {probs.shape} (expected ({batch}, {n})) or non-finite values")


def load_model(cfg: ServeConfig, path: str) -> Backend:
    """Load the model file `path` with the config's backend, device and novelty threshold, and test-run it."""
    from edge.runtime.backends import load_backend

    backend = load_backend(path, cfg.backend, cfg.device, novelty_threshold=cfg.novelty_threshold)
    try:
        check_model(backend, batch_size(cfg))
    except Exception as e:
        close_quietly(backend)
        raise EdgeError(f"model {path!r} loads but cannot run: {one_line(e)}") from e
    return backend


# ---------------------------------------------------------------------------------------------------- sources
def name_camera(cfg: ServeConfig, camera: int, e: SourceConfigError) -> SourceConfigError:
    """With several cameras an error about a source says which camera it is (`camera 1: ...`)."""
    return e if len(cfg.sources) == 1 else SourceConfigError(f"camera {camera}: {e}")


def validate_sources(cfg: ServeConfig) -> None:
    """A wrong source is a configuration error, not an outage: one line, exit 2, before the model loads."""
    from edge.runtime.sources import validate_source_uri

    for camera, uri in enumerate(cfg.sources):
        try:
            validate_source_uri(uri)
        except SourceConfigError as e:
            raise name_camera(cfg, camera, e) from e


class Sources:
    """The cameras' opener: `open(camera)` opens `cfg.sources[camera]` on that camera's capture thread.

    A configuration error on a camera's very first open is fatal (`fatal`: the supervisor exits 2); later ones, and
    every outage, are retried by the camera. Reads can be ended by `interrupt()` on shutdown, so a source that
    blocks (0.1 fps, a stalled stream) never holds the stop; `opened` are the sources to see released."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.fatal: SourceConfigError | None = None
        self.opened: list[InterruptibleSource] = []
        self._opens = [0] * len(cfg.sources)
        self._closing = threading.Event()

    def open(self, camera: int) -> FrameSource:
        from edge.runtime.sources import open_source
        from edge.runtime.sources.adapters import InterruptibleSource

        cfg = self.cfg
        first = self._opens[camera] == 0
        self._opens[camera] += 1
        try:
            source = open_source(cfg.sources[camera], width=cfg.width, height=cfg.height, fps=cfg.fps, loop=cfg.loop)
        except SourceConfigError as e:
            if first:
                self.fatal = name_camera(cfg, camera, e)
            raise
        wrapped = InterruptibleSource(source, self._closing)
        self.opened = [s for s in self.opened if not s.wait_closed(0)] + [wrapped]
        return wrapped

    def interrupt(self) -> None:
        """End every read that waits on a slow source (shutdown)."""
        self._closing.set()


def build_cameras(cfg: ServeConfig, sources: Sources) -> list[Camera]:
    """One Camera per source; the camera opens its source through `sources` (its options are `Sources`'s)."""
    from functools import partial

    from edge.runtime.camera import Camera

    # the camera's URI is only a name for its log lines (we open the source): no credentials in the journal
    return [Camera(redact_uri(uri), fps=cfg.fps, stall_timeout=cfg.stall_timeout, max_backoff=cfg.max_backoff,
                   opener=partial(sources.open, i)) for i, uri in enumerate(cfg.sources)]


# ---------------------------------------------------------------------------------------------------- outputs
@dataclass
class Outputs:
    """What `build_outputs` made: `shared` get every camera's frames; `per_camera[i]` only camera i's; `streams`:
    each camera's HTTP stream (empty without --http), camera 0 first."""

    shared: list[Output] = field(default_factory=list)
    per_camera: list[list[Output]] = field(default_factory=list)
    streams: list[StreamOutput] = field(default_factory=list)

    def all(self) -> list[Output]:
        return [*self.shared, *(o for outs in self.per_camera for o in outs)]

    def close(self) -> None:
        for o in self.all():
            close_quietly(o)


def build_outputs(cfg: ServeConfig, changes: LabelChanges, registry: Any = None) -> Outputs:
    """Every output the config asks for (edge.service.outputs.OUTPUTS, in its order); on a failure the ones built
    are closed before the error goes on. `registry`: the /metrics registry outputs with counters register in."""
    from edge.runtime.outputs.stream import StreamOutput

    built = Outputs()
    cameras = len(cfg.sources)
    try:
        for entry in OUTPUTS.values():
            if not entry.per_camera and entry.wanted(cfg):
                built.shared.append(entry.build(cfg, Place(None, cameras, changes, registry)))
        for camera in range(cameras):
            built.per_camera.append([])
            for entry in OUTPUTS.values():
                if entry.per_camera and entry.wanted(cfg):
                    built.per_camera[-1].append(entry.build(cfg, Place(camera, cameras, changes, registry)))
    except BaseException:
        built.close()
        raise
    built.streams = [o for outs in built.per_camera for o in outs if isinstance(o, StreamOutput)]
    if not built.all():
        log.warning("no output configured: nothing will show what the camera sees; add --http [HOST:]PORT, "
                    "--record FILE, --events FILE, --on-change CMD, --mqtt URL or --display")
    return built


# ---------------------------------------------------------------------------------------------------- pipeline, http
def build_pipeline(cfg: ServeConfig, backend: Backend, cameras: Sequence[Camera], outputs: Outputs,
                   listeners: Sequence[Listener] = ()) -> Pipeline:
    """One pipeline over `cameras` (camera i with `outputs.per_camera[i]`), each with its own smoother."""
    from edge.runtime.pipeline import Pipeline
    from edge.runtime.slots import CameraSlot
    from edge.runtime.smoothing import Smoother

    slots = [CameraSlot(cam, outputs=outs, name=cam.uri) for cam, outs in zip(cameras, outputs.per_camera)]
    smoother = Smoother(backend.meta.class_names, smoothing=cfg.smoothing, threshold=cfg.threshold,
                        hysteresis=cfg.hysteresis, min_dwell=cfg.min_dwell)  # copied for each further camera
    # no model yet (NullBackend): nothing to draw
    return Pipeline(slots, backend, smoother=smoother, outputs=outputs.shared, overlay=cfg.overlay and not
                    is_null(backend), listeners=listeners, top_k=cfg.top_k, max_batch=cfg.max_batch)


def build_http(cfg: ServeConfig, app: HttpApp, *, page: bytes | None = None,
               routes: RouteHandler | None = None) -> HttpServer | None:
    """The HTTP server, bound (a busy port is an error now) but not started; None without --http."""
    if cfg.http_address is None:
        return None
    from edge.service.http import HttpServer

    host, port = cfg.http_address
    return HttpServer(host, port, app, token=cfg.token, allowed_hosts=cfg.allowed_host_names, extra_handler=routes,
                      page=page)


# ---------------------------------------------------------------------------------------------------- cleanup
def close_quietly(obj: Output | Backend) -> None:
    try:
        obj.close()
    except Exception:  # cleanup of one part must not skip the others
        log.warning("closing %r failed", obj, exc_info=True)
