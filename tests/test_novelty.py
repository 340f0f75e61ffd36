"""Novelty score: kNN cosine distance to a bank of training features, calibrated, inside the exported graph.

CPU, generated features and synthetic images; one real backbone (efficientnet_lite0, whose ImageNet weights ship
with a package) for the "empty clutter is not an arrow" check.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from edge.core.errors import EdgeError
from edge.core.novelty import (
    ClassifierWithNovelty,
    NoveltyReport,
    NoveltyScorer,
    novelty_numpy,
)
from export.onnx_export import _torch_export, half_precision_runs_on_cpu
from train.novelty import fit_novelty, holdout_images, select_bank


def clusters(n_per: int, centres: torch.Tensor, spread: float, seed: int) -> torch.Tensor:
    """n_per noisy non-negative samples around each centre (like pooled ReLU features)."""
    g = torch.Generator().manual_seed(seed)
    rows = [c + spread * torch.randn(n_per, centres.shape[1], generator=g) for c in centres]
    return torch.cat(rows).relu()


@pytest.fixture
def centres():
    return torch.rand(3, 64, generator=torch.Generator().manual_seed(0)) * 4


@pytest.mark.parametrize("k", [1, 3, 5])
def test_scorer_matches_numpy_reference(k):
    g = torch.Generator().manual_seed(k)
    bank, feats = torch.randn(40, 32, generator=g), torch.randn(9, 32, generator=g) * 3
    with torch.no_grad():
        got = NoveltyScorer(bank, k)(feats).numpy()
    assert got.shape == (9,) and got.dtype == np.float32
    np.testing.assert_allclose(got, novelty_numpy(bank.numpy(), feats.numpy(), k), atol=1e-5)


def test_feature_maps_are_pooled_like_the_reference():
    g = torch.Generator().manual_seed(1)
    bank, maps = torch.rand(20, 8, 3, 3, generator=g), torch.rand(4, 8, 3, 3, generator=g)
    with torch.no_grad():
        got = NoveltyScorer(bank, 2)(maps).numpy()
    np.testing.assert_allclose(got, novelty_numpy(bank.numpy(), maps.numpy(), 2), atol=1e-5)


def test_features_near_the_bank_score_lower_than_far_ones(centres):
    bank = clusters(30, centres, 0.3, seed=1)
    near = clusters(10, centres, 0.3, seed=2)
    far = torch.rand(30, 64, generator=torch.Generator().manual_seed(3)) * 4
    scorer = NoveltyScorer(bank, 1)
    with torch.no_grad():
        assert scorer(near).max() < scorer(far).min()
        assert scorer(bank).abs().max() < 1e-5  # a training feature is its own nearest neighbour
        assert scorer(torch.zeros(1, 64)).item() == pytest.approx(1.0)  # a dead (all-zero) feature is unlike all


def test_threshold_keeps_about_keep_of_new_known_images(centres):
    train = clusters(100, centres, 0.5, seed=1)
    val = clusters(100, centres, 0.5, seed=2)
    test = clusters(200, centres, 0.5, seed=3)
    scorer, report = fit_novelty(train, val, keep=0.9, k=3)
    assert report.calibration == "val" and report.calibration_images == 300
    assert report.calibration_unknown_fraction == pytest.approx(0.1, abs=0.01)
    with torch.no_grad():
        kept = (scorer(test) <= report.threshold).float().mean().item()
        far = (scorer(torch.rand(50, 64) * 4) > report.threshold).float().mean().item()
    assert 0.84 <= kept <= 0.96
    assert far == 1.0


def test_clean_views_make_the_bank_and_fp16_features_are_accepted(centres):
    clean = clusters(10, centres, 0.5, seed=1)
    views = torch.cat([clean, clean.flip(1), clean.roll(7, 1)]).half()  # the trainer's fp16 cache, view-major
    val = clusters(5, centres, 0.5, seed=2)
    scorer, report = fit_novelty(views, val, views=3)
    assert report.bank_size == report.bank_candidates == 30 and report.bank_selection == "all"
    assert scorer.bank.dtype == torch.float32 and scorer.bank.shape == (30, 64)
    with torch.no_grad():
        assert scorer(clean.float()).abs().max() < 1e-3  # view 0 is the clean one
        assert scorer(clean.flip(1).float()).min() > 1e-2
    all_views, report = fit_novelty(views, val, views=3, bank_views=3)
    assert report.bank_size == 90 and all_views.bank.shape == (90, 64)


def test_without_val_the_last_slice_of_each_class_calibrates(centres):
    train = clusters(20, centres, 0.5, seed=1)  # 60 images: classes 0, 1, 2 in blocks of 20
    labels = [0] * 20 + [1] * 20 + [2] * 20
    assert holdout_images(60, labels, 0.2) == [*range(16, 20), *range(36, 40), *range(56, 60)]
    assert holdout_images(3, [0, 1, 1], 0.2) == [2]  # a class keeps one image in the bank
    _, report = fit_novelty(torch.cat([train, train + 0.05]), None, views=2, train_labels=labels)
    assert report.calibration == "train-holdout" and report.calibration_images == 12
    assert "no validation images" in report.note
    assert report.bank_size == 60  # held-out images are added back to the bank afterwards (clean views)
    # held out while calibrating, so the threshold is above 0 although every image is in the final bank
    assert report.threshold > 0.01


def test_single_image_cannot_be_calibrated_and_never_says_unknown():
    scorer, report = fit_novelty(torch.rand(1, 16), None)
    assert report.calibration == "none" and report.calibration_images == 0
    with torch.no_grad():
        assert (scorer(torch.randn(20, 16)) <= report.threshold).all()


def test_bank_cap_keeps_rare_views(centres):
    common = clusters(200, centres[:1], 0.05, seed=1)  # near-duplicate frames of one scene
    rare = clusters(3, centres[1:2], 0.05, seed=2)  # a view seen only three times
    feats = torch.cat([common, rare])
    _, report = fit_novelty(feats, clusters(5, centres[:1], 0.05, seed=3), max_bank=16, selection="farthest")
    assert report.bank_size == 16 and report.bank_candidates == 203 and report.bank_selection == "farthest"
    unit = feats / feats.norm(dim=1, keepdim=True)
    chosen = select_bank(unit, 16, "farthest")
    assert len(chosen) == 16 and len(set(chosen.tolist())) == 16
    assert any(i >= 200 for i in chosen.tolist())
    assert len(select_bank(unit, 16, "stride")) == 16


def test_fp16_bank_halves_the_bytes_and_keeps_the_score(centres):
    train, val = clusters(50, centres, 0.5, seed=1), clusters(50, centres, 0.5, seed=2)
    full, _ = fit_novelty(train, val)
    half, report = fit_novelty(train, val, bank_dtype=torch.float16)
    assert half.bank.dtype == torch.float16 and report.bank_dtype == "float16"
    assert half.bank_bytes * 2 == full.bank_bytes
    with torch.no_grad():
        assert (half(val) - full(val)).abs().max() < 2e-3


def test_bad_settings_are_one_clear_error():
    with pytest.raises(EdgeError, match="keep must be in"):
        fit_novelty(torch.rand(10, 4), torch.rand(3, 4), keep=0.0)
    with pytest.raises(EdgeError, match="not 3 views"):
        fit_novelty(torch.rand(10, 4), None, views=3)
    with pytest.raises(EdgeError, match="k must be an integer"):
        NoveltyScorer(torch.rand(5, 4), 0)
    with pytest.raises(EdgeError, match="unknown bank selection 'kmeans'.*stride, farthest"):
        select_bank(torch.rand(10, 4), 5, "kmeans")


def test_report_round_trips_through_strict_json(centres):
    for val in (clusters(5, centres, 0.5, seed=2), None):
        _, report = fit_novelty(clusters(10, centres, 0.5, seed=1), val)
        text = report.to_json()
        json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
        assert NoveltyReport.from_json(text) == report
    with pytest.raises(EdgeError, match="incomplete"):
        NoveltyReport.from_dict({"k": 1})


class TinyNet(nn.Module):
    """A small CNN with the registry's split: features() -> [B, 16] pooled, head() -> logits."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(self.body(x))


