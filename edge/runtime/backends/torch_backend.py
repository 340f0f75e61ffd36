"""PyTorch backend: a `train` checkpoint (.pt), CUDA FP16 + channels_last when a GPU exists, else CPU FP32.

On the CPU its intra-op threads are `threads` (--threads) or the cores not kept busy by other processes when the
backend loads (edge.core.threads: more would collapse beside a busy process); waiting threads yield when the CLI
set that up before torch was imported.

A checkpoint with a novelty bank runs as `ClassifierWithNovelty` (probabilities and novelty from one backbone
pass, the score in float32 whatever the network's precision); older checkpoints give probabilities only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from edge.core.threads import apply_torch_threads
from edge.runtime.backends.base import Backend, Outputs, check_batch

log = logging.getLogger(__name__)


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, path: str | os.PathLike, device: str = "auto", fp16: bool | None = None,
                 threads: int | None = None) -> None:
        import torch

        from edge.core.devices import torch_device
        from edge.core.metadata import load_model

        dev = torch_device(device).type  # "cuda" or "cpu"
        if dev == "cpu" or threads:  # --threads, else the cores other processes leave free (edge.core.threads)
            apply_torch_threads(threads)
        model, meta = load_model(Path(path), device="cpu", with_novelty=True)
        self.fp16 = (dev == "cuda") if fp16 is None else bool(fp16 and dev == "cuda")
        model = model.to(dev, memory_format=torch.channels_last)
        if self.fp16:
            model = model.half()
        super().__init__(meta, device=dev, providers=[f"{dev} {'fp16' if self.fp16 else 'fp32'}"])
        self._torch = torch
        self._model = model
        self._dtype = torch.float16 if self.fp16 else torch.float32
        self._dev = torch.device(dev)
        self.has_novelty = meta.novelty is not None

    def run(self, batch: np.ndarray) -> Outputs:
        torch = self._torch
        if self._model is None:
            raise RuntimeError("backend is closed")
        batch = check_batch(batch, self.input_size)
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self._dev, dtype=self._dtype, memory_format=torch.channels_last)
            out = self._model(x)
            if self.has_novelty:  # ClassifierWithNovelty: already (softmax, novelty) in float32
                probs, novelty = out
                return probs.float().cpu().numpy(), novelty.float().cpu().numpy()
            return torch.softmax(out.float(), dim=1).cpu().numpy(), None

    def close(self) -> None:
        if self._model is not None:
            self._model = None
            if self._dev.type == "cuda":
                self._torch.cuda.empty_cache()
