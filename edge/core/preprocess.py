"""One preprocessing spec per model, stored in every checkpoint and used by training, export and the runtime.

The deterministic path (center crop + resize + normalize) is one numpy/OpenCV function, `preprocess_image`,
called both by the training eval transform (`train.presets.EvalTransform`, PIL RGB in) and by the runtime
(OpenCV BGR frame in), so train-time and run-time preprocessing cannot drift: only the channel order of the
input differs, and it is explicit. Training augmentation lives in `train.presets`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

import cv2
import numpy as np

from edge.core.errors import EdgeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes the model's input tensor.

    The shorter side's centered square, scaled by input_size/resize_size (torchvision's "resize 256, crop 224"),
    is resized to input_size x input_size (area filter when shrinking, bilinear when enlarging), converted to RGB,
    scaled to [0, 1] and normalized with mean/std. Output layout: float32 NCHW, RGB.
    """

    input_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    color: str = "RGB"
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        if self.input_size <= 0 or self.resize_size < self.input_size:
            raise ValueError(f"bad preprocessing sizes: input_size={self.input_size}, resize_size={self.resize_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"bad mean/std: {self.mean}/{self.std}")
        if self.color != "RGB" or self.layout != "NCHW":
            raise ValueError(f"unsupported color/layout: {self.color}/{self.layout}")

    @property
    def crop_fraction(self) -> float:
        return self.input_size / self.resize_size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise EdgeError(f"unknown preprocessing keys {sorted(unknown)}; expected {sorted(known)}")
        try:
            kw = dict(d)
            for k in ("mean", "std"):
                if k in kw:
                    kw[k] = tuple(float(v) for v in kw[k])
            return cls(**kw)
        except (TypeError, ValueError) as e:
            raise EdgeError(f"invalid preprocessing spec {d}: {e}") from e


def crop_box(height: int, width: int, spec: PreprocessSpec) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the centered square that the spec keeps from a height x width image."""
    side = max(1, int(round(min(height, width) * spec.crop_fraction)))
    y0 = (height - side) // 2
    x0 = (width - side) // 2
    return y0, y0 + side, x0, x0 + side


class _Normalizer:
    """Per-channel x * scale + bias with the channel swap folded in, cached per (spec, channel order)."""

    def __init__(self, spec: PreprocessSpec, input_order: str):
        mean = np.asarray(spec.mean, np.float32)
        std = np.asarray(spec.std, np.float32)
        self.scale = (1.0 / (255.0 * std)).reshape(3, 1, 1)
        self.bias = (-mean / std).reshape(3, 1, 1)
        # index of the input channel that feeds each RGB output channel
        self.order = [2, 1, 0] if input_order == "BGR" else [0, 1, 2]


_NORMALIZERS: dict[tuple[PreprocessSpec, str], _Normalizer] = {}


def _normalizer(spec: PreprocessSpec, input_order: str) -> _Normalizer:
    key = (spec, input_order)
    n = _NORMALIZERS.get(key)
    if n is None:
        n = _NORMALIZERS[key] = _Normalizer(spec, input_order)
    return n


def resize_crop(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Center-crop and resize an HxWx3 uint8 image to input_size x input_size (channel order unchanged)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    y0, y1, x0, x1 = crop_box(image.shape[0], image.shape[1], spec)
    crop = image[y0:y1, x0:x1]
    size = spec.input_size
    interp = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
    if crop.shape[0] == size:
        return np.ascontiguousarray(crop)
    return cv2.resize(crop, (size, size), interpolation=interp)


def preprocess_image(
    image: np.ndarray, spec: PreprocessSpec, input_order: str = "BGR", out: np.ndarray | None = None
) -> np.ndarray:
    """HxWx3 uint8 image (BGR from OpenCV, or RGB from PIL) -> 3xSxS float32 normalized RGB tensor.

    `out` (3xSxS float32) is filled in place when given, so a runtime loop allocates nothing per frame.
    """
    if input_order not in ("BGR", "RGB"):
        raise ValueError(f"input_order must be 'BGR' or 'RGB', not {input_order!r}")
    small = resize_crop(image, spec)
    norm = _normalizer(spec, input_order)
    chw = small.transpose(2, 0, 1)[norm.order]
    if out is None:
        out = np.empty((3, spec.input_size, spec.input_size), np.float32)
    np.multiply(chw, norm.scale, out=out, casting="unsafe")
    out += norm.bias
    return out


def preprocess_batch(images: Sequence[np.ndarray], spec: PreprocessSpec, input_order: str = "BGR") -> np.ndarray:
    """A list of HxWx3 uint8 images -> Nx3xSxS float32 batch."""
    batch = np.empty((len(images), 3, spec.input_size, spec.input_size), np.float32)
    for i, img in enumerate(images):
        preprocess_image(img, spec, input_order, out=batch[i])
    return batch

