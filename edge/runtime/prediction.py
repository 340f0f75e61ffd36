"""`Prediction`: one classified frame. A plain type that depends on nothing, shared by the pipeline, overlay and
outputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Prediction:
    """One classified frame, as shown on the overlay and sent to outputs."""

    label: str  # smoothed label ("unknown" under the threshold)
    confidence: float  # smoothed probability of `label` (of the top class when unknown)
    probabilities: dict[str, float]  # this frame's raw probabilities, label -> p
    frame_id: int
    timestamp: float  # wall clock (time.time()) when the result was ready
    fps: float  # processed frames per second (smoothed)
    infer_ms: float  # preprocess excluded, model only
    latency_ms: float  # frame arrival (capture) -> result
    frame_age_ms: float  # age of the frame when inference picked it up
    raw_label: str = ""  # this frame's argmax, before smoothing
    camera: int = 0  # which of the pipeline's cameras the frame came from (its index, 0 for a single camera)
    novelty: float | None = None  # this frame's novelty score (edge.core.novelty); None: the model has none

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
