"""`edge predict`: one JSON line per image, folders walked recursively, any backend, bad images reported."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest

from edge.cli.predict import main


@pytest.fixture
def images(tmp_path):
    """red/blue images in a nested folder, a corrupt .jpg, and a non-image file."""
    root = tmp_path / "imgs"
    (root / "sub" / "deeper").mkdir(parents=True)
    red, blue = np.zeros((60, 80, 3), np.uint8), np.zeros((60, 80, 3), np.uint8)
    red[..., 2] = 255  # BGR
    blue[..., 0] = 255
    cv2.imwrite(str(root / "a_red.png"), red)
    cv2.imwrite(str(root / "sub" / "b_blue.jpg"), blue)
    cv2.imwrite(str(root / "sub" / "deeper" / "c_red.jpg"), red)
    (root / "sub" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "notes.txt").write_text("ignored")
    return root


def lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_folder_walked_recursively_one_json_line_per_image(color_model, images, capsys):
    rc = main(["--model", str(color_model), "-q", str(images)])
    out = lines(capsys)
    by_name = {r["path"].split("/")[-1]: r for r in out}
    assert set(by_name) == {"a_red.png", "b_blue.jpg", "c_red.jpg", "broken.jpg"}
    assert by_name["a_red.png"]["label"] == "red" and by_name["c_red.jpg"]["label"] == "red"
    assert by_name["b_blue.jpg"]["label"] == "blue"
    assert by_name["a_red.png"]["confidence"] > 0.9
    assert set(by_name["a_red.png"]) == {"path", "label", "confidence"}
    assert "error" in by_name["broken.jpg"]
    assert rc == 1  # one unreadable image


def test_explicit_files_any_batch_size_and_top_k(color_model, images, capsys):
    files = [str(images / "a_red.png"), str(images / "sub" / "b_blue.jpg")]
    assert main(["--model", str(color_model), "-q", "--batch-size", "1", "--top-k", "2", *files]) == 0
    out = lines(capsys)
    assert [r["label"] for r in out] == ["red", "blue"]
    assert [name for name, _ in out[0]["top"]] == ["red", "blue"]
    assert sum(p for _, p in out[0]["top"]) == pytest.approx(1.0, abs=1e-5)


def test_pt_and_onnx_give_the_same_answers(squeezenet_models, images, capsys):
    pt, onnx_path = squeezenet_models
    main(["--model", str(pt), "-q", str(images)])
    from_pt = lines(capsys)
    main(["--model", str(onnx_path), "-q", str(images)])
    from_onnx = lines(capsys)
    assert [r.get("label") for r in from_pt] == [r.get("label") for r in from_onnx]
    for a, b in zip(from_pt, from_onnx):
        if "confidence" in a:
            assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-4)


def test_missing_input_and_missing_model_are_one_line_errors(tmp_path, color_model, images, capsys):
    assert main(["--model", str(color_model), str(tmp_path / "nope")]) == 2
    assert "error: no such file or folder" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "none.onnx"), str(images)]) == 2
    assert "not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--model", str(color_model), str(empty)]) == 2
    assert "no images found" in capsys.readouterr().err


def test_backend_flag_runs_that_runtime(squeezenet_models, images, capsys, caplog):
    pt, onnx_path = squeezenet_models
    image = str(images / "a_red.png")
    for model, backend in ((pt, "torch"), (onnx_path, "onnxruntime")):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="edge.runtime.backends"):
            rc = main(["--model", str(model), "--backend", backend, "--device", "cpu", "--threads", "1", image])
        assert rc == 0 and lines(capsys)[0]["label"] in ("cat", "dog", "none")
        assert f"backend {backend}: " in caplog.text and "auto-selected" not in caplog.text
    assert main(["--model", str(pt), "--backend", "onnxruntime", image]) == 2  # a .pt file is not ONNX
    assert "export it to ONNX first with `edge export`" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--model", str(pt), "--backend", "tflite", image])
    assert e.value.code == 2 and "'tflite'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ novelty

@pytest.fixture
def arrows_and_clutter(tmp_path):
    from edge.core.synthetic import render_sample

    rng = np.random.default_rng(1)
    root = tmp_path / "mixed"
    root.mkdir()
    for i, label in enumerate(["up", "down", "none", "none"]):
        cv2.imwrite(str(root / f"{i}_{label}.png"), render_sample(label, rng, 140, 120))
    return root


def test_novelty_model_adds_novelty_and_says_unknown_above_the_threshold(novelty_models, arrows_and_clutter, capsys):
    pt, onnx_path = novelty_models
    assert main(["--model", str(pt), "-q", "--top-k", "2", str(arrows_and_clutter)]) == 0
    stored = lines(capsys)
    assert len(stored) == 4
    for r in stored:
        assert set(r) == {"path", "label", "confidence", "top", "novelty", "top_label"}
        assert r["top_label"] == r["top"][0][0] and r["confidence"] == r["top"][0][1]
        assert 0 < r["novelty"] <= 2
    from edge.core.metadata import load_checkpoint

    threshold = load_checkpoint(pt)[1].novelty_threshold
    assert [r["label"] for r in stored] == ["unknown" if r["novelty"] > threshold else r["top_label"] for r in stored]

    main(["--model", str(pt), "-q", "--novelty-threshold", "0", str(arrows_and_clutter)])
    assert {r["label"] for r in lines(capsys)} == {"unknown"}  # nothing is identical to a training image
    main(["--model", str(onnx_path), "-q", "--novelty-threshold", "2", str(arrows_and_clutter)])
    from_onnx = lines(capsys)
    assert all(r["label"] == r["top_label"] for r in from_onnx)  # 2 = the largest cosine distance: never unknown
    for a, b in zip(stored, from_onnx):
        assert a["novelty"] == pytest.approx(b["novelty"], abs=1e-4) and a["top_label"] == b["top_label"]


def test_old_model_ignores_novelty_threshold_with_one_line(color_model, images, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="edge.runtime.backends"):
        assert main(["--model", str(color_model), "--novelty-threshold", "0.2", str(images / "a_red.png")]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert set(json.loads(line)) == {"path", "label", "confidence"}
    assert caplog.text.count("novelty threshold 0.2 ignored") == 1
    with pytest.raises(SystemExit) as e:
        main(["--model", str(color_model), "--novelty-threshold", "3", str(images)])
    assert e.value.code == 2 and "between 0 and 2" in capsys.readouterr().err