# what the graph may contain beyond the CNN: ops every JetPack TensorRT parses
SCORER_OPS = {"MatMul", "ReduceMax", "TopK", "Gather", "Slice", "Squeeze", "Unsqueeze", "Sub", "Div", "Mul", "Abs",
              "Clip", "Max", "ReduceSum", "Sqrt", "Cast", "Constant", "Transpose", "Reshape", "Flatten", "ReduceMean"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter, which export/ uses on purpose
@pytest.mark.parametrize("k", [1, 3])
def test_onnx_export_has_probabilities_and_novelty_matching_torch(tmp_path, k):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    torch.manual_seed(0)
    net = TinyNet().eval()
    x = torch.randn(7, 3, 32, 32)
    with torch.no_grad():
        bank = net.body(x[:4]).repeat(k, 1)  # the first four inputs are "training images", each seen k times
    wrapper = ClassifierWithNovelty(net, lambda m, t: m.body(t), lambda m, f: m.fc(f), NoveltyScorer(bank, k)).eval()
    path = tmp_path / "m.onnx"
    _torch_export(wrapper, x[:2], path, 11, ["probabilities", "novelty"])  # what `edge export` calls
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probabilities", "novelty"]
    probs, novelty = session.run(None, {"input": x.numpy()})  # batch 7, exported with 2
    with torch.no_grad():
        ref_probs, ref_novelty = wrapper(x)
    assert probs.shape == (7, 3) and novelty.shape == (7,)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, ref_probs.numpy(), atol=1e-5)
    np.testing.assert_allclose(novelty, ref_novelty.numpy(), atol=1e-4)
    assert novelty[:4].max() < 1e-4 < novelty[4:].min()
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ops - {"Conv", "Relu", "GlobalAveragePool", "Gemm", "Softmax"} <= SCORER_OPS
    assert ("TopK" in ops) == (k > 1)


