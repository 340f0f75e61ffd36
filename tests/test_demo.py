"""`edge demo`: data -> train -> export -> pipeline on test:// -> annotated video, metrics.json, report (reduced)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edge.cli import demo
from edge.cli.demo import main

BROWSER_CODECS = {"avc1", "h264", "H264", "VP80", "VP90"}  # what cv2 reports for H.264, VP8 and VP9 streams


def fourcc_of(path) -> str:
    cap = cv2.VideoCapture(str(path))
    try:
        code = int(cap.get(cv2.CAP_PROP_FOURCC)) & 0xFFFFFFFF
    finally:
        cap.release()
    return code.to_bytes(4, "little").decode("ascii", "replace")


@pytest.mark.slow
def test_reduced_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo out"
    rc = main(["--output", str(out), "--per-class", "40", "--epochs", "15", "--seconds", "7", "--fps", "10"])
    assert rc == 0
    printed = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    video = out / ("demo" + demo.video_format(tmp_path)[0])
    assert m["files"]["video"] == str(video)
    for path in (video, out / "metrics.json", out / "report.md"):
        assert path.is_file()
        assert str(path) in printed  # the CLI says where its results are

    assert m["training"]["arch"] == "efficientnet_lite0" and m["training"]["val_accuracy"] is not None
    assert (out / "model" / "model.pt").is_file() and (out / "model" / "model.onnx").is_file()
    run = m["run"]
    assert run["backend"] == "onnxruntime" and run["frames"] >= 20
    assert run["latency_ms_p50"] <= run["latency_ms_p95"]
    # the test camera's arrow flips at 3 s and 6 s: the shown label must follow it, not stick to one class
    assert {label for _, label in run["label_timeline"]} >= {"up", "down"}
    assert run["agreement_with_scene_raw"] >= 0.8
    # the smoothed label too (lagging each flip a little): the model knows its camera, it does not call it unknown
    assert run["agreement_with_scene"] >= 0.6
    assert "agrees with the scene" in (out / "report.md").read_text()

    if demo.video_format(tmp_path) != demo.FALLBACK_VIDEO:  # this OpenCV encodes H.264 or VP8
        assert fourcc_of(video) in BROWSER_CODECS and m["files"]["video_hint"] is None
    else:
        assert "ffmpeg -i" in printed and m["files"]["video_hint"] in printed
    cap = cv2.VideoCapture(str(video))
    ok, frame = cap.read()
    n = 1
    while cap.read()[0]:
        n += 1
    assert ok and frame.shape == (480, 640, 3)
    assert n >= 50  # ~7 s at 10 fps, kept on the wall clock
    # the overlay panel (dark grey) sits in the top-left corner of every frame
    panel = frame[5:60, 5:200].astype(int)
    assert np.abs(panel - 32).max(axis=2).__lt__(12).mean() > 0.5
    assert list(out.glob("preview_*.png"))


def test_demo_rejects_bad_parameters(tmp_path, capsys):
    assert main(["--output", str(tmp_path), "--per-class", "2"]) == 2
    assert "--per-class must be >= 5" in capsys.readouterr().err


def test_video_format_is_one_browsers_play_and_leaves_no_probe_files(tmp_path):
    suffix, fourcc = demo.video_format(tmp_path)
    assert list(tmp_path.iterdir()) == []
    if (suffix, fourcc) == demo.FALLBACK_VIDEO:
        pytest.skip("this OpenCV encodes neither H.264 nor VP8 (the hint is tested below)")
    path = tmp_path / f"v{suffix}"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (160, 120))
    for i in range(5):
        writer.write(np.full((120, 160, 3), 40 * i, np.uint8))
    writer.release()
    assert fourcc_of(path) in BROWSER_CODECS
    with open(path, "rb") as f:  # the container a browser expects for that codec
        head = f.read(64)
    assert (b"ftyp" in head) if suffix == ".mp4" else (head.startswith(b"\x1a\x45\xdf\xa3") and b"webm" in head)


def test_without_a_browser_codec_the_demo_falls_back_and_says_how_to_view_it(tmp_path, monkeypatch):
    assert demo.video_hint(tmp_path / "demo.webm", "VP80") is None
    assert demo.video_hint(tmp_path / "d.mp4", "avc1") is None
    monkeypatch.setattr(demo, "BROWSER_VIDEO", ((".mp4", "QQQQ"),))  # a codec no OpenCV has
    assert demo.video_format(tmp_path) == demo.FALLBACK_VIDEO == (".mp4", "mp4v")
    hint = demo.video_hint(tmp_path / "demo.mp4", "mp4v")
    assert "browsers do not play" in hint and "VLC" in hint
    assert f"ffmpeg -i {tmp_path / 'demo.mp4'} -c:v libx264 -pix_fmt yuv420p {tmp_path / 'demo-h264.mp4'}" in hint
