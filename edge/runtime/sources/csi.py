"""`csi://N`: a Jetson CSI camera through GStreamer's nvarguscamerasrc (needs an OpenCV built with GStreamer)."""

from __future__ import annotations

import functools
import logging
import re
import shutil
import subprocess

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


def probe_argus(sensor_id: int, timeout: float = 10.0) -> str:
    """What Argus says when this camera is opened, from a separate `gst-launch-1.0` process.

    Argus reports its errors only on the native stderr. Capturing them in-process would mean pointing the whole
    process's fd 2 elsewhere from the camera thread while other threads log to it; a child process has its own.
    Returns "" where gst-launch-1.0 is missing or does not answer in time."""
    exe = shutil.which("gst-launch-1.0")
    if exe is None:
        return ""
    cmd = [exe, "-q", "nvarguscamerasrc", f"sensor-id={int(sensor_id)}", "num-buffers=1", "!", "fakesink"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.debug("CSI probe %s failed: %s", cmd, e)
        return ""
    return r.stdout + r.stderr


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
    try:
        return OpenCVSource(uri, pipeline, cv2.CAP_GSTREAMER, is_live=True, hint="GStreamer pipeline failed", fps=rate)
    except SourceError as e:
        raise SourceError(f"cannot open {uri!r}: {diagnose(probe_argus(sensor_id))}") from e
