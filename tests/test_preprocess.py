"""Train-time and run-time preprocessing must produce the same tensor (the classic BGR/RGB, mean/std drift)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from edge.core.preprocess import (
    PreprocessSpec,
    crop_box,
    preprocess_batch,
    preprocess_image,
)
from edge.core.registry import ARCHS
from edge.core.synthetic import SceneRenderer
from train.presets import EvalTransform


@pytest.mark.parametrize("arch", ["squeezenet1_1", "efficientnet_lite0"])
def test_runtime_bgr_frame_matches_training_eval_path(tmp_path, arch):
    spec = ARCHS[arch].preprocess
    frame = SceneRenderer(640, 480).render(1.3)  # OpenCV BGR, as a camera gives it
    path = tmp_path / "frame.png"
    cv2.imwrite(str(path), frame)  # lossless: the trainer will read exactly these pixels

    train_side = EvalTransform(spec)(Image.open(path))  # what the trainer evaluates on (PIL, RGB)
    runtime_side = torch.from_numpy(preprocess_image(frame, spec, "BGR"))  # what the camera service feeds

    assert train_side.shape == runtime_side.shape == (3, 224, 224)
    assert torch.allclose(train_side, runtime_side, atol=1e-5)


def test_channel_order_matters():
    """Feeding a BGR frame as RGB must give a different tensor (the test above would catch a swap)."""
    spec = ARCHS["resnet18"].preprocess
    frame = SceneRenderer(320, 240).render(0.5)
    a = preprocess_image(frame, spec, "BGR")
    b = preprocess_image(frame, spec, "RGB")
    assert np.abs(a - b).max() > 0.5


def test_matches_torchvision_resize_crop_normalize():
    """Our spec means what torchvision's 'Resize(256) + CenterCrop(224) + Normalize' means (resampling aside)."""
    from torchvision.transforms import v2

    spec = ARCHS["resnet18"].preprocess
    rgb = cv2.cvtColor(SceneRenderer(640, 480).render(2.0), cv2.COLOR_BGR2RGB)
    tv = v2.Compose([v2.ToImage(), v2.Resize(spec.resize_size, antialias=True), v2.CenterCrop(spec.input_size),
                     v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize(list(spec.mean), list(spec.std))])(Image.fromarray(rgb))
    ours = torch.from_numpy(preprocess_image(rgb, spec, "RGB"))
    assert (tv - ours).abs().mean() < 0.03  # only the resampling filter differs


def test_normalization_values():
    spec = PreprocessSpec(4, 4, (0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 0, 255
    out = preprocess_image(rgb, spec, "RGB")
    assert np.allclose(out[0], 1.0) and np.allclose(out[1], -1.0) and np.allclose(out[2], 1.0)


def test_crop_box_is_centered_square():
    spec = PreprocessSpec(224, 256)
    y0, y1, x0, x1 = crop_box(480, 640, spec)
    assert y1 - y0 == x1 - x0 == 420
    assert (y0, x0) == (30, 110)


def test_batch_and_out_buffer_reuse():
    spec = ARCHS["squeezenet1_1"].preprocess
    frames = [SceneRenderer(320, 240).render(t) for t in (0.0, 4.0)]
    batch = preprocess_batch(frames, spec)
    assert batch.shape == (2, 3, 224, 224) and batch.dtype == np.float32
    buf = np.empty((3, 224, 224), np.float32)
    res = preprocess_image(frames[1], spec, out=buf)
    assert res is buf and np.array_equal(buf, batch[1])


def test_spec_round_trip_and_unknown_keys():
    from edge.core.errors import EdgeError

    spec = ARCHS["efficientnet_lite0"].preprocess
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(EdgeError, match="unknown preprocessing keys"):
        PreprocessSpec.from_dict({**spec.to_dict(), "bgr": True})
