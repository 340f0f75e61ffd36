"""Fit and calibrate a model's novelty score (edge.core.novelty) from the features the trainer already has.

`fit_novelty(train_features, val_features)` builds the bank from the training images' features (head mode's
cache of clean and augmented views is passed as it is; the clean views go into the bank by default), capped at
`max_bank` rows, and sets the threshold at the `keep`
quantile of the novelty of images that are not in the bank: the validation images, or, without a validation set,
the last slice of each class's training images (held out of the bank while calibrating, then added back).
Given the images' capture times (`calibrate(..., train_paths=, val_paths=)`, as `train` and teach pass them),
the threshold comes from images the bank has not seen *in time* instead (train.bursts: leave-one-burst-out, or
the last stretch of a class captured in one burst): burst-collected val images are near-copies of bank images and
would set it far too low. `near_copies` says how many val images are such near-copies.

The features must come from the backbone the model ships with: after full fine-tuning, extract them again with
the final weights (head mode's cached features already are). `calibrate` is what the trainer calls: the fit,
plus the novelty of every val image for metrics.json and mistakes.png.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from edge.core.errors import EdgeError
from edge.core.labels import UNKNOWN_LABEL, check_label
from edge.core.novelty import (
    DEFAULT_K,
    NoveltyReport,
    NoveltyScorer,
    normalize_rows,
)

from .bursts import Holdout, capture_times, holdout_groups

log = logging.getLogger(__name__)

Tensor = torch.Tensor

DEFAULT_KEEP = 0.95
# Measured in benchmarks/bench_novelty.py: cutting the bank to 1/2..1/4 moves AUROC by <= 0.01 with any selection
# (stride, farthest-point, random, k-means alike), so the cap is 2048 rows (lite0: 10.5 MB float32) and the free,
# deterministic stride is the default; augmented views in the bank did not raise AUROC (clean-only was as good or
# better in 4 of 5 unsaturated cases, and kept as many knowns under a lighting change) at 4x the size.
DEFAULT_MAX_BANK = 2048
BANK_SELECTIONS = ("stride", "farthest")
DEFAULT_SELECTION = "stride"
DEFAULT_BANK_VIEWS = 1  # the clean view of each training image
HOLDOUT_FRACTION = 0.2
UNCALIBRATED_THRESHOLD = 2.0  # the largest cosine distance: nothing is ever called unknown
_CHUNK = 1024


def select_bank(features: Tensor, max_size: int, selection: str = DEFAULT_SELECTION) -> Tensor:
    """Indices (sorted) of at most `max_size` rows of L2-normalised `features` to keep in the bank.

    "stride": every (N / max_size)-th row, so each class (the trainer lists them in blocks) keeps its share.
    "farthest": greedy farthest-point sampling in cosine distance from row 0, which thins near-duplicate frames
    first and keeps rare views (O(max_size x N x D): about 2 s for 8192 -> 2048 rows of 1280 on a desktop CPU).
    Both are deterministic.
    """
    n = features.shape[0]
    if max_size < 1:
        raise EdgeError(f"novelty bank size must be >= 1, got {max_size}")
    if selection not in BANK_SELECTIONS:
        raise EdgeError(f"unknown bank selection {selection!r}; choose one of: {', '.join(BANK_SELECTIONS)}")
    if n <= max_size:
        return torch.arange(n, device=features.device)
    if selection == "stride":
        return torch.linspace(0, n - 1, max_size, device=features.device).round().long().unique()
    chosen = torch.empty(max_size, dtype=torch.long, device=features.device)
    chosen[0] = 0
    distance = 1.0 - features @ features[0]
    for i in range(1, max_size):
        nxt = torch.argmax(distance)
        chosen[i] = nxt
        distance = torch.minimum(distance, 1.0 - features @ features[nxt])
    return chosen.sort().values


def holdout_images(n_images: int, labels: Sequence[int] | None = None, fraction: float = HOLDOUT_FRACTION) -> list[int]:
    """Indices of the training images to hold out for calibration: the last `fraction` of each class, in order.

    The trainer lists each class's files sorted by name, so with capture's time-stamped names this is the most
    recent stretch of frames: calibrating on it does not lean on near-duplicates of neighbouring bank frames as
    a random pick would. A class keeps at least one image in the bank.
    """
    labels = list(labels) if labels is not None else [0] * n_images
    if len(labels) != n_images:
        raise EdgeError(f"{len(labels)} training labels for {n_images} training images")
    by_class: dict[int, list[int]] = {}
    for i, c in enumerate(labels):
        by_class.setdefault(int(c), []).append(i)
    held: list[int] = []
    for members in by_class.values():
        take = min(math.ceil(len(members) * fraction), len(members) - 1)
        held += members[len(members) - take:] if take > 0 else []
    return sorted(held)


def _scores(scorer: NoveltyScorer, features: Tensor) -> Tensor:
    with torch.no_grad():
        return torch.cat([scorer(features[i:i + _CHUNK]) for i in range(0, len(features), _CHUNK)])


def _bank(rows: Tensor, k: int, max_bank: int, selection: str, dtype: torch.dtype) -> NoveltyScorer:
    return _bank_rows(rows, k, max_bank, selection, dtype)[0]


def _bank_rows(rows: Tensor, k: int, max_bank: int, selection: str,
               dtype: torch.dtype) -> tuple[NoveltyScorer, Tensor]:
    unit = normalize_rows(rows)
    chosen = select_bank(unit, max_bank, selection)
    return NoveltyScorer(unit[chosen].to(dtype), k), chosen


def masked_novelty(points: Tensor, bank: Tensor, k: int, point_key: np.ndarray, bank_key: np.ndarray) -> Tensor:
    """NoveltyScorer's score of `points` against `bank` (both [*, D], any scale), where point i does not see the
    bank rows j with bank_key[j] == point_key[i] >= 0 -> [len(points)] float64 (2.0 when it sees fewer than k)."""
    pts, rows = normalize_rows(points).cpu(), normalize_rows(bank).cpu()
    bkey = torch.as_tensor(np.asarray(bank_key, np.int64))
    pkey = torch.as_tensor(np.asarray(point_key, np.int64))
    k = min(k, len(rows))
    out = []
    for i in range(0, len(pts), _CHUNK):
        sim = pts[i:i + _CHUNK] @ rows.t()
        hidden = (pkey[i:i + _CHUNK, None] == bkey[None, :]) & (bkey[None, :] >= 0)
        sim = sim.masked_fill(hidden, -3.0)
        kth = sim.topk(k, dim=1).values[:, k - 1] if len(rows) else torch.full((len(sim),), -1.0)
        out.append((1.0 - kth).clamp(max=UNCALIBRATED_THRESHOLD))
    return torch.cat(out).double() if out else torch.empty(0, dtype=torch.float64)


def _time_holdout(per_view: Tensor, scorer: NoveltyScorer, chosen: Tensor, val_features: Tensor | None,
                  holdout: Holdout) -> Tensor:
    """Novelty of the holdout's calibration images against the shipped bank minus what each must not see."""
    n = per_view.shape[1]
    image_of_row = (chosen.cpu() % n).numpy()
    candidates = per_view[0] if val_features is None or not len(val_features) else torch.cat(
        [per_view[0], val_features.to(per_view.device, per_view.dtype)])
    points = candidates[torch.as_tensor(holdout.points, device=candidates.device, dtype=torch.long)]
    return masked_novelty(points, scorer.bank, scorer.k, holdout.point_key, holdout.train_key[image_of_row])


