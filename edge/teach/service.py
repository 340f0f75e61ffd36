"""`edge teach`: `edge serve`'s parts (camera, pipeline, HTTP server, token, Host check, overlay, health, metrics,
signals, systemd) plus the teaching page and API, starting without a model.

Composed, not inherited: a `Service` started without a model, given the page, the API's routes and a listener of
its own. Until the first training the pipeline runs `NullBackend` (edge.runtime.backends.null): frames flow to
the live view and /healthz as in `edge serve`, the overlay is off and /api/prediction reports each frame with
`label: null`. A finished training goes live through `Service.model.go_live` (the path SIGHUP's reload takes):
after a test inference, between two frames; a model that fails to load leaves the live one in place.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.core.errors import EdgeError
from edge.core.fsutil import ensure_writable_dir, remove_stale_temps
from edge.core.labels import check_label
from edge.runtime.backends.null import NO_MODEL
from edge.runtime.prediction import Prediction
from edge.runtime.sources import redact_uri, validate_source_uri
from edge.service.app import Service

from .api import TeachApi
from .config import TeachConfig
from .dataset import ApiError, TeachDataset, flat_dataset_problem

if TYPE_CHECKING:
    from .features import FeatureCache
    from .jobs import Jobs

log = logging.getLogger(__name__)

WORKER_GRACE_S = 2.5  # SIGTERM ends the process within 5 s, the service's own shutdown included


def page_html() -> bytes:
    return resources.files("edge.teach").joinpath("page.html").read_bytes()


class TeachService:
    """One running `edge teach` (or `capture --web`, without training). `run()` blocks until SIGTERM/SIGINT."""

    def __init__(self, cfg: TeachConfig) -> None:
        self.teach = cfg
        self.dataset = TeachDataset(cfg.data, cfg.quality)
        self.features: FeatureCache | None = None
        self.jobs: Jobs | None = None
        if cfg.can_train:
            from .features import FeatureCache
            from .jobs import Jobs

            self.features = FeatureCache(cfg.arch, cfg.cache_views, cfg.serve.device)
            self.jobs = Jobs(self.dataset, self.features, self, cfg.output, cfg.epochs)
        self.api = TeachApi(self)
        self.service = Service(cfg.serve, without_model=cfg.initial_model is None, page=page_html(),
                               routes=self.api.handle, listeners=[self._on_prediction])
        self._swap_lock = threading.Lock()
        self._version = 0
        self._pending_live: tuple[int, int] | None = None  # (version, camera frame id at its swap)
        self._live_at: dict[int, float] = {}  # version -> time.monotonic() of its first prediction

    def _on_prediction(self, prediction: Prediction, timings: dict[str, float] | None = None) -> None:
        """Pipeline listener: the first prediction of a model that went live (its time is `live_at`)."""
        pending = self._pending_live
        if pending is not None and prediction.frame_id > pending[1] and prediction.raw_label != NO_MODEL:
            self._live_at[pending[0]] = time.monotonic()
            self._pending_live = None

    def run(self) -> int:
        if self.teach.first_label:
            self.dataset.add_label(self.teach.first_label)
        if self.features is not None:
            self.features.start()
            self.features.submit(p for label in self.dataset.labels() for p in self.dataset.images(label))
        try:
            code = self.service.run()
        finally:
            ended = self._close_workers()
        if not ended:
            # torch aborts the process ("terminate called...") when the interpreter exits under a thread still
            # in its native code (the backbone loading, an export): everything else is closed, so leave now
            log.warning("a teach worker is still busy; exiting without waiting for it")
            logging.shutdown()
            os._exit(code)
        return code

    def _close_workers(self) -> bool:
        """Stop the training/export job and the feature worker; False when one is still running."""
        deadline = time.monotonic() + WORKER_GRACE_S
        ended = True
        for worker in (self.jobs, self.features):
            if worker is not None:
                ended &= worker.close(max(0.1, deadline - time.monotonic()))
        return ended

    # ------------------------------------------------------------------ what the API and the jobs use
    def model_info(self) -> dict[str, str] | None:
        return self.service.state.model_info

    def newest_frame(self) -> tuple[np.ndarray, int]:
        """The camera's newest frame and its id; 409 when there is none yet or it is stale."""
        cam = self.service.cameras[0] if self.service.cameras else None
        got = cam.read_latest(-1, 0) if cam is not None else None
        state = cam.state if cam is not None else "starting"
        if got is None:
            raise ApiError(409, f"no camera frame yet (source {state}); wait a moment and snap again")
        frame, frame_id, at = got
        age = time.monotonic() - at
        if age > self.teach.serve.health_max_age:
            error = cam.last_error if cam is not None else ""
            raise ApiError(409, f"the newest camera frame is {age:.1f} s old (source {state}"
                           f"{': ' + redact_uri(error) if error else ''}); snap when the camera is back")
        return frame, frame_id

    def go_live(self, model: Path) -> int:
        """Load and test-run `model`, swap it into the running pipeline -> its version (for live_at)."""
        with self._swap_lock:
            new = self.service.model.go_live(model)  # SIGHUP's path: a model that cannot run is refused here
            self._version += 1
            cam = self.service.cameras[0]
            newest = cam.read_latest(-1, 0)
            # frames newer than this one are read after the swap: their predictions come from the new model
            self._pending_live = (self._version, newest[1] if newest else -1)
            log.info("live: %s (%s)", model, ", ".join(new.meta.class_names))
            return self._version

    def live_at(self, version: int) -> float | None:
        return self._live_at.get(version)


def teach(cfg: TeachConfig) -> int:
    """Run `edge teach` (or `capture --web`) until a stop signal; 0 on a clean stop."""
    for uri in cfg.serve.sources:
        validate_source_uri(uri)  # before anything is created: a wrong source is one line, exit 2
    if cfg.first_label:
        check_label(cfg.first_label)
    root = ensure_writable_dir(cfg.data, "data folder")
    problem = flat_dataset_problem(root)
    if problem:
        raise EdgeError(problem)
    if cfg.output is not None:
        ensure_writable_dir(cfg.output, "output folder")
        remove_stale_temps(cfg.output)  # half-written models of an export that was killed
    return TeachService(cfg).run()
