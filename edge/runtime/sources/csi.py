"""`csi://N`: a Jetson CSI camera through GStreamer's nvarguscamerasrc (needs an OpenCV built with GStreamer)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
import tempfile
from typing import Iterator

import cv2

from edge.runtime.sources.base import (
    SourceConfigError,
    SourceError,
    check_options,
    number_option,
)
from edge.runtime.sources.opencv_source import OpenCVSource

log = logging.getLogger(__name__)

OPTIONS = {"flip": "nvvidconv flip-method 0-7, e.g. 2 = rotate 180 degrees"}
DEFAULT_SIZE, DEFAULT_FPS = (1280, 720), 30
ARGUS_STUCK = "Failed to create CaptureSession"
NO_GSTREAMER = (
    "csi:// needs OpenCV built with GStreamer and this one has none (pip's opencv-python); on the Jetson use "
    "JetPack's OpenCV: `pip uninstall opencv-python opencv-python-headless` so /usr/lib/python3/dist-packages/cv2 "
    "is used"
)
RESTART_ARGUS = (
    "the Argus camera daemon is stuck (\"Failed to create CaptureSession\", usually after a program exited "
    "without releasing the camera); run `sudo systemctl restart nvargus-daemon` and try again"
)


@functools.lru_cache(maxsize=1)
def gstreamer_available() -> bool:
    """True when this OpenCV was built with GStreamer (pip wheels never are)."""
    return re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()) is not None


def csi_pipeline(sensor_id: int = 0, width: int = 1280, height: int = 720, fps: float = 30, flip: int = 0) -> str:
    """The GStreamer pipeline; appsink keeps one buffer and drops the rest so frames never queue up (latency)."""
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM), width={width}, height={height}, framerate={int(round(fps))}/1 ! "
        f"nvvidconv flip-method={flip} ! video/x-raw, format=BGRx ! videoconvert ! video/x-raw, format=BGR ! "
        "appsink drop=true max-buffers=1 sync=false"
    )


def diagnose(stderr_text: str) -> str:
    """What to tell the user, given what GStreamer/Argus printed while the camera failed to open."""
    if ARGUS_STUCK in stderr_text:
        return RESTART_ARGUS
    return ("check the ribbon cable and the sensor id (csi://0, csi://1), that no other program uses the camera "
            "(restart a crashed one's daemon: `sudo systemctl restart nvargus-daemon`), and that "
            "`gst-launch-1.0 nvarguscamerasrc ! fakesink` runs")


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Capture what native code writes to fd 2 (Argus reports errors only there); replay it afterwards."""
    out: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreters): diagnose without it
        yield out
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            out.append(text)
            if text:
                os.write(2, text.encode())


def csi_flip(uri: str, options: dict[str, str]) -> int:
    """Check a csi:// source without opening it (options, GStreamer in this OpenCV); its flip-method."""
    check_options(uri, options, OPTIONS)
    flip = number_option(uri, options, "flip", 0, int, positive=False)
    if not 0 <= flip <= 7:
        raise SourceConfigError(f"option flip={flip} in source {uri!r} must be 0-7")
    if not gstreamer_available():
        raise SourceConfigError(NO_GSTREAMER)
    return flip


def open_csi(uri: str, options: dict[str, str], sensor_id: int, *, width=None, height=None, fps=None, loop=False,
             realtime=True) -> OpenCVSource:
    flip = csi_flip(uri, options)
    w, h = (int(width), int(height)) if width and height else DEFAULT_SIZE
    rate = fps or DEFAULT_FPS
    pipeline = csi_pipeline(sensor_id, w, h, rate, flip)
    log.debug("CSI pipeline: %s", pipeline)
    with captured_stderr() as err:
        try:
            return OpenCVSource(uri, pipeline, cv2.CAP_GSTREAMER, is_live=True, hint="GStreamer pipeline failed", fps=rate)
        except SourceError as e:
            failure = e
    raise SourceError(f"cannot open {uri!r}: {diagnose(''.join(err))}") from failure
