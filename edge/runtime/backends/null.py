"""`NullBackend`: stands in for a model until there is one (`edge teach` before its first training).

One placeholder class (`NO_MODEL`), an 8x8 input, no computation: frames still flow through the pipeline to the
live view and health, and the service reports its predictions without a label (see edge.service.state).
"""

from __future__ import annotations

import numpy as np

from edge.core.metadata import ModelMeta
from edge.core.preprocess import PreprocessSpec
from edge.runtime.backends.base import Backend, Outputs

# the placeholder class: a label cannot start with '.', so no real label is this
NO_MODEL = ".no-model"


class NullBackend(Backend):
    """No model yet: one placeholder class, a tiny input, no computation."""

    name = "none"

    def __init__(self) -> None:
        super().__init__(ModelMeta("none", [NO_MODEL], PreprocessSpec(8, 8)))

    def run(self, batch: np.ndarray) -> Outputs:
        return np.ones((len(batch), 1), np.float32), None

    def describe(self) -> str:
        return "no model yet (train one on the page)"


def is_null(backend: object) -> bool:
    """Is `backend` the stand-in for "no model yet"?"""
    return isinstance(backend, NullBackend)
