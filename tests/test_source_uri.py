"""Source URIs checked without opening anything, configuration errors told from outages, no credentials in
messages, and reads that a stopping service can cut short."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from edge.runtime.sources import (
    SourceConfigError,
    SourceError,
    open_source,
    redact_uri,
    validate_source_uri,
)
from edge.runtime.sources import csi as csi_mod
from edge.runtime.sources.adapters import InterruptibleSource
from edge.runtime.sources.base import FrameSource


@pytest.fixture
def no_opening(monkeypatch):
    """Fail the test if anything opens a camera, stream or video file."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"validate_source_uri opened {args[:1]}")

    monkeypatch.setattr("edge.runtime.sources.opencv_source.cv2.VideoCapture", refuse)


def _video(path) -> str:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for _ in range(3):
        w.write(np.zeros((24, 32, 3), np.uint8))
    w.release()
    return str(path)


def test_good_uris_validate_without_opening_anything(tmp_path, no_opening):
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.zeros((8, 8, 3), np.uint8))
    video = _video(tmp_path / "v.avi")  # a VideoWriter: only captures are refused
    for uri in ("test://", "test://?fps=5&width=64&frames=3", "0", "/dev/video97", "v4l2:///dev/video97?fourcc=MJPG",
                "rtsp://user:pw@cam.local/live", "https://host:8443/stream.mjpg?action=stream", video,
                f"file://{video}", str(folder), str(folder / "a.png")):
        validate_source_uri(uri)  # a missing /dev/video97 is an outage (a camera unplugged at boot), not a mistake


@pytest.mark.parametrize("uri, words", [
    ("bogus://x", ["bogus://", "csi://", "test://"]),
    ("test://?fps=abc", ["fps", "abc"]),
    ("test://?colour=red", ["colour", "width"]),
    ("csi://front", ["front", "csi://0"]),
    ("csi://0?flip=9", ["flip", "0-7"]),
    ("v4l2:///dev/video0?fourcc=MJ", ["fourcc", "4 characters"]),
    ("v4l2://", ["names no device"]),
    ("rtsp:///live", ["names no host"]),
    ("no/such/video.mp4", ["no/such/video.mp4", "no such file"]),
    ("", ["empty"]),
])
def test_wrong_uris_are_configuration_errors_in_one_line(uri, words, no_opening):
    with pytest.raises(SourceConfigError) as info:
        validate_source_uri(uri)
    text = str(info.value)
    assert "\n" not in text and all(w in text for w in words), text


def test_csi_without_gstreamer_is_a_configuration_error(monkeypatch, no_opening):
    monkeypatch.setattr(csi_mod, "gstreamer_available", lambda: False)
    with pytest.raises(SourceConfigError, match="GStreamer"):
        validate_source_uri("csi://0")
    with pytest.raises(SourceConfigError, match="GStreamer"):
        open_source("csi://0")


def test_empty_folder_is_a_configuration_error(tmp_path, no_opening):
    with pytest.raises(SourceConfigError, match="no images"):
        validate_source_uri(str(tmp_path))


def test_outages_are_not_configuration_errors(tmp_path):
    """What a service should wait out (retry) versus what it should refuse (exit 2)."""
    for uri in ("/dev/video97", "http://127.0.0.1:9/stream.mjpg"):
        with pytest.raises(SourceError) as info:
            open_source(uri)
        assert not isinstance(info.value, SourceConfigError), uri
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\0junk" * 500)
    with pytest.raises(SourceConfigError, match="broken.mp4"):  # it will not decode on the next try either
        open_source(str(bad))


def test_credentials_never_appear_in_errors():
    with pytest.raises(SourceError) as info:
        open_source("http://user:hunter2@127.0.0.1:9/stream.mjpg?token=abc123&x=1")
    text = str(info.value)
    assert "hunter2" not in text and "abc123" not in text and "http://***@127.0.0.1:9/stream.mjpg?token=***&x=1" in text
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained copy of the secret
    with pytest.raises(SourceConfigError) as info:
        validate_source_uri("test://?fps=1&api_key=k3y")
    assert "k3y" not in str(info.value)


