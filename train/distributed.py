"""Data-parallel training over the processes `torchrun` starts: one per GPU (NCCL), or a few on a CPU (gloo).

`torchrun --nproc-per-node N -m train ...` gives each process RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT;
`process_group()` joins them for the run, and `DistContext` is everything the trainer asks of the group: which
share of the data is this process's (`shard`), the shares gathered back in order (`gather_rows`), the trained
module wrapped in DistributedDataParallel (`wrap`), and rank 0 alone deciding, reading and writing (`on_main`,
`broadcast`). Without WORLD_SIZE (or with 1) there is no group and every method is the identity, so a plain
`train` is exactly the single-process path.

--batch-size is the global batch, split across the processes (`split_batch`, as Ultralytics does): the optimizer
takes the same steps on the same batches whatever N is, so N processes give the single-process result, sooner.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed
from torch import nn

from edge.core.errors import EdgeError

from .engine import Evaluation

T = TypeVar("T")
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class FailedOnMain(EdgeError):
    """Raised on the other ranks when rank 0 failed at something it does for all (rank 0 reports why)."""


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "")
    try:
        return int(text) if text else default
    except ValueError as e:
        raise EdgeError(f"{name}={text!r} is not an integer; start distributed runs with torchrun") from e


def env_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun), readable before the group exists."""
    return _env_int("RANK", 0)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the group; the defaults are a single process, for which every method is a no-op."""

    rank: int = 0
    world_size: int = 1
    # where collectives move tensors: the process's GPU under NCCL
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def current(cls) -> DistContext:
        """The initialised default process group's context, or the single-process one."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return cls()
        nccl = dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        return cls(dist.get_rank(), dist.get_world_size(), device)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def train_device(self, device: torch.device) -> torch.device:
        """The device this process trains on: under torchrun, `cuda` is its own GPU (`process_group` made
        cuda:LOCAL_RANK the current one)."""
        if self.enabled and device.type == "cuda" and device.index is None:
            return torch.device("cuda", torch.cuda.current_device())
        return device

    # ------------------------------------------------------------------ decisions and files: rank 0

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj`, on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 only and hand its result to every rank; when it fails, every rank stops."""
        if not self.enabled:
            return fn()
        if self.is_main:
            try:
                result = fn()
            except BaseException:
                self.broadcast((False, None))
                raise
            return self.broadcast((True, result))[1]
        ok, result = self.broadcast((False, None))
        if not ok:
            raise FailedOnMain("rank 0 failed; see its error")
        return result

    # ------------------------------------------------------------------ data: a share each, gathered in order

    def split_batch(self, global_batch: int) -> int:
        """This process's share of the global --batch-size (each process steps on global // N images)."""
        if not self.enabled:
            return global_batch
        if global_batch < self.world_size:
            raise EdgeError(f"--batch-size {global_batch} is the global batch, split across {self.world_size} "
                            f"processes; use at least {self.world_size}")
        return global_batch // self.world_size

    def shard(self, rows: Sequence[T] | torch.Tensor) -> Sequence[T] | torch.Tensor:
        """This rank's contiguous share of `rows` (sizes differ by at most one); concatenated in rank order
        the shares are `rows` again, which is what `gather_rows` relies on."""
        if not self.enabled:
            return rows
        n = len(rows)
        if n < self.world_size:
            raise EdgeError(f"only {n} images to share among {self.world_size} processes; "
                            "train with fewer processes (torchrun --nproc-per-node) or more images")
        return rows[n * self.rank // self.world_size:n * (self.rank + 1) // self.world_size]

    def gather_rows(self, part: torch.Tensor) -> torch.Tensor:
        """Every rank's `part` (rows of the same width and dtype), concatenated in rank order, on every rank."""
        if not self.enabled:
            return part
        dist = torch.distributed
        x = part.to(self.device)
        sizes = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([len(x)], device=self.device))
        counts = [int(s.item()) for s in sizes]
        padded = x.new_zeros((max(counts), *x.shape[1:]))  # all_gather wants equal shapes
        padded[:len(x)] = x
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(part.device)

    def gather_evaluation(self, mine: Evaluation) -> Evaluation:
        """The evaluation of the whole set from each rank's evaluation of its `shard`: the same on every rank."""
        if not self.enabled:
            return mine
        return Evaluation.of(self.gather_rows(mine.logits), self.gather_rows(mine.targets))

    def reduce_train_stats(self, stats: dict[str, float]) -> dict[str, float]:
        """`train_one_epoch`'s loss, accuracy and image count over all ranks' batches."""
        if not self.enabled:
            return stats
        seen = stats["images"]
        totals = torch.tensor([stats["train_loss"] * seen, stats["train_accuracy"] * seen, seen],
                              dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(totals)
        loss, correct, images = totals.tolist()
        return {"train_loss": loss / max(images, 1), "train_accuracy": correct / max(images, 1),
                "images": int(images)}

    def batch_sampler(self, n: int, batch: int, seed: int) -> GlobalBatchSampler:
        """This process's batches of a DataLoader over `n` rows (`batch`: its share of the global batch)."""
        return GlobalBatchSampler(n, batch, seed, self.rank, self.world_size)

    @staticmethod
    def set_epoch(batches: Any, epoch: int) -> None:
        """Reshuffle a DataLoader's batches for `epoch` (each epoch its own order, the same on all ranks)."""
        sampler = getattr(batches, "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    # ------------------------------------------------------------------ the model

    def wrap(self, module: nn.Module) -> nn.Module:
        """`module` in DistributedDataParallel (averaged gradients, same weights on every rank), or itself."""
        if not self.enabled:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def sync_buffers(self, module: nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics drift apart on each rank's last batch)."""
        if self.enabled:
            for buffer in module.buffers():
                torch.distributed.broadcast(buffer, src=0)


class GlobalBatchSampler:
    """A DataLoader's `batch_sampler`: each epoch one seeded permutation of all `n` rows cut into global batches of
    `batch` x `world_size`, of which process `rank` takes every world_size-th row. So step k of N processes covers
    exactly the rows of step k of one process with the same seed, and the number of steps does not depend on N.
    A last, incomplete global batch is dropped when there is a full one (a batch of one breaks BatchNorm)."""

    def __init__(self, n: int, batch: int, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.batch, self.seed, self.rank, self.world_size = n, batch, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(1, self.n // (self.batch * self.world_size)) if self.n else 0

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        size = self.batch * self.world_size
        for k in range(len(self)):
            yield order[k * size:(k + 1) * size][self.rank::self.world_size]


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[DistContext]:
    """Join torchrun's process group for the duration (NCCL when `device` is CUDA, else gloo): nothing happens
    when WORLD_SIZE is unset or 1, or when the caller already started a group."""
    dist = torch.distributed
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        yield DistContext.current()
        return
    if not dist.is_available():
        raise EdgeError(f"WORLD_SIZE={world} asks for {world} processes, but this PyTorch build has no "
                        "torch.distributed; run train without torchrun")
    missing = [name for name in TORCHRUN_VARS if not os.environ.get(name)]
    if missing:
        raise EdgeError(f"WORLD_SIZE={world} but {', '.join(missing)} not set; start distributed runs with "
                        "`torchrun --nproc-per-node N -m train ...`")
    backend = "gloo"
    if device.type == "cuda":
        local_rank, gpus = _env_int("LOCAL_RANK", 0), torch.cuda.device_count()
        if device.index is not None:
            raise EdgeError(f"--device {device} under torchrun: each process takes the GPU of its LOCAL_RANK; "
                            "use --device cuda (or auto) and CUDA_VISIBLE_DEVICES to choose GPUs")
        if local_rank >= gpus:
            raise EdgeError(f"LOCAL_RANK {local_rank} but only {gpus} CUDA GPU(s) visible; "
                            f"use torchrun --nproc-per-node {gpus} (one process per GPU)")
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    dist.init_process_group(backend)  # env:// from torchrun's variables
    try:
        yield DistContext.current()
    finally:
        dist.destroy_process_group()
