"""Backbone features of every snapshot, computed in the background as it arrives, so Train only fits the head.

As train's head mode does (train/trainer.py head_stage): for each image one clean view (the runtime's own
preprocessing, `train.presets.EvalTransform`) and `views - 1` augmented ones (`train.presets.train_transform`),
through the frozen ImageNet backbone (`edge.core.registry.ArchSpec.features`), kept as float16. Clean views come
first: a training needs every image's clean view, the augmented views only make it steadier. So when snapshots
arrive faster than the CPU follows, Train waits for clean views only and uses the augmented views cached so far.

The cache is never a second source of truth: entries are keyed by path, size and modification time, and a
training asks for the files it found on disk; an entry whose file changed or disappeared is dropped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from edge.core.errors import EdgeError, brief
from edge.core.registry import ArchSpec, create_model, get_arch
from edge.core.threads import ThreadPolicy
from train.dataset import load_rgb
from train.engine import autocast
from train.presets import AugmentSpec, EvalTransform, train_transform

log = logging.getLogger(__name__)

CLEAN_BATCH = 8  # clean views of up to this many waiting snapshots in one forward pass
LIVE_CORES = 1.0  # cores kept for the rest of the teach process: camera capture and the live model's inference


def file_key(path: str) -> tuple[int, int] | None:
    """(modification time in ns, size) of a file, or None when it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


@dataclass
class Entry:
    """One image's features: the clean view and the augmented views computed so far (or why it has none)."""

    key: tuple[int, int]
    clean: torch.Tensor | None
    augmented: list[torch.Tensor] = field(default_factory=list)
    error: str = ""


