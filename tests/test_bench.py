"""`edge bench`: runs the real pipeline for N frames and reports fps, latency percentiles, drops and backend."""

from __future__ import annotations

import json
import time

import pytest

from edge.cli.bench import main, run_bench

SOURCE = "test://?width=160&height=120"


@pytest.fixture
def slow_model(monkeypatch):
    """Every backend bench loads takes 20 ms per inference: far slower than the unpaced test:// source."""
    from edge.runtime import backends

    real_load = backends.load_backend

    def load(*args, **kwargs):
        be = real_load(*args, **kwargs)
        run = be.run  # what the pipeline calls (infer is run's probabilities)

        def slow_run(batch):
            time.sleep(0.02)
            return run(batch)

        be.run = slow_run
        return be

    monkeypatch.setattr(backends, "load_backend", load)


def test_json_report(color_model, capsys):
    assert main(["--model", str(color_model), "--source", SOURCE, "--frames", "30", "--warmup", "3", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert {"fps", "latency_ms_p50", "latency_ms_p95", "backend", "drops", "infer_ms_p50"} <= set(r)
    assert r["backend"] == "onnxruntime" and r["frames"] == 30
    assert r["fps"] > 0 and 0 < r["latency_ms_p50"] <= r["latency_ms_p95"]
    assert r["infer_ms_p50"] <= r["latency_ms_p50"]
    assert r["capture"] == "prefetch" and r["drops"] == 0  # test:// is not live: read ahead, nothing dropped


def test_camera_capture_counts_the_frames_a_slow_model_never_saw(color_model, slow_model, capsys):
    r = run_bench(str(color_model), SOURCE, frames=10, warmup=2, capture="camera")
    assert r["capture"] == "camera" and r["frames"] == 10
    assert r["drops"] >= 10  # the camera read several frames during each 20 ms inference; the newest one won
    assert r["infer_ms_p50"] >= 20 and r["fps"] < 50
    prefetched = run_bench(str(color_model), SOURCE, frames=10, warmup=2, capture="prefetch")
    assert prefetched["drops"] == 0  # read ahead one frame at a time: nothing decoded in vain
    assert main(["--model", str(color_model), "--source", SOURCE, "--frames", "5", "--capture", "camera",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["drops"] >= 5  # and the CLI reports them


def test_a_finite_video_file_is_looped(color_model, tmp_path):
    import cv2

    from edge.core.synthetic import SceneRenderer

    video = tmp_path / "short.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    scene = SceneRenderer(160, 120)
    for i in range(5):
        w.write(scene.render(i / 10, i))
    w.release()
    r = run_bench(str(color_model), str(video), frames=12, warmup=0, capture="sync")
    assert r["frames"] == 12 and r["drops"] == 0


def test_human_report_and_errors(color_model, capsys):
    assert main(["--model", str(color_model), "--source", SOURCE, "--frames", "5", "--no-overlay"]) == 0
    out = capsys.readouterr().out
    assert "fps" in out and "p95" in out and "onnxruntime" in out
    assert main(["--model", str(color_model), "--source", SOURCE, "--frames", "0"]) == 2
    assert "--frames must be >= 1" in capsys.readouterr().err
    assert main(["--model", str(color_model), "--source", "nope://x", "--frames", "5"]) == 2
    assert "unknown source scheme" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--model", str(color_model), "--threads", "0"])
    assert e.value.code == 2 and "--threads: must be >= 1, got 0" in capsys.readouterr().err
