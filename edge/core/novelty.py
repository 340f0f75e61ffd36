"""Novelty score: how unlike everything the model was trained on an input is (higher = less familiar).

A classifier with two labels answers one of them for everything, an empty room or a cat included. Every model
therefore carries a bank of L2-normalised backbone features of its training images, and scores an input by its
k-th nearest neighbour's cosine distance to that bank (Sun et al. 2022, "Out-of-distribution detection with deep
nearest neighbors"):

    novelty = 1 - (k-th largest cosine similarity between the input's pooled features and the bank)

0 means "identical to a training image", 1 means "orthogonal to all of them". Above the calibrated threshold
(`NoveltyReport.threshold`, fitted by `train.novelty.fit_novelty`) the prediction becomes UNKNOWN_LABEL.

The score is part of the model graph (`ClassifierWithNovelty`: input -> (probabilities, novelty), the exported
outputs `probabilities` and edge.core.model_files.NOVELTY_OUTPUT) and uses only
MatMul, ReduceMax (k=1) or TopK, ReduceMean, ReduceSum, Sqrt, Clip, Div and element-wise ops, which the ONNX
exporter writes at opset 9..20 and TensorRT's ONNX parser supports, so torch, the ONNX file and an engine built
from it compute the same number from one file (checked against onnxruntime; no TensorRT on the dev machines).
The bank travels in the graph (ONNX/engine: a float32 constant) or beside the weights (checkpoint key
CHECKPOINT_BANK_KEY); the report (k, threshold, how it was calibrated) travels as JSON in ModelMeta.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from edge.core.errors import EdgeError
from edge.core.labels import UNKNOWN_LABEL  # what a prediction says when novelty > threshold

Tensor = torch.Tensor

METHOD = "knn-cosine"
DEFAULT_K = 1
CHECKPOINT_BANK_KEY = "novelty_bank"  # model.pt entry holding NoveltyScorer.bank
_EPS = 1e-6  # representable in FP16, where an engine may run this


def pool_features(features: Tensor) -> Tensor:
    """[B, D] stays as it is; [B, C, H, W] feature maps (SqueezeNet) are averaged over space to [B, C]."""
    if features.dim() > 2:
        return features.mean(dim=tuple(range(2, features.dim())))  # one ReduceMean in the graph
    return features


def normalize_rows(features: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm, in float32; an all-zero row stays zero (novelty 1: nothing like it).

    Each row is first divided by its largest magnitude so the sum of squares cannot overflow when a TensorRT
    engine runs this part in FP16 (4096 ReLU features of 5 already reach FP16's 65504).
    """
    f = pool_features(features).float()
    peak = f.abs().amax(dim=1, keepdim=True).clamp(min=_EPS)
    f = f / peak
    norm = (f * f).sum(dim=1, keepdim=True).sqrt().clamp(min=_EPS)
    return f / norm


class NoveltyScorer(nn.Module):
    """features [B, D] (or [B, C, H, W]) -> novelty [B] float32, against a fixed bank of training features.

    bank: [N, D] training features (normalised here again, so raw features are fine); stored in its own float
    dtype (float16 halves the file; the score is computed in float32 either way). k: which neighbour counts
    (1 = nearest, a ReduceMax in the graph; k > 1 is a TopK), capped at N.
    """

    def __init__(self, bank: Tensor, k: int = DEFAULT_K):
        super().__init__()
        if bank.dim() < 2 or bank.shape[0] < 1:
            raise EdgeError(f"novelty bank must be [N, D] features with N >= 1, got shape {tuple(bank.shape)}")
        if not bank.is_floating_point():
            raise EdgeError(f"novelty bank must be floating point, got {bank.dtype}")
        if not isinstance(k, int) or k < 1:
            raise EdgeError(f"novelty k must be an integer >= 1, got {k!r}")
        storage = bank.dtype
        self.register_buffer("bank", normalize_rows(bank.detach()).to(storage).contiguous())
        self.k = min(k, int(self.bank.shape[0]))

    @property
    def feature_dim(self) -> int:
        return int(self.bank.shape[1])

    @property
    def bank_bytes(self) -> int:
        return self.bank.numel() * self.bank.element_size()

    def forward(self, features: Tensor) -> Tensor:
        f = normalize_rows(features)
        similarity = f @ self.bank.float().t()  # [B, N]
        if self.k == 1:
            kth = similarity.amax(dim=1)
        else:
            kth = torch.topk(similarity, self.k, dim=1).values[:, self.k - 1]
        return 1.0 - kth

    def extra_repr(self) -> str:
        return f"bank={tuple(self.bank.shape)} {self.bank.dtype}, k={self.k}"