class FeatureCache:
    """A worker thread that keeps backbone features of the snapshots it is given, for head training."""

    def __init__(self, arch: str, views: int = 4, device: str = "auto", augment: AugmentSpec | None = None,
                 threads: int | None = None, reserved: float = LIVE_CORES) -> None:
        self.arch: ArchSpec = get_arch(arch)
        self.views = int(views)
        cuda = torch.cuda.is_available() and device in ("auto", "cuda")
        self.device = torch.device("cuda" if cuda else "cpu")
        self.augment = augment or AugmentSpec()
        self.model: torch.nn.Module | None = None
        self.model_lock = threading.Lock()  # the backbone is shared with the trainer (which attaches heads)
        self.ready = threading.Event()
        self.error = ""
        self.seconds = 0.0  # time spent computing features
        self._entries: dict[str, Entry] = {}
        self._clean: OrderedDict[str, None] = OrderedDict()  # paths waiting for their clean view
        self._augment: OrderedDict[str, None] = OrderedDict()  # paths waiting for their augmented views
        self._busy: set[str] = set()  # paths whose clean view is being computed now
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="teach-features", daemon=True)
        # torch's threads: `threads`, else the cores left by other processes and our own camera and live model
        self.threads = ThreadPolicy(threads, reserved=reserved)

    # ------------------------------------------------------------------ what the service calls
    def start(self) -> "FeatureCache":
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> bool:
        """Stop the worker; False when it is still busy after `timeout` (e.g. loading the backbone)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def submit(self, paths: Iterable[str | os.PathLike], first: bool = False) -> None:
        """Compute these files' features (again, if they changed); `first`: ahead of everything waiting."""
        with self._cond:
            for p in map(str, paths):
                if self._current(p) or p in self._busy:
                    continue
                self._clean[p] = None
                if first:
                    self._clean.move_to_end(p, last=False)
            self._cond.notify_all()

    def forget(self, paths: Iterable[str | os.PathLike]) -> None:
        with self._cond:
            for p in map(str, paths):
                self._entries.pop(p, None)
                self._clean.pop(p, None)
                self._augment.pop(p, None)

    def status(self) -> dict[str, Any]:
        with self._cond:
            done = [e for e in self._entries.values() if e.clean is not None]
            return {"ready": self.ready.is_set() and not self.error, "error": self.error or None,
                    "cached": len(done), "pending": len(self._clean), "augmenting": len(self._augment),
                    "augmented": sum(1 for e in done if len(e.augmented) >= self.views - 1)}

    def collect(self, paths: list[str], progress: Callable[[int, int], None] | None = None,
                cancelled: Callable[[], bool] = lambda: False) -> dict[str, Entry]:
        """Every path's entry (waiting for missing clean views, computed first); entries of files that changed
        or disappeared are dropped, and a file deleted meanwhile gets an entry without features (so a training
        never waits for a file that is gone). Raises EdgeError when the backbone could not be loaded."""
        wanted = set(paths)
        with self._cond:
            for p in [p for p, e in self._entries.items() if p not in wanted and e.key != file_key(p)]:
                del self._entries[p]
        self.submit(paths, first=True)
        while True:
            with self._cond:
                missing = [p for p in paths if not self._current(p) and (p in self._busy or file_key(p) is not None)]
                if progress is not None:
                    progress(len(paths) - len(missing), len(paths))
                if not missing:
                    return {p: self._entries[p] if self._current(p) else Entry((0, 0), None, error="deleted")
                            for p in paths}
                if self.error:
                    raise EdgeError(f"cannot compute features: {self.error}")
                if self._stop or cancelled():
                    raise EdgeError("stopped while computing features")
                self._clean.update((p, None) for p in missing if p not in self._clean and p not in self._busy)
                self._cond.notify_all()
                self._cond.wait(0.5)

    def _current(self, path: str) -> bool:
        entry = self._entries.get(path)
        return entry is not None and entry.key == file_key(path)

    # ------------------------------------------------------------------ the worker
    def _run(self) -> None:
        try:
            self._load()
        except Exception as e:  # noqa: BLE001 - reported to every training that needs features
            self.error = str(e) if isinstance(e, EdgeError) else brief(e)
            log.error("teach: cannot load the %s backbone: %s", self.arch.name, self.error)
            self.ready.set()
            return
        self.ready.set()
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stop or self._clean or self._augment)
                if self._stop:
                    return
                clean = bool(self._clean)
                queue, n = (self._clean, CLEAN_BATCH) if clean else (self._augment, 1)
                batch = [queue.popitem(last=False)[0] for _ in range(min(n, len(queue)))]
                if clean:
                    self._busy.update(batch)
            try:
                self._compute(batch, clean)
            except Exception as e:  # one bad batch must not end the worker
                log.exception("teach: features of %d image(s) failed: %s", len(batch), brief(e))
                with self._cond:
                    for p in batch:
                        key = file_key(p)
                        if key is not None:
                            self._entries[p] = Entry(key, None, error=brief(e))
            finally:
                with self._cond:
                    self._busy.difference_update(batch)
                    self._cond.notify_all()

    def _load(self) -> None:
        t = time.perf_counter()
        model = create_model(self.arch.name, 2, "imagenet").eval().requires_grad_(False)
        # channels_last: about 1.5x faster convolutions on CPU (and for cuDNN)
        self.model = model.to(self.device, memory_format=torch.channels_last)
        size = self.arch.preprocess.input_size
        # warm up the shapes used later (oneDNN builds its kernels on first use): one image, one image's views,
        # and the live model's batch of one, which the first frames of a new model would otherwise pay for
        for n in sorted({1, max(1, self.views - 1), CLEAN_BATCH}):
            self.features(torch.zeros(n, 3, size, size))
        log.info("teach: %s backbone ready in %.1fs", self.arch.name, time.perf_counter() - t)

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """Backbone features of a batch of preprocessed images, float16 on the CPU."""
        t = time.perf_counter()
        if self.device.type == "cpu":
            self.threads.refresh()  # re-measured every few seconds: a load that comes and goes is followed
        with self.model_lock, torch.inference_mode(), autocast(self.device):
            x = batch.to(self.device).contiguous(memory_format=torch.channels_last)
            out = self.arch.features(self.model, x).float().cpu().to(torch.float16)
        self.seconds += time.perf_counter() - t
        return out.clone()  # a normal tensor: inference-mode tensors cannot enter autograd later

    def _compute(self, paths: list[str], clean: bool) -> None:
        keys, images, bad = {}, {}, {}
        for p in paths:
            key = file_key(p)
            if key is None:
                continue  # deleted meanwhile
            try:
                images[p] = load_rgb(p)
                keys[p] = key
            except Exception as e:  # noqa: BLE001 - an unreadable image is skipped, as train skips it
                bad[p] = Entry(key, None, error=brief(e))
        if clean:
            tf = EvalTransform(self.arch.preprocess)
            feats = self.features(torch.stack([tf(images[p]) for p in images])) if images else []
            with self._cond:
                self._entries.update(bad)
                for p, f in zip(images, feats):
                    self._entries[p] = Entry(keys[p], f)
                    if self.views > 1:
                        self._augment[p] = None
                self._cond.notify_all()
            return
        tf = train_transform(self.arch.preprocess, self.augment)
        for p, img in images.items():
            feats = self.features(torch.stack([tf(img) for _ in range(self.views - 1)]))
            with self._cond:
                entry = self._entries.get(p)
                if entry is not None and entry.key == keys[p]:
                    entry.augmented = list(feats)
