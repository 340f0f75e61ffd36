"""`edge predict`: one JSON line per image, folders walked recursively, any backend, bad images reported."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edge.cli.predict import main
from edge.core.metadata import ONNX_META_KEY, ModelMeta, save_checkpoint
from edge.core.preprocess import PreprocessSpec


def color_model(path):
    """ONNX classifier 'red' vs 'blue' from mean RGB (input is normalised RGB): checks channel order end to end."""
    import onnx
    from onnx import TensorProto, helper

    w = np.array([[4.0, -4.0], [0.0, 0.0], [-4.0, 4.0]], np.float32)  # R - B, B - R
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("MatMul", ["f", "w"], ["l"]), helper.make_node("Softmax", ["l"], ["probabilities"], axis=1)],
        "color",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.flatten())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    prop = model.metadata_props.add()
    prop.key = ONNX_META_KEY
    prop.value = ModelMeta("color", ["red", "blue"], PreprocessSpec(8, 8, (0.5,) * 3, (0.5,) * 3)).to_json()
    onnx.save(model, str(path))
    return path


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


def test_folder_walked_recursively_one_json_line_per_image(tmp_path, images, capsys):
    model = color_model(tmp_path / "color.onnx")
    rc = main(["--model", str(model), "-q", str(images)])
    out = lines(capsys)
    by_name = {r["path"].split("/")[-1]: r for r in out}
    assert set(by_name) == {"a_red.png", "b_blue.jpg", "c_red.jpg", "broken.jpg"}
    assert by_name["a_red.png"]["label"] == "red" and by_name["c_red.jpg"]["label"] == "red"
    assert by_name["b_blue.jpg"]["label"] == "blue"
    assert by_name["a_red.png"]["confidence"] > 0.9
    assert set(by_name["a_red.png"]) == {"path", "label", "confidence"}
    assert "error" in by_name["broken.jpg"]
    assert rc == 1  # one unreadable image


def test_explicit_files_any_batch_size_and_top_k(tmp_path, images, capsys):
    model = color_model(tmp_path / "color.onnx")
    files = [str(images / "a_red.png"), str(images / "sub" / "b_blue.jpg")]
    assert main(["--model", str(model), "-q", "--batch-size", "1", "--top-k", "2", *files]) == 0
    out = lines(capsys)
    assert [r["label"] for r in out] == ["red", "blue"]
    assert [name for name, _ in out[0]["top"]] == ["red", "blue"]
    assert sum(p for _, p in out[0]["top"]) == pytest.approx(1.0, abs=1e-5)


def test_pt_and_onnx_give_the_same_answers(tmp_path, images, capsys):
    from edge.core.registry import create_model, get_arch
    from export.onnx_export import export_onnx

    pt = tmp_path / "m.pt"
    model = create_model("squeezenet1_1", 3, "none")
    save_checkpoint(pt, model.state_dict(), ModelMeta("squeezenet1_1", ["x", "y", "z"], get_arch("squeezenet1_1").preprocess))
    onnx_path = export_onnx(pt, tmp_path / "m.onnx", verify_images=2)
    main(["--model", str(pt), "-q", str(images)])
    from_pt = lines(capsys)
    main(["--model", str(onnx_path), "-q", str(images)])
    from_onnx = lines(capsys)
    assert [r.get("label") for r in from_pt] == [r.get("label") for r in from_onnx]
    for a, b in zip(from_pt, from_onnx):
        if "confidence" in a:
            assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-4)


def test_missing_input_and_missing_model_are_one_line_errors(tmp_path, images, capsys):
    model = color_model(tmp_path / "color.onnx")
    assert main(["--model", str(model), str(tmp_path / "nope")]) == 2
    assert "error: no such file or folder" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "none.onnx"), str(images)]) == 2
    assert "not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--model", str(model), str(empty)]) == 2
    assert "no images found" in capsys.readouterr().err
