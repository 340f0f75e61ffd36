"""Shared fixtures: everything runs on CPU with generated data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_collection_modifyitems(config, items):
    import importlib.util

    import torch

    has_cuda = torch.cuda.is_available()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU; none visible to PyTorch"))
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT's Python API (ships with JetPack); not installed"))


def _write_checkpoint(path: Path, arch: str, classes: Sequence[str]) -> Path:
    """A random-init `arch` checkpoint in our model.pt format."""
    from edge.core.metadata import ModelMeta, save_checkpoint
    from edge.core.registry import create_model, get_arch

    model = create_model(arch, len(classes), "none")
    save_checkpoint(path, model.state_dict(), ModelMeta(arch=arch, class_names=list(classes),
                                                        preprocess=get_arch(arch).preprocess))
    return path


def _write_onnx_classifier(path: Path, weights, class_names: Sequence[str], *, softmax: bool = True,
                           batch: int | str = "N", meta: bool = True, size: int = 8, arch: str = "tiny") -> Path:
    """A hand-built ONNX classifier: global average pool -> matmul by `weights` (3 x classes) [-> softmax].

    Input: normalised RGB (mean = std = 0.5) of `size` x `size`; with `meta`, our labels and preprocessing
    are embedded the way `edge export` does it.
    """
    import onnx
    from onnx import TensorProto, helper

    from edge.core.metadata import ONNX_META_KEY, ModelMeta
    from edge.core.preprocess import PreprocessSpec

    w = np.asarray(weights, np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
    ]
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
        out = "probabilities"
    graph = helper.make_graph(
        nodes, arch,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, w.shape[1]])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.flatten())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if meta:
        prop = model.metadata_props.add()
        prop.key = ONNX_META_KEY
        prop.value = ModelMeta(arch, list(class_names), PreprocessSpec(size, size, (0.5,) * 3, (0.5,) * 3)).to_json()
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """A small up/down arrow ImageFolder dataset (20 images per class)."""
    from edge.core.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("data") / "arrows", per_class=20, seed=3)


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """Factory: a random-init checkpoint of `arch` in our model.pt format."""

    def make(arch: str = "squeezenet1_1", classes=("up", "down")):
        return _write_checkpoint(tmp_path / f"{arch}.pt", arch, classes)

    return make


@pytest.fixture(scope="session")
def squeezenet_models(tmp_path_factory):
    """A random-init SqueezeNet 1.1 checkpoint (classes cat, dog, none) and its verified ONNX export: (pt, onnx)."""
    from export.onnx_export import export_onnx

    d = tmp_path_factory.mktemp("squeezenet")
    pt = _write_checkpoint(d / "model.pt", "squeezenet1_1", ("cat", "dog", "none"))
    return pt, export_onnx(pt, d / "model.onnx", verify_images=4)


def _write_novelty_checkpoint(path: Path, arch: str = "squeezenet1_1", classes=("up", "down"), seed: int = 0) -> Path:
    """A random-init `arch` checkpoint with a novelty score fitted on synthetic arrows (bank: 8 images, threshold
    from 4 others), as `train` writes it."""
    import torch

    from edge.core.metadata import ModelMeta, save_checkpoint
    from edge.core.preprocess import preprocess_batch
    from edge.core.registry import create_model, get_arch
    from edge.core.synthetic import render_sample
    from train.novelty import fit_novelty

    torch.manual_seed(seed)
    spec = get_arch(arch)
    model = create_model(arch, len(classes), "none").eval()
    rng = np.random.default_rng(seed)
    images = [render_sample(classes[i % len(classes)], rng, 120, 100) for i in range(12)]
    with torch.inference_mode():
        feats = spec.features(model, torch.from_numpy(preprocess_batch(images, spec.preprocess)))
    scorer, report = fit_novelty(feats[:8], feats[8:])
    meta = ModelMeta(arch=arch, class_names=list(classes), preprocess=spec.preprocess, novelty=report.to_dict())
    save_checkpoint(path, model.state_dict(), meta, novelty_bank=scorer.bank)
    return path


@pytest.fixture(scope="session")
def novelty_models(tmp_path_factory):
    """A random-init SqueezeNet 1.1 checkpoint (up, down) with a novelty bank and its verified ONNX export (two
    outputs): (pt, onnx)."""
    from export.onnx_export import export_onnx

    d = tmp_path_factory.mktemp("novelty")
    pt = _write_novelty_checkpoint(d / "model.pt")
    return pt, export_onnx(pt, d / "model.onnx", verify_images=4)


@pytest.fixture(scope="session")
def onnx_classifier():
    """Factory: `make(path, weights, class_names, softmax=True, batch="N", meta=True, size=8)` -> path of a
    hand-built ONNX classifier (global average pool -> matmul [-> softmax])."""
    return _write_onnx_classifier


@pytest.fixture(scope="session")
def color_model(tmp_path_factory):
    """ONNX classifier 'red' vs 'blue' from mean RGB (input is normalised RGB): checks channel order end to end."""
    w = [[4.0, -4.0], [0.0, 0.0], [-4.0, 4.0]]  # R - B, B - R
    return _write_onnx_classifier(tmp_path_factory.mktemp("color") / "color.onnx", w, ["red", "blue"], arch="color")


# --- export tests (test_export.py, test_engine_build.py): a tiny image set and a random-init SqueezeNet checkpoint
@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from edge.core.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("data") / "ds", per_class=4, size=(96, 80))  # 8 images


@pytest.fixture(scope="module")
def squeeze(tmp_path_factory) -> Path:
    return _export_checkpoint(tmp_path_factory.mktemp("sq") / "model.pt", "squeezenet1_1")


def _export_checkpoint(path: Path, arch: str) -> Path:
    from export_helpers import make_checkpoint

    return make_checkpoint(path, arch)
