"""Sources read through cv2.VideoCapture: USB/V4L2 cameras, video files and network streams (rtsp, http)."""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

import cv2
import numpy as np

from edge.runtime.sources.base import (
    FrameSource,
    Pacer,
    SourceConfigError,
    SourceError,
    check_options,
    redact_uri,
)

log = logging.getLogger(__name__)

DEFAULT_FILE_FPS = 30.0
NETWORK_TIMEOUT_MS = 5000  # open and read timeouts, so a dead stream fails instead of hanging the reader
V4L2_OPTIONS = {"fourcc": "pixel format to ask for, e.g. MJPG (needed by many USB cameras above 640x480)"}
FILE_OPTIONS: dict[str, str] = {}


def quiet_native_logs(environ=os.environ) -> None:
    """Silence FFmpeg's and OpenCV's own stderr lines about failed opens, unless the user configured them.

    Every reopen of a dead stream or camera makes FFmpeg print `[tcp @ 0x...] Connection ... refused` and
    OpenCV `[ WARN:0@...] ... VIDEOIO(FFMPEG): ...`: an always-on service reconnecting for days fills the
    journal (tens of GB). Our SourceError and the camera's once-per-outage log line already say what failed.
    Called once, on import of edge.runtime.sources. Python logging is not touched.
    """
    # OpenCV's FFmpeg backend reads OPENCV_FFMPEG_LOGLEVEL once, when FFmpeg is first used in the process (the
    # first FFmpeg VideoCapture or VideoWriter), not at `import cv2`: set it here, before any source opens.
    # -8 is AV_LOG_QUIET. A user's OPENCV_FFMPEG_LOGLEVEL or OPENCV_FFMPEG_DEBUG wins.
    if "OPENCV_FFMPEG_LOGLEVEL" not in environ and "OPENCV_FFMPEG_DEBUG" not in environ:
        environ["OPENCV_FFMPEG_LOGLEVEL"] = "-8"
    # OpenCV's logger: warnings off, errors still shown. Only from the library default (WARNING): a user's
    # OPENCV_LOG_LEVEL / OPENCV_VIDEOIO_DEBUG or an explicit level set in code is kept.
    if "OPENCV_LOG_LEVEL" in environ or "OPENCV_VIDEOIO_DEBUG" in environ:
        return
    logging_api = getattr(getattr(cv2, "utils", None), "logging", None)
    try:
        if logging_api is not None and hasattr(logging_api, "setLogLevel"):
            if logging_api.getLogLevel() == logging_api.LOG_LEVEL_WARNING:
                logging_api.setLogLevel(logging_api.LOG_LEVEL_ERROR)
        elif hasattr(cv2, "setLogLevel") and hasattr(cv2, "getLogLevel"):  # older builds (same numbering)
            if cv2.getLogLevel() == 3:
                cv2.setLogLevel(2)
    except Exception as e:  # noqa: BLE001 - cv2.error: never fail an import over log verbosity
        log.debug("could not lower OpenCV's log level: %s", e)


quiet_native_logs()


class OpenCVSource(FrameSource):
    """A cv2.VideoCapture. The first frame is read on open, so a device that opens but never delivers fails early."""

    def __init__(self, uri: str, target, api: int, *, params: Sequence[int] = (), is_live: bool, hint: str,
                 settings: Sequence[tuple[int, float]] = (), fps: float | None = None, loop: bool = False,
                 realtime: bool = True, size: tuple[int, int] | None = None):
        self.uri, self.is_live, self.loop = uri, is_live, loop
        self._target, self._api, self._params, self._settings = target, api, list(params), list(settings)
        self._hint = hint
        self._size = size
        self._cap: cv2.VideoCapture | None = None
        self._pending = self._open()
        native = self._cap.get(cv2.CAP_PROP_FPS)
        if fps:
            self.fps = float(fps)
        elif native and math.isfinite(native) and 0 < native <= 1000:
            self.fps = float(native)
        else:
            self.fps = None if is_live else DEFAULT_FILE_FPS
        # live sources deliver at their own rate; files and folders would otherwise play as fast as they decode
        self._pacer = Pacer(self.fps) if realtime and not is_live and self.fps else None

    def _open(self) -> np.ndarray:
        cap = cv2.VideoCapture(self._target, self._api, self._params)
        try:
            if not cap.isOpened():
                raise SourceError(f"cannot open {redact_uri(self.uri)!r}: {self._hint}")
            for prop, value in self._settings:
                cap.set(prop, value)
            ok, frame = cap.read()
            if not ok or frame is None:
                raise SourceError(f"{redact_uri(self.uri)!r} opened but gave no frame: {self._hint}")
        except BaseException:
            cap.release()
            raise
        self._cap = cap
        return frame

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            raise OSError(f"{redact_uri(self.uri)}: read after close")
        if self._pending is not None:
            frame, self._pending = self._pending, None
        else:
            ok, frame = self._cap.read()
            if not ok or frame is None:
                if self.is_live:
                    raise OSError(f"{redact_uri(self.uri)}: read failed (camera or stream lost)")
                if not self.loop:
                    return None
                # rewind by reopening: seeking is unreliable across containers and codecs
                self._cap.release()
                self._cap = None
                frame = self._open()
        if self._size and (frame.shape[1], frame.shape[0]) != self._size:
            frame = cv2.resize(frame, self._size, interpolation=cv2.INTER_AREA)
        if self._pacer:
            self._pacer.wait()
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _v4l2_hint(device: str) -> str:
    if sys.platform.startswith("linux") and device.startswith("/dev/"):
        if not os.path.exists(device):
            return (f"no such device {device}; list cameras with `ls /dev/video*` or `v4l2-ctl --list-devices` "
                    "(is the camera plugged in?)")
        if not os.access(device, os.R_OK | os.W_OK):
            return (f"permission denied on {device}; add yourself to the video group "
                    "(`sudo usermod -aG video $USER`, then log in again)")
    return ("check that no other program is using the camera, try another index (/dev/video1...) "
            "and another --width/--height/--fps it supports (`v4l2-ctl --list-formats-ext`)")


