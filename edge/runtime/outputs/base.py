"""What the pipeline fans its annotated frames and predictions out to.

Contract (docs/ARCHITECTURE.md, "The data path"): the pipeline calls `write(frame, prediction)` on its own inference
thread after every inference. `write` must return quickly: an output that does slow work (files, network,
encoding) hands off to its own thread or queue and drops (and counts) what it cannot keep up with. The frame is
a buffer the pipeline reuses for the next frame: an output that keeps it past `write` must copy it. An exception
from `write` marks the output dead (`alive = False`, logged once) and the pipeline carries on without it.
"""

from __future__ import annotations

import logging

import numpy as np

from edge.runtime.prediction import Prediction

log = logging.getLogger(__name__)


class Output:
    """Base class of pipeline outputs (record, display, HTTP stream, events...)."""

    name: str = "output"

    def __init__(self, name: str | None = None) -> None:
        if name is not None:
            self.name = name
        self.alive: bool = True

    def write(self, frame: np.ndarray, prediction: Prediction) -> None:
        """Take one annotated BGR frame (read-only, reused after return) and its prediction. Return quickly."""
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release resources. Called once when the pipeline stops; must not raise."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, alive={self.alive})"


class CallbackOutput(Output):
    """Adapts a plain callable `fn(frame, prediction)` to an Output (tests, small integrations)."""

    def __init__(self, fn, name: str = "callback") -> None:
        super().__init__(name)
        self._fn = fn

    def write(self, frame: np.ndarray, prediction: Prediction) -> None:
        self._fn(frame, prediction)