def fit_novelty(train_features: Tensor, val_features: Tensor | None, keep: float = DEFAULT_KEEP, k: int = DEFAULT_K,
                **options: Any) -> tuple[NoveltyScorer, NoveltyReport]:
    """Build the novelty bank and calibrate its threshold -> (scorer, report); see fit_novelty_detail."""
    scorer, report, _ = fit_novelty_detail(train_features, val_features, keep, k, **options)
    return scorer, report


def fit_novelty_detail(
    train_features: Tensor,
    val_features: Tensor | None,
    keep: float = DEFAULT_KEEP,
    k: int = DEFAULT_K,
    *,
    views: int = 1,
    bank_views: int = DEFAULT_BANK_VIEWS,
    train_labels: Sequence[int] | None = None,
    max_bank: int = DEFAULT_MAX_BANK,
    selection: str = DEFAULT_SELECTION,
    bank_dtype: torch.dtype = torch.float32,
    holdout_fraction: float = HOLDOUT_FRACTION,
    holdout: Holdout | None = None,
    augmented: Tensor | None = None,
) -> tuple[NoveltyScorer, NoveltyReport, Tensor]:
    """Build the novelty bank and calibrate its threshold -> (scorer, report, the calibration images' novelty).

    train_features: [views * n, D] (or [views * n, C, H, W] maps), view-major like the trainer's cache: rows
    v*n .. v*n+n-1 are view v of the n training images, view 0 the clean one; the first `bank_views` views go
    into the bank. val_features: [M, D] clean validation images, or None / empty to hold out a slice of the
    training images (train_labels, [n] class indices, make that slice per class). The scorer is on
    train_features' device. holdout (train.bursts.holdout_groups of the train and val images' capture times):
    calibrate on images unseen in time instead of on the val images as they are. augmented: features of augmented
    views of training images (the crops, flips and light changes the head learnt as their class): the threshold
    is raised to their `keep` quantile when that is higher (AUGMENTED_FLOOR).
    """
    if not 0.0 < keep <= 1.0:
        raise EdgeError(f"novelty keep must be in (0, 1], got {keep}; 0.95 keeps 95% of known images")
    if not 0.0 < holdout_fraction < 1.0:
        raise EdgeError(f"novelty holdout fraction must be in (0, 1), got {holdout_fraction}")
    total = int(train_features.shape[0])
    if views < 1 or total < views or total % views:
        raise EdgeError(f"{total} training feature rows are not {views} views of the same images")
    n = total // views
    shape = train_features.shape[1:]
    per_view = train_features.reshape(views, n, *shape)[:max(1, min(bank_views, views))]
    candidates = per_view.reshape(-1, *shape)
    scorer, chosen = _bank_rows(candidates, k, max_bank, selection, bank_dtype)
    note = ""
    if holdout is not None and len(holdout.points):
        calibration, calib = "time-holdout", _time_holdout(per_view, scorer, chosen, val_features, holdout)
        note = holdout.summary()
    elif holdout is not None and val_features is not None and len(val_features) > 0:
        calibration, calib = "val", _scores(scorer, val_features)
        note = ("unknown cannot be calibrated reliably: no class has images apart in time from its bank images, so "
                "the threshold comes from val images that may be near-copies of them (too low: unknown too often)")
        log.warning("novelty: %s", note)
    elif val_features is not None and len(val_features) > 0:
        calibration, calib = "val", _scores(scorer, val_features)
    else:
        held = holdout_images(n, train_labels, holdout_fraction)
        if held:
            in_bank = torch.ones(n, dtype=torch.bool)
            in_bank[held] = False
            in_bank = in_bank.to(train_features.device)
            calib_scorer = _bank(per_view[:, in_bank].reshape(-1, *shape), k, max_bank, selection, bank_dtype)
            calibration, calib = "train-holdout", _scores(calib_scorer, per_view[0, ~in_bank])
            note = (f"no validation images: threshold from the last {holdout_fraction:.0%} of each class's training "
                    f"images ({len(held)}), held out of the bank while calibrating, then added back")
        else:
            calibration, calib = "none", torch.empty(0)
            note = "too few training images to hold any out: not calibrated, nothing is called unknown"
    calib = calib.double().cpu()
    if len(calib):
        threshold = float(torch.quantile(calib, keep))
        if len(calib) < 20:
            note = (note + "; " if note else "") + f"only {len(calib)} calibration images: the threshold is rough"
    else:
        threshold = UNCALIBRATED_THRESHOLD
    if augmented is not None and len(augmented) and len(calib):
        floor = float(torch.quantile(_scores(scorer, augmented).double().cpu(), keep))
        if floor > threshold:
            note = (note + "; " if note else "") + (
                f"threshold raised from {threshold:.4f} to {floor:.4f}, where {keep:.0%} of {len(augmented)} "
                "augmented views of training images stay (live frames differ from the saved images by as much)")
            threshold = floor
    unknown = int((calib > threshold).sum())
    report = NoveltyReport(
        k=scorer.k,
        threshold=threshold,
        keep=keep,
        bank_size=int(scorer.bank.shape[0]),
        bank_candidates=len(candidates),
        bank_selection="all" if len(candidates) <= max_bank else selection,
        bank_dtype=str(bank_dtype).replace("torch.", ""),
        feature_dim=scorer.feature_dim,
        calibration=calibration,
        calibration_images=len(calib),
        calibration_unknown=unknown,
        calibration_unknown_fraction=unknown / len(calib) if len(calib) else 0.0,
        calibration_novelty_median=float(calib.median()) if len(calib) else 0.0,
        note=note,
    )
    log.info("%s", report.summary())
    if note:
        log.info("novelty: %s (above the threshold a prediction is %r)", note, UNKNOWN_LABEL)
    return scorer, report, calib


