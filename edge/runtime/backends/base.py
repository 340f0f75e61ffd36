"""The one small interface every runtime backend implements."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edge.core.metadata import ModelMeta


class Backend:
    """A loaded model: `infer(Nx3xSxS float32) -> NxC float32 probabilities`.

    Attributes: `name` (backend name), `meta` (labels and preprocessing, read from the model file), `device`
    (where it runs, for logs), `providers` (what actually executes it: e.g. ORT providers, "cuda fp16").
    """

    name: str = "base"

    def __init__(self, meta: ModelMeta, device: str = "cpu", providers: list[str] | None = None) -> None:
        self.meta = meta
        self.device = device
        self.providers = list(providers or [])

    @property
    def input_size(self) -> int:
        return self.meta.preprocess.input_size

    def infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release the model (GPU memory, sessions). Idempotent."""

    def describe(self) -> str:
        via = f" via {', '.join(self.providers)}" if self.providers else ""
        return f"{self.name} on {self.device}{via} ({self.meta.arch}, {self.meta.num_classes} classes)"

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
