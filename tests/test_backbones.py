"""The offline ImageNet backbones recognise real photos through our own preprocessing.

scikit-image ships real photos (a tabby cat, a cup of coffee). A weights file mapped onto the wrong tensors, or a
preprocessing spec that does not match the one the weights were trained with, gives near-uniform or wrong classes.
"""

from __future__ import annotations

import math

import pytest
import skimage.data
import timm
import torch

from edge.core.preprocess import preprocess_image
from edge.core.registry import get_arch

LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
CATS = {281: "tabby", 282: "tiger cat", 283: "Persian cat", 284: "Siamese cat", 285: "Egyptian cat"}
COFFEE = {967: "espresso", 968: "cup", 504: "coffee mug"}
PHOTOS = {"chelsea": CATS, "coffee": COFFEE}


@pytest.fixture(scope="module", params=LITES)
def imagenet_model(request):
    """(arch, the 1000-class ImageNet classifier with its offline ImageNet weights, in eval mode)."""
    spec = get_arch(request.param)
    model = spec.build()
    spec.load_imagenet(model)
    return request.param, model.eval()


@pytest.mark.parametrize("photo", PHOTOS)
def test_imagenet_weights_recognise_a_real_photo(imagenet_model, photo):
    arch, model = imagenet_model
    image = getattr(skimage.data, photo)()  # HxWx3 uint8 RGB
    x = torch.from_numpy(preprocess_image(image, get_arch(arch).preprocess, input_order="RGB"))[None]
    with torch.inference_mode():
        probs = torch.softmax(model(x), dim=1)[0]
    top = probs.topk(5)
    top5 = [(int(i), round(float(p), 3)) for p, i in zip(top.values, top.indices)]
    print(f"{arch} {photo}: top-5 {top5}")
    expected = PHOTOS[photo]
    assert top5[0][0] in expected, f"{arch} on {photo}: top-5 {top5}, expected a class in {expected}"


@pytest.mark.parametrize("arch", LITES)
def test_preprocessing_is_the_one_the_weights_were_trained_with(arch):
    spec = get_arch(arch).preprocess
    cfg = timm.get_pretrained_cfg("tf_" + arch)
    assert (3, spec.input_size, spec.input_size) == tuple(cfg.input_size)
    assert spec.resize_size == math.floor(spec.input_size / cfg.crop_pct)  # timm's own resize for eval
    assert (spec.mean, spec.std) == (tuple(cfg.mean), tuple(cfg.std))