def check_class_names(class_names: Sequence[str]) -> None:
    """Refuse class folders that break the label rules (`edge.core.labels.check_label`, the one checker capture and
    teach use too), e.g. one called like the reserved label the runtime shows for unfamiliar inputs."""
    for name in class_names:
        try:
            check_label(name)
        except EdgeError as e:
            raise EdgeError(f"class folder: {e}; rename the folder") from None


NEAR_COPY_QUANTILE = 0.1  # a val image nearer its bank than 90% of images unseen in time is a near-copy


@dataclass
class NoveltyFit:
    """A trained model's novelty score: the scorer (on the CPU), its report, and the val images' novelty."""

    scorer: NoveltyScorer
    report: NoveltyReport
    val_novelty: Tensor  # [M] float32, CPU, in val order
    seconds: float = 0.0
    near_copy_distance: float | None = None  # NEAR_COPY_QUANTILE of the time-holdout images' novelty

    @property
    def val_unknown(self) -> int:
        return int((self.val_novelty > self.report.threshold).sum())

    @property
    def val_near_copies(self) -> int | None:
        """Val images nearer a training image than 90% of images unseen in time (about 10% when val images
        come from other takes than the training images; most of them when both come from the same bursts)."""
        if self.near_copy_distance is None:
            return None
        return int((self.val_novelty < self.near_copy_distance).sum())

    def metrics(self) -> dict[str, Any]:
        """What metrics.json says about it."""
        r, n = self.report, len(self.val_novelty)
        near = self.val_near_copies
        return {
            "threshold": r.threshold, "keep": r.keep, "val_unknown": self.val_unknown,
            "val_unknown_fraction": self.val_unknown / n if n else 0.0, "val_images": n,
            "val_novelty_median": float(self.val_novelty.median()) if n else 0.0, "k": r.k, "bank_size": r.bank_size,
            "feature_dim": r.feature_dim, "calibration": r.calibration, "method": r.method, "note": r.note,
            "val_near_copies": near, "val_near_copy_fraction": None if near is None else near / max(n, 1),
            "seconds": round(self.seconds, 2),
        }

    def summary(self) -> str:
        n = len(self.val_novelty)
        return (f"novelty: {self.val_unknown} of {n} val images ({self.val_unknown / max(n, 1):.1%}) would be called "
                f"{UNKNOWN_LABEL!r} (threshold {self.report.threshold:.4f}, keep {self.report.keep:g}; bank "
                f"{self.report.bank_size} x {self.report.feature_dim})")

    def near_copy_summary(self) -> str | None:
        """One line on how many val images are near-copies of training images (None: no time holdout to tell)."""
        near, n = self.val_near_copies, len(self.val_novelty)
        if near is None or not n:
            return None
        line = (f"val near-copies: {near} of {n} val images ({near / n:.0%}) are closer to a training image "
                f"(novelty < {self.near_copy_distance:.4f}) than {1 - NEAR_COPY_QUANTILE:.0%} of images captured at "
                f"other moments")
        if near / n > 3 * NEAR_COPY_QUANTILE:
            line += ("; they come from the training images' bursts, so val accuracy overstates accuracy on new "
                     "scenes: validate on takes captured at other times (DATA/train and DATA/val folders)")
        return line


