"""Label changes: the one place that decides when the shown label changed.

`--events`, `--on-change` and the `edge_label_changes_total` metric all ask one shared `LabelChanges`, so they
always agree: the first label counts as a change (previous None), then every prediction whose label differs from
the one before it. With several cameras each camera has its own labels (`Prediction.camera`): a change on one
camera is never a change of another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LabelChange:
    """The shown label changed at this prediction."""

    label: str
    previous: str | None  # None for the first label
    confidence: float
    timestamp: float  # the prediction's wall-clock time (for event lines; never used to measure ages)
    frame: int
    camera: int = 0  # the camera whose label changed


class LabelChanges:
    """Decides, once per prediction, whether the shown label changed; every consumer of that prediction gets the
    same answer, whichever asks first. Called on the pipeline's inference thread (outputs and listeners)."""

    def __init__(self) -> None:
        self._labels: dict[int, str] = {}  # camera -> its shown label (absent before its first prediction)
        self._decided: Any = None  # the prediction last decided on, and the answer given for it
        self._answer: LabelChange | None = None

    def observe(self, prediction: Any) -> LabelChange | None:
        """The change this prediction makes (label, previous, ...), or None when the label stays the same."""
        if prediction is self._decided:
            return self._answer
        label, camera = prediction.label, int(getattr(prediction, "camera", 0))
        change = None
        if camera not in self._labels or label != self._labels[camera]:
            change = LabelChange(label=label, previous=self._labels.get(camera),
                                 confidence=float(prediction.confidence), timestamp=float(prediction.timestamp),
                                 frame=int(prediction.frame_id), camera=camera)
        self._labels[camera] = label
        self._decided, self._answer = prediction, change
        return change
