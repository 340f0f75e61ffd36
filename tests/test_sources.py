"""edge.runtime.sources: one URI scheme for every tool; files and test:// paced like a camera; one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import cv2
import numpy as np
import pytest

from edge.core.errors import EdgeError
from edge.runtime.sources import (
    FrameSource,
    SourceError,
    csi,
    open_source,
    opencv_source,
)


def write_video(path, frames=10, fps=25.0, size=(64, 48)):
    codec = "MJPG" if str(path).endswith(".avi") else "mp4v"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        img = np.full((size[1], size[0], 3), i * 20 % 256, np.uint8)
        writer.write(img)
    writer.release()
    return path


def read_all(source: FrameSource, limit=1000):
    frames = []
    while len(frames) < limit and (f := source.read()) is not None:
        frames.append(f)
    return frames


def test_test_pattern_frames_options_and_end():
    with open_source("test://?width=80&height=60&fps=200&frames=5") as src:
        assert isinstance(src, FrameSource)
        frames = read_all(src)
    assert len(frames) == 5
    assert all(f.shape == (60, 80, 3) and f.dtype == np.uint8 for f in frames)
    assert not np.array_equal(frames[0], frames[4])  # the scene moves
    assert src.fps == 200 and src.is_live is False


def test_test_pattern_loop_repeats():
    with open_source("test://?width=32&height=24&frames=3", loop=True, realtime=False) as src:
        assert len(read_all(src, limit=10)) == 10


def test_width_height_fps_arguments_override_defaults():
    with open_source("test://", width=40, height=30, fps=50, realtime=False) as src:
        assert src.read().shape == (30, 40, 3) and src.fps == 50


def test_realtime_paces_to_fps_and_realtime_false_does_not():
    uri = "test://?width=32&height=24&fps=20&frames=7"
    t0 = time.monotonic()
    with open_source(uri) as src:
        read_all(src)
    paced = time.monotonic() - t0
    t0 = time.monotonic()
    with open_source(uri, realtime=False) as src:
        read_all(src)
    fast = time.monotonic() - t0
    assert paced >= 0.28  # 6 intervals of 50 ms (a busy machine only makes it longer)
    assert fast < paced  # unpaced: no waiting between frames (a wall-clock bound would fail on a busy machine)


@pytest.mark.parametrize("name", ["clip.avi", "clip.mp4"])
def test_video_file_plays_every_frame_at_its_own_rate(tmp_path, name):
    path = write_video(tmp_path / name, frames=10, fps=25)
    t0 = time.monotonic()
    with open_source(str(path)) as src:
        assert src.fps == pytest.approx(25) and src.is_live is False
        frames = read_all(src)
    elapsed = time.monotonic() - t0
    assert len(frames) == 10 and frames[0].shape == (48, 64, 3)
    assert abs(int(frames[3].mean()) - 60) < 8  # the 4th frame, in order
    assert elapsed >= 0.3  # 9 intervals of 40 ms: played like a camera, not dumped


def test_video_file_as_fast_as_possible_and_looping(tmp_path):
    path = write_video(tmp_path / "clip.avi", frames=6, fps=5)
    t0 = time.monotonic()
    with open_source(str(path), realtime=False, loop=True) as src:
        frames = read_all(src, limit=15)
    assert len(frames) == 15
    assert time.monotonic() - t0 < 2.8  # 14 intervals at 5 fps, paced, would take at least 2.8 s
    assert abs(int(frames[6].mean()) - int(frames[0].mean())) < 8  # back at the first frame


def test_file_uri_scheme(tmp_path):
    path = write_video(tmp_path / "clip.avi", frames=3)
    with open_source(f"file://{path}", realtime=False) as src:
        assert len(read_all(src)) == 3


def test_image_folder_in_name_order_skipping_temporary_files(tmp_path):
    for i, name in enumerate(["b.jpg", "a.png", "c.jpeg"]):
        cv2.imwrite(str(tmp_path / name), np.full((20, 30, 3), 50 * (i + 1), np.uint8))
    (tmp_path / ".tmp-partial.jpg").write_bytes(b"\xff\xd8 half a jpeg")
    (tmp_path / "notes.txt").write_text("not an image")
    with open_source(str(tmp_path), realtime=False) as src:
        frames = read_all(src)
    assert [int(f.mean()) for f in frames] == [100, 50, 150]  # a.png, b.jpg, c.jpeg


def test_single_image_file_is_a_one_frame_source(tmp_path):
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((10, 12, 3), np.uint8))
    with open_source(str(tmp_path / "x.png"), realtime=False) as src:
        assert [f.shape for f in read_all(src)] == [(10, 12, 3)]


def one_line(e: Exception) -> str:
    text = str(e)
    assert "\n" not in text and isinstance(e, EdgeError)
    return text


@pytest.mark.parametrize(
    "uri, words",
    [
        ("no/such/video.mp4", ["no/such/video.mp4", "valid sources"]),
        ("bogus://x", ["bogus://", "csi://", "test://"]),
        ("test://?colour=red", ["colour", "width"]),
        ("test://?fps=fast", ["fps", "fast"]),
        ("test://?width=-3", ["width", "> 0"]),
        ("csi://front", ["front", "csi://0"]),
        ("", ["empty"]),
    ],
)
def test_bad_uris_name_the_problem_in_one_line(uri, words):
    with pytest.raises(SourceError) as info:
        open_source(uri)
    for word in words:
        assert word in one_line(info.value)


def test_missing_v4l2_device_says_what_to_try():
    with pytest.raises(SourceError) as info:
        open_source("/dev/video97")
    text = one_line(info.value)
    assert "/dev/video97" in text and "v4l2-ctl --list-devices" in text
    with pytest.raises(SourceError, match="/dev/video97"):
        open_source("v4l2:///dev/video97")


def test_undecodable_video_file(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(SourceError) as info:
        open_source(str(bad))
    assert "broken.mp4" in one_line(info.value) and "codec" in str(info.value)


def test_empty_folder(tmp_path):
    with pytest.raises(SourceError, match="no images"):
        open_source(str(tmp_path))


@pytest.mark.parametrize("scheme", ["http", "https", "rtsp", "rtsps"])
def test_unreachable_stream_names_the_url(scheme):
    url = f"{scheme}://127.0.0.1:9/stream"  # port 9 (discard): nothing listens, the connection is refused
    with pytest.raises(SourceError) as info:
        open_source(url)
    text = one_line(info.value)
    assert url in text and "reachable" in text


# A dead stream reopened again and again (edge.runtime.camera's reconnect loop): nothing from FFmpeg or OpenCV's own
# logger per attempt, only our Python log lines. Run in a fresh process: FFmpeg reads its log level once.
RECONNECT_SCRIPT = textwrap.dedent("""
    import logging, socket, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    url = "http://127.0.0.1:%d/x.mjpg" % sock.getsockname()[1]
    from edge.runtime.sources import SourceError, open_source
    for _ in range(3):
        try:
            open_source(url).close()
        except SourceError:
            print("SourceError", flush=True)
    logging.getLogger("edge.runtime.camera").warning("%s: lost, reconnecting (outage marker)", url)
