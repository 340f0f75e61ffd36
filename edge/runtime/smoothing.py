"""Prediction smoothing: EMA over class probabilities, an `unknown` threshold, hysteresis and a minimum dwell.

- EMA: `p = smoothing * p_prev + (1 - smoothing) * p_new` (smoothing 0 = off, 0.9 = heavy); the novelty score,
  when the model has one, is smoothed the same way.
- threshold: when the smoothed top probability is below it, the candidate label is `unknown`.
- novelty threshold: when the smoothed novelty is above it (the frame is unlike the training images), the
  candidate label is `unknown` too, however sure the classifier is. It is crossed outright both ways (novelty is
  not a probability, so `hysteresis` does not widen it); the EMA and `min_dwell` keep it from flickering.
- hysteresis: the label on screen keeps its place while its probability stays >= threshold - hysteresis
  (and while no other class leads it by more than `hysteresis`); a new label must clear the threshold outright.
- min_dwell: a different candidate must win `min_dwell` consecutive updates before it replaces the shown label,
  so a one-frame blip never flickers the output.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from edge.core.errors import EdgeError
from edge.core.labels import UNKNOWN_LABEL


def decide(probs: np.ndarray, threshold: float = 0.0, novelty: float | None = None,
           novelty_threshold: float | None = None) -> int:
    """The one unknown decision: the index of the top class, or -1 (`UNKNOWN_LABEL`) when its probability is
    below `threshold` or the novelty score is above `novelty_threshold` (the input is unlike the training images).
    `Smoother.update` applies it to smoothed values; `edge predict` to one image's."""
    top = int(np.argmax(probs))
    novel = novelty is not None and novelty_threshold is not None and novelty > novelty_threshold
    return top if float(probs[top]) >= threshold and not novel else -1


def label_of(class_names: Sequence[str], index: int) -> str:
    """The label `decide` chose: a class name, or `UNKNOWN_LABEL` for -1."""
    return class_names[index] if index >= 0 else UNKNOWN_LABEL


class Smoother:
    """Turns a stream of per-frame probability vectors into a stable label.

    `update(probs, novelty, novelty_threshold) -> (label, confidence)`; `probs` and `novelty` (smoothed) and
    `label` stay readable as attributes. `confidence` is the smoothed probability of the shown label (of the top
    class when the label is `unknown`).
    """

    def __init__(
        self,
        class_names: Sequence[str],
        smoothing: float = 0.0,
        threshold: float = 0.0,
        hysteresis: float = 0.0,
        min_dwell: int = 1,
    ) -> None:
        if not 0.0 <= smoothing < 1.0:
            raise EdgeError(f"smoothing must be in [0, 1) (0 = off, 0.9 = heavy), got {smoothing}")
        if not 0.0 <= threshold <= 1.0:
            raise EdgeError(f"threshold must be in [0, 1], got {threshold}")
        if not 0.0 <= hysteresis < 1.0:
            raise EdgeError(f"hysteresis must be in [0, 1), got {hysteresis}")
        if min_dwell < 1:
            raise EdgeError(f"min_dwell must be >= 1 frame, got {min_dwell}")
        if not class_names:
            raise EdgeError("a smoother needs at least one class name")
        self.class_names = [str(c) for c in class_names]
        self.smoothing = float(smoothing)
        self.threshold = float(threshold)
        self.hysteresis = float(hysteresis)
        self.min_dwell = int(min_dwell)
        self.reset()

    def reset(self, class_names: Sequence[str] | None = None) -> None:
        """Forget history (after a model swap, optionally with new class names)."""
        if class_names is not None:
            self.class_names = [str(c) for c in class_names]
        self.probs = np.zeros(len(self.class_names), np.float32)
        self.novelty: float | None = None  # smoothed novelty (None while the model gives none)
        self._have = False
        self.label: str | None = None  # shown label (None before the first update)
        self._index: int = -1  # class index of the shown label, -1 for unknown
        self._candidate: int | None = None
        self._streak = 0

    def _smooth(self, p: np.ndarray, novelty: float | None) -> None:
        fresh = not self._have or self.smoothing == 0.0
        if fresh:
            self.probs[:] = p
            self._have = True
        else:
            self.probs *= self.smoothing
            self.probs += (1.0 - self.smoothing) * p
        if novelty is None or fresh or self.novelty is None:
            self.novelty = None if novelty is None else float(novelty)
        else:
            self.novelty = self.smoothing * self.novelty + (1.0 - self.smoothing) * float(novelty)

    def _keeps(self, idx: int, top: int, novel: bool) -> bool:
        """Does the shown label (idx, -1 = unknown) hold its place given the smoothed probabilities and novelty?"""
        p = self.probs
        if idx < 0:  # unknown holds until the input is familiar and some class clears the threshold outright
            return novel or float(p[top]) < self.threshold
        if novel:
            return False
        if float(p[idx]) < self.threshold - self.hysteresis:
            return False
        return top == idx or float(p[top]) - float(p[idx]) <= self.hysteresis

    def update(self, probs: np.ndarray, novelty: float | None = None,
               novelty_threshold: float | None = None) -> tuple[str, float]:
        """Feed one probability vector (C floats) and, for models that have one, the frame's novelty score and
        the threshold above which it is `unknown`; return the (label, confidence) to show now."""
        p = np.asarray(probs, np.float32).reshape(-1)
        if p.shape[0] != len(self.class_names):
            raise ValueError(f"expected {len(self.class_names)} probabilities, got {p.shape[0]}")
        self._smooth(p, novelty)
        top = int(np.argmax(self.probs))
        novel = self.novelty is not None and novelty_threshold is not None and self.novelty > novelty_threshold
        want = decide(self.probs, self.threshold, self.novelty, novelty_threshold)
        if self.label is None:  # first frame: nothing to be stable against
            self._set(want)
        elif want == self._index or self._keeps(self._index, top, novel):
            self._candidate, self._streak = None, 0
        else:
            if want == self._candidate:
                self._streak += 1
            else:
                self._candidate, self._streak = want, 1
            if self._streak >= self.min_dwell:
                self._set(want)
        conf = float(self.probs[self._index] if self._index >= 0 else self.probs[top])
        return self.label, conf  # type: ignore[return-value]

    def _set(self, idx: int) -> None:
        self._index = idx
        self.label = label_of(self.class_names, idx)
        self._candidate, self._streak = None, 0
