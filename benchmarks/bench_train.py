"""Training speed: head mode (features cached once) vs full fine-tune, on the synthetic dataset.

    python benchmarks/bench_train.py [--per-class 150] [--arch efficientnet_lite0] [--device auto]

Prints wall time and images/s for each mode. Head mode's cost is one backbone pass per cached view;
its epochs then run on the cache in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from edge.core.memory import keep_freed_memory
from edge.core.synthetic import make_dataset
from train.trainer import TrainConfig, train_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-class", type=int, default=150)
    p.add_argument("--arch", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--device", default="auto")
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    keep_freed_memory()
    results = {"arch": a.arch, "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "data", per_class=a.per_class, seed=0)
        n_train = None
        for mode, epochs in (("head", 20), ("finetune", a.finetune_epochs)):
            t = time.perf_counter()
            r = train_model(TrainConfig(data=data, output=Path(tmp) / mode, arch=a.arch, weights=a.weights, mode=mode,
                                        epochs=epochs, patience=epochs, device=a.device), progress=False)
            wall = time.perf_counter() - t
            n_train = r.metrics["train_images"]
            eps = r.metrics["epochs"]
            results[mode] = {
                "wall_s": round(wall, 1),
                "epochs": len(eps),
                "val_accuracy": round(r.metrics["val_accuracy"], 3),
                "train_images_per_s_per_epoch": round(sum(e["images_per_s"] for e in eps) / len(eps), 1),
                "effective_images_per_s": round(n_train * len(eps) / wall, 1),
            }
            if mode == "head":
                results[mode]["feature_cache_s"] = r.metrics["feature_cache_seconds"]
        results["train_images"] = n_train
    if a.json:
        print(json.dumps(results))
        return
    print(f"{a.arch}, {results['train_images']} training images, device "
          f"{'cuda' if results['cuda'] and a.device != 'cpu' else 'cpu'} ({results['torch_threads']} threads)")
    for mode in ("head", "finetune"):
        r = results[mode]
        extra = f", features cached in {r['feature_cache_s']}s" if mode == "head" else ""
        print(f"  {mode:<9} {r['epochs']:>2} epochs in {r['wall_s']:>6.1f}s wall (incl. data decode{extra}); "
              f"{r['effective_images_per_s']:>7.1f} img-epochs/s; val acc {r['val_accuracy']:.3f}")


if __name__ == "__main__":
    main()
