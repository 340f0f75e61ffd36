"""Transfer learning: head-only on cached features, full fine-tune, or both (two-stage).

Head mode runs the frozen backbone once per image view: features of a clean view plus `cache_views - 1` augmented
views are cached and the head trains on that cache; with `cache_views` 1, one pass per image, augmented in feature
space instead (noise and dropout, fresh at every pass). The final evaluation reuses the cached val features.
Fine-tuning trains every layer, the backbone at a lower learning rate, with AMP on CUDA.
Each stage is described by a `Stage` (what to train, on which batches) and run by the one `fit_stage` loop:
AdamW, a per-step warm-up/cosine schedule, keep the best epoch by validation accuracy, stop early when it stops
improving, and checkpoint to last.pt for `--resume`. After training, the model's novelty score is fitted on the
clean training and val features of the final weights (train.novelty) and stored in model.pt.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge.core.devices import torch_device
from edge.core.errors import EdgeError
from edge.core.fsutil import atomic_write_text, ensure_writable_dir
from edge.core.metadata import ModelMeta, save_checkpoint
from edge.core.preprocess import PreprocessSpec
from edge.core.registry import ArchSpec, create_model, get_arch
from edge.core.threads import ThreadPolicy

from .config import FINETUNE_LR, HEAD_LR, TrainConfig
from .dataset import DatasetInfo, InMemoryImages, eval_batch, load_samples, scan_dataset
from .distributed import DistContext
from .engine import (
    EarlyStopper,
    Evaluation,
    TensorBatches,
    autocast,
    evaluate,
    make_grad_scaler,
    train_one_epoch,
    warmup_cosine,
)
from .novelty import check_class_names, fit_model_novelty
from .presets import EvalTransform, train_transform
from .progress import Progress, read_resume, save_last
from .report import classification_metrics, mistakes_from, plot_confusion_matrix, plot_mistakes, plot_training_curves

log = logging.getLogger(__name__)

HEAD_EVAL_BATCH = 4096  # cached features are small: evaluate the head in few, large batches
# head mode's augmentation in feature space (CachedFeaturesHead), and how many passes over the cache make an epoch:
# one clean view per image, each pass with fresh noise, takes the steps the 4-view cache did at a quarter of the
# backbone passes, at the same or better val accuracy (benchmarks/bench_train.py)
FEATURE_NOISE = 0.5
FEATURE_DROPOUT = 0.3
FEATURE_PASSES = 4


@dataclass
class TrainResult:
    output: Path
    metrics: dict[str, Any]
    model: nn.Module
    meta: ModelMeta


def default_batch_size(device: torch.device, arch: str) -> int:
    """Memory-aware default: Jetson Nano-class devices (<= 4 GiB shared) get small batches."""
    if device.type == "cuda":
        total_gib = torch.cuda.get_device_properties(device).total_memory / 2**30
        if total_gib <= 4.5:
            return 8 if arch == "alexnet" else 16
        if total_gib <= 8.5:
            return 32
        return 64
    return 32


@dataclass
class TrainRun:
    """Everything the stages share: the settings, the model, the decoded data and where outputs go."""

    cfg: TrainConfig
    arch: ArchSpec
    info: DatasetInfo
    device: torch.device
    batch_size: int  # this process's: the global --batch-size split across torchrun's processes
    model: nn.Module
    out: Path
    train_images: list
    train_targets: list[int]
    val_x: torch.Tensor
    val_y: torch.Tensor
    no_bar: bool | None  # tqdm's `disable`: None = bars on a terminal only
    feature_seconds: float = 0.0  # head stage: time spent caching backbone features
    dist: DistContext = field(default_factory=DistContext)  # torchrun's process group, or a single process
    clean_features: tuple[torch.Tensor, torch.Tensor] | None = None  # head stage: (clean train, val) features
    threads: ThreadPolicy = field(default_factory=ThreadPolicy)  # CPU threads: --threads, or the free cores

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.dist.world_size

    @property
    def spec(self) -> PreprocessSpec:
        return self.arch.preprocess


@dataclass
class Stage:
    """One training stage: which module learns which parameters, on which batches, and how."""

    name: str
    epochs: int
    model: nn.Module  # what train_one_epoch / evaluate call
    param_groups: list[dict[str, Any]]  # AdamW groups with their peak learning rate
    train_batches: Iterable  # re-iterable, one pass per epoch, with len()
    val_batches: Iterable
    warmup: bool  # linear LR warm-up over the first epoch (at most) before the cosine decay
    amp: bool  # float16 autocast + grad scaling on CUDA
    slow_epochs: bool  # long enough for a progress bar and a last.pt after each (else: at the stage's end)
    oom_hint: str = ""


# ---------------------------------------------------------------------------------------------- stages

class CachedFeaturesHead(nn.Module):
    """The classifier head alone, applied to cached (float16) backbone features.

    `scale` (per-feature standard deviations of the cache) turns on augmentation in feature space while training:
    Gaussian noise of FEATURE_NOISE x scale, then dropout of FEATURE_DROPOUT, drawn afresh for every batch, so
    each pass over one cached view sees a different sample (what augmented views through the backbone cost a
    full pass each for)."""

    def __init__(self, model: nn.Module, arch: ArchSpec, scale: torch.Tensor | None = None):
        super().__init__()
        self.head = model.get_submodule(arch.head_path)
        self._logits: Callable[[torch.Tensor], torch.Tensor] = lambda f: arch.head(model, f)
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        f = features.float()
        if self.training and self.scale is not None:
            f = f + torch.randn_like(f) * (FEATURE_NOISE * self.scale)
            f = nn.functional.dropout(f, FEATURE_DROPOUT)
        return self._logits(f)


def extract_features(job: TrainRun, batches: Iterable[torch.Tensor], n_batches: int, desc: str) -> torch.Tensor:
    """Run the frozen backbone once over `batches` of images; float16 features (half the cache, same accuracy)."""
    from tqdm import tqdm

    model = job.model
    # channels_last: about 1.5x faster convolutions on CPU (and for cuDNN with AMP)
    model.to(memory_format=torch.channels_last)
    feats = []
    with torch.inference_mode(), autocast(job.device):
        for x in tqdm(batches, total=n_batches, desc=desc, unit="batch", disable=job.no_bar, leave=False):
            job.threads.refresh()  # follow a load that starts or stops midway
            x = x.to(job.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            feats.append(job.arch.features(model, x).to(torch.float16).contiguous())
    model.to(memory_format=torch.contiguous_format)
    return torch.cat(feats)


def head_stage(job: TrainRun, epochs: int) -> Stage:
    """Freeze the backbone and cache its features of 1 clean + (cache_views - 1) augmented views per image."""
    cfg, bs = job.cfg, job.batch_size
    job.model.eval()
    job.model.requires_grad_(False)
    t = time.perf_counter()
    clean, augment = EvalTransform(job.spec), train_transform(job.spec, cfg.augment)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed + job.dist.rank)  # the augmented views' randomness (each process its own)
    # each process extracts its share of the images; the gathered cache is in the single-process order
    dist, images = job.dist, job.dist.shard(job.train_images)
    n_batches = len(range(0, len(images), bs))
    views = []
    for v in range(cfg.cache_views):
        tf = clean if v == 0 else augment
        batches = (torch.stack([tf(img) for img in images[i:i + bs]]) for i in range(0, len(images), bs))
        views.append(dist.gather_rows(
            extract_features(job, batches, n_batches, f"features view {v + 1}/{cfg.cache_views}")))
    # one view (the default): FEATURE_PASSES passes per epoch over it, augmented in feature space; more views: the
    # former recipe, augmented views through the backbone and no feature-space augmentation
    in_features = cfg.cache_views == 1 and len(views[0]) > 1
    passes = FEATURE_PASSES if in_features else 1
    train_f = torch.cat(views * passes)
    train_y = torch.tensor(job.train_targets * cfg.cache_views * passes, device=job.device)
    head = CachedFeaturesHead(job.model, job.arch, scale=views[0].float().std(0) if in_features else None)
    head.requires_grad_(True)
    val_x = dist.shard(job.val_x)
    val_f = dist.gather_rows(extract_features(job, (val_x[i:i + bs] for i in range(0, len(val_x), bs)),
                                              len(range(0, len(val_x), bs)), "features val"))
    job.clean_features = (views[0], val_f)  # the frozen backbone's: what the novelty bank is made of
    job.feature_seconds = dt = time.perf_counter() - t
    n = len(job.train_images)
    log.info("cached features of %d train images x %d views + %d val images in %.1fs (%.0f img/s)",
             n, cfg.cache_views, len(val_f), dt, (n * cfg.cache_views + len(val_f)) / max(dt, 1e-9))
    return Stage(
        "head", epochs, head, [{"params": list(head.parameters()), "lr": cfg.lr or HEAD_LR}],
        TensorBatches(train_f, train_y, bs, shuffle, dist.rank, dist.world_size),
        TensorBatches(dist.shard(val_f), dist.shard(job.val_y), HEAD_EVAL_BATCH),
        # head epochs take milliseconds: one resume point when the stage ends is enough
        warmup=False, amp=False, slow_epochs=False,
    )


def finetune_stage(job: TrainRun, epochs: int) -> Stage:
    """Train every layer on augmented images, the backbone at lr * backbone_lr_factor."""
    cfg, bs, cuda = job.cfg, job.batch_size, job.device.type == "cuda"
    job.model.requires_grad_(True)
    head = job.model.get_submodule(job.arch.head_path)
    head_ids = {id(p) for p in head.parameters()}
    backbone = [p for p in job.model.parameters() if id(p) not in head_ids]
    lr = cfg.lr or FINETUNE_LR
    ds = InMemoryImages(job.train_images, job.train_targets, train_transform(job.spec, cfg.augment))
    workers = cfg.workers if cfg.workers is not None else (min(4, (os.cpu_count() or 2) - 1) if cuda else 0)
    # the same global batches whatever the number of processes (each takes its share of every one)
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=job.dist.batch_sampler(len(ds), bs, seed=cfg.seed + 1), num_workers=workers,
        pin_memory=cuda, persistent_workers=workers > 0,
    )
    return Stage(
        "finetune", epochs, job.model,
        [{"params": backbone, "lr": lr * cfg.backbone_lr_factor}, {"params": list(head.parameters()), "lr": lr}],
        loader, TensorBatches(job.dist.shard(job.val_x), job.dist.shard(job.val_y), bs),
        warmup=True, amp=True, slow_epochs=True, oom_hint=" or --mode head",
    )


STAGES: dict[str, Callable[[TrainRun, int], Stage]] = {"head": head_stage, "finetune": finetune_stage}


# ---------------------------------------------------------------------------------------------- the loop

def _fmt_epoch(stats: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {stats['epoch']}/{epochs} [{stats['stage']}] loss {stats['train_loss']:.4f} "
        f"train_acc {stats['train_accuracy']:.3f} val_loss {stats['val_loss']:.4f} val_acc {stats['val_accuracy']:.3f} "
        f"{stats['images_per_s']:.0f} img/s {stats['seconds']:.1f}s"
    )


def fit_stage(job: TrainRun, stage: Stage, first: int, progress: Progress, resume: dict[str, Any] | None) -> None:
    """Epochs `first`..stage.epochs of `stage`; `resume`: this stage's last.pt, to continue where it stopped."""
    cuda = job.device.type == "cuda"
    optimizer = torch.optim.AdamW(stage.param_groups, weight_decay=job.cfg.weight_decay)
    scaler = make_grad_scaler(enabled=stage.amp and cuda)
    if resume and "optimizer" in resume:
        optimizer.load_state_dict(resume["optimizer"])
        if resume.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(resume["scaler"])
    # the schedule is a function of the step, rebuilt here: a resume with more --epochs stretches it
    steps = len(stage.train_batches)
    total, done = stage.epochs * steps, (first - 1) * steps
    warmup = min(steps, max(1, total // 10)) if stage.warmup else 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s + done, total, warmup))
    progress.stopper.stale = 0
    dist = job.dist
    trained = dist.wrap(stage.model)  # DistributedDataParallel under torchrun
    for epoch in range(first, stage.epochs + 1):
        dist.set_epoch(stage.train_batches, epoch)
        bar = None
        if stage.slow_epochs:
            from tqdm import tqdm

            bar = functools.partial(tqdm, desc=f"epoch {epoch}/{stage.epochs} [{stage.name}]", unit="batch",
                                    disable=job.no_bar, leave=False)
        t = time.perf_counter()
        job.threads.refresh()
        try:
            train = train_one_epoch(trained, optimizer, scheduler, stage.train_batches, job.device, scaler, bar)
        except torch.cuda.OutOfMemoryError as e:
            raise EdgeError(f"out of GPU memory at --batch-size {job.global_batch}; retry with --batch-size "
                            f"{max(job.dist.world_size, job.global_batch // 2)}{stage.oom_hint}") from e
        train = dist.reduce_train_stats(train)
        dist.sync_buffers(stage.model)  # evaluate and keep rank 0's BatchNorm statistics everywhere
        val = dist.gather_evaluation(evaluate(stage.model, stage.val_batches, job.device, amp=stage.amp))
        secs = time.perf_counter() - t
        stats = {"stage": stage.name, "epoch": epoch, "train_loss": train["train_loss"],
                 "train_accuracy": train["train_accuracy"], "val_loss": val.loss, "val_accuracy": val.accuracy,
                 "images_per_s": train["images"] / max(secs, 1e-9), "seconds": secs}
        progress.history.append(stats)
        improved = progress.stopper.update(val.accuracy, val.loss)
        if improved:
            progress.best_state = {k: v.detach().to("cpu", copy=True) for k, v in job.model.state_dict().items()}
            progress.best_epoch = stats
        log.info(_fmt_epoch(stats, stage.epochs) + ("  *best" if improved else ""))
        stop = dist.broadcast(progress.stopper.should_stop and epoch < stage.epochs)  # rank 0 decides
        if stage.slow_epochs or stop or epoch == stage.epochs:
            save_last(job, progress, stage.name, epoch, stop, optimizer, scaler)
        if stop:
            log.info("early stop: val accuracy has not improved for %d epochs", progress.stopper.patience)
            break


# ---------------------------------------------------------------------------------------------- the job

def chance_warning(accuracy: float, val_counts: dict[str, int]) -> str | None:
    """A phrase when `accuracy` is no better than always answering the largest val class, else None."""
    total = sum(val_counts.values())
    if not total:
        return None
    chance = max(val_counts.values()) / total
    if accuracy > chance + 1e-9:
        return None
    return (f"val accuracy {accuracy:.3f} is no better than chance ({chance:.3f}, always answering the largest "
            f"class): the model learned nothing usable; check that each class's images show what defines it")

def scan_checked(cfg: TrainConfig) -> DatasetInfo:
    """The dataset's files and classes, refusing a class named like the runtime's `unknown` label."""
    info = scan_dataset(cfg.data, cfg.val_fraction, cfg.seed)
    check_class_names(info.classes)
    return info


def prepare(cfg: TrainConfig, progress_bars: bool | None) -> tuple[TrainRun, dict[str, Any] | None]:
    """Scan and decode the dataset, build the model (fresh, from --weights, or from last.pt) and the output dir."""
    # under torchrun, rank 0 reads what all need (and fails alone, with one message)
    dist = DistContext.current()
    info = dist.on_main(lambda: scan_checked(cfg))
    for line in info.summary_lines():
        log.info(line)
    device = dist.train_device(torch_device(cfg.device))
    global_batch = cfg.batch_size or default_batch_size(device, cfg.arch)
    batch_size = dist.on_main(lambda: dist.split_batch(global_batch))  # this process's share (one error line)
    resume = dist.on_main(lambda: read_resume(cfg, info.classes)) if cfg.resume else None
    model = create_model(cfg.arch, len(info.classes), "none" if resume else cfg.weights).to(device)
    report = getattr(model, "load_report", None)
    if report is not None:
        log.info(report.summary())
    out = dist.on_main(lambda: ensure_writable_dir(cfg.output))
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    log.info("device %s, batch size %d, mode %s", device, batch_size * dist.world_size, cfg.mode)
    if dist.enabled:
        log.info("data-parallel over %d processes: %d images per step (%d each)", dist.world_size,
                 batch_size * dist.world_size, batch_size)
    t = time.perf_counter()
    arch = get_arch(cfg.arch)
    train_images, train_targets = load_samples(info.train)
    val_x = torch.from_numpy(eval_batch(info.val, arch.preprocess))
    val_y = torch.tensor([s.target for s in info.val])
    log.info("decoded %d train + %d val images in %.1fs", len(train_images), len(val_y), time.perf_counter() - t)
    no_bar = None if progress_bars is None else not progress_bars
    if not dist.is_main:
        no_bar = True  # rank 0's bars only
    job = TrainRun(cfg, arch, info, device, batch_size, model, out, train_images, train_targets, val_x, val_y, no_bar,
                   dist=dist, threads=ThreadPolicy(cfg.threads))
    log.info("CPU threads: %d (%s)", job.threads.refresh(), "--threads" if cfg.threads else "the free cores")
    return job, resume


def train_model(cfg: TrainConfig, progress: bool | None = None) -> TrainResult:
    """Train as `cfg` says and write model.pt, labels.txt, metrics.json and confusion_matrix.png to cfg.output."""
    cfg.validate()
    t0 = time.perf_counter()
    job, resume = prepare(cfg, progress)
    plan = cfg.stages
    state = Progress(EarlyStopper(cfg.patience))
    start, first_epoch = 0, 1
    if resume:
        job.model.load_state_dict(resume["model"])
        state = Progress.from_checkpoint(resume, cfg.patience)
        start = [name for name, _ in plan].index(resume["stage"])
        first_epoch = int(resume["epoch"]) + 1
        if resume.get("stopped_early"):  # that stage is over; go on with the next one, if any
            start, first_epoch = start + 1, 1
        if start < len(plan):
            log.info("resuming the %s stage at epoch %d", plan[start][0], first_epoch)
    for i, (name, epochs) in enumerate(plan[start:], start):
        first = first_epoch if i == start else 1
        if first > epochs:
            continue
        if first == 1 and i > 0 and state.best_state is not None:
            job.model.load_state_dict(state.best_state)  # fine-tune from the best head, not the last head epoch
        stage = STAGES[name](job, epochs)
        fit_stage(job, stage, first, state, resume if resume and resume["stage"] == name else None)
        job.model.requires_grad_(True)
    return write_outputs(job, state, time.perf_counter() - t0)


def clean_features(job: TrainRun) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone features of the clean training images and of the val images, with the model's final weights:
    head mode's cache when the backbone never changed, else one more pass over both."""
    if job.clean_features is not None and job.cfg.mode == "head":
        return job.clean_features
    job.model.eval()
    bs, clean, images = job.batch_size, EvalTransform(job.spec), job.train_images
    batches = (torch.stack([clean(img) for img in images[i:i + bs]]) for i in range(0, len(images), bs))
    train_f = extract_features(job, batches, len(range(0, len(images), bs)), "features for novelty")
    val_f = extract_features(job, (job.val_x[i:i + bs] for i in range(0, len(job.val_x), bs)),
                             len(range(0, len(job.val_x), bs)), "features for novelty (val)")
    return train_f, val_f


def augmented_view(job: TrainRun, most: int = 256) -> torch.Tensor:
    """Backbone features of one augmented view of up to `most` training images (evenly spaced), final weights."""
    job.model.eval()
    images = job.train_images[::max(1, -(-len(job.train_images) // most))]
    tf, bs = train_transform(job.spec, job.cfg.augment), job.batch_size
    batches = (torch.stack([tf(img) for img in images[i:i + bs]]) for i in range(0, len(images), bs))
    return extract_features(job, batches, len(range(0, len(images), bs)), "augmented features for novelty")


def final_evaluation(job: TrainRun) -> Evaluation:
    """The val set under the final weights: in head mode the head over the cached val features (the backbone
    never changed), else the whole network over the val images."""
    dist = job.dist
    if job.clean_features is not None and job.cfg.mode == "head":
        head = CachedFeaturesHead(job.model, job.arch)
        return evaluate(head, TensorBatches(job.clean_features[1], job.val_y.to(job.device), HEAD_EVAL_BATCH),
                        job.device)
    return dist.gather_evaluation(
        evaluate(job.model, TensorBatches(dist.shard(job.val_x), dist.shard(job.val_y), job.batch_size), job.device))


def write_outputs(job: TrainRun, progress: Progress, seconds: float) -> TrainResult:
    """Evaluate the best epoch's weights, fit the novelty score and write model.pt, labels.txt, metrics.json,
    confusion_matrix.png, training_curves.png and mistakes.png."""
    cfg, info = job.cfg, job.info
    if progress.best_state is not None:
        job.model.load_state_dict(progress.best_state)
    dist = job.dist
    final = final_evaluation(job)
    metrics = classification_metrics(final.targets.tolist(), final.predictions, info.classes)
    metrics.update({
        "val_loss": final.loss,
        "best_epoch": progress.best_epoch,
        "epochs": progress.history,
        "seconds": round(seconds, 2),
        "feature_cache_seconds": round(job.feature_seconds, 2),
        "train_images": len(info.train),
        "val_images": len(info.val),
        "train_counts": info.counts("train"),
        "val_counts": info.counts("val"),
        "skipped_images": len(info.skipped),
        "warnings": list(info.warnings),
        "device": str(job.device),
        "world_size": dist.world_size,  # processes trained data-parallel (torchrun), sharing --batch-size
    })
    chance = chance_warning(metrics["val_accuracy"], info.counts("val"))
    if chance:
        metrics["warnings"].append(chance)
    training = {
        "data": str(Path(cfg.data).resolve()), "mode": cfg.mode, "weights": str(cfg.weights),
        "epochs": cfg.epochs, "finetune_epochs": cfg.finetune_epochs, "batch_size": job.global_batch,
        "lr": cfg.lr, "backbone_lr_factor": cfg.backbone_lr_factor, "seed": cfg.seed,
        "val_fraction": cfg.val_fraction, "cache_views": cfg.cache_views, "augment": cfg.augment.to_dict(),
    }
    novelty = fit_model_novelty(  # calibrated on images unseen in time (train.bursts), not on near-copies
        cfg.novelty, cfg.novelty_keep, lambda: clean_features(job), job.train_targets, lambda: augmented_view(job),
        train_paths=[s.path for s in info.train], val_paths=[s.path for s in info.val],
        val_labels=[s.target for s in info.val], class_names=info.classes)
    metrics["novelty"] = novelty.metrics() if novelty is not None else None
    training["novelty_keep"] = cfg.novelty_keep if novelty is not None else None
    meta = ModelMeta(
        arch=cfg.arch, class_names=list(info.classes), preprocess=job.spec,
        metrics={"val_accuracy": metrics["val_accuracy"], "val_loss": final.loss}, training=training,
        novelty=novelty.report.to_dict() if novelty is not None else None,
    )
    if not dist.is_main:  # rank 0 writes the files
        return TrainResult(job.out, metrics, job.model, meta)
    save_checkpoint(job.out / "model.pt", job.model.state_dict(), meta,
                    novelty_bank=novelty.scorer.bank if novelty is not None else None)
    atomic_write_text(job.out / "labels.txt", "\n".join(info.classes) + "\n")
    atomic_write_text(job.out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    title = f"{cfg.arch} val acc {metrics['val_accuracy']:.3f}"
    plot_confusion_matrix(metrics["confusion_matrix"], info.classes, job.out / "confusion_matrix.png", title)
    plot_training_curves(progress.history, job.out / "training_curves.png", title, progress.best_epoch)
    wrong = mistakes_from([s.path for s in info.val], final.targets.tolist(), final.logits, info.classes,
                          None if novelty is None else novelty.val_novelty.tolist())
    plot_mistakes(wrong, len(info.val), job.out / "mistakes.png", meta.novelty_threshold)
    log.info("val accuracy %.3f (best epoch %s) in %.1fs", metrics["val_accuracy"],
             (progress.best_epoch or {}).get("epoch"), seconds)
    if chance:
        log.warning("warning: %s", chance)
    log.info("wrote %s/{model.pt,labels.txt,metrics.json,confusion_matrix.png,training_curves.png,mistakes.png}",
             job.out)
    return TrainResult(job.out, metrics, job.model, meta)
