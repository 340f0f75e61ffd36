"""What a training job is: `TrainConfig`, and the valid range of every numeric setting (checked by the CLI at
parse time and by `TrainConfig.validate` for callers of `train_model`)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from edge.core.bounds import Bounds
from edge.core.errors import EdgeError
from edge.core.registry import DEFAULT_ARCH, get_arch

from .novelty import DEFAULT_KEEP
from .presets import AugmentSpec

MODES = ("head", "finetune", "two-stage")
HEAD_LR = 1e-2  # linear probe on cached features
FINETUNE_LR = 1e-3


# TrainConfig field -> valid range; the flag is --<field with dashes>
BOUNDS: dict[str, Bounds] = {
    "epochs": Bounds(int, 1),
    "finetune_epochs": Bounds(int, 1),
    "batch_size": Bounds(int, 1),
    "lr": Bounds(float, 0, lo_open=True),
    "val_fraction": Bounds(float, 0, 1, lo_open=True, hi_open=True),
    "seed": Bounds(int, 0, 2**32 - 1),  # numpy's seed range
    "patience": Bounds(int, 1),
    "cache_views": Bounds(int, 1),
    "workers": Bounds(int, 0),
    "threads": Bounds(int, 1),
    "novelty_keep": Bounds(float, 0.5, 1),  # below half, most known images would be called unknown
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class TrainConfig:
    data: Path
    output: Path = Path("runs/model")
    arch: str = DEFAULT_ARCH
    weights: str = "imagenet"
    mode: str = "head"
    epochs: int = 20
    finetune_epochs: int | None = None  # two-stage: epochs of the finetune stage (default: same as epochs)
    batch_size: int | None = None  # None: memory-aware default
    lr: float | None = None  # None: HEAD_LR for the head stage, FINETUNE_LR for finetune
    backbone_lr_factor: float = 0.1  # finetune: backbone LR = lr * factor
    weight_decay: float = 1e-4
    device: str = "auto"
    val_fraction: float = 0.2
    seed: int = 0
    patience: int = 5  # early stop after this many epochs without a better val accuracy
    cache_views: int = 4  # head mode: 1 clean + (n-1) augmented views; 1: the clean view, augmented in feature space
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    workers: int | None = None
    threads: int | None = None  # CPU intra-op threads; None: the free cores (edge.core.threads), re-measured
    resume: bool = False
    novelty: bool = True  # fit the novelty score (edge.core.novelty) after training
    novelty_keep: float = DEFAULT_KEEP  # fraction of val images whose novelty stays under the threshold

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], **overrides: Any) -> "TrainConfig":
        """The config from `values` (e.g. vars() of the parsed `train` flags: a flag's dest is its field name;
        other keys are ignored), then `overrides`."""
        known = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in values.items() if k in known}, **overrides})

    def validate(self) -> None:
        get_arch(self.arch)
        if self.mode not in MODES:
            raise EdgeError(f"unknown --mode {self.mode!r}; choose one of: {', '.join(MODES)}")
        for name, bounds in BOUNDS.items():
            value = getattr(self, name)
            problem = None if value is None else bounds.problem(value)
            if problem:
                raise EdgeError(f"{flag(name)} {problem}, got {value}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise EdgeError(f"unknown --device {self.device!r}; choose auto, cpu or cuda")

    @property
    def stages(self) -> list[tuple[str, int]]:
        """(stage, epochs) in the order they run."""
        if self.mode == "head":
            return [("head", self.epochs)]
        if self.mode == "finetune":
            return [("finetune", self.epochs)]
        return [("head", self.epochs), ("finetune", self.finetune_epochs or self.epochs)]


def default_of(name: str) -> Any:
    """TrainConfig's default for field `name` (the `train` flags use it, so a default is written once)."""
    f = next(f for f in fields(TrainConfig) if f.name == name)
    return f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
