"""`Bounds`: the one range checker of numeric settings (train's flags and TrainConfig, edge serve's options)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Bounds:
    """A numeric range: int or float, inclusive bounds or exclusive ones (`lo_open`, `hi_open`); None is
    unbounded."""

    kind: type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def problem(self, value: object) -> str | None:
        """What is wrong with `value` ("must be ..."), or None when it is in range."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"must be {self}"
        if self.kind is int and value != int(value):
            return f"must be {self}"
        below = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        above = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        return f"must be {self}" if below or above else None

    def __str__(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        lo, hi = (v if v is None or isinstance(v, int) else f"{v:g}" for v in (self.lo, self.hi))
        low = f"{'>' if self.lo_open else '>='} {lo}"
        high = f"{'<' if self.hi_open else '<='} {hi}"
        if self.lo is not None and self.hi is not None:
            if self.lo_open == self.hi_open:
                return f"{what} between {lo} and {hi}" + (" (exclusive)" if self.lo_open else "")
            return f"{what} {low} and {high}"
        if self.lo is not None:
            return f"{what} {low}"
        return f"{what} {high}" if self.hi is not None else what