@pytest.mark.skipif(not half_precision_runs_on_cpu(), reason="this torch (< 2.2) has no half-precision conv on the CPU")
def test_fp16_wrapper_keeps_float32_outputs():
    torch.manual_seed(0)
    net = TinyNet().eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        scorer = NoveltyScorer(net.body(x), 1)
        wrapper = ClassifierWithNovelty(net, lambda m, t: m.body(t), lambda m, f: m.fc(f), scorer, fp16=True)
        probs, novelty = wrapper(x)
        ref_probs = torch.softmax(net(x), 1)
    assert probs.dtype == novelty.dtype == torch.float32
    assert torch.allclose(probs, ref_probs, atol=2e-3) and novelty.abs().max() < 2e-3
    assert next(net.parameters()).dtype == torch.float32  # the caller's model is not converted


def test_for_arch_uses_the_registry_split_and_pools_feature_maps():
    from edge.core.registry import create_model, get_arch

    torch.manual_seed(0)
    model = create_model("squeezenet1_1", 2, "none").eval()  # features are 512xHxW maps
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        maps = get_arch("squeezenet1_1").features(model, x)
        wrapper = ClassifierWithNovelty.for_arch(model, "squeezenet1_1", NoveltyScorer(maps[:1], 1)).eval()
        probs, novelty = wrapper(x)
        assert torch.allclose(probs, torch.softmax(model(x), 1), atol=1e-5)
    np.testing.assert_allclose(novelty.numpy(), novelty_numpy(maps[:1].numpy(), maps.numpy(), 1), atol=1e-5)
    assert novelty[0] < 1e-5


def test_empty_clutter_scores_above_the_threshold_with_a_real_backbone():
    from edge.core.preprocess import preprocess_batch
    from edge.core.registry import create_model, get_arch
    from edge.core.synthetic import render_sample

    torch.manual_seed(0)
    arch = "efficientnet_lite0"
    spec = get_arch(arch)
    model = create_model(arch, 2, "imagenet").eval()
    rng = np.random.default_rng(0)

    def features(labels):
        batch = preprocess_batch([render_sample(label, rng, 224, 224) for label in labels], spec.preprocess, "BGR")
        with torch.inference_mode():
            return spec.features(model, torch.from_numpy(batch))

    train = features(["up", "down"] * 16)
    val = features(["up", "down"] * 8)
    scorer, report = fit_novelty(train, val, keep=0.95)
    with torch.no_grad():
        clutter = scorer(features(["none"] * 12))
        arrows = scorer(features(["up", "down"] * 6))
    assert (clutter > report.threshold).float().mean() >= 0.75
    assert (arrows <= report.threshold).float().mean() >= 0.75
    assert clutter.median() > arrows.median()
