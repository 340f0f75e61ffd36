"""Training-side image transforms (as torchvision's references/classification keeps them in presets.py).

The eval transform is the runtime's deterministic `edge.core.preprocess.preprocess_image`, fed PIL RGB images, so
what the trainer validates on is exactly what the camera service computes. The train transform adds label-safe
augmentation on top of the same normalization.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edge.core.preprocess import PreprocessSpec, preprocess_image


@dataclass(frozen=True)
class AugmentSpec:
    """The training augmentation recipe. Every step must keep the label true.

    - hflip: mirror left/right. Safe for up/down gestures and most objects; turn it off (`--no-hflip`) when
      left vs right is the label (arrows pointing left/right, left/right hand).
    - vflip is deliberately absent: it turns thumbs-up into thumbs-down (swaps the classes).
    - rotation_degrees: small tilts only; large rotations also change up/down labels.
    - scale: RandomResizedCrop area range (zoom / position jitter); ratio kept near square.
    - color jitter: brightness/contrast/saturation/hue, for lighting changes between capture and deployment.
    """

    hflip: bool = True
    rotation_degrees: float = 10.0
    scale: tuple[float, float] = (0.7, 1.0)
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.03

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scale"] = list(self.scale)
        return d


def train_transform(spec: PreprocessSpec, aug: AugmentSpec | None = None):
    """torchvision transforms v2 pipeline for training: PIL image -> augmented, normalized tensor."""
    import torch
    from torchvision.transforms import v2

    aug = aug or AugmentSpec()
    steps = [
        v2.ToImage(),
        v2.RandomResizedCrop(spec.input_size, scale=aug.scale, ratio=(3 / 4, 4 / 3), antialias=True),
    ]
    if aug.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if aug.rotation_degrees:
        steps.append(v2.RandomRotation(aug.rotation_degrees))
    if aug.brightness or aug.contrast or aug.saturation or aug.hue:
        steps.append(v2.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(spec.mean), list(spec.std))]
    return v2.Compose(steps)


class EvalTransform:
    """PIL image (or RGB array) -> torch tensor through the runtime's own `preprocess_image`."""

    def __init__(self, spec: PreprocessSpec):
        self.spec = spec

    def __call__(self, img: Any):
        import torch

        arr = np.asarray(img.convert("RGB")) if hasattr(img, "convert") else np.asarray(img)
        return torch.from_numpy(preprocess_image(arr, self.spec, "RGB"))

    def __repr__(self) -> str:
        return f"EvalTransform({self.spec})"
