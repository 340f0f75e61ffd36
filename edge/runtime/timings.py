"""Per-frame timings (ms) kept in a window, summarised as percentiles: the pipeline's recent latency in
`stats`, and the whole measured run in `edge bench` and `edge demo`; and `RateMeter`, frames per second."""

from __future__ import annotations

import collections
from typing import Iterable, Mapping, Sequence

import numpy as np


def percentiles(values: Iterable[float], qs: Sequence[float] = (50, 95), ndigits: int = 3) -> list[float]:
    """Percentiles of timings (ms), rounded to `ndigits`; no values -> NaNs."""
    a = np.fromiter(values, np.float64)
    if not a.size:
        return [float("nan")] * len(qs)
    return [round(float(q), ndigits) for q in np.percentile(a, qs)]


class TimingWindow:
    """The last `size` values (all of them with size=None) of the named per-frame timings.

    `add(timings)` takes one frame's timings dict (keys not tracked are ignored); `percentiles(key)` summarises
    one of them (None for each percentile while the window is empty: JSON-friendly); `total(key)` adds one up.
    """

    def __init__(self, keys: Iterable[str], size: int | None = 512) -> None:
        self._columns: dict[str, collections.deque[float]] = {k: collections.deque(maxlen=size) for k in keys}

    def add(self, timings: Mapping[str, float]) -> None:
        for key, column in self._columns.items():
            column.append(timings[key])

    def __len__(self) -> int:
        return len(next(iter(self._columns.values()), ()))

    def percentiles(self, key: str, qs: Sequence[float] = (50, 95), ndigits: int = 3) -> list[float | None]:
        column = self._columns[key]
        return percentiles(column, qs, ndigits) if column else [None] * len(qs)

    def total(self, key: str) -> float:
        return float(sum(self._columns[key]))


class RateMeter:
    """Frames per second of a stream of `tick(t)` calls (t: time.monotonic()).

    `fps`: smoothed (exponential moving average of the interval, weight `alpha` for the newest), so it follows
    a rate that changes; `fps_avg`: over the whole run, first tick to last. Both 0.0 until two ticks.
    """

    def __init__(self, alpha: float = 0.1) -> None:
        self.alpha = alpha
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self._interval: float | None = None

    def tick(self, t: float) -> None:
        if self.last is None:
            self.first = t
        else:
            dt = t - self.last
            self._interval = dt if self._interval is None else (1 - self.alpha) * self._interval + self.alpha * dt
        self.last = t
        self.count += 1

    @property
    def fps(self) -> float:
        return 1.0 / self._interval if self._interval else 0.0

    @property
    def fps_avg(self) -> float:
        elapsed = (self.last - self.first) if self.first is not None and self.last is not None else 0.0
        return (self.count - 1) / elapsed if elapsed > 0 else 0.0
