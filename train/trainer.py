"""Transfer learning: head-only on cached features, full fine-tune, or both (two-stage).

Head mode never runs the frozen backbone more than once per image view: its features are computed once (a clean
view plus a few augmented views) and the head trains on that cache, so a few hundred images take seconds on a
2-core CPU. Fine-tuning trains every layer, the backbone at a lower learning rate, with AMP on CUDA.
Both keep the best epoch by validation accuracy, stop early when it stops improving, and can resume.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from edge.core.errors import EdgeError
from edge.core.files import load_torch_file
from edge.core.fsutil import atomic_write_bytes, atomic_write_text, ensure_writable_dir
from edge.core.metadata import ModelMeta, save_checkpoint
from edge.core.preprocess import AugmentSpec, train_transform
from edge.core.registry import ArchSpec, create_model, get_arch

from .dataset import DatasetInfo, InMemoryImages, eval_batch, load_samples, scan_dataset
from .report import classification_metrics, plot_confusion_matrix

log = logging.getLogger(__name__)

MODES = ("head", "finetune", "two-stage")
LAST_CHECKPOINT = "last.pt"
HEAD_LR = 1e-2
FINETUNE_LR = 1e-3


@dataclass
class TrainConfig:
    data: Path
    output: Path = Path("runs/model")
    arch: str = "squeezenet1_1"
    weights: str = "imagenet"
    mode: str = "head"
    epochs: int = 20
    finetune_epochs: int | None = None  # two-stage: epochs of the finetune stage (default: same as epochs)
    batch_size: int | None = None  # None: memory-aware default
    lr: float | None = None  # None: 1e-2 for the head stage (linear probe on cached features), 1e-3 for finetune
    backbone_lr_factor: float = 0.1  # finetune: backbone LR = lr * factor
    weight_decay: float = 1e-4
    device: str = "auto"
    val_fraction: float = 0.2
    seed: int = 0
    patience: int = 5  # early stop after this many epochs without a better val accuracy
    cache_views: int = 4  # head mode: 1 clean + (n-1) augmented views of each training image
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    workers: int | None = None
    resume: bool = False

    def validate(self) -> None:
        get_arch(self.arch)
        if self.mode not in MODES:
            raise EdgeError(f"unknown --mode {self.mode!r}; choose one of: {', '.join(MODES)}")
        if self.epochs < 1 or (self.finetune_epochs is not None and self.finetune_epochs < 1):
            raise EdgeError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise EdgeError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise EdgeError(f"--lr must be a positive number, got {self.lr}")
        if self.cache_views < 1:
            raise EdgeError(f"--cache-views must be >= 1, got {self.cache_views}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise EdgeError(f"unknown --device {self.device!r}; choose auto, cpu or cuda")


@dataclass
class TrainResult:
    output: Path
    metrics: dict[str, Any]
    model: nn.Module
    meta: ModelMeta


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EdgeError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


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


class _EarlyStopper:
    def __init__(self, patience: int, best: float = -1.0, best_loss: float = math.inf):
        self.patience, self.best, self.best_loss, self.stale = patience, best, best_loss, 0

    def update(self, acc: float, loss: float) -> bool:
        """True when this epoch is the best so far (higher accuracy, or equal accuracy with lower loss)."""
        if acc > self.best + 1e-9 or (abs(acc - self.best) <= 1e-9 and loss < self.best_loss):
            self.best, self.best_loss, self.stale = acc, loss, 0
            return True
        self.stale += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.stale >= self.patience


def _fmt_epoch(stage: str, epoch: int, epochs: int, stats: dict[str, float]) -> str:
    return (
        f"epoch {epoch}/{epochs} [{stage}] loss {stats['train_loss']:.4f} train_acc {stats['train_accuracy']:.3f} "
        f"val_loss {stats['val_loss']:.4f} val_acc {stats['val_accuracy']:.3f} "
        f"{stats['images_per_s']:.0f} img/s {stats['seconds']:.1f}s"
    )


class Trainer:
    """Runs one training job described by a TrainConfig."""

    def __init__(self, cfg: TrainConfig, progress: bool | None = None):
        cfg.validate()
        self.cfg = cfg
        self.progress = progress
        self.arch: ArchSpec = get_arch(cfg.arch)
        self.spec = self.arch.preprocess
        self.history: list[dict[str, Any]] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch: dict[str, Any] | None = None

    # ---------------------------------------------------------------- setup
    def prepare(self) -> None:
        cfg = self.cfg
        self.info: DatasetInfo = scan_dataset(cfg.data, cfg.val_fraction, cfg.seed)
        for line in self.info.summary_lines():
            log.info(line)
        self.device = resolve_device(cfg.device)
        self.batch_size = cfg.batch_size or default_batch_size(self.device, cfg.arch)
        self.resume_state = self._read_resume() if cfg.resume else None
        weights = "none" if self.resume_state else cfg.weights
        self.model = create_model(cfg.arch, len(self.info.classes), weights).to(self.device)
        report = getattr(self.model, "load_report", None)
        if report is not None:
            log.info(report.summary())
        self.out = ensure_writable_dir(cfg.output)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        log.info("device %s, batch size %d, mode %s", self.device, self.batch_size, cfg.mode)
        t = time.perf_counter()
        self.train_images, self.train_targets = load_samples(self.info.train)
        self.val_x = torch.from_numpy(eval_batch(self.info.val, self.spec))
        self.val_y = torch.tensor([s.target for s in self.info.val])
        log.info("decoded %d train + %d val images in %.1fs", len(self.train_images), len(self.val_y), time.perf_counter() - t)

    def _read_resume(self) -> dict[str, Any]:
        path = self.cfg.output / LAST_CHECKPOINT
        if not path.is_file():
            raise EdgeError(f"nothing to resume: {str(path)!r} not found; run without --resume first")
        state = load_torch_file(path, "checkpoint to resume")
        if state.get("arch") != self.cfg.arch or state.get("class_names") != self.info.classes:
            raise EdgeError(
                f"{str(path)!r} is for arch {state.get('arch')!r} with classes {state.get('class_names')}, "
                f"not {self.cfg.arch!r} with {self.info.classes}; resume with the same --arch and dataset"
            )
        return state

    # ---------------------------------------------------------------- shared loop
    def _stage_plan(self) -> list[tuple[str, int]]:
        cfg = self.cfg
        if cfg.mode == "head":
            return [("head", cfg.epochs)]
        if cfg.mode == "finetune":
            return [("finetune", cfg.epochs)]
        return [("head", cfg.epochs), ("finetune", cfg.finetune_epochs or cfg.epochs)]

    def run(self) -> TrainResult:
        t0 = time.perf_counter()
        self.prepare()
        plan = self._stage_plan()
        start_stage, start_epoch = 0, 1
        rs = self.resume_state
        if rs:
            self.model.load_state_dict(rs["model"])
            self.history = json.loads(rs["history"])
            start_stage = [s for s, _ in plan].index(rs["stage"])
            start_epoch = int(rs["epoch"]) + 1
            log.info("resuming %s stage at epoch %d", rs["stage"], start_epoch)
        stopper = _EarlyStopper(self.cfg.patience)
        if rs:
            stopper.best, stopper.best_loss = float(rs["best_acc"]), float(rs["best_loss"])
            self.best_state = {k: v.clone() for k, v in rs["best_model"].items()}
            self.best_epoch = json.loads(rs["best_epoch"])
        for i, (stage, epochs) in enumerate(plan):
            if i < start_stage:
                continue
            first = start_epoch if i == start_stage else 1
            if first > epochs:
                continue
            if stage == "finetune" and self.best_state is not None:
                # start fine-tuning from the best head, not from the last head epoch
                self.model.load_state_dict(self.best_state)
            stopper.stale = 0
            runner = self._head_stage if stage == "head" else self._finetune_stage
            runner(epochs, first, stopper, rs if (rs and i == start_stage) else None)
        return self._finish(time.perf_counter() - t0)

    def _after_epoch(self, stage: str, epoch: int, epochs: int, stats: dict[str, float], stopper: _EarlyStopper,
                     resume_payload: Callable[[], dict[str, Any]] | None) -> bool:
        stats = {"stage": stage, "epoch": epoch, **stats}
        self.history.append(stats)
        improved = stopper.update(stats["val_accuracy"], stats["val_loss"])
        if improved:
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
            self.best_epoch = stats
        log.info(_fmt_epoch(stage, epoch, epochs, stats) + ("  *best" if improved else ""))
        if resume_payload is not None:
            self._save_last(stage, epoch, stopper, resume_payload())
        if stopper.should_stop and epoch < epochs:
            log.info("early stop: val accuracy has not improved for %d epochs", stopper.patience)
            return True
        return False

    def _save_last(self, stage: str, epoch: int, stopper: _EarlyStopper, extra: dict[str, Any]) -> None:
        import io

        buf = io.BytesIO()
        torch.save({
            "arch": self.cfg.arch, "class_names": self.info.classes, "stage": stage, "epoch": epoch,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "best_model": self.best_state, "best_acc": stopper.best, "best_loss": stopper.best_loss,
            "best_epoch": json.dumps(self.best_epoch), "history": json.dumps(self.history), **extra,
        }, buf)
        atomic_write_bytes(self.out / LAST_CHECKPOINT, buf.getvalue())

    def _evaluate_logits(self, logits_fn: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
                         batch: int) -> tuple[torch.Tensor, float]:
        outs = []
        with torch.inference_mode():
            for i in range(0, len(inputs), batch):
                outs.append(logits_fn(inputs[i:i + batch].to(self.device)).float().cpu())
        logits = torch.cat(outs)
        loss = nn.functional.cross_entropy(logits, self.val_y).item()
        return logits, loss

    def _val_stats(self, logits: torch.Tensor, loss: float) -> dict[str, float]:
        acc = (logits.argmax(1) == self.val_y).float().mean().item()
        return {"val_loss": loss, "val_accuracy": acc}

    # ---------------------------------------------------------------- head mode on cached features
    def _extract(self, inputs: Callable[[int], torch.Tensor], n: int, desc: str) -> torch.Tensor:
        from tqdm import tqdm

        feats = []
        # channels_last: about 1.5x faster convolutions on CPU (and for cuDNN with AMP)
        self.model.to(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            for i in tqdm(range(0, n, self.batch_size), desc=desc, unit="batch", disable=self._no_bar(), leave=False):
                x = inputs(i).to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                f = self.arch.features(self.model, x)
                # half precision halves the cache (SqueezeNet's 512x13x13 maps) at no accuracy cost
                feats.append(f.to(torch.float16).contiguous())
        self.model.to(memory_format=torch.contiguous_format)
        return torch.cat(feats)

    def _head_stage(self, epochs: int, first: int, stopper: _EarlyStopper, rs: dict[str, Any] | None) -> None:
        cfg = self.cfg
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        head = self.model.get_submodule(self.arch.head_path)
        for p in head.parameters():
            p.requires_grad_(True)
        t = time.perf_counter()
        from edge.core.preprocess import EvalTransform

        clean = EvalTransform(self.spec)
        augment = train_transform(self.spec, cfg.augment)
        gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        views = []
        n = len(self.train_images)
        for v in range(cfg.cache_views):
            tf = clean if v == 0 else augment
            views.append(self._extract(
                lambda i, tf=tf: torch.stack([tf(img) for img in self.train_images[i:i + self.batch_size]]),
                n, f"features view {v + 1}/{cfg.cache_views}"))
        train_f = torch.cat(views)
        train_y = torch.tensor(self.train_targets * cfg.cache_views, device=self.device)
        val_f = self._extract(lambda i: self.val_x[i:i + self.batch_size], len(self.val_x), "features val")
        dt = time.perf_counter() - t
        self.feature_seconds = dt
        log.info("cached features of %d train images x %d views + %d val images in %.1fs (%.0f img/s)",
                 n, cfg.cache_views, len(self.val_x), dt, (n * cfg.cache_views + len(self.val_x)) / max(dt, 1e-9))

        params = list(head.parameters())
        opt = torch.optim.AdamW(params, lr=cfg.lr or HEAD_LR, weight_decay=cfg.weight_decay)
        steps_per_epoch = math.ceil(len(train_f) / self.batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
        if rs and "optimizer" in rs:  # absent when the stage had finished (a resume with more --epochs)
            opt.load_state_dict(rs["optimizer"])
            sched.load_state_dict(rs["scheduler"])
        for epoch in range(first, epochs + 1):
            te = time.perf_counter()
            head.train()
            perm = torch.randperm(len(train_f), generator=gen).to(self.device)
            total_loss, correct = 0.0, 0
            for i in range(0, len(perm), self.batch_size):
                idx = perm[i:i + self.batch_size]
                logits = self.arch.head(self.model, train_f[idx].float())
                loss = nn.functional.cross_entropy(logits, train_y[idx], label_smoothing=0.05)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total_loss += loss.item() * len(idx)
                correct += (logits.argmax(1) == train_y[idx]).sum().item()
            head.eval()
            logits, vloss = self._evaluate_logits(lambda f: self.arch.head(self.model, f.float()), val_f, 4096)
            secs = time.perf_counter() - te
            stats = {"train_loss": total_loss / len(perm), "train_accuracy": correct / len(perm),
                     **self._val_stats(logits, vloss), "images_per_s": len(perm) / max(secs, 1e-9), "seconds": secs}
            if self._after_epoch("head", epoch, epochs, stats, stopper, None):
                break
        # head epochs take milliseconds: one resume point when the stage ends is enough
        self._save_last("head", epochs, stopper, {})
        for p in self.model.parameters():
            p.requires_grad_(True)

    # ---------------------------------------------------------------- full fine-tune
    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        import contextlib

        return contextlib.nullcontext()

    def _no_bar(self) -> bool | None:
        return None if self.progress is None else not self.progress

    def _finetune_stage(self, epochs: int, first: int, stopper: _EarlyStopper, rs: dict[str, Any] | None) -> None:
        from tqdm import tqdm

        cfg = self.cfg
        head = self.model.get_submodule(self.arch.head_path)
        head_ids = {id(p) for p in head.parameters()}
        backbone = [p for p in self.model.parameters() if id(p) not in head_ids]
        lr = cfg.lr or FINETUNE_LR
        opt = torch.optim.AdamW(
            [{"params": backbone, "lr": lr * cfg.backbone_lr_factor}, {"params": list(head.parameters()), "lr": lr}],
            weight_decay=cfg.weight_decay,
        )
        ds = InMemoryImages(self.train_images, self.train_targets, train_transform(self.spec, cfg.augment))
        workers = cfg.workers if cfg.workers is not None else (min(4, (os.cpu_count() or 2) - 1) if self.device.type == "cuda" else 0)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=self.batch_size, shuffle=True, num_workers=workers, pin_memory=self.device.type == "cuda",
            drop_last=len(ds) > self.batch_size,  # a batch of one breaks BatchNorm in train mode
            generator=torch.Generator().manual_seed(cfg.seed + 1), persistent_workers=workers > 0,
        )
        steps = epochs * len(loader)
        warmup = min(len(loader), max(1, steps // 10))
        sched = torch.optim.lr_scheduler.SequentialLR(opt, [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=warmup),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps - warmup)),
        ], milestones=[warmup])
        scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda")
        if rs and "optimizer" in rs:
            opt.load_state_dict(rs["optimizer"])
            sched.load_state_dict(rs["scheduler"])
            scaler.load_state_dict(rs["scaler"])
        for epoch in range(first, epochs + 1):
            te = time.perf_counter()
            self.model.train()
            total_loss, correct, seen = 0.0, 0, 0
            bar = tqdm(loader, desc=f"epoch {epoch}/{epochs} [finetune]", unit="batch", disable=self._no_bar(), leave=False)
            try:
                for x, y in bar:
                    x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                    with self._autocast():
                        logits = self.model(x)
                        loss = nn.functional.cross_entropy(logits, y, label_smoothing=0.05)
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                    sched.step()
                    total_loss += loss.item() * len(y)
                    correct += (logits.argmax(1) == y).sum().item()
                    seen += len(y)
                    bar.set_postfix(loss=f"{total_loss / seen:.3f}")
            except torch.cuda.OutOfMemoryError as e:
                raise EdgeError(
                    f"out of GPU memory at --batch-size {self.batch_size}; retry with --batch-size "
                    f"{max(1, self.batch_size // 2)} or --mode head"
                ) from e
            self.model.eval()
            with self._autocast():
                logits, vloss = self._evaluate_logits(self.model, self.val_x, self.batch_size)
            secs = time.perf_counter() - te
            stats = {"train_loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                     **self._val_stats(logits, vloss), "images_per_s": seen / max(secs, 1e-9), "seconds": secs}
            if self._after_epoch("finetune", epoch, epochs, stats, stopper, lambda: {
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict()}):
                break

    # ---------------------------------------------------------------- outputs
    def _finish(self, seconds: float) -> TrainResult:
        cfg = self.cfg
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.model.eval()
        logits, vloss = self._evaluate_logits(self.model, self.val_x, self.batch_size)
        preds = logits.argmax(1).tolist()
        metrics = classification_metrics(self.val_y.tolist(), preds, self.info.classes)
        metrics.update({
            "val_loss": vloss,
            "best_epoch": self.best_epoch,
            "epochs": self.history,
            "seconds": round(seconds, 2),
            "feature_cache_seconds": round(getattr(self, "feature_seconds", 0.0), 2),
            "train_images": len(self.info.train),
            "val_images": len(self.info.val),
            "train_counts": self.info.counts("train"),
            "val_counts": self.info.counts("val"),
            "skipped_images": len(self.info.skipped),
            "warnings": self.info.warnings,
            "device": str(self.device),
        })
        training = {
            "data": str(Path(cfg.data).resolve()), "mode": cfg.mode, "weights": str(cfg.weights),
            "epochs": cfg.epochs, "finetune_epochs": cfg.finetune_epochs, "batch_size": self.batch_size,
            "lr": cfg.lr, "backbone_lr_factor": cfg.backbone_lr_factor, "seed": cfg.seed,
            "val_fraction": cfg.val_fraction, "cache_views": cfg.cache_views, "augment": cfg.augment.to_dict(),
        }
        meta = ModelMeta(
            arch=cfg.arch, class_names=list(self.info.classes), preprocess=self.spec,
            metrics={"val_accuracy": metrics["val_accuracy"], "val_loss": vloss}, training=training,
        )
        save_checkpoint(self.out / "model.pt", self.model.state_dict(), meta)
        atomic_write_text(self.out / "labels.txt", "\n".join(self.info.classes) + "\n")
        atomic_write_text(self.out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        plot_confusion_matrix(metrics["confusion_matrix"], self.info.classes, self.out / "confusion_matrix.png",
                              f"{cfg.arch} val acc {metrics['val_accuracy']:.3f}")
        log.info("val accuracy %.3f (best epoch %s) in %.1fs", metrics["val_accuracy"],
                 (self.best_epoch or {}).get("epoch"), seconds)
        log.info("wrote %s/{model.pt,labels.txt,metrics.json,confusion_matrix.png}", self.out)
        return TrainResult(self.out, metrics, self.model, meta)


def train_model(cfg: TrainConfig, progress: bool | None = None) -> TrainResult:
    """Train as `cfg` says and write model.pt, labels.txt, metrics.json and confusion_matrix.png to cfg.output."""
    return Trainer(cfg, progress).run()
