"""The FrameSource interface shared by every video source, its error type and real-time pacing."""

from __future__ import annotations

import time
from typing import Mapping

import numpy as np

from edge.core.errors import EdgeError


class SourceError(EdgeError):
    """A video source could not be opened or read; the message names the source and what to try."""


class FrameSource:
    """An opened video source. Subclasses implement `read` and `close`; `read` returns None at the end."""

    uri: str = ""
    fps: float | None = None
    #: True for cameras and network streams (a missed frame is gone; an end or an error means "reconnect"),
    #: False for files, folders and test:// (an end is the real end).
    is_live: bool = False

    def read(self) -> np.ndarray | None:
        """The next frame, BGR uint8 HxWx3, or None at the end of the stream. Raises SourceError/OSError."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file; safe to call more than once."""

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


class Pacer:
    """Spaces calls to `wait()` 1/fps apart, like a camera delivering frames, without catching up in bursts."""

    def __init__(self, fps: float):
        self.period = 1.0 / fps
        self._next: float | None = None

    def wait(self) -> None:
        now = time.monotonic()
        # first frame, or the reader fell more than a second behind: restart the clock rather than burst
        if self._next is None or now - self._next > 1.0:
            self._next = now
        elif self._next > now:
            time.sleep(self._next - now)
        self._next += self.period


def check_options(uri: str, options: Mapping[str, str], allowed: Mapping[str, str]) -> None:
    """Refuse query options a source does not know, naming the valid ones (`allowed`: name -> help)."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(f"{k} ({v})" for k, v in allowed.items()) or "none"
        raise SourceError(f"unknown option {unknown[0]!r} in source {uri!r}; valid options: {valid}")


def number_option(uri: str, options: Mapping[str, str], name: str, default, kind=float, positive: bool = True):
    """Parse a numeric query option, with a one-line error naming the option when it is not a number."""
    if name not in options:
        return default
    try:
        value = kind(options[name])
    except ValueError as e:
        raise SourceError(f"option {name}={options[name]!r} in source {uri!r} is not a {kind.__name__}") from e
    if positive and value <= 0:
        raise SourceError(f"option {name}={options[name]!r} in source {uri!r} must be > 0")
    return value