def v4l2_settings(uri: str, options: dict[str, str]) -> list[tuple[int, float]]:
    """Check a V4L2 source's options without opening the device; the capture settings they ask for."""
    check_options(uri, options, V4L2_OPTIONS)
    settings: list[tuple[int, float]] = []
    if "fourcc" in options:
        code = options["fourcc"]
        if len(code) != 4:
            raise SourceConfigError(f"option fourcc={code!r} in source {uri!r} must be 4 characters, e.g. MJPG or YUYV")
        settings.append((cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*code)))
    return settings


def open_v4l2(uri: str, options: dict[str, str], device: str | int, *, width=None, height=None, fps=None,
              loop=False, realtime=True) -> OpenCVSource:
    """A USB/V4L2 camera: `device` is an index or a /dev/video path. A missing device is an outage (SourceError,
    retried: a USB camera unplugged at boot), not a configuration error."""
    settings = v4l2_settings(uri, options)
    if width:
        settings.append((cv2.CAP_PROP_FRAME_WIDTH, width))
    if height:
        settings.append((cv2.CAP_PROP_FRAME_HEIGHT, height))
    if fps:
        settings.append((cv2.CAP_PROP_FPS, fps))
    settings.append((cv2.CAP_PROP_BUFFERSIZE, 1))  # fewer queued frames in the driver: less latency
    if sys.platform.startswith("linux"):
        path = device if isinstance(device, str) else f"/dev/video{device}"
        target, api, hint = path, cv2.CAP_V4L2, _v4l2_hint(path)
        if not os.path.exists(path):  # say so directly rather than through OpenCV's warnings
            raise SourceError(f"cannot open {uri!r}: {hint}")
    else:
        target, api, hint = device, cv2.CAP_ANY, _v4l2_hint(str(device))
    return OpenCVSource(uri, target, api, is_live=True, hint=hint, settings=settings, fps=fps)


def open_file(uri: str, options: dict[str, str], path: str | Path, *, width=None, height=None, fps=None,
              loop=False, realtime=True) -> OpenCVSource:
    """A video file; paced to its own frame rate (or `fps`) when realtime. A file that does not decode is a
    configuration error (SourceConfigError): reopening it cannot help."""
    check_options(uri, options, FILE_OPTIONS)
    hint = ("OpenCV could not decode it; check that it plays (e.g. `ffprobe FILE`) and use a common codec "
            "(H.264 .mp4, MJPG .avi)")
    size = (int(width), int(height)) if width and height else None
    try:
        return OpenCVSource(uri, str(path), cv2.CAP_ANY, is_live=False, hint=hint, fps=fps, loop=loop,
                            realtime=realtime, size=size)
    except SourceError as e:
        raise SourceConfigError(str(e)) from e


def check_stream(uri: str) -> None:
    """An rtsp:// or http(s):// URL must name a host (whether it answers is an outage question, not checked)."""
    if not urlsplit(uri).hostname:
        raise SourceConfigError(f"source {uri!r} names no host; e.g. rtsp://camera.local:554/stream or "
                                "http://host:8080/stream.mjpg")


def open_stream(uri: str, options: dict[str, str], *, width=None, height=None, fps=None, loop=False,
                realtime=True) -> OpenCVSource:
    """rtsp:// and http(s):// streams (e.g. MJPEG) through OpenCV's FFmpeg backend, with open/read timeouts."""
    check_stream(uri)
    # options stay in the URL: they belong to the server (e.g. ?action=stream)
    if uri.startswith("rtsp"):
        # TCP: UDP loses packets on Wi-Fi and gives smeared frames; set before the first open, read by OpenCV
        os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, NETWORK_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, NETWORK_TIMEOUT_MS]
    hint = ("check the URL (open it in VLC or ffplay), that the server is up and reachable, and the credentials "
            "(rtsp://user:pass@host/path)")
    return OpenCVSource(uri, uri, cv2.CAP_FFMPEG, params=params, is_live=True, hint=hint, fps=fps)

