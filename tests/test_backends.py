"""Runtime backends: one interface, `auto` by file type, metadata from the model file, one-line errors."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from edge.core.errors import EdgeError
from edge.core.metadata import ModelMeta
from edge.core.preprocess import PreprocessSpec
from edge.runtime.backends import backend_for_file, load_backend
from edge.runtime.backends.onnxruntime_backend import select_providers

CLASSES = ["cat", "dog", "none"]


def tiny_onnx(make, path, *, softmax: bool, batch: int | str = "N", meta: bool = True):
    """global average pool -> 3->2 matmul [-> softmax] with our metadata; returns (path, weights)."""
    w = np.array([[2.0, -1.0], [0.5, 1.0], [-1.0, 3.0]], np.float32)
    return make(path, w, ["a", "b"], softmax=softmax, batch=batch, meta=meta), w


def batch_of(n: int, size: int = 224, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size), dtype=np.float32)


@pytest.mark.parametrize("name, expected", [
    ("m.engine", "tensorrt"), ("m.plan", "tensorrt"), ("m.ONNX", "onnxruntime"), ("m.pt", "torch"), ("m.pth", "torch"),
])
def test_auto_picks_by_file_type(name, expected):
    assert backend_for_file(name) == expected


def test_unknown_suffix_names_the_valid_ones(tmp_path):
    p = tmp_path / "model.tflite"
    p.write_bytes(b"x")
    with pytest.raises(EdgeError, match=r"unknown type '\.tflite'.*\.onnx"):
        load_backend(p)


def test_missing_file_and_unknown_backend_and_device(tmp_path, squeezenet_models):
    pt, _ = squeezenet_models
    with pytest.raises(EdgeError, match="not found"):
        load_backend(tmp_path / "nope.onnx")
    with pytest.raises(EdgeError, match="unknown backend 'tflite'.*auto, tensorrt, onnxruntime, torch"):
        load_backend(pt, "tflite")
    with pytest.raises(EdgeError, match="unknown device 'tpu'"):
        load_backend(pt, "auto", "tpu")


def test_backend_that_cannot_read_the_file_says_what_to_do(squeezenet_models):
    pt, onnx_path = squeezenet_models
    with pytest.raises(EdgeError, match="cannot read .*model.pt.*edge export"):
        load_backend(pt, "onnxruntime")
    with pytest.raises(EdgeError, match="torch backend reads `train` checkpoints"):
        load_backend(onnx_path, "torch")


def test_torch_backend_probabilities_and_labels_from_the_file(squeezenet_models, caplog):
    pt, _ = squeezenet_models
    with caplog.at_level(logging.INFO, logger="edge.runtime.backends"):
        be = load_backend(pt, "auto", "cpu")
    assert "auto-selected backend torch" in caplog.text
    assert be.name == "torch" and be.device == "cpu"
    assert be.meta.class_names == CLASSES
    p = be.run(batch_of(3))[0]
    assert p.shape == (3, 3) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert (p >= 0).all()
    be.close()


def test_onnxruntime_matches_torch(squeezenet_models):
    pt, onnx_path = squeezenet_models
    x = batch_of(4, seed=1)
    with load_backend(pt, "torch", "cpu") as t, load_backend(onnx_path, "auto", "cpu") as o:
        assert o.name == "onnxruntime" and o.providers == ["CPUExecutionProvider"]
        assert o.meta.class_names == CLASSES and o.meta.preprocess == t.meta.preprocess
        pt_probs, ort_probs = t.run(x)[0], o.run(x)[0]
    np.testing.assert_allclose(ort_probs, pt_probs, atol=1e-4)
    # the exported graph already ends in softmax; applying it twice would break the parity above
    from edge.runtime.backends import softmax

    assert np.abs(softmax(ort_probs) - ort_probs).max() > 1e-3


def test_onnx_without_softmax_gets_softmax(tmp_path, onnx_classifier):
    path, w = tiny_onnx(onnx_classifier, tmp_path / "logits.onnx", softmax=False)
    x = batch_of(2, size=8)
    with load_backend(path) as be:
        p = be.run(x)[0]
    logits = x.mean(axis=(2, 3)) @ w
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-6)


def test_fixed_batch_onnx_takes_any_batch(tmp_path, onnx_classifier):
    path, w = tiny_onnx(onnx_classifier, tmp_path / "b1.onnx", softmax=True, batch=1)
    x = batch_of(5, size=8)
    with load_backend(path) as be:
        assert be.max_batch == 1
        p = be.run(x)[0]
    assert p.shape == (5, 2)
    np.testing.assert_allclose(p.argmax(1), (x.mean(axis=(2, 3)) @ w).argmax(1))


def test_wrong_input_shape_is_rejected(tmp_path, squeezenet_models):
    _, onnx_path = squeezenet_models
    with load_backend(onnx_path) as be, pytest.raises(ValueError, match="Nx3x224x224"):
        be.run(np.zeros((1, 3, 100, 100), np.float32))


def test_onnx_without_metadata_is_refused(tmp_path, onnx_classifier):
    path, _ = tiny_onnx(onnx_classifier, tmp_path / "foreign.onnx", softmax=True, meta=False)
    with pytest.raises(EdgeError, match="no 'jetson_edge_meta' metadata.*edge export"):
        load_backend(path)


@pytest.mark.parametrize("suffix", [".onnx", ".pt"])
def test_corrupt_model_file_is_one_line_error(tmp_path, suffix):
    p = tmp_path / f"broken{suffix}"
    p.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(EdgeError) as e:
        load_backend(p)
    assert "broken" in str(e.value) and "\n" not in str(e.value)


def test_provider_order_and_filtering():
    avail = ["AzureExecutionProvider", "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
    assert select_providers(avail, "auto") == ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                               "CPUExecutionProvider"]
    assert select_providers(avail, "cpu") == ["CPUExecutionProvider"]
    assert select_providers(["CPUExecutionProvider"], "auto") == ["CPUExecutionProvider"]
    with pytest.raises(EdgeError, match="no GPU provider"):
        select_providers(["CPUExecutionProvider"], "cuda")


def test_tensorrt_backend_without_tensorrt_is_a_clear_error(tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    p = tmp_path / "model.engine"
    p.write_bytes(b"engine")
    with pytest.raises(EdgeError, match="TensorRT"):
        load_backend(p)
    with pytest.raises(EdgeError, match="GPU only"):
        load_backend(p, device="cpu")


@pytest.mark.gpu
def test_torch_backend_cuda_fp16_matches_cpu(squeezenet_models):
    pt, _ = squeezenet_models
    x = batch_of(2, seed=2)
    with load_backend(pt, "torch", "cuda") as g, load_backend(pt, "torch", "cpu") as c:
        assert g.device == "cuda" and g.fp16
        np.testing.assert_allclose(g.run(x)[0], c.run(x)[0], atol=2e-2)


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_engine_matches_onnxruntime(tmp_path, onnx_classifier):
    """Builds an engine from the tiny graph with TensorRT's builder, writes the sidecar, compares with ORT."""
    import tensorrt as trt
    import torch

    from edge.core.metadata import sha256_file
    from edge.core.model_files import EngineKey, EngineSidecar, sidecar_path

    onnx_path, _ = tiny_onnx(onnx_classifier, tmp_path / "tiny.onnx", softmax=True)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = (0 if int(trt.__version__.split(".")[0]) >= 10
             else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(onnx_path.read_bytes())
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3, 8, 8), (1, 3, 8, 8), (4, 3, 8, 8))
    config.add_optimization_profile(profile)
    engine_path = tmp_path / "tiny.engine"
    engine_path.write_bytes(bytes(builder.build_serialized_network(network, config)))
    meta = ModelMeta("tiny", ["a", "b"], PreprocessSpec(8, 8, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
    key = EngineKey(sha256_file(onnx_path), trt.__version__, torch.cuda.get_device_name(0),
                    "{}.{}".format(*torch.cuda.get_device_capability(0)), "fp32", (1, 3, 8, 8), 4)
    side = EngineSidecar(key, meta, sha256_file(engine_path), engine_path.stat().st_size)
    sidecar_path(engine_path).write_text(json.dumps(side.to_dict()))
    x = batch_of(6, size=8)
    with load_backend(engine_path) as t, load_backend(onnx_path, device="cpu") as o:
        assert t.name == "tensorrt" and t.max_batch == 4
        np.testing.assert_allclose(t.run(x)[0], o.run(x)[0], atol=1e-4)


# ------------------------------------------------------------------------------------------------ novelty

def arrow_batch(meta, labels=("up", "down", "none", "none"), seed=7) -> np.ndarray:
    """Rendered images (arrows and empty clutter) through the model's own preprocessing."""
    from edge.core.preprocess import preprocess_batch
    from edge.core.synthetic import render_sample

    rng = np.random.default_rng(seed)
    return preprocess_batch([render_sample(label, rng, 150, 120) for label in labels], meta.preprocess)


def test_torch_and_onnxruntime_compute_the_same_novelty(novelty_models):
    pt, onnx_path = novelty_models
    with load_backend(pt, "torch", "cpu") as t, load_backend(onnx_path, device="cpu") as o:
        assert t.has_novelty and o.has_novelty
        assert t.novelty_threshold == o.novelty_threshold == t.meta.novelty["threshold"] > 0
        x = arrow_batch(t.meta)
        (tp, tn), (op, on) = t.run(x), o.run(x)
    assert tn.shape == on.shape == (4,) and tn.dtype == on.dtype == np.float32
    np.testing.assert_allclose(on, tn, atol=1e-4)
    np.testing.assert_allclose(op, tp, atol=1e-4)
    assert (tn > 0).all() and (tn <= 2).all()  # cosine distances, not all zero


def test_fixed_batch_onnx_novelty_is_chunked_like_probabilities(novelty_models, tmp_path):
    """An ONNX file with batch 1 (re-saved by another tool) still gives N novelty scores for N images."""
    import onnx

    _, onnx_path = novelty_models
    proto = onnx.load(str(onnx_path))
    for value in [*proto.graph.input, *proto.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = 1
    fixed = tmp_path / "b1.onnx"
    onnx.save(proto, str(fixed))
    with load_backend(fixed, device="cpu") as b1, load_backend(onnx_path, device="cpu") as dyn:
        x = arrow_batch(dyn.meta, seed=3)
        assert b1.max_batch == 1
        np.testing.assert_allclose(b1.run(x)[1], dyn.run(x)[1], atol=1e-6)


def test_old_model_without_novelty_runs_everywhere_and_ignores_a_threshold(squeezenet_models, caplog):
    pt, onnx_path = squeezenet_models
    for path in (pt, onnx_path):
        with caplog.at_level(logging.INFO, logger="edge.runtime.backends"):
            caplog.clear()
            be = load_backend(path, device="cpu", novelty_threshold=0.3)
        with be:
            assert not be.has_novelty and be.novelty_threshold is None and be.meta.novelty is None
            probs, novelty = be.run(batch_of(2))
            assert novelty is None and probs.shape == (2, 3)
        assert sum("novelty threshold 0.3 ignored" in r.message for r in caplog.records) == 1


def test_novelty_threshold_override(novelty_models):
    pt, _ = novelty_models
    with load_backend(pt, device="cpu", novelty_threshold=0.5) as be:
        assert be.novelty_threshold == 0.5 and be.meta.novelty_threshold != 0.5
        be.set_novelty_threshold(None)
        assert be.novelty_threshold == be.meta.novelty_threshold


@pytest.mark.gpu
def test_torch_backend_cuda_fp16_novelty_matches_cpu(novelty_models):
    pt, _ = novelty_models
    with load_backend(pt, "torch", "cuda") as g, load_backend(pt, "torch", "cpu") as c:
        x = arrow_batch(c.meta, seed=9)
        (gp, gn), (cp, cn) = g.run(x), c.run(x)
    assert g.fp16 and gn.dtype == np.float32
    np.testing.assert_allclose(gn, cn, atol=1e-2)
    np.testing.assert_allclose(gp, cp, atol=2e-2)
