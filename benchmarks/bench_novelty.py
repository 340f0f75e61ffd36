"""Novelty score: does a model know what it does not know? kNN cosine distance vs max-softmax, per scenario.

    python benchmarks/bench_novelty.py [--arch efficientnet_lite0 ...] [--keep 0.95] [--views 4] [--cache DIR]

For every scenario of benchmarks/realdata.py and every arch (the EfficientNet-Lite family by default; those not in
the registry are skipped), ImageNet backbone features as head mode caches them (1 clean + views-1 augmented views
of each training image). For each score, one line: at the threshold calibrated on the val images (the `keep`
quantile), the fraction of test knowns that keep a real label (`kept`; `shifted`: the same images under a
lighting change), then per unknown group its AUROC against the test knowns and the fraction called unknown.
Scores:
- max-softmax: 1 - max probability of a logistic-regression head fit on the clean training features;
- knn k=K: train.novelty.fit_novelty with its defaults (bank = clean views); variants: every view in the bank,
  threshold from a training holdout instead of val (the no-val-set path);
then the bank cap: the same when the bank is cut to 1/2, 1/4, 1/8 by each selection (and k-means, random), and
an fp16 bank. Targets: AUROC >= 0.95, known kept >= 90%, unknown rejected >= 80% (left/right arrows are
near-novel: reported, not targeted).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.realdata import Scenario, all_scenarios, photo_library
from edge.core.novelty import NoveltyScorer, normalize_rows
from edge.core.preprocess import preprocess_image
from edge.core.registry import ARCHS, create_model, get_arch
from train.novelty import BANK_SELECTIONS, fit_novelty
from train.presets import AugmentSpec, train_transform

DEFAULT_ARCHS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


@dataclass
class Features:
    train: torch.Tensor  # [views * n, D], view-major
    train_labels: list[int]
    val: torch.Tensor
    test: torch.Tensor
    shifted: torch.Tensor  # test under a lighting change
    unknowns: dict[str, torch.Tensor]
    views: int


def extract(model, arch: str, images: list[np.ndarray], augment=None, batch: int = 32) -> torch.Tensor:
    from PIL import Image

    spec = get_arch(arch)
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            chunk = images[i:i + batch]
            if augment is None:
                x = torch.from_numpy(np.stack([preprocess_image(im, spec.preprocess, "RGB") for im in chunk]))
            else:
                x = torch.stack([augment(Image.fromarray(im)) for im in chunk])
            out.append(spec.features(model, x).float())
    return torch.cat(out)


def scenario_features(model, arch: str, s: Scenario, views: int, seed: int) -> Features:
    torch.manual_seed(seed)
    augment = train_transform(get_arch(arch).preprocess, AugmentSpec())
    train = [extract(model, arch, s.train)] + [extract(model, arch, s.train, augment) for _ in range(views - 1)]
    return Features(
        torch.cat(train), s.train_labels, extract(model, arch, s.val), extract(model, arch, s.test),
        extract(model, arch, s.shifted_test(seed)),
        {g: extract(model, arch, ims) for g, ims in s.unknowns.items()}, views,
    )


def cached_features(model, arch: str, scenarios: list[Scenario], views: int, seed: int, cache: Path | None):
    """Features of every scenario, from `cache` when it holds them for exactly these scenarios (CPU runs are slow)."""
    key = [arch, views, seed, *Features.__dataclass_fields__] + [s.summary() for s in scenarios]
    path = cache / f"novelty-features-{arch}-seed{seed}-views{views}.pt" if cache else None
    if path and path.exists():
        saved = torch.load(path, weights_only=True)
        if saved["key"] == key:
            return {name: Features(**f) for name, f in saved["features"].items()}
    feats = {s.name: scenario_features(model, arch, s, views, seed) for s in scenarios}
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"key": key, "features": {n: asdict(f) for n, f in feats.items()}}, path)
    return feats


@dataclass
class Rates:
    kept: float  # test knowns at or below the threshold
    kept_shifted: float  # the same under a lighting change
    groups: dict[str, tuple[float, float]]  # unknown group -> (AUROC vs test knowns, fraction above the threshold)

    def line(self) -> str:
        groups = " | ".join(f"{g} {a:.3f} {r:4.2f}" for g, (a, r) in self.groups.items())
        return f"kept {self.kept:4.2f} shifted {self.kept_shifted:4.2f} | {groups}"


def rates(f: Features, score, threshold: float) -> Rates:
    from sklearn.metrics import roc_auc_score

    known = score(f.test)
    groups = {}
    for g, u in f.unknowns.items():
        unknown = score(u)
        y = np.r_[np.zeros(len(known)), np.ones(len(unknown))]
        groups[g] = (roc_auc_score(y, np.r_[known, unknown]), float(np.mean(unknown > threshold)))
    return Rates(float(np.mean(known <= threshold)), float(np.mean(score(f.shifted) <= threshold)), groups)


def max_softmax(f: Features, keep: float):
    from sklearn.linear_model import LogisticRegression

    n = len(f.train) // f.views
    clf = LogisticRegression(max_iter=3000).fit(f.train[:n].numpy(), f.train_labels)

    def score(x: torch.Tensor) -> np.ndarray:
        return 1.0 - clf.predict_proba(x.numpy()).max(1)

    return score, float(np.quantile(score(f.val), keep))


def knn(f: Features, keep: float, k: int, holdout: bool = False, **kw):
    scorer, report = fit_novelty(f.train, None if holdout else f.val, keep, k, views=f.views,
                                 train_labels=f.train_labels, **kw)

    def score(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return scorer(x).double().numpy()

    return score, report.threshold, scorer


def compare_scores(name: str, f: Features, keep: float) -> None:
    def show(method: str, score, threshold: float) -> None:
        print(f"{name:9s} {method:22s} {rates(f, score, threshold).line()}")

    show("max-softmax (logreg)", *max_softmax(f, keep))
    for k in (1, 3, 5):
        show(f"knn k={k}", *knn(f, keep, k)[:2])
    show(f"knn k=1 bank views={f.views}", *knn(f, keep, 1, bank_views=f.views)[:2])
    show("knn k=1 train-holdout", *knn(f, keep, 1, holdout=True)[:2])


def kmeans_scorer(rows: torch.Tensor, size: int, k: int, seed: int) -> NoveltyScorer:
    """Spherical k-means centroids as the bank (a candidate selection, measured here only)."""
    from sklearn.cluster import KMeans

    centres = KMeans(size, n_init=1, random_state=seed).fit(normalize_rows(rows).numpy()).cluster_centers_
    return NoveltyScorer(torch.from_numpy(centres).float(), k)


def bank_cap(name: str, f: Features, keep: float, k: int, near_novel: tuple[str, ...], seed: int,
             bank_views: int, fractions=(2, 4, 8)) -> None:
    rows = f.train[:len(f.train) // f.views * bank_views]
    total = len(rows)
    far = [g for g in f.unknowns if g not in near_novel]

    def show(label: str, scorer: NoveltyScorer) -> None:
        score = lambda x: scorer(x).double().numpy()  # noqa: E731 - a one-line adapter, named for the two calls below
        r = rates(f, score, float(np.quantile(score(f.val), keep)))
        rejected = min(r.groups[g][1] for g in far)
        aurocs = " ".join(f"{r.groups[g][0]:.3f}" for g in f.unknowns)
        print(f"{name:9s} views={bank_views} {label:16s} {scorer.bank_bytes / 1e6:6.2f} MB  AUROC {aurocs}  "
              f"kept {r.kept:.2f} shifted {r.kept_shifted:.2f}  min rejected (far) {rejected:.2f}")

    with torch.no_grad():
        show(f"all {total}", knn(f, keep, k, bank_views=bank_views)[2])
        show(f"all {total} fp16", knn(f, keep, k, bank_views=bank_views, bank_dtype=torch.float16)[2])
        for div in fractions:
            size = total // div
            for sel in BANK_SELECTIONS:
                show(f"{sel} {size}", knn(f, keep, k, bank_views=bank_views, max_bank=size, selection=sel)[2])
            idx = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(total, size, replace=False)))
            show(f"random {size}", NoveltyScorer(rows[idx], k))
            show(f"kmeans {size}", kmeans_scorer(rows, size, k, seed))


def selection_cost(dim: int, n: int = 8192, cap: int = 2048) -> None:
    feats = normalize_rows(torch.randn(n, dim).relu())
    from train.novelty import select_bank

    for sel in BANK_SELECTIONS:
        t = time.perf_counter()
        select_bank(feats, cap, sel)
        print(f"select_bank {sel:9s} {n} -> {cap} rows of D={dim}: {time.perf_counter() - t:.2f} s (CPU)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=list(DEFAULT_ARCHS))
    p.add_argument("--keep", type=float, default=0.95)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--k-cap", type=int, default=1, help="k used in the bank-cap table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-per-photo", type=int, default=16, help="training crops per known photo")
    p.add_argument("--train-per-arrow-class", type=int, default=60)
    p.add_argument("--only", nargs="+", metavar="SCENARIO", help="run only these scenarios")
    p.add_argument("--cap-only", action="store_true", help="only the bank-cap table")
    p.add_argument("--cap-views", type=int, default=1, help="views in the bank for the bank-cap table")
    p.add_argument("--cache", type=Path, default=None, metavar="DIR", help="keep extracted features here")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    photos = photo_library()
    scenarios = [s for s in all_scenarios(a.seed, photos, a.train_per_photo, a.train_per_arrow_class)
                 if not a.only or s.name in a.only]
    for s in scenarios:
        print(s.summary())
    for arch in a.arch:
        if arch not in ARCHS:
            print(f"\n== {arch}: not in the registry here, skipped")
            continue
        try:
            model = create_model(arch, 1000, "imagenet").eval()
        except Exception as e:  # noqa: BLE001 - weights may need a download on this machine
            print(f"\n== {arch}: no ImageNet weights here ({e}), skipped")
            continue
        t = time.perf_counter()
        feats = cached_features(model, arch, scenarios, a.views, a.seed, a.cache)
        dim = next(iter(feats.values())).train.shape[1]
        print(f"\n== {arch} (D={dim}), features in {time.perf_counter() - t:.0f} s; keep {a.keep}, {a.views} views")
        print("per unknown group: AUROC (test knowns vs the group), fraction above the threshold; kept = test knowns "
              "at or below it, shifted = the same under a lighting change")
        for s in scenarios if not a.cap_only else []:
            compare_scores(s.name, feats[s.name], a.keep)
        print(f"\nbank cap (k={a.k_cap}, {a.cap_views} view(s) per image); AUROC per unknown group in the order above; "
              "MB = rows x D x dtype size")
        for s in scenarios:
            bank_cap(s.name, feats[s.name], a.keep, a.k_cap, s.near_novel, a.seed, a.cap_views)
        for cap in (1024, 2048, 4096):
            print(f"bank {cap} x {dim}: {cap * dim * 4 / 1e6:.1f} MB float32, {cap * dim * 2 / 1e6:.1f} MB float16")
        selection_cost(dim)


if __name__ == "__main__":
    main()
