"""The training phases, as plain functions in the style of torchvision's references/classification/train.py.

`train_one_epoch` and `evaluate` take any module and any iterable of (inputs, targets) batches: the full model on
a DataLoader of augmented images (finetune), or the classifier head on cached backbone features (head mode).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

LABEL_SMOOTHING = 0.05


def autocast(device: torch.device, enabled: bool = True):
    """float16 autocast on CUDA; nothing elsewhere (CPU float16 is slower, and bfloat16 costs accuracy here)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


class TensorBatches:
    """(inputs, targets) batches over in-memory tensors; a fresh seeded permutation each pass when `generator`.

    With `world_size` > 1 (and a generator seeded alike on every rank), rank `rank` takes every world_size-th
    index of the shared permutation, padded by wrapping around as DistributedSampler does: every rank gets
    the same number of batches, which DistributedDataParallel needs. Without a generator every rank gets all rows
    in order (evaluation sets are split by the caller).
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int,
                 generator: torch.Generator | None = None, rank: int = 0, world_size: int = 1):
        self.inputs, self.targets, self.batch_size, self.generator = inputs, targets, batch_size, generator
        self.rank, self.world_size = rank, (world_size if generator is not None else 1)

    def _rows(self) -> int:
        return math.ceil(len(self.inputs) / self.world_size)

    def __len__(self) -> int:
        return math.ceil(self._rows() / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.inputs)
        if self.generator is None:
            for i in range(0, n, self.batch_size):
                yield self.inputs[i:i + self.batch_size], self.targets[i:i + self.batch_size]
            return
        order = torch.randperm(n, generator=self.generator)
        if self.world_size > 1:
            total = self._rows() * self.world_size
            order = order.repeat(math.ceil(total / max(n, 1)))[:total][self.rank::self.world_size]
        order = order.to(self.inputs.device)
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            yield self.inputs[idx], self.targets[idx]


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR factor: linear warm-up from 0.1 over `warmup` steps, then cosine annealing to 0 at `total` steps."""
    if step < warmup:
        return 0.1 + 0.9 * step / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, loader: Iterable,
                    device: torch.device, scaler: "torch.amp.GradScaler",
                    progress: Callable[[Iterable], Any] | None = None) -> dict[str, float]:
    """One pass over `loader`, stepping the LR schedule per batch; AMP when `scaler` is enabled.

    `progress` wraps the loader in a progress bar (tqdm with its options). Returns loss, accuracy, images seen.
    """
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    batches = progress(loader) if progress else loader
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, scaler.is_enabled()):
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y, label_smoothing=LABEL_SMOOTHING)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        if progress:
            batches.set_postfix(loss=f"{total_loss / seen:.3f}")
    return {"train_loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1), "images": seen}


@dataclass
class Evaluation:
    logits: torch.Tensor  # N x classes, float32, CPU
    targets: torch.Tensor
    loss: float
    accuracy: float

    @property
    def predictions(self) -> list[int]:
        return self.logits.argmax(1).tolist()

    @classmethod
    def of(cls, logits: torch.Tensor, targets: torch.Tensor) -> Evaluation:
        """Loss and accuracy of `logits` (float32, CPU) against `targets`."""
        loss = nn.functional.cross_entropy(logits, targets).item()
        return cls(logits, targets, loss, (logits.argmax(1) == targets).float().mean().item())


def evaluate(model: nn.Module, loader: Iterable, device: torch.device, amp: bool = False) -> Evaluation:
    """Logits, cross-entropy loss and accuracy of `model` over every batch of `loader` (eval mode, no grad)."""
    model.eval()
    outs, targets = [], []
    with torch.inference_mode(), autocast(device, amp):
        for x, y in loader:
            outs.append(model(x.to(device, non_blocking=True)).float().cpu())
            targets.append(y.cpu())
    return Evaluation.of(torch.cat(outs), torch.cat(targets))


class EarlyStopper:
    """Tracks the best epoch (higher val accuracy, or equal accuracy with lower loss) and epochs since it."""

    def __init__(self, patience: int, best: float = -1.0, best_loss: float = math.inf):
        self.patience, self.best, self.best_loss, self.stale = patience, best, best_loss, 0

    def update(self, acc: float, loss: float) -> bool:
        """True when this epoch is the best so far."""
        if acc > self.best + 1e-9 or (abs(acc - self.best) <= 1e-9 and loss < self.best_loss):
            self.best, self.best_loss, self.stale = acc, loss, 0
            return True
        self.stale += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.stale >= self.patience


def make_grad_scaler(enabled: bool):
    """AMP loss scaler for CUDA: `torch.amp.GradScaler` where it exists (torch >= 2.3), else the older CUDA one."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)
