"""`LiveModel`: the model a running service serves, and the one way to replace it.

SIGHUP's reload (edge.service.supervisor) and `edge teach`'s go-live both come here: the new model file is loaded
and test-run (edge.service.assembly.load_model) before it replaces the running one between two frames
(`Pipeline.swap_backend`); a model that fails to load or run leaves the live one in place. A service may start
without a model (`edge teach` before its first training): it then runs `NullBackend` until the first `go_live`.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from edge.core.errors import EdgeError
from edge.runtime.backends.base import Backend
from edge.runtime.backends.null import NullBackend, is_null
from edge.runtime.sources import redact_uri
from edge.service.assembly import load_model
from edge.service.config import ServeConfig
from edge.service.state import LiveState

if TYPE_CHECKING:
    from edge.runtime.pipeline import Pipeline

log = logging.getLogger(__name__)


class LiveModel:
    """The served model: `path` (None: no model yet), `load()` for the start, `reload()` and `go_live(path)` once
    the pipeline runs (`attach`). Every change is recorded in `state` (edge_model_info, /api/prediction)."""

    def __init__(self, cfg: ServeConfig, path: str | None, state: LiveState) -> None:
        self.cfg = cfg
        self.path = path
        self.state = state
        self.pipeline: Pipeline | None = None
        self._lock = threading.Lock()  # one swap at a time (a SIGHUP during a go-live)

    def load(self) -> Backend:
        """The model to start with (tested), or NullBackend when there is none yet."""
        backend = NullBackend() if self.path is None else load_model(self.cfg, self.path)
        self.state.set_model(backend, self.path)
        return backend

    def attach(self, pipeline: Pipeline) -> None:
        """The running pipeline that `reload` and `go_live` swap models into."""
        self.pipeline = pipeline

    def reload(self) -> Backend:
        """Load the current model file again (it may have been replaced) and swap it in (SIGHUP)."""
        if self.path is None:
            raise EdgeError("no model yet: train one on the page first")
        return self.go_live(self.path)

    def go_live(self, path: str | Path) -> Backend:
        """Load and test-run `path`, then swap it into the running pipeline; it is the model from now on (a later
        SIGHUP reloads it). Raises (one line) and changes nothing when the model cannot load or run."""
        if self.pipeline is None:
            raise EdgeError("the service is not running yet")
        with self._lock:
            new = load_model(self.cfg, str(path))
            self.pipeline.swap_backend(new)
            self.pipeline.overlay = self.cfg.overlay and not is_null(new)
            self.path = str(path)
            self.state.set_model(new, self.path)
            return new

    def status(self) -> str:
        """What systemd's STATUS= says while all is well."""
        sources = ", ".join(redact_uri(s) for s in self.cfg.sources)
        if self.path is None:
            return f"no model yet, on {sources}"
        return f"serving {Path(self.path).name} on {sources}"