def novelty_numpy(bank: np.ndarray, features: np.ndarray, k: int = DEFAULT_K) -> np.ndarray:
    """Reference implementation in float64 numpy (for tests and offline analysis): same numbers as NoveltyScorer."""
    def unit(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, np.float64)
        if a.ndim > 2:
            a = a.reshape(a.shape[0], a.shape[1], -1).mean(axis=2)
        n = np.linalg.norm(a, axis=1, keepdims=True)
        return a / np.maximum(n, _EPS)

    similarity = unit(features) @ unit(bank).T
    k = min(k, similarity.shape[1])
    return 1.0 - np.sort(similarity, axis=1)[:, -k]


class ClassifierWithNovelty(nn.Module):
    """x [B, 3, S, S] -> (probabilities [B, C] softmax float32, novelty [B] float32), one backbone pass.

    features_fn(model, x) and head_fn(model, f) are an ArchSpec's `features` and `head` (head(features(x)) ==
    model(x)). fp16: the network runs in half precision on a half copy of `model` (input cast inside, like
    export's ProbabilityModel); softmax and the novelty score stay float32.
    """

    def __init__(
        self,
        model: nn.Module,
        features_fn: Callable[[nn.Module, Tensor], Tensor],
        head_fn: Callable[[nn.Module, Tensor], Tensor],
        scorer: NoveltyScorer,
        fp16: bool = False,
    ):
        super().__init__()
        self.net = copy.deepcopy(model).half() if fp16 else model
        self.features_fn = features_fn
        self.head_fn = head_fn
        self.scorer = scorer
        self.fp16 = fp16

    @classmethod
    def for_arch(cls, model: nn.Module, arch: str, scorer: NoveltyScorer, fp16: bool = False) -> ClassifierWithNovelty:
        from edge.core.registry import get_arch

        spec = get_arch(arch)
        return cls(model, spec.features, spec.head, scorer, fp16)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.fp16:
            x = x.half()
        f = self.features_fn(self.net, x)
        probabilities = torch.softmax(self.head_fn(self.net, f).float(), dim=1)
        return probabilities, self.scorer(f)


@dataclass
class NoveltyReport:
    """How a model's novelty score was fitted and calibrated; JSON-serialisable, lives in ModelMeta.

    calibration: "time-holdout" (images scored against the bank without their own burst: train.bursts), "val"
    (threshold from the validation images, none of them in the bank) or "train-holdout" (no val set: a slice of
    the training images held out of the bank while calibrating); see `note`.
    """

    k: int
    threshold: float
    keep: float  # the fraction of calibration images meant to keep a real label
    bank_size: int
    bank_candidates: int  # features offered (images x views) before the bank cap
    bank_selection: str  # "all", or how the capped bank was chosen
    bank_dtype: str
    feature_dim: int
    calibration: str
    calibration_images: int
    calibration_unknown: int  # calibration images whose novelty is above the threshold
    calibration_unknown_fraction: float
    calibration_novelty_median: float
    method: str = METHOD
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NoveltyReport:
        names = {f.name for f in fields(cls)}
        try:
            report = cls(**{k: v for k, v in d.items() if k in names})
        except TypeError as e:
            raise EdgeError(f"novelty report is incomplete ({e}); retrain the model to recalibrate it") from e
        if report.method != METHOD:
            raise EdgeError(f"novelty method {report.method!r} is not supported (this version knows {METHOD!r})")
        return report

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> NoveltyReport:
        try:
            return cls.from_dict(json.loads(text))
        except (json.JSONDecodeError, AttributeError) as e:
            raise EdgeError(f"novelty report is not a JSON object ({e})") from e

    def summary(self) -> str:
        """One line: method, bank, threshold and how many calibration images it calls unknown."""
        return (
            f"novelty: {self.method} k={self.k}, bank {self.bank_size} x {self.feature_dim} {self.bank_dtype}, "
            f"threshold {self.threshold:.4f} ({self.calibration}: {self.calibration_unknown}/"
            f"{self.calibration_images} calibration images would be '{UNKNOWN_LABEL}')"
        )


def scorer_from_checkpoint(checkpoint: dict[str, Any], meta: Any, source: str = "checkpoint") -> NoveltyScorer:
    """The NoveltyScorer a model.pt holds (its CHECKPOINT_BANK_KEY bank, `meta.novelty`'s k); EdgeError when the
    report is there but the bank is missing or does not fit the report."""
    bank = checkpoint.get(CHECKPOINT_BANK_KEY)
    if not isinstance(bank, Tensor):
        raise EdgeError(f"{source} has a novelty report but no {CHECKPOINT_BANK_KEY!r}; retrain it (or train with "
                        "--no-novelty)")
    report = NoveltyReport.from_dict(meta.novelty)
    if bank.dim() < 2 or int(bank.shape[1]) != report.feature_dim:
        raise EdgeError(f"{source}: novelty bank of shape {tuple(bank.shape)} does not fit its report "
                        f"({report.feature_dim} features); retrain it")
    return NoveltyScorer(bank, report.k)
