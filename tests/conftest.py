"""Shared fixtures: everything runs on CPU with generated data."""

from __future__ import annotations

import os

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


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """A small up/down arrow ImageFolder dataset (20 images per class)."""
    from edge.core.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("data") / "arrows", per_class=20, seed=3)


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """Factory: a random-init checkpoint of `arch` in our model.pt format."""
    from edge.core.metadata import ModelMeta, save_checkpoint
    from edge.core.registry import create_model, get_arch

    def make(arch: str = "squeezenet1_1", classes=("up", "down")):
        path = tmp_path / f"{arch}.pt"
        model = create_model(arch, len(classes), "none")
        save_checkpoint(path, model.state_dict(), ModelMeta(arch=arch, class_names=list(classes), preprocess=get_arch(arch).preprocess))
        return path

    return make
