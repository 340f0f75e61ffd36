"""Command-line options shared by the commands that load a model (`edge predict`, `edge bench`)."""

from __future__ import annotations

import argparse
from typing import Any

from edge.core.logs import setup_logging
from edge.runtime.backends import BACKEND_CHOICES, DEVICE_CHOICES


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from e
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --backend, --device and --threads, with the runtime's backend and device choices."""
    parser.add_argument("--model", required=True,
                        help="model file: model.pt (train), model.onnx (edge export) or a TensorRT .engine")
    parser.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                        help="runtime (default auto: picked by the model file's type)")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="default auto: the GPU when usable")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="CPU inference threads (default: onnxruntime all cores up to 4; torch the cores "
                             "other processes leave free)")


def backend_options(threads: int | None) -> dict[str, Any]:
    """The `load_backend` options for the parsed --threads (none when unset: TensorRT takes no thread count)."""
    return {"threads": threads} if threads else {}


def log_to_stderr(level: int) -> None:
    """The model commands' log lines (backend choice, warnings) go to stderr, so stdout stays their results."""
    setup_logging(level)
