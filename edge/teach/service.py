"""`edge teach`: `edge serve`'s Service (camera, pipeline, HTTP server, token, Host check, overlay, health,
metrics, signals, systemd) plus the teaching page and API, starting without a model.

Until the first training the pipeline runs a `NullBackend` (one placeholder class, an 8x8 input, no compute):
frames flow to the live view and /healthz as in `edge serve`, the overlay is off and /api/prediction reports
each frame with `label: null`. A finished training swaps the new model in (`Pipeline.swap_backend`), after a
test inference, between two frames; a model that fails to load leaves the live one in place.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.errors import EdgeError
from edge.core.fsutil import ensure_writable_dir, remove_stale_temps
from edge.core.metadata import ModelMeta
from edge.core.preprocess import PreprocessSpec
from edge.runtime.backends.base import Backend
from edge.runtime.sources import redact_uri, validate_source_uri
from edge.service.app import Service

from edge.core.labels import check_label
from .api import TeachApi
from .config import TeachConfig
from .dataset import ApiError, TeachDataset, flat_dataset_problem

log = logging.getLogger(__name__)

# the placeholder class of the null backend: a label cannot start with '.', so no real label is this
NO_MODEL = ".no-model"
WORKER_GRACE_S = 2.5  # SIGTERM ends the process within 5 s, the service's own shutdown included


def page_html() -> bytes:
    return resources.files("edge.teach").joinpath("page.html").read_bytes()


class NullBackend(Backend):
    """Stands in for a model until the first training: one placeholder class, a tiny input, no computation."""

    name = "none"

    def __init__(self) -> None:
        super().__init__(ModelMeta("none", [NO_MODEL], PreprocessSpec(8, 8)))

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, None]:
        return np.ones((len(batch), 1), np.float32), None

    def describe(self) -> str:
        return "no model yet (train one on the page)"


class TeachService(Service):
    """One running `edge teach` (or `capture --web`, without training). `run()` blocks until SIGTERM/SIGINT."""

    def __init__(self, cfg: TeachConfig) -> None:
        super().__init__(cfg.serve)
        self.teach = cfg
        self.dataset = TeachDataset(cfg.data, cfg.quality)
        self.features: Any = None
        self.jobs: Any = None
        if cfg.can_train:
            from .features import FeatureCache
            from .jobs import Jobs

            self.features = FeatureCache(cfg.arch, cfg.cache_views, cfg.serve.device)
            self.jobs = Jobs(self.dataset, self.features, self, cfg.output, cfg.epochs)
        self.api = TeachApi(self)
        self._have_model = cfg.initial_model is not None
        self._swap_lock = threading.Lock()
        self._version = 0
        self._pending_live: tuple[int, int] | None = None  # (version, camera frame id at its swap)
        self._live_at: dict[int, float] = {}  # version -> time.monotonic() of its first prediction

    # ------------------------------------------------------------------ the Service's seams
    def _load_backend(self) -> Any:
        if self._have_model:
            return super()._load_backend()
        if self.pipeline is not None:  # SIGHUP before any training
            raise EdgeError("no model yet: train one on the page first")
        return NullBackend()

    def _set_model_info(self, backend: Any) -> None:
        if isinstance(backend, NullBackend):
            self._model_info = {}
        else:
            super()._set_model_info(backend)

    def _serving_status(self) -> str:
        if not self._have_model:
            return f"teaching on {redact_uri(self.cfg.sources[0])}: no model yet"
        return super()._serving_status()

    def _build_outputs(self) -> None:
        super()._build_outputs()
        if self.http is not None:
            self.http.page = page_html()
            self.http.extra_handler = self.api.handle

    def _build_pipeline(self, backend: Any) -> None:
        super()._build_pipeline(backend)
        if isinstance(backend, NullBackend):
            self.pipeline.overlay = False  # nothing to draw yet; the page says so

    def _on_prediction(self, prediction: Any, timings: Any = None) -> None:
        super()._on_prediction(prediction, timings)
        pending = self._pending_live
        if pending is not None and prediction.frame_id > pending[1] and prediction.raw_label != NO_MODEL:
            self._live_at[pending[0]] = time.monotonic()
            self._pending_live = None

    def prediction_json(self, camera: int = 0) -> dict[str, Any] | None:
        out = super().prediction_json(camera)
        if out is not None and out["raw_label"] == NO_MODEL:
            out.update(label=None, confidence=None, probabilities={}, raw_label=None, model=None)
        return out

    def run(self) -> int:
        if self.teach.first_label:
            self.dataset.add_label(self.teach.first_label)
        if self.features is not None:
            self.features.start()
            self.features.submit(p for label in self.dataset.labels() for p in self.dataset.images(label))
        try:
            code = super().run()
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
        return dict(self._model_info) if self._have_model else None

    def newest_frame(self) -> tuple[np.ndarray, int]:
        """The camera's newest frame and its id; 409 when there is none yet or it is stale."""
        cam = self.camera
        got = cam.read_latest(-1, 0) if cam is not None else None
        state = getattr(cam, "state", "starting")
        if got is None:
            raise ApiError(409, f"no camera frame yet (source {state}); wait a moment and snap again")
        frame, frame_id, at = got
        age = time.monotonic() - at
        if age > self.cfg.health_max_age:
            error = getattr(cam, "last_error", "")
            raise ApiError(409, f"the newest camera frame is {age:.1f} s old (source {state}"
                           f"{': ' + redact_uri(error) if error else ''}); snap when the camera is back")
        return frame, frame_id

    def go_live(self, model: Path) -> int:
        """Load and test-run `model`, swap it into the running pipeline -> its version (for live_at)."""
        with self._swap_lock:
            previous, had = self.cfg, self._have_model
            self.cfg, self._have_model = replace(self.cfg, model=str(model)), True
            try:
                new = super()._load_backend()  # SIGHUP's path: a model that cannot run is refused here
            except BaseException:
                self.cfg, self._have_model = previous, had
                raise
            self.pipeline.swap_backend(new)
            self.pipeline.overlay = self.cfg.overlay
            self._set_model_info(new)
            self._version += 1
            newest = self.camera.read_latest(-1, 0)
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