def calibrate(train_features: Tensor, val_features: Tensor, keep: float = DEFAULT_KEEP,
              train_labels: Sequence[int] | None = None, *, train_paths: Sequence[str] | None = None,
              val_paths: Sequence[str] | None = None, val_labels: Sequence[int] | None = None,
              class_names: Sequence[str] = (), augmented: Tensor | None = None) -> NoveltyFit:
    """fit_novelty on the clean training features (bank) -> NoveltyFit with the val images' novelty.

    With the images' paths (and train and val labels), the threshold comes from images unseen in time (capture
    times from the names or file times: train.bursts); else from the val images as they are. augmented:
    augmented views' features of training images, the threshold's floor (fit_novelty_detail).
    """
    holdout = None
    if train_paths is not None and val_paths is not None and train_labels is not None and val_labels is not None:
        holdout = holdout_groups(capture_times(train_paths), train_labels, capture_times(val_paths), val_labels,
                                 class_names)
    scorer, report, calib = fit_novelty_detail(train_features, val_features, keep, train_labels=train_labels,
                                               holdout=holdout, augmented=augmented)
    scorer = scorer.cpu()
    val = _scores(scorer, val_features.cpu()).float() if len(val_features) else torch.empty(0)
    near = None
    if report.calibration == "time-holdout" and len(calib):
        near = float(torch.quantile(calib, NEAR_COPY_QUANTILE))
    return NoveltyFit(scorer, report, val, near_copy_distance=near)


def fit_model_novelty(enabled: bool, keep: float, features: Callable[[], tuple[Tensor, Tensor]],
                      train_labels: Sequence[int] | None = None,
                      augmented: Callable[[], Tensor | None] = lambda: None, **paths: Any) -> NoveltyFit | None:
    """The trainer's hook: the trained model's novelty score from `features()` -> (clean train, val) backbone
    features of its final weights, logged in one line; None (also logged) when not `enabled` (--no-novelty).
    paths: calibrate's train_paths, val_paths, val_labels and class_names (calibration unseen in time);
    augmented() -> augmented views' features of (some) training images, the threshold's floor."""
    if not enabled:
        log.info("novelty: not fitted (--no-novelty); this model will never say %r for unfamiliar images",
                 UNKNOWN_LABEL)
        return None
    t = time.perf_counter()
    fit = calibrate(*features(), keep=keep, train_labels=train_labels, augmented=augmented(), **paths)
    fit.seconds = time.perf_counter() - t
    line = fit.near_copy_summary()
    if line:
        log.info("%s", line)
    return fit
