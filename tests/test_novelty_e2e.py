"""'Knows what it does not know', end to end: `train` fits the novelty score, and `unknown` reaches `edge predict`,
`edge serve`'s /api/prediction, its events and the overlay; models without a novelty score work as before.

The model: efficientnet_lite0 (ImageNet weights that ship with a package) trained in head mode on synthetic up/down
arrows; an empty-clutter image (`render_sample("none", ...)`: the arrows' backgrounds without an arrow) must come
out `unknown`, an arrow as its direction.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from edge.core.errors import EdgeError
from edge.core.synthetic import make_dataset, render_sample

CLUTTER, ARROWS = ["none"] * 3, ["up", "down", "up"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A trained head-mode model with a novelty score, its ONNX export, and images it has never seen."""
    from export.onnx_export import export_onnx
    from train.trainer import TrainConfig, train_model

    d = tmp_path_factory.mktemp("e2e")
    data = make_dataset(d / "arrows", per_class=40, seed=21)
    result = train_model(TrainConfig(data=data, output=d / "run", arch="efficientnet_lite0", weights="imagenet",
                                     mode="head", epochs=20, cache_views=3), progress=False)
    images = d / "unseen"
    images.mkdir()
    rng = np.random.default_rng(4)
    for i, label in enumerate(CLUTTER + ARROWS):
        cv2.imwrite(str(images / f"{i}_{label}.png"), render_sample(label, rng, 200, 160))
    pt = d / "run" / "model.pt"
    return SimpleNamespace(dir=d, pt=pt, onnx=export_onnx(pt, d / "model.onnx", verify_images=4), images=images,
                           threshold=result.meta.novelty_threshold, metrics=result.metrics)


def predict(model_path: Path, images: Path, *extra: str) -> dict[str, dict]:
    from edge.cli.predict import run_predict

    out = io.StringIO()
    threshold = float(extra[0]) if extra else None
    assert run_predict(str(model_path), [str(images)], device="cpu", out=out, novelty_threshold=threshold) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    return {Path(r["path"]).stem: r for r in lines}  # "3_up": the result for an arrow pointing up


def test_train_reports_what_it_would_call_unknown(model):
    novelty = model.metrics["novelty"]
    assert model.metrics["val_accuracy"] >= 0.9
    assert novelty["threshold"] == model.threshold > 0 and novelty["val_images"] == 16
    assert novelty["val_unknown"] <= 2  # the 95% quantile of 16 val images: at most one or two above it
    for name in ("training_curves.png", "mistakes.png", "confusion_matrix.png"):
        assert cv2.imread(str(model.pt.parent / name)) is not None


@pytest.mark.parametrize("kind", ["pt", "onnx"])
def test_predict_says_unknown_for_empty_clutter_and_the_direction_for_arrows(model, kind):
    results = predict(getattr(model, kind), model.images)
    assert len(results) == 6
    for key, r in results.items():
        label = key.split("_", 1)[1]
        assert r["top_label"] in ("up", "down")
        if label == "none":
            assert r["label"] == "unknown" and r["novelty"] > model.threshold, r
        else:
            assert r["label"] == r["top_label"] == label and r["novelty"] <= model.threshold, r
    # a looser threshold from the command line lets everything through with the top label
    assert all(r["label"] == r["top_label"] for r in predict(getattr(model, kind), model.images, "2").values())