""")
NATIVE_MARKERS = ("[tcp @", "[http @", "[OPENCV:FFMPEG", "VIDEOIO", "[ WARN", "[ERROR:")


def run_reconnects(**env_overrides):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")}
    env.update(env_overrides)
    r = subprocess.run([sys.executable, "-c", RECONNECT_SCRIPT], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("SourceError") == 3, (r.stdout, r.stderr)
    native = [ln for ln in (r.stdout + r.stderr).splitlines() if any(m in ln for m in NATIVE_MARKERS)]
    assert "WARNING edge.runtime.camera" in r.stderr and "outage marker" in r.stderr  # our own logging still works
    return native


def test_failed_reopens_print_nothing_native():
    assert run_reconnects() == []


def test_user_set_native_log_levels_are_respected():
    native = run_reconnects(OPENCV_FFMPEG_LOGLEVEL="16", OPENCV_LOG_LEVEL="WARNING")  # 16: AV_LOG_ERROR
    assert sum("Connection" in ln and "refused" in ln for ln in native) == 3, native  # FFmpeg, once per open
    assert sum("VIDEOIO" in ln for ln in native) == 3, native  # OpenCV's warning, once per open


def test_quiet_native_logs_keeps_the_users_settings():
    logging_api = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging_api is None:  # OpenCV < 5 wheels: the module-level API, same numbering
        pytest.skip("this OpenCV build has no cv2.utils.logging (the code falls back to cv2.setLogLevel)")
    before = logging_api.getLogLevel()
    try:
        logging_api.setLogLevel(logging_api.LOG_LEVEL_WARNING)
        user = {"OPENCV_FFMPEG_LOGLEVEL": "24", "OPENCV_LOG_LEVEL": "INFO"}
        opencv_source.quiet_native_logs(user)
        assert user == {"OPENCV_FFMPEG_LOGLEVEL": "24", "OPENCV_LOG_LEVEL": "INFO"}
        assert logging_api.getLogLevel() == logging_api.LOG_LEVEL_WARNING
        debug = {"OPENCV_FFMPEG_DEBUG": "1", "OPENCV_VIDEOIO_DEBUG": "1"}
        opencv_source.quiet_native_logs(debug)
        assert "OPENCV_FFMPEG_LOGLEVEL" not in debug and logging_api.getLogLevel() == logging_api.LOG_LEVEL_WARNING
        logging_api.setLogLevel(logging_api.LOG_LEVEL_DEBUG)  # chosen in code: kept
        opencv_source.quiet_native_logs({})
        assert logging_api.getLogLevel() == logging_api.LOG_LEVEL_DEBUG
        logging_api.setLogLevel(logging_api.LOG_LEVEL_WARNING)  # the library default: lowered to errors only
        clean: dict[str, str] = {}
        opencv_source.quiet_native_logs(clean)
        assert clean == {"OPENCV_FFMPEG_LOGLEVEL": "-8"}
        assert logging_api.getLogLevel() == logging_api.LOG_LEVEL_ERROR
    finally:
        logging_api.setLogLevel(before)


# ---- CSI: no Jetson here, so check the pipeline, the GStreamer check and the Argus diagnosis -----------------


def test_csi_pipeline_keeps_only_the_latest_buffer():
    p = csi.csi_pipeline(1, 1920, 1080, 30, flip=2)
    assert p.startswith("nvarguscamerasrc sensor-id=1 ")
    assert "width=1920, height=1080, framerate=30/1" in p and "flip-method=2" in p
    assert p.endswith("appsink drop=true max-buffers=1 sync=false")


def test_csi_without_gstreamer_says_so_with_the_fix(monkeypatch):
    monkeypatch.setattr(csi, "gstreamer_available", lambda: False)
    with pytest.raises(SourceError) as info:
        open_source("csi://0")
    text = one_line(info.value)
    assert "GStreamer" in text and "pip uninstall opencv-python" in text


def test_pip_opencv_is_detected_as_lacking_gstreamer(monkeypatch):
    monkeypatch.setattr(csi.cv2, "getBuildInformation", lambda: "  Video I/O:\n    GStreamer:   NO\n")
    csi.gstreamer_available.cache_clear()
    try:
        assert csi.gstreamer_available() is False
        monkeypatch.setattr(csi.cv2, "getBuildInformation", lambda: "    GStreamer:  YES (1.16.3)\n")
        csi.gstreamer_available.cache_clear()
        assert csi.gstreamer_available() is True
    finally:
        csi.gstreamer_available.cache_clear()


class _ArgusStuckCapture:
    """What OpenCV does when nvargus-daemon is wedged: Argus prints to fd 2 and the capture does not open."""

    def __init__(self, pipeline, api, params=()):
        assert "nvarguscamerasrc" in pipeline and api == cv2.CAP_GSTREAMER
        os.write(2, b"Error generated. gstnvarguscamerasrc.cpp, threadExecute:694 Failed to create CaptureSession\n")

    def isOpened(self):
        return False

    def release(self):
        pass


def test_csi_argus_capture_session_failure_prints_the_daemon_restart(monkeypatch, capfd, tmp_path):
    monkeypatch.setattr(csi, "gstreamer_available", lambda: True)
    probe = tmp_path / "gst-launch-1.0"  # the diagnosis asks Argus again in a child process (its own stderr)
    probe.write_text("#!/bin/sh\necho 'Error generated. Failed to create CaptureSession' >&2\nexit 1\n")
    probe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setattr("edge.runtime.sources.opencv_source.cv2.VideoCapture", _ArgusStuckCapture)
    with pytest.raises(SourceError) as info:
        open_source("csi://0")
    text = one_line(info.value)
    assert "sudo systemctl restart nvargus-daemon" in text and "CaptureSession" in text
    assert "Failed to create CaptureSession" in capfd.readouterr().err  # Argus's own line is not swallowed


def test_csi_other_failures_suggest_checks():
    text = csi.diagnose("nvbuf_utils: could not get EGL display")
    assert "ribbon cable" in text and "gst-launch-1.0" in text


@pytest.fixture
def fake_scheme():
    """Register `fake://` in the one place a scheme is declared; record what edge serve asks of it."""
    from edge.runtime.sources import SourceConfigError, register_source, unregister_source

    calls: list[tuple[str, str]] = []

    class FakeSource(FrameSource):
        fps = 20.0

        def __init__(self, uri: str, frames: int):
            self.uri, self.left, self.closed = uri, frames, False

        def read(self):
            if self.left <= 0:
                return None
            self.left -= 1
            calls.append(("read", self.uri))
            return np.full((48, 64, 3), 200, np.uint8)

        def close(self):
            self.closed = True

    def check(uri, parts, options):
        calls.append(("check", uri))
        if set(options) - {"frames"}:
            raise SourceConfigError(f"fake source {uri!r}: only ?frames= is known")

    def open_fake(uri, parts, options, **kw):
        calls.append(("open", uri))
        return FakeSource(uri, int(options.get("frames", 5)))

    register_source("fake", open=open_fake, check=check, help="fake:// (a test source)")
    try:
        yield calls
    finally:
        unregister_source("fake")


@pytest.fixture
def in_process_service():
    """edge serve run in this process sets signal handlers and the root logger: put them back afterwards."""
    import logging
    import signal

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    yield
    for s, h in handlers.items():
        signal.signal(s, h)
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]


def test_a_scheme_registered_in_one_place_is_validated_and_served(fake_scheme, in_process_service, tmp_path,
                                                                  capsys):
    """`edge serve --source fake://` checks the URI through the scheme's entry, then opens and reads it."""
    from edge.cli.serve import main as serve_main
    from edge.core.metadata import ModelMeta, save_checkpoint
    from edge.core.preprocess import PreprocessSpec
    from edge.core.registry import create_model
    from edge.runtime.sources import source_help

    assert "fake:// (a test source)" in source_help()
    model = tmp_path / "model.pt"
    save_checkpoint(model, create_model("squeezenet1_1", 2, "none").state_dict(),
                    ModelMeta(arch="squeezenet1_1", class_names=["a", "b"],
                              preprocess=PreprocessSpec(input_size=64, resize_size=64)))
    assert serve_main(["--model", str(model), "--source", "fake://cam?frames=3", "--backend", "torch"]) == 0
    kinds = [kind for kind, _ in fake_scheme]
    # checked before anything opened it, then opened and read (an ended source may be opened again: not counted)
    assert kinds[0] == "check" and "open" in kinds and kinds.count("read") >= 3

    fake_scheme.clear()
    assert serve_main(["--model", str(model), "--source", "fake://cam?colour=red"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: fake source 'fake://cam?colour=red': only ?frames= is known"
    assert "open" not in [kind for kind, _ in fake_scheme]


def test_a_scheme_cannot_be_registered_without_a_validator_or_help():
    from edge.runtime.sources import SOURCES, register_source

    with pytest.raises(TypeError):
        register_source("nocheck", open=lambda *a, **k: None)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        register_source("nocheck", open=lambda *a, **k: None, check=None, help="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        register_source("test", open=lambda *a, **k: None, check=lambda *a: None, help="again")
    assert "nocheck" not in SOURCES
    assert all(callable(kind.open) and callable(kind.check) and kind.help for kind in SOURCES.values())