@pytest.mark.parametrize("text, expected", [
    ("rtsp://admin:pw@10.0.0.2/live", "rtsp://***@10.0.0.2/live"),
    ("GET /snapshot.jpg?token=s3cret HTTP/1.1", "GET /snapshot.jpg?token=*** HTTP/1.1"),
    ("cannot open 'http://h/x?a=1&password=p&b=2': refused", "cannot open 'http://h/x?a=1&password=***&b=2': refused"),
    ("http://h/x?access_token=t#frag", "http://h/x?access_token=***#frag"),
    ("mail me@example.com about rtsp://h/x", "mail me@example.com about rtsp://h/x"),
    ("test://?fps=5", "test://?fps=5"),
])
def test_redact_uri(text, expected):
    assert redact_uri(text) == expected


class _BlockingSource(FrameSource):
    """A source whose read blocks until released (a driver that hangs); records when it is closed."""

    uri = "blocking://"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.in_read = threading.Event()
        self.closed_during_read = False
        self.closed = threading.Event()

    def read(self):
        self.in_read.set()
        self.release.wait(10)
        self.in_read.clear()
        return np.zeros((2, 2, 3), np.uint8)

    def close(self) -> None:
        self.closed_during_read = self.in_read.is_set()
        self.closed.set()


def test_interrupt_ends_a_slow_paced_read_with_its_frame():
    stop = threading.Event()
    src = InterruptibleSource(open_source("test://?fps=0.1&width=32&height=24"), stop)
    assert src.read().shape == (24, 32, 3)  # the first frame is immediate, the next one is 10 s away
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    frame = src.read()
    assert time.monotonic() - t0 < 1.0 and frame.shape == (24, 32, 3)
    src.close()
    assert src.wait_closed(2.0)


def test_interrupt_leaves_a_read_blocked_in_a_driver_and_closes_the_source_after_it():
    stop = threading.Event()
    inner = _BlockingSource()
    src = InterruptibleSource(inner, stop)
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(OSError, match="interrupted"):
        src.read()
    assert time.monotonic() - t0 < 1.0
    src.close()
    assert not src.wait_closed(0.3) and not inner.closed.is_set()  # never closed from under the read
    inner.release.set()
    assert src.wait_closed(2.0) and inner.closed.is_set() and not inner.closed_during_read


def test_errors_of_the_wrapped_read_reach_the_reader():
    class Failing(FrameSource):
        def read(self):
            raise OSError("camera unplugged")

    src = InterruptibleSource(Failing(), threading.Event())
    with pytest.raises(OSError, match="camera unplugged"):
        src.read()
    src.close()
    assert src.wait_closed(2.0)


def test_a_failed_csi_open_never_redirects_the_process_stderr_and_still_says_what_to_do(monkeypatch, tmp_path):
    # Argus reports only on native stderr; the diagnosis must come from a child process, never from pointing this
    # process's fd 2 elsewhere on the camera thread while other threads log
    import os

    from edge.runtime.sources import csi
    from edge.runtime.sources.base import SourceError

    fake = tmp_path / "gst-launch-1.0"
    fake.write_text("#!/bin/sh\necho 'Error generated. Failed to create CaptureSession' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setattr(csi, "gstreamer_available", lambda: True)

    stderr_file = os.fstat(2)
    seen = []

    def failing_open(uri, *a, **kw):
        now = os.fstat(2)  # what fd 2 points at while the camera opens
        seen.append((now.st_dev, now.st_ino) == (stderr_file.st_dev, stderr_file.st_ino))
        raise SourceError(f"cannot open {uri!r}: GStreamer pipeline failed")

    monkeypatch.setattr(csi, "OpenCVSource", failing_open)
    with pytest.raises(SourceError, match="sudo systemctl restart nvargus-daemon") as e:
        csi.open_csi("csi://0", {}, 0)
    assert csi.RESTART_ARGUS in str(e.value) and seen == [True]
    fake.write_text("#!/bin/sh\necho 'no cameras available' >&2\nexit 1\n")
    with pytest.raises(SourceError, match="ribbon cable"):
        csi.open_csi("csi://1", {}, 1)
