"""`edge demo`: data -> train -> export -> pipeline on test:// -> annotated video, metrics.json, report (reduced)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edge.cli.demo import main


@pytest.mark.slow
def test_reduced_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo out"
    rc = main(["--output", str(out), "--per-class", "40", "--epochs", "15", "--seconds", "7", "--fps", "10"])
    assert rc == 0
    printed = capsys.readouterr().out
    for name in ("demo.mp4", "metrics.json", "report.md"):
        assert (out / name).is_file()
        assert str(out / name) in printed  # the CLI says where its results are

    m = json.loads((out / "metrics.json").read_text())
    assert m["training"]["arch"] == "efficientnet_lite0" and m["training"]["val_accuracy"] is not None
    assert (out / "model" / "model.pt").is_file() and (out / "model" / "model.onnx").is_file()
    run = m["run"]
    assert run["backend"] == "onnxruntime" and run["frames"] >= 20
    assert run["latency_ms_p50"] <= run["latency_ms_p95"]
    # the test camera's arrow flips at 3 s and 6 s: the shown label must follow it, not stick to one class
    assert {label for _, label in run["label_timeline"]} >= {"up", "down"}
    assert run["agreement_with_scene_raw"] >= 0.8
    assert "agrees with the scene" in (out / "report.md").read_text()

    cap = cv2.VideoCapture(str(out / "demo.mp4"))
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
