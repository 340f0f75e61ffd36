"""What a training run carries from epoch to epoch and across `--resume`: the best epoch so far (`Progress`),
written with the weights, optimizer and grad scaler to OUTPUT/last.pt (`save_last`) and read back (`read_resume`)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import torch

from edge.core.errors import EdgeError
from edge.core.files import load_torch_file
from edge.core.fsutil import atomic_write_bytes

from .config import TrainConfig
from .engine import EarlyStopper

LAST_CHECKPOINT = "last.pt"


@dataclass
class Progress:
    """What last.pt carries besides weights and optimizer: the epochs so far and the best one."""

    stopper: EarlyStopper
    history: list[dict[str, Any]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch: dict[str, Any] | None = None

    def to_checkpoint(self) -> dict[str, Any]:
        return {"best_model": self.best_state, "best_acc": self.stopper.best, "best_loss": self.stopper.best_loss,
                "best_epoch": json.dumps(self.best_epoch), "history": json.dumps(self.history)}

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], patience: int) -> Progress:
        stopper = EarlyStopper(patience, float(state["best_acc"]), float(state["best_loss"]))
        best = {k: v.clone() for k, v in state["best_model"].items()} if state.get("best_model") else None
        return cls(stopper, json.loads(state["history"]), best, json.loads(state["best_epoch"]))


def save_last(job: Any, progress: Progress, stage: str, epoch: int, stopped_early: bool,
              optimizer: torch.optim.Optimizer, scaler: "torch.amp.GradScaler") -> None:
    """Write OUTPUT/last.pt (rank 0 only) for `job` (a train.trainer.TrainRun; not imported here: no cycle)."""
    if not job.dist.is_main:  # one writer
        return
    buf = io.BytesIO()
    torch.save({
        "arch": job.cfg.arch, "class_names": job.info.classes, "stage": stage, "epoch": epoch,
        "stopped_early": stopped_early, "model": {k: v.detach().cpu() for k, v in job.model.state_dict().items()},
        "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), **progress.to_checkpoint(),
    }, buf)
    atomic_write_bytes(job.out / LAST_CHECKPOINT, buf.getvalue())


def read_resume(cfg: TrainConfig, classes: list[str]) -> dict[str, Any]:
    path = cfg.output / LAST_CHECKPOINT
    if not path.is_file():
        raise EdgeError(f"nothing to resume: {str(path)!r} not found; run without --resume first")
    state = load_torch_file(path, "checkpoint to resume")
    if state.get("arch") != cfg.arch or state.get("class_names") != classes:
        raise EdgeError(
            f"{str(path)!r} is for arch {state.get('arch')!r} with classes {state.get('class_names')}, "
            f"not {cfg.arch!r} with {classes}; resume with the same --arch and dataset"
        )
    if state.get("stage") not in [name for name, _ in cfg.stages]:
        raise EdgeError(f"{str(path)!r} stopped in a {state.get('stage')!r} stage, which --mode {cfg.mode} does "
                        "not have; resume with the same --mode")
    return state
