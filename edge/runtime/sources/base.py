"""The FrameSource interface shared by every video source, its error type and real-time pacing."""

from __future__ import annotations

import re
import threading
import time
from typing import Mapping

import numpy as np

from edge.core.errors import EdgeError


class SourceError(EdgeError):
    """A video source could not be opened or read; the message names the source and what to try.

    Plain SourceErrors may pass (a camera unplugged, a stream down, a busy device): a service retries them.
    """


class SourceConfigError(SourceError):
    """The source itself is wrong (unknown scheme, bad option, missing file, no GStreamer for csi://): retrying
    cannot help, so a service stops with this one line instead of reconnecting forever."""


_USERINFO = re.compile(r"(?<=://)[^/@\s'\"]+@")
_SECRET_PARAM = re.compile(r"(?i)([?&;][^=&\s'\"#]*(?:token|pass|pwd|secret|key|auth|sig)[^=&\s'\"#]*=)[^&\s'\"#]*")


def redact_uri(text: str) -> str:
    """`text` (a URI, a request line, a message quoting one) without credentials: `user:pass@` and the values
    of query parameters such as `?token=` become `***`, so logs and the journal never hold them."""
    return _SECRET_PARAM.sub(r"\1***", _USERINFO.sub("***@", text))


class FrameSource:
    """An opened video source. Subclasses implement `read` and `close`; `read` returns None at the end."""

    uri: str = ""
    fps: float | None = None
    #: True for cameras and network streams (a missed frame is gone; an end or an error means "reconnect"),
    #: False for files, folders and test:// (an end is the real end).
    is_live: bool = False
    _pacer: "Pacer | None" = None  # set by sources paced in real time (files, folders, test://)

    def read(self) -> np.ndarray | None:
        """The next frame, BGR uint8 HxWx3, or None at the end of the stream. Raises SourceError/OSError."""
        raise NotImplementedError

    def interrupt(self) -> None:
        """Cut short a `read` that is only waiting to pace frames, so it returns at once; safe from any thread.
        A read blocked in a driver is not affected. Used before closing a source another thread reads."""
        if self._pacer is not None:
            self._pacer.interrupt()

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
        self._interrupted = threading.Event()

    def wait(self) -> None:
        now = time.monotonic()
        # first frame, or the reader fell more than a second behind: restart the clock rather than burst
        if self._next is None or now - self._next > 1.0:
            self._next = now
        elif self._next > now:
            self._interrupted.wait(self._next - now)  # a sleep that interrupt() ends (a 0.1 fps wait is 10 s)
        self._next += self.period

    def interrupt(self) -> None:
        """End the current wait and every later one (the source is about to close)."""
        self._interrupted.set()


def check_options(uri: str, options: Mapping[str, str], allowed: Mapping[str, str]) -> None:
    """Refuse query options a source does not know, naming the valid ones (`allowed`: name -> help)."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(f"{k} ({v})" for k, v in allowed.items()) or "none"
        raise SourceConfigError(f"unknown option {unknown[0]!r} in source {uri!r}; valid options: {valid}")


def number_option(uri: str, options: Mapping[str, str], name: str, default, kind=float, positive: bool = True):
    """Parse a numeric query option, with a one-line error naming the option when it is not a number."""
    if name not in options:
        return default
    try:
        value = kind(options[name])
    except ValueError as e:
        raise SourceConfigError(f"option {name}={options[name]!r} in source {uri!r} is not a {kind.__name__}") from e
    if positive and value <= 0:
        raise SourceConfigError(f"option {name}={options[name]!r} in source {uri!r} must be > 0")
    return value
