"""What `edge export` does, as one importable function: checkpoint -> ONNX (FP32 / FP16) -> TensorRT engine."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edge.core.errors import EdgeError

from .onnx_export import export_onnx_verified
from .options import ExportOptions
from .verify import VerifyReport

__all__ = ["ExportedFile", "run_export"]

log = logging.getLogger(__name__)


@dataclass
class ExportedFile:
    kind: str  # "onnx", "onnx-fp16", "engine"
    path: Path
    report: VerifyReport | None = None
    note: str = ""  # e.g. the engine build summary


def run_export(
    model: str | os.PathLike,
    options: ExportOptions,
    *,
    progress: Callable[[str], None] | None = None,
    on_file: Callable[[ExportedFile], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> list[ExportedFile]:
    """Export `model` (a training checkpoint, or for engines also an exported .onnx file) as `options` ask.

    `on_file` is called as each file is written (the CLI prints as it goes); `progress` gets the engine build's
    progress lines. Every ONNX file is verified before it is kept; `export.options.output_path` decides where
    each file goes.
    """
    model = Path(model)
    is_onnx = model.suffix.lower() == ".onnx"
    if is_onnx and options.fmt != "engine":
        raise EdgeError(
            f"{model.name} is already ONNX; to export ONNX pass the training checkpoint (model.pt), or build an engine "
            f"from it with --format engine"
        )
    if model.is_dir():
        inside = model / "model.pt"
        raise EdgeError(f"{str(model)!r} is a folder; pass the model file in it"
                        + (f", e.g. `edge export {inside}`" if inside.is_file() else " (train writes model.pt)"))
    if not model.is_file():
        raise EdgeError(f"model file {str(model)!r} not found")
    if options.wants_engine:
        from .engine_build import require_tensorrt

        require_tensorrt()  # before any work: on a PC this is the one line that says how to get it

    results: list[ExportedFile] = []

    def done(f: ExportedFile) -> None:
        results.append(f)
        if on_file is not None:
            on_file(f)

    onnx_for_engine: Path | None = model if is_onnx else None
    if not is_onnx:
        if options.fmt == "onnx":
            variants = [options.fp16]
        elif options.fmt == "all":
            variants = [False, True] if options.fp16 else [False]
        else:  # engine from a checkpoint: the FP32 ONNX beside the engine
            variants = [False]
        for half in variants:
            if on_phase is not None:  # tens of seconds on a CPU: say what is going on
                on_phase(f"exporting {model.name} to ONNX{' (FP16)' if half else ''} and checking it against PyTorch "
                         f"on up to {options.verify_images} images...")
            path, report = export_onnx_verified(model, options, fp16=half)
            done(ExportedFile("onnx-fp16" if half else "onnx", path, report))
            if not half:
                onnx_for_engine = path

    if options.wants_engine:
        from .engine_build import build_engine_report

        assert onnx_for_engine is not None
        build = build_engine_report(onnx_for_engine, options, progress=progress)
        done(ExportedFile("engine", build.path, build.report, build.summary()))
    return results
