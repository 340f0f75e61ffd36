"""Runtime backends behind one interface: `load_backend(model_path, backend="auto", device="auto") -> Backend`.

| backend       | model file        | runs on                                            |
|---------------|-------------------|----------------------------------------------------|
| `tensorrt`    | `.engine` (+ meta JSON sidecar) | the GPU, through TensorRT's Python API |
| `onnxruntime` | `.onnx`           | TensorRT -> CUDA -> CPU execution providers, whichever exist |
| `torch`       | `.pt` (`train`)   | CUDA in FP16 (channels_last) when a GPU exists, else CPU FP32 |

`auto` picks by file type (the fastest runtime that can read that file): `.engine`/`.plan`/`.trt` -> tensorrt,
`.onnx` -> onnxruntime, `.pt`/`.pth` -> torch, and logs its choice. Labels, preprocessing and the novelty
threshold always come from the model file. `backend.run(batch)`, the one way to run a model, gives
(probabilities, novelty or None). Heavy imports (torch, onnxruntime, tensorrt) happen only inside
each backend's module.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from edge.core.errors import EdgeError

if TYPE_CHECKING:
    from edge.runtime.backends.base import Backend

log = logging.getLogger(__name__)

__all__ = ["Backend", "BACKENDS", "BACKEND_CHOICES", "DEVICE_CHOICES", "load_backend", "backend_for_file", "softmax"]


def __getattr__(name: str):
    # the interface module imports numpy and the model metadata: only when asked for, so `edge serve --help` and
    # the service's config (which takes BACKEND_CHOICES from here) stay light
    if name in ("Backend", "softmax"):
        from edge.runtime.backends import base

        return getattr(base, name)
    raise AttributeError(name)


def _factory(module: str, cls: str) -> Callable[..., Backend]:
    def make(path: Path, device: str, **kw) -> Backend:
        mod = importlib.import_module(f"{__name__}.{module}")
        return getattr(mod, cls)(path, device=device, **kw)

    return make


# name -> factory(path, device, **options). The only place backends are registered.
BACKENDS: dict[str, Callable[..., Backend]] = {
    "tensorrt": _factory("tensorrt_backend", "TensorRTBackend"),
    "onnxruntime": _factory("onnxruntime_backend", "OnnxRuntimeBackend"),
    "torch": _factory("torch_backend", "TorchBackend"),
}
BACKEND_CHOICES = ("auto", *BACKENDS)
DEVICE_CHOICES = ("auto", "cpu", "cuda")

# file suffix -> the backend that reads it
SUFFIXES: dict[str, str] = {
    ".engine": "tensorrt", ".plan": "tensorrt", ".trt": "tensorrt",
    ".onnx": "onnxruntime",
    ".pt": "torch", ".pth": "torch",
}


def backend_for_file(path: str | os.PathLike) -> str:
    """The backend `auto` picks for a model file, by its suffix."""
    suffix = Path(path).suffix.lower()
    try:
        return SUFFIXES[suffix]
    except KeyError as e:
        raise EdgeError(
            f"model file {str(path)!r} has an unknown type {suffix or '(no suffix)'!r}; expected one of "
            f"{', '.join(sorted(SUFFIXES))} (a `train` checkpoint, an `edge export` ONNX file, or a TensorRT engine)"
        ) from e


def load_backend(
    model_path: str | os.PathLike, backend: str = "auto", device: str = "auto", *,
    novelty_threshold: float | None = None, **options
) -> Backend:
    """Load `model_path` with the named backend ("auto" picks by file type and logs its choice).

    device: "auto" (GPU when one is usable), "cpu" or "cuda". novelty_threshold: replaces the model's calibrated
    one (a model without a novelty score ignores it, with one log line). options go to the backend (e.g.
    `threads` for onnxruntime, `fp16` for torch). Raises EdgeError (one line) for a missing or unreadable file,
    an unknown backend, or a backend that cannot read this kind of file.
    """
    path = Path(model_path)
    if backend not in BACKEND_CHOICES:
        raise EdgeError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKEND_CHOICES)}")
    if device not in DEVICE_CHOICES:
        raise EdgeError(f"unknown device {device!r}; choose one of: {', '.join(DEVICE_CHOICES)}")
    if not path.is_file():
        raise EdgeError(f"model file {str(path)!r} not found")
    native = backend_for_file(path)
    name = native if backend == "auto" else backend
    if name != native:
        hint = {
            "onnxruntime": "export it to ONNX first with `edge export`",
            "tensorrt": "build a TensorRT engine on the device first with `edge export`",
            "torch": "the torch backend reads `train` checkpoints (.pt) only",
        }[name]
        raise EdgeError(f"backend {name!r} cannot read {str(path)!r} (a {native} model file); "
                        f"{hint}, or use --backend auto")
    loaded = BACKENDS[name](path, device, **options)
    loaded.set_novelty_threshold(novelty_threshold)
    log.info("%s %s: %s", "auto-selected backend" if backend == "auto" else "backend", name, loaded.describe())
    return loaded