def test_torch_and_onnx_score_the_same(model):
    pt, onnx = predict(model.pt, model.images), predict(model.onnx, model.images)
    for key in pt:
        assert pt[key]["novelty"] == pytest.approx(onnx[key]["novelty"], abs=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_shows_unknown_in_the_api_and_the_events(model, tmp_path):
    """A slideshow of one empty-clutter image and one arrow: /api/prediction and --events see both."""
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("0_none.png", "4_down.png"):
        (slides / name).write_bytes((model.images / name).read_bytes())
    port = _free_port()
    events = tmp_path / "events.jsonl"
    log = open(tmp_path / "serve.log", "wb")  # closed below
    proc = subprocess.Popen([sys.executable, "-m", "edge", "serve", "--model", str(model.pt), "--source", str(slides),
                             "--loop", "--fps", "4", "--device", "cpu", "--http", f"127.0.0.1:{port}",
                             "--events", str(events), "--no-overlay"], stdout=log, stderr=subprocess.STDOUT)
    seen: dict[str, dict] = {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(seen) < 2:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/prediction", timeout=2) as r:
                    p = json.loads(r.read())
                seen.setdefault(p["label"], p)
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        lines = [json.loads(ln) for ln in events.read_text().splitlines()] if events.exists() else []
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    assert set(seen) == {"unknown", "down"}, (tmp_path / "serve.log").read_text()[-3000:]
    for label, p in seen.items():
        assert p["novelty_threshold"] == pytest.approx(model.threshold, abs=1e-6)
        assert (p["novelty"] > p["novelty_threshold"]) == (label == "unknown")
        assert p["raw_label"] in ("up", "down")
    assert {e["label"] for e in lines} == {"unknown", "down"}
    assert all(isinstance(e["novelty"], float) for e in lines)
    assert all((e["novelty"] > model.threshold) == (e["label"] == "unknown") for e in lines)


def _service_prediction(model_path: Path, images: Path, events: Path, **cfg) -> tuple[dict, list[dict]]:
    """Run `edge serve`'s Service in this process for a few frames of `images` -> (/api/prediction body, events)."""
    from edge.runtime.outputs.events import EventsOutput
    from edge.runtime.pipeline import Pipeline
    from edge.runtime.smoothing import Smoother
    from edge.runtime.sources.folder import ImageFolderSource
    from edge.service.app import Service
    from edge.service.config import build_config

    svc = Service(build_config({}, {"model": str(model_path), "source": "test://", "device": "cpu", **cfg}, env={}))
    backend = svc.model.load()
    out = EventsOutput(str(events))
    state = svc.state
    pipeline = Pipeline(ImageFolderSource(str(images), {}, images, realtime=False), backend, overlay=False,
                        smoother=Smoother(backend.meta.class_names), outputs=[out], listeners=[state.on_prediction])
    state.pipeline = pipeline
    state.cameras = [slot.camera for slot in pipeline.slots]  # what the service's health reads, as serve builds it
    pipeline.run(max_frames=len(list(images.iterdir())))
    pipeline.stop()
    backend.close()
    return state.prediction_json(), [json.loads(ln) for ln in events.read_text().splitlines()]


def test_serve_novelty_threshold_option_overrides_the_model(model, tmp_path):
    body, lines = _service_prediction(model.pt, model.images, tmp_path / "ev.jsonl", novelty_threshold=2.0)
    assert body["novelty_threshold"] == 2.0 and body["label"] in ("up", "down") and body["novelty"] > 0
    assert "unknown" not in {e["label"] for e in lines}


def test_old_checkpoint_serves_with_no_novelty(squeezenet_models, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(frames / f"{i}.png"), render_sample("up", rng, 64, 64))
    body, lines = _service_prediction(squeezenet_models[0], frames, tmp_path / "ev.jsonl", novelty_threshold=0.3)
    assert body["novelty"] is None and body["novelty_threshold"] is None and body["label"] in ("cat", "dog", "none")
    assert lines and all(e["novelty"] is None for e in lines)


def test_novelty_threshold_in_the_config_file(tmp_path):
    from edge.service.config import build_config, load_config_file

    good = tmp_path / "serve.json"
    good.write_text(json.dumps({"model": "m.pt", "source": "test://", "novelty_threshold": 0.4}))
    assert build_config(load_config_file(good), {}, env={}).novelty_threshold == 0.4
    assert build_config({}, {"model": "m.pt", "source": "0"}, env={}).novelty_threshold is None
    with pytest.raises(EdgeError, match="novelty_threshold must be a number between 0 and 2"):
        build_config({"novelty_threshold": 3.0}, {"model": "m.pt", "source": "0"}, env={})


def test_overlay_shows_the_novelty_line(tmp_path):
    from edge.runtime.overlay import draw_overlay
    from edge.runtime.prediction import Prediction

    def drawn(**kw) -> np.ndarray:
        pred = Prediction(label="unknown", confidence=0.9, probabilities={"up": 0.9, "down": 0.1}, frame_id=1,
                          timestamp=0.0, fps=10.0, infer_ms=5.0, latency_ms=9.0, frame_age_ms=1.0, **kw)
        return draw_overlay(np.zeros((480, 640, 3), np.uint8), pred)

    plain, novel = drawn(), drawn(novelty=0.41)
    panel_rows = lambda img: int((img[:, 5] > 0).any(axis=1).sum())  # noqa: E731 - rows the panel covers
    assert panel_rows(novel) > panel_rows(plain)  # one more line: "novelty 0.41"
    red = (novel[..., 2] > 150) & (novel[..., 0] < 100)
    assert red.sum() > 20  # drawn in red while the label is unknown
