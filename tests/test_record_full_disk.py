"""Issue 18: `--record` on a full disk says so once, marks itself dead, and leaves a playable file or none;
`.mp4` is what browsers play where OpenCV can write it, else one line says what was written."""

from __future__ import annotations

import logging
import os
import subprocess

import cv2
import numpy as np
import pytest
from serve_helpers import mounted_tmpfs

from edge.runtime.outputs.record import RecordOutput
from edge.runtime.outputs.video import writes_and_reads_back


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (root only, where mounting is allowed); skipped elsewhere."""
    with mounted_tmpfs(tmp_path, "3m") as where:
        yield where


def _frames_readable(path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_recording_onto_a_full_disk_stops_once_dead_and_leaves_a_playable_file_or_none(small_disk, suffix, caplog):
    caplog.set_level(logging.INFO, logger="edge.runtime.outputs.record")
    rec = RecordOutput(small_disk / f"run{suffix}", fps=30.0, realtime=False)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (240, 320, 3), np.uint8) for _ in range(4)]  # noise: barely compressible
    for i in range(3000):
        if not rec.alive:
            break
        rec.write(frames[i % 4], None)
        if i % 8 == 0:
            import time

            time.sleep(0.02)  # let the writer thread follow
    rec.close()
    assert not rec.alive, "the disk never filled up"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "no space left" in errors[0].getMessage()
    assert "recorded" not in " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    left = [p.name for p in small_disk.iterdir()]
    assert left in ([], [f"run{suffix}"])  # no temporary file
    if left:
        assert _frames_readable(small_disk / f"run{suffix}") > 0


def test_an_mp4_recording_is_h264_where_opencv_can_write_it_else_one_line_says_what(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="edge.runtime.outputs.record")
    rec = RecordOutput(tmp_path / "run.mp4", fps=10.0, realtime=False)
    for i in range(5):
        rec.write(np.full((48, 64, 3), 40 * i, np.uint8), None)
    rec.close()
    assert _frames_readable(tmp_path / "run.mp4") > 0
    if writes_and_reads_back(tmp_path, ".mp4", "avc1"):
        assert rec.fourcc == "avc1" and not caplog.records
    else:
        said = [r.getMessage() for r in caplog.records]
        assert rec.fourcc == "mp4v" and len(said) == 1 and "browsers do not play" in said[0] and ".webm" in said[0]


@pytest.mark.slow
def test_edge_serve_recording_onto_a_full_disk(small_disk, tmp_path, onnx_classifier):
    """What the user sees: one error line, edge_output_alive{output="record"} 0, no "recorded N frames", and a
    playable file (or none) when the service stops."""
    import re
    import signal
    import socket
    import sys
    import time
    import urllib.request
    from pathlib import Path

    model = onnx_classifier(tmp_path / "m.onnx", [[1, 0], [0, 1], [0, 0]], ["a", "b"])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("EDGE_TOKEN", None)
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "edge", "serve", "--model", str(model), "--source",
                                 "test://?width=640&height=480&fps=30", "--record", str(small_disk / "run.avi"),
                                 "--http", f"127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 120
            dead = re.compile(r'edge_output_alive\{[^}]*output="record"[^}]*\} 0')
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                        if dead.search(r.read().decode()):
                            break
                except OSError:
                    pass
                time.sleep(0.5)
            assert proc.poll() is None  # the service goes on without its recording
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(60)
    text = log_path.read_text()
    assert rc == 0, text[-3000:]
    errors = [line for line in text.splitlines() if "no space left" in line]
    assert len(errors) == 1, text[-3000:]
    assert not re.search(r"recorded \d+ frames", text)
    left = [p.name for p in small_disk.iterdir()]
    assert left in ([], ["run.avi"])
    if left:
        assert _frames_readable(small_disk / "run.avi") > 0
