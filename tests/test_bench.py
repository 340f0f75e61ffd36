"""`edge bench`: runs the real pipeline for N frames and reports fps, latency percentiles, drops and backend."""

from __future__ import annotations

import json

import pytest
from test_predict import color_model

from edge.cli.bench import main, run_bench

SOURCE = "test://?width=160&height=120"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return color_model(tmp_path_factory.mktemp("bench") / "color.onnx")


def test_json_report(model, capsys):
    assert main(["--model", str(model), "--source", SOURCE, "--frames", "30", "--warmup", "3", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert {"fps", "latency_ms_p50", "latency_ms_p95", "backend", "drops", "infer_ms_p50"} <= set(r)
    assert r["backend"] == "onnxruntime" and r["frames"] == 30
    assert r["fps"] > 0 and 0 < r["latency_ms_p50"] <= r["latency_ms_p95"]
    assert r["infer_ms_p50"] <= r["latency_ms_p50"]
    assert r["capture"] == "prefetch" and r["drops"] == 0  # test:// is not live: read ahead, nothing dropped


def test_camera_capture_counts_drops(model):
    r = run_bench(str(model), SOURCE, frames=20, warmup=2, capture="camera")
    assert r["capture"] == "camera" and r["frames"] == 20
    assert isinstance(r["drops"], int) and r["drops"] >= 0


def test_a_finite_video_file_is_looped(model, tmp_path):
    import cv2

    from edge.core.synthetic import SceneRenderer

    video = tmp_path / "short.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    scene = SceneRenderer(160, 120)
    for i in range(5):
        w.write(scene.render(i / 10, i))
    w.release()
    r = run_bench(str(model), str(video), frames=12, warmup=0, capture="sync")
    assert r["frames"] == 12 and r["drops"] == 0


def test_human_report_and_errors(model, capsys):
    assert main(["--model", str(model), "--source", SOURCE, "--frames", "5", "--no-overlay"]) == 0
    out = capsys.readouterr().out
    assert "fps" in out and "p95" in out and "onnxruntime" in out
    assert main(["--model", str(model), "--source", SOURCE, "--frames", "0"]) == 2
    assert "--frames must be >= 1" in capsys.readouterr().err
    assert main(["--model", str(model), "--source", "nope://x", "--frames", "5"]) == 2
    assert "unknown source scheme" in capsys.readouterr().err
