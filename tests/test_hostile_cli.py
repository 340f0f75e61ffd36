"""Issue 18: hostile models and sources at the command line are one clear line and a non-zero exit."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.cli.predict import main as predict_main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "ok.png"
    cv2.imwrite(str(path), np.full((16, 16, 3), 100, np.uint8))
    return path


def test_predict_with_a_model_wider_than_its_labels_is_one_line(tmp_path, image, onnx_classifier, capsys):
    model = onnx_classifier(tmp_path / "wide.onnx", np.eye(3) * [1, 1, 5], ["a", "b"])  # 3 scores, 2 names
    assert predict_main(["--model", str(model), str(image)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "3 scores" in err[0] and "2 classes" in err[0]


def test_predict_never_prints_nan_and_fails(tmp_path, image, onnx_classifier, capsys):
    model = onnx_classifier(tmp_path / "nan.onnx", [[math.nan, 0], [0, 1], [0, 0]], ["a", "b"])
    assert predict_main(["--model", str(model), str(image)]) != 0
    out = capsys.readouterr().out
    lines = [json.loads(line, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))
             for line in out.splitlines()]
    assert len(lines) == 1 and "NaN" in lines[0]["error"]


@pytest.mark.parametrize("uri", ["http://[::1", "rtsp://[zz]/x"])
def test_an_unparsable_source_url_is_one_line(uri, tmp_path, onnx_classifier):
    model = onnx_classifier(tmp_path / "m.onnx", [[1, 0], [0, 1], [0, 0]], ["a", "b"])
    r = subprocess.run([sys.executable, "-m", "edge", "serve", "--model", str(model), "--source", uri],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "not a valid URL" in r.stderr.strip().splitlines()[-1]
