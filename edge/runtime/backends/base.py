"""The one small interface every runtime backend implements."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edge.core.metadata import ModelMeta

log = logging.getLogger(__name__)

Outputs = tuple[np.ndarray, "np.ndarray | None"]  # (NxC probabilities, N novelty scores or None)


class Backend:
    """A loaded model: `run(Nx3xSxS float32) -> (NxC float32 probabilities, N float32 novelty or None)`.

    `infer(batch)` is `run(batch)[0]`. Novelty (edge.core.novelty: higher = less like the training images) comes
    from the model file's own graph; None for models trained without it. Attributes: `name` (backend name),
    `meta` (labels and preprocessing, read from the model file), `device` (where it runs, for logs), `providers`
    (what actually executes it: e.g. ORT providers, "cuda fp16"), `has_novelty`, `novelty_threshold` (above it a
    prediction is `unknown`: the model's calibrated one unless `set_novelty_threshold` overrode it).
    """

    name: str = "base"
    has_novelty: bool = False  # set by each backend: its model really outputs a novelty score

    def __init__(self, meta: ModelMeta, device: str = "cpu", providers: list[str] | None = None) -> None:
        self.meta = meta
        self.device = device
        self.providers = list(providers or [])
        self._novelty_override: float | None = None

    @property
    def input_size(self) -> int:
        return self.meta.preprocess.input_size

    @property
    def novelty_threshold(self) -> float | None:
        """Novelty above which a prediction is `unknown`; None when the model has no novelty score."""
        if not self.has_novelty:
            return None
        return self._novelty_override if self._novelty_override is not None else self.meta.novelty_threshold

    def set_novelty_threshold(self, threshold: float | None) -> None:
        """Override the model's calibrated threshold (None: back to it); ignored, with one log line, by models
        without a novelty score."""
        if threshold is not None and not self.has_novelty:
            log.info("novelty threshold %g ignored: this %s model has no novelty score (trained without one; "
                     "retrain it to get one)", threshold, self.meta.arch)
            return
        self._novelty_override = None if threshold is None else float(threshold)

    def run(self, batch: np.ndarray) -> Outputs:
        """The one way to run the model: an Nx3xSxS float32 batch -> (NxC probabilities, N novelty scores or None
        when the model has no novelty score)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the model (GPU memory, sessions). Idempotent."""

    def describe(self) -> str:
        via = f" via {', '.join(self.providers)}" if self.providers else ""
        novelty = f", novelty threshold {self.novelty_threshold:.4g}" if self.has_novelty else ""
        return f"{self.name} on {self.device}{via} ({self.meta.arch}, {self.meta.num_classes} classes{novelty})"

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32 (numerically stable)."""
    x = np.asarray(x, np.float32)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def as_probabilities(y: np.ndarray, atol: float = 1e-3) -> np.ndarray:
    """`y` when its rows already are probabilities (>= 0, summing to 1 within `atol`), else softmax(y)."""
    if (y >= 0).all() and np.allclose(y.sum(axis=1), 1.0, atol=atol):
        return y
    return softmax(y)


def check_batch(batch: np.ndarray, size: int) -> np.ndarray:
    """Validate an Nx3xSxS float32 batch; returns it C-contiguous."""
    if batch.ndim != 4 or batch.shape[1:] != (3, size, size):
        raise ValueError(f"expected an Nx3x{size}x{size} batch, got shape {tuple(batch.shape)}")
    if batch.dtype != np.float32:
        batch = batch.astype(np.float32)
    return np.ascontiguousarray(batch)
