"""What `edge export` does, as one importable function: checkpoint -> ONNX (FP32 / FP16) -> TensorRT engine."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edge.core.errors import EdgeError

from .cache import check_output_suffix, is_dir_arg
from .onnx_export import (
    DEFAULT_OPSET,
    check_opset,
    default_onnx_path,
    export_onnx_verified,
)
from .verify import DEFAULT_VERIFY_IMAGES, VerifyReport

log = logging.getLogger(__name__)

FORMATS = ("onnx", "engine", "all")


@dataclass
class ExportedFile:
    kind: str  # "onnx", "onnx-fp16", "engine"
    path: Path
    report: VerifyReport | None = None
    note: str = ""  # e.g. the engine build summary


def engine_precision(fp16: bool, int8: bool) -> str:
    return "int8" if int8 else "fp16" if fp16 else "fp32"


def run_export(
    model: str | os.PathLike,
    *,
    fmt: str = "onnx",
    fp16: bool = False,
    int8: bool = False,
    calib_data: str | os.PathLike | None = None,
    opset: int = DEFAULT_OPSET,
    output: str | os.PathLike | None = None,
    verify_images: int = DEFAULT_VERIFY_IMAGES,
    max_batch: int | None = None,
    workspace_mb: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    on_file: Callable[[ExportedFile], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> list[ExportedFile]:
    """Export `model` (a training checkpoint, or for engines also an exported .onnx file) as asked.

    fmt "onnx": model.onnx (FP32), or model.fp16.onnx with fp16. fmt "engine": a TensorRT engine (fp32, or fp16 /
    int8 with the flags), building the FP32 ONNX first when given a checkpoint. fmt "all": both (and the FP16 ONNX
    with fp16). `output` is the file to write for a single result, or a directory. `on_file` is called as each
    file is written (the CLI prints as it goes). Every ONNX file is verified before it is kept.
    """
    if fmt not in FORMATS:
        raise EdgeError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    check_opset(opset)
    model = Path(model)
    is_onnx = model.suffix.lower() == ".onnx"
    wants_engine = fmt in ("engine", "all")
    if int8 and not wants_engine:
        raise EdgeError("--int8 applies to TensorRT engines only; use --format engine (or all) with --int8 --calib-data DIR")
    if is_onnx and fmt != "engine":
        raise EdgeError(
            f"{model.name} is already ONNX; to export ONNX pass the training checkpoint (model.pt), or build an engine "
            f"from it with --format engine"
        )
    if fmt == "all" and output is not None and not is_dir_arg(output):
        raise EdgeError(f"--format all writes several files; --output must be a directory (ending in '/'), not {str(output)!r}")
    if output is not None:
        check_output_suffix(output, fmt)  # fmt is "onnx" or "engine" here: "all" takes a directory
    if model.is_dir():
        inside = model / "model.pt"
        raise EdgeError(f"{str(model)!r} is a folder; pass the model file in it"
                        + (f", e.g. `edge export {inside}`" if inside.is_file() else " (train writes model.pt)"))
    if not model.is_file():
        raise EdgeError(f"model file {str(model)!r} not found")
    if wants_engine:
        from .engine_build import require_tensorrt

        require_tensorrt()  # before any work: on a PC this is the one line that says how to get it

    results: list[ExportedFile] = []

    def done(f: ExportedFile) -> None:
        results.append(f)
        if on_file is not None:
            on_file(f)

    out_dir = Path(output) if output is not None and is_dir_arg(output) else None
    onnx_for_engine: Path | None = model if is_onnx else None

    if not is_onnx:
        if fmt == "onnx":
            variants = [fp16]
        elif fmt == "all":
            variants = [False, True] if fp16 else [False]
        else:  # engine from a checkpoint: the FP32 ONNX beside the engine
            variants = [False]
        for half in variants:
            if fmt == "onnx":
                target = output
            elif out_dir is not None:
                target = out_dir / default_onnx_path(model, half).name
            elif fmt == "engine" and output is not None:
                target = Path(output).parent / default_onnx_path(model, half).name
            else:
                target = None
            if on_phase is not None:  # tens of seconds on a CPU: say what is going on
                on_phase(f"exporting {model.name} to ONNX{' (FP16)' if half else ''} and checking it against PyTorch "
                         f"on up to {verify_images} images...")
            path, report = export_onnx_verified(
                model, target, opset=opset, fp16=half, calib_data=calib_data, verify_images=verify_images
            )
            done(ExportedFile("onnx-fp16" if half else "onnx", path, report))
            if not half:
                onnx_for_engine = path

    if wants_engine:
        from .cache import default_engine_path
        from .engine_build import (
            DEFAULT_MAX_BATCH,
            DEFAULT_WORKSPACE_MB,
            build_engine_report,
        )

        assert onnx_for_engine is not None
        precision = engine_precision(fp16, int8)
        if fmt == "engine" and output is not None:
            engine_out: str | os.PathLike = output
        else:  # beside the ONNX file (or in the --output directory); --cache-dir only holds timing/calibration caches
            engine_out = out_dir or default_engine_path(onnx_for_engine, precision)
        build = build_engine_report(
            onnx_for_engine,
            precision,
            calib_data,
            cache_dir,
            output=engine_out,
            max_batch=max_batch or DEFAULT_MAX_BATCH,
            workspace_mb=workspace_mb or DEFAULT_WORKSPACE_MB,
            verify_images=verify_images,
            force=force,
            progress=progress,
        )
        done(ExportedFile("engine", build.path, build.report, build.summary()))
    return results
