"""Train and Export for `edge teach`: one job at a time, on its own thread, with a state the page polls.

Train, head mode (the default): the dataset folder is scanned again and split exactly as `train --data DIR` does
(train.dataset.scan_dataset, seeded and stratified), the cached features of those files are collected (only
clean views still missing are waited for), a new linear head is fitted on them with train's own loop pieces
(train.engine), and the model (ImageNet backbone + head) is saved as a normal model.pt with its metrics, labels
and confusion matrix, then goes live in the running pipeline. `finetune` and `two-stage` run train_model itself.
The model carries a novelty score fitted exactly as `train` fits it (train.novelty.calibrate on the clean features:
the bank of training images, the threshold from images unseen in time, leave-one-burst-out by the snapshots'
time-stamped names): snapshots taken in bursts are near-duplicates, so a threshold from their random val split
would call every later live frame `unknown`.
Export: the verified ONNX (and a TensorRT engine where TensorRT exists) of the newest model, which then replaces
the live one (it is the faster runtime, and verified to give the same answers).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from edge.core.errors import EdgeError, brief
from edge.core.fsutil import atomic_write_text
from edge.core.metadata import ModelMeta, save_checkpoint
from train.config import BOUNDS, HEAD_LR, MODES
from train.dataset import scan_dataset
from train.engine import EarlyStopper, TensorBatches, evaluate, make_grad_scaler, train_one_epoch, warmup_cosine
from train.novelty import DEFAULT_KEEP, calibrate
from train.report import classification_metrics, plot_confusion_matrix
from train.trainer import CachedFeaturesHead

from .dataset import ApiError, TeachDataset, label_notes
from .features import FeatureCache

log = logging.getLogger(__name__)

VAL_FRACTION = 0.2  # train's default split, so `train --data DIR` validates on the same images
SEED = 0
HEAD_BATCH = 32
WEIGHT_DECAY = 1e-4
PATIENCE = 10
MAX_EPOCHS = 1000
AUGMENTED_NOW = 16  # augmented views computed at training time when the cache has fewer (novelty's floor)
_EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+) \[([\w-]+)\]")
_CLI_FLAG = re.compile(r"(?<![\w-])--[a-z]")  # a command-line flag such as --no-novelty
# what a job reports once it is done, present (as null) before, so scripts can read the keys at any time
RESULT_KEYS: dict[str, dict[str, Any]] = {
    "train": {"model": None, "classes": None, "val_accuracy": None, "confusion_matrix": None, "novelty": None},
    "export": {"files": [], "live": None},
}


class Live(Protocol):
    """What the jobs need from the running service."""

    def go_live(self, model: Path) -> int: ...  # load, check and swap in; returns the model's version

    def live_at(self, version: int) -> float | None: ...  # time.monotonic() of its first prediction


@dataclass
class Job:
    """One train or export run, as GET /api/train and /api/export report it."""

    kind: str
    state: str = "idle"  # idle, running, done, failed
    params: dict[str, Any] = field(default_factory=dict)
    phase: str = ""
    progress: float = 0.0
    started: float = 0.0  # time.monotonic()
    seconds: float | None = None
    live_seconds: float | None = None  # from the request to the first prediction of the new model
    version: int | None = None
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # milestone -> seconds since the request

    def mark(self, milestone: str) -> None:
        self.timings[milestone] = round(time.monotonic() - self.started, 3)

    def update(self, phase: str, progress: float | None = None) -> None:
        self.phase = phase
        if progress is not None:
            self.progress = round(min(max(progress, self.progress), 1.0), 3)

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, **self.params, "phase": self.phase, "progress": self.progress,
                "seconds": self.seconds, "live_seconds": self.live_seconds, "error": self.error,
                **RESULT_KEYS[self.kind], **self.result, "timings": dict(self.timings)}


def _attach(model: torch.nn.Module, path: str, module: torch.nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _body_keys(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    extra = sorted(set(body) - set(allowed))
    if extra:
        raise ApiError(400, f"unknown field(s) {', '.join(map(repr, extra))}; valid: {', '.join(allowed) or 'none'}")


class Jobs:
    """Starts and reports the train and export jobs (at most one running)."""

    def __init__(self, dataset: TeachDataset, features: FeatureCache, live: Live, output: Path,
                 epochs: int = 30) -> None:
        self.dataset, self.features, self.live = dataset, features, live
        self.output = Path(output)
        self.epochs = epochs
        self.train = Job("train")
        self.export = Job("export")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def close(self, timeout: float = 2.0) -> bool:
        """Ask a running job to stop; False when it is still running after `timeout` (an export cannot stop)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()

    # ------------------------------------------------------------------ requests
    def start_train(self, body: dict[str, Any]) -> dict[str, Any]:
        _body_keys(body, ("mode", "epochs"))
        mode, epochs = body.get("mode", "head"), body.get("epochs", self.epochs)
        if mode not in MODES:
            raise ApiError(400, f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
        problem = BOUNDS["epochs"].problem(epochs)
        if problem or epochs > MAX_EPOCHS:
            raise ApiError(400, f"epochs {problem or f'must be at most {MAX_EPOCHS}'}, got {epochs!r}")
        run = self._train_head if mode == "head" else self._train_full
        return self._start("train", {"mode": mode, "epochs": int(epochs)}, lambda job: run(job, mode, int(epochs)),
                           self.dataset.check_trainable)

    def start_export(self, body: dict[str, Any]) -> dict[str, Any]:
        _body_keys(body, ())

        def check() -> None:
            if not (self.output / "model.pt").is_file():
                raise ApiError(409, "nothing to export yet: train a model first")

        return self._start("export", {}, self._export, check)

    def _start(self, kind: str, params: dict[str, Any], run: Callable[[Job], None],
               check: Callable[[], Any]) -> dict[str, Any]:
        with self._lock:
            for busy in (self.train, self.export):
                if busy.state == "running":
                    raise ApiError(409, f"{'a training' if busy.kind == 'train' else 'an export'} is already running "
                                   f"({busy.phase}, {time.monotonic() - busy.started:.0f} s); wait for it "
                                   f"(GET /api/{busy.kind})")
            check()
            job = Job(kind, "running", params, "starting", started=time.monotonic())
            setattr(self, kind, job)
            self._thread = threading.Thread(target=self._run, args=(job, run), name=f"teach-{kind}", daemon=True)
            self._thread.start()
            return job.to_json()

    def status(self, kind: str) -> dict[str, Any]:
        job: Job = getattr(self, kind)
        if job.version is not None and job.live_seconds is None:
            at = self.live.live_at(job.version)
            if at is not None:
                job.live_seconds = round(at - job.started, 3)
        return job.to_json()

    def _run(self, job: Job, run: Callable[[Job], None]) -> None:
        try:
            run(job)
        except Exception as e:  # whatever went wrong is the job's state, the service goes on
            job.error = str(e) if isinstance(e, EdgeError) else brief(e, 300)
            if not isinstance(e, EdgeError):
                log.exception("teach: %s failed", job.kind)
            log.error("teach: %s failed: %s", job.kind, job.error)
            state = "failed"
        else:
            job.update("done", 1.0)
            state = "done"
        job.seconds = round(time.monotonic() - job.started, 3)
        job.state = state  # last: whoever sees the new state sees everything else

    # ------------------------------------------------------------------ train
    def _train_head(self, job: Job, mode: str, epochs: int) -> None:
        job.update("checking the images", 0.02)
        info = scan_dataset(self.dataset.root, VAL_FRACTION, SEED)
        job.mark("scanned")
        paths = [s.path for s in info.train + info.val]
        entries = self.features.collect(
            paths, lambda done, n: job.update(f"features {done}/{n}", 0.05 + 0.45 * done / max(n, 1)),
            self._stop.is_set)
        job.mark("features")
        rows, targets, val_rows, val_targets = [], [], [], []
        clean, clean_paths, clean_targets, val_paths = [], [], [], []
        augmented = 0
        for s in info.train:
            e = entries[s.path]
            if e.clean is None:
                continue  # unreadable: scan_dataset skipped it already, unless it broke since
            views = [e.clean, *e.augmented]
            augmented += bool(e.augmented)
            rows += views
            targets += [s.target] * len(views)
            clean.append(e.clean)
            clean_paths.append(s.path)
            clean_targets.append(s.target)
        for s in info.val:
            if entries[s.path].clean is not None:
                val_rows.append(entries[s.path].clean)
                val_targets.append(s.target)
                val_paths.append(s.path)
        if not rows or not val_rows:
            raise EdgeError("no readable images left to train or validate on; snap again")
        job.update(f"fitting the head on {len(rows)} feature rows", 0.5)
        net, history, final = self._fit(job, len(info.classes), epochs, torch.stack(rows), torch.tensor(targets),
                                        torch.stack(val_rows), torch.tensor(val_targets))
        job.mark("fitted")
        job.update("calibrating unknown", 0.87)
        novelty = calibrate(torch.stack(clean), torch.stack(val_rows), DEFAULT_KEEP, clean_targets,
                            train_paths=clean_paths, val_paths=val_paths, val_labels=val_targets,
                            class_names=info.classes, augmented=self._augmented(clean_paths, entries))
        job.mark("novelty")
        metrics = classification_metrics(final.targets.tolist(), final.predictions, info.classes)
        metrics.update({
            "val_loss": final.loss, "epochs": history, "train_images": len(info.train), "val_images": len(info.val),
            "train_counts": info.counts("train"), "val_counts": info.counts("val"), "skipped_images": len(info.skipped),
            "warnings": info.warnings, "device": str(self.features.device), "feature_rows": len(rows),
            "augmented_images": augmented, "feature_cache_seconds": round(self.features.seconds, 2),
            "novelty": novelty.metrics(),
        })
        arch = self.features.arch
        meta = ModelMeta(arch=arch.name, class_names=list(info.classes), preprocess=arch.preprocess,
                         metrics={"val_accuracy": metrics["val_accuracy"], "val_loss": final.loss},
                         training={"data": str(Path(self.dataset.root).resolve()), "mode": "head", "tool": "edge teach",
                                   "weights": "imagenet", "epochs": epochs, "seed": SEED, "val_fraction": VAL_FRACTION,
                                   "cache_views": self.features.views, "augment": self.features.augment.to_dict(),
                                   "novelty_keep": DEFAULT_KEEP},
                         novelty=novelty.report.to_dict())
        with self.features.model_lock:
            state = {k: v.detach().contiguous().clone() for k, v in self.features.model.state_dict().items()}
        model = self.output / "model.pt"
        save_checkpoint(model, state, meta, novelty_bank=novelty.scorer.bank)
        job.mark("saved")
        self._went_live(job, model, info.classes, metrics)

    def _augmented(self, paths: list[str], entries: dict) -> torch.Tensor:
        """One augmented view's features per training image where the cache has one; else computed now for
        up to AUGMENTED_NOW images (the novelty threshold's floor, as `train` computes it)."""
        views = [entries[p].augmented[0] for p in paths if entries[p].augmented]
        if len(views) >= min(AUGMENTED_NOW, len(paths)):
            return torch.stack(views)
        from train.dataset import load_rgb
        from train.presets import train_transform

        tf = train_transform(self.features.arch.preprocess, self.features.augment)
        chosen = paths[::max(1, -(-len(paths) // AUGMENTED_NOW))]
        return self.features.features(torch.stack([tf(load_rgb(p)) for p in chosen]))

    def _fit(self, job: Job, n_classes: int, epochs: int, x: torch.Tensor, y: torch.Tensor, val_x: torch.Tensor,
             val_y: torch.Tensor):
        """A new head fitted on the features (AdamW, cosine schedule, the best epoch by val accuracy kept)."""
        fc = self.features
        device = fc.device
        with fc.model_lock:
            _attach(fc.model, fc.arch.head_path, fc.arch.make_head(fc.model, n_classes).to(device))
        net = CachedFeaturesHead(fc.model, fc.arch).requires_grad_(True)
        train = TensorBatches(x.to(device), y.to(device), HEAD_BATCH, torch.Generator().manual_seed(SEED))
        val = TensorBatches(val_x.to(device), val_y.to(device), 4096)
        optimizer = torch.optim.AdamW(net.parameters(), lr=HEAD_LR, weight_decay=WEIGHT_DECAY)
        total = epochs * len(train)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total, 0))
        scaler, stopper = make_grad_scaler(enabled=False), EarlyStopper(PATIENCE)
        best, history = None, []
        for epoch in range(1, epochs + 1):
            stats = train_one_epoch(net, optimizer, scheduler, train, device, scaler)
            result = evaluate(net, val, device)
            history.append({"epoch": epoch, "train_loss": stats["train_loss"], "val_loss": result.loss,
                            "val_accuracy": result.accuracy})
            if stopper.update(result.accuracy, result.loss):
                best = {k: v.detach().clone() for k, v in net.state_dict().items()}
            job.update(f"epoch {epoch}/{epochs}: val accuracy {result.accuracy:.2f}", 0.5 + 0.35 * epoch / epochs)
            if stopper.should_stop or self._stop.is_set():
                break
        if best is not None:
            net.load_state_dict(best)
        net.requires_grad_(False).eval()
        return net, history, evaluate(net, val, device)

    def _train_full(self, job: Job, mode: str, epochs: int) -> None:
        """finetune / two-stage: train's own train_model (minutes on a CPU) in a child process, so that its memory
        returns when it ends (edge.teach.child); progress from its epoch lines."""
        from train.config import TrainConfig

        from .child import train_isolated

        handler = _EpochLines(job, 2 if mode == "two-stage" else 1)
        logging.getLogger("train").addHandler(handler)
        try:
            output, classes, metrics = train_isolated(TrainConfig(
                data=self.dataset.root, output=self.output, arch=self.features.arch.name, mode=mode, epochs=epochs,
                device=self.features.device.type, seed=SEED, val_fraction=VAL_FRACTION,
                cache_views=self.features.views), self._stop.is_set)  # in a child: its memory returns
        finally:
            logging.getLogger("train").removeHandler(handler)
        self._went_live(job, output / "model.pt", classes, metrics, written=True)

    def _went_live(self, job: Job, model: Path, classes: list[str], metrics: dict[str, Any],
                   written: bool = False) -> None:
        """Swap the new model in, then write what `train` writes beside model.pt."""
        job.update("going live", 0.9)
        job.version = self.live.go_live(model)
        job.mark("swapped")
        job.result = {
            "model": str(model), "classes": list(classes), "val_accuracy": metrics["val_accuracy"],
            "val_loss": metrics.get("val_loss"), "per_class": metrics.get("per_class"),
            "confusion_matrix": metrics["confusion_matrix"], "confusion_matrix_url": "api/train/confusion_matrix.png",
            "notes": label_notes(self.dataset.counts()) + list(metrics.get("warnings") or []),
            "novelty": {k: (metrics.get("novelty") or {}).get(k) for k in ("threshold", "calibration", "note")},
        }
        if not written:
            job.update("writing metrics", 0.95)
            metrics["seconds"] = round(time.monotonic() - job.started, 2)
            atomic_write_text(self.output / "labels.txt", "".join(f"{c}\n" for c in classes))
            atomic_write_text(self.output / "metrics.json", json.dumps(metrics, indent=2) + "\n")
            plot_confusion_matrix(metrics["confusion_matrix"], classes, self.output / "confusion_matrix.png",
                                  f"{self.features.arch.name} val acc {metrics['val_accuracy']:.3f}")
            job.mark("written")

    # ------------------------------------------------------------------ export
    def _export(self, job: Job) -> None:
        from export.options import ExportOptions
        from export.run import run_export

        engine = importlib.util.find_spec("tensorrt") is not None
        job.update("exporting ONNX" + (" and a TensorRT engine" if engine else ""), 0.1)
        options = ExportOptions(fmt="all" if engine else "onnx", fp16=engine and torch.cuda.is_available(),
                                calib_data=self.dataset.root)
        files = run_export(self.output / "model.pt", options, progress=lambda line: job.update(line))
        job.result = {"files": [{"kind": f.kind, "path": str(f.path), "note": f.note or None,
                                 "verify": f.report.summary() if f.report else None} for f in files]}
        fastest = next((f for f in files if f.kind == "engine"), None) or next(f for f in files if f.kind == "onnx")
        job.update(f"going live with {fastest.path.name}", 0.9)
        job.version = self.live.go_live(fastest.path)
        job.result["live"] = str(fastest.path)


class _EpochLines(logging.Handler):
    """Progress of a train_model run, from its `epoch i/n [stage]` log lines."""

    def __init__(self, job: Job, stages: int) -> None:
        super().__init__(logging.INFO)
        self.job, self.stages = job, stages
        self.stage_names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        m = _EPOCH_LINE.search(message)
        if m is None:
            if not _CLI_FLAG.search(message):  # train's advice names its flags, which mean nothing on the page
                self.job.update(message[:200])
            return
        epoch, epochs, stage = int(m.group(1)), int(m.group(2)), m.group(3)
        if stage not in self.stage_names:
            self.stage_names.append(stage)
        done = (len(self.stage_names) - 1 + epoch / epochs) / self.stages
        self.job.update(message[:200], 0.05 + 0.85 * done)
