"""`train`: fine-tune a pretrained CNN on an ImageFolder dataset."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from edge.core.threads import yield_when_waiting

yield_when_waiting()  # before .trainer imports torch: waiting OpenMP threads sleep instead of spinning

from edge.core.cli_parser import CliParser  # noqa: E402 - after the thread policy: set before torch is imported
from edge.core.devices import torch_device  # noqa: E402 - after the thread policy: set before torch is imported
from edge.core.errors import cli_entry  # noqa: E402 - after the thread policy: set before torch is imported
from edge.core.logs import setup_logging  # noqa: E402 - after the thread policy: set before torch is imported
from edge.core.memory import keep_freed_memory  # noqa: E402 - after the thread policy: set before torch is imported
from edge.core.registry import DEFAULT_ARCH, list_models  # noqa: E402 - after the thread policy: set before torch is imported

from .config import BOUNDS, MODES, TrainConfig, default_of  # noqa: E402 - after the thread policy: set before torch is imported
from .distributed import FailedOnMain, env_rank, process_group  # noqa: E402 - after the thread policy: set before torch is imported
from .presets import AugmentSpec  # noqa: E402 - after the thread policy: set before torch is imported
from .trainer import train_model  # noqa: E402 - after the thread policy: set before torch is imported


def _number(setting: str):
    """argparse type for a numeric flag: parses and range-checks it against config.BOUNDS[setting]."""
    bounds = BOUNDS[setting]

    def parse(text: str):
        try:
            value = bounds.kind(text)
        except ValueError:
            value = None
        problem = f"must be {bounds}" if value is None else bounds.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
        return value

    parse.__name__ = bounds.kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog="train",
        description="Fine-tune a pretrained CNN on DATA/<label>/*.jpg (or DATA/train + DATA/val) and write "
        "model.pt, labels.txt, metrics.json, confusion_matrix.png, training_curves.png and mistakes.png to --output. "
        "The model also learns what its classes look like (a novelty score): images unlike all of them are "
        "labelled 'unknown' (a reserved label: no class folder may be called so). Started by "
        "`torchrun --nproc-per-node N -m train ...`, it trains data-parallel on N GPUs (or N CPU processes).",
    )
    p.add_argument("--data", required=True, type=Path, help="ImageFolder dataset directory")
    p.add_argument("--arch", default=default_of("arch"),
                   help=f"model architecture (default {DEFAULT_ARCH}: its ImageNet weights ship offline): "
                        f"{', '.join(list_models())}")
    p.add_argument("--weights", default=default_of("weights"),
                   help="imagenet (downloaded and cached by torchvision; efficientnet_lite0's ship offline), none "
                        "(random init), or PATH to a torchvision .pth or one of our model.pt files")
    p.add_argument("--mode", default=default_of("mode"), choices=MODES,
                   help="head: freeze the backbone, train the classifier on cached features (seconds); "
                        "finetune: train all layers, backbone at a lower LR; two-stage: head, then finetune")
    p.add_argument("--epochs", type=_number("epochs"), default=default_of("epochs"),
                   help="epochs (per stage in two-stage mode)")
    p.add_argument("--finetune-epochs", type=_number("finetune_epochs"), default=None,
                   help="two-stage: epochs of the finetune stage")
    p.add_argument("--batch-size", type=_number("batch_size"), default=None,
                   help="images per optimizer step; under torchrun the global batch, split across the processes "
                        "(same steps, same result, sooner); default: 32 (16 on 4 GB Jetsons)")
    p.add_argument("--lr", type=_number("lr"), default=None,
                   help="learning rate of the head (default 1e-2 on cached features, 1e-3 when fine-tuning; "
                        "the backbone gets x0.1)")
    p.add_argument("--device", default=default_of("device"), help="auto, cpu or cuda")
    p.add_argument("--output", type=Path, default=default_of("output"), help="output directory")
    p.add_argument("--val-fraction", type=_number("val_fraction"), default=default_of("val_fraction"),
                   help="stratified validation split when DATA has no val/")
    p.add_argument("--seed", type=_number("seed"), default=default_of("seed"),
                   help="seed of the split, the augmentation and the head")
    p.add_argument("--patience", type=_number("patience"), default=default_of("patience"),
                   help="early stop after N epochs without better val accuracy")
    p.add_argument("--cache-views", type=_number("cache_views"), default=default_of("cache_views"),
                   help="head mode: backbone passes per training image: N (default 4): 1 clean + N-1 augmented "
                        "views; 1: the clean view alone, augmented in feature space (about 1/3 of the CPU time, "
                        "val accuracy 0.01-0.03 lower on benchmarks/bench_train.py's photo sets)")
    p.add_argument("--no-hflip", dest="hflip", action="store_false",
                   help="disable horizontal-flip augmentation (when left vs right is the label)")
    p.add_argument("--workers", type=_number("workers"), default=None, help="data-loader workers for finetune")
    p.add_argument("--threads", type=_number("threads"), default=None,
                   help="CPU threads for the network (default: the cores not kept busy by other processes, "
                        "re-measured as training goes)")
    p.add_argument("--novelty-keep", type=_number("novelty_keep"), default=default_of("novelty_keep"),
                   help="fraction of val images that must stay under the novelty threshold (the rest would be "
                        "called 'unknown'); higher = fewer false 'unknown', more unfamiliar images let through")
    p.add_argument("--no-novelty", dest="novelty", action="store_false",
                   help="do not fit the novelty score: the model never says 'unknown' for unfamiliar images")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    keep_freed_memory()
    main_rank = env_rank() == 0  # under torchrun, rank 0 alone logs and prints
    setup_logging(logging.INFO if main_rank and not a.quiet else logging.WARNING, stream=sys.stdout, plain=True)
    cfg = TrainConfig.from_mapping(vars(a), augment=AugmentSpec(hflip=a.hflip))  # flags' dests are its fields
    cfg.validate()
    try:
        with process_group(torch_device(cfg.device)):
            result = train_model(cfg, progress=False if a.no_progress else None)
    except FailedOnMain:
        # rank 0 prints the one error line and exits non-zero, which is what torchrun reports; failing here too
        # would have torchrun stop rank 0 before it has printed
        return 0
    if not main_rank:
        return 0
    print(f"val accuracy {result.metrics['val_accuracy']:.3f}; model written to {result.output / 'model.pt'}")
    novelty = result.metrics.get("novelty")
    if novelty:
        print(f"novelty: {novelty['val_unknown']} of {novelty['val_images']} val images would be called 'unknown' "
              f"(threshold {novelty['threshold']:.4f}, calibrated on {novelty['calibration']})")
        if novelty.get("val_near_copies") is not None:
            print(f"val near-copies: {novelty['val_near_copies']} of {novelty['val_images']} val images "
                  f"({novelty['val_near_copy_fraction']:.0%}; about 10% if val were other takes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
