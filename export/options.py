"""What an export is: `ExportOptions` (every setting of `edge export`, validated once, when it is made), and
`output_path`, the one function that decides where each file of an export goes.

`run_export` (export.run), `build_engine_report` (export.engine_build) and `export_onnx_verified`
(export.onnx_export) all take the same options object, as `train_model` takes a TrainConfig; nothing below them
decides a path of its own. Imports nothing heavy (no torch, no TensorRT).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from edge.core.errors import EdgeError

from .cache import check_output_suffix, default_engine_path, default_onnx_path, is_dir_arg, prepare_output
from .calibration import DEFAULT_CALIB_BATCH, DEFAULT_CALIB_IMAGES
from .verify import DEFAULT_VERIFY_IMAGES

FORMATS = ("onnx", "engine", "all")
KINDS = ("onnx", "onnx-fp16", "engine")  # the files an export writes
DEFAULT_OPSET = 11
MIN_OPSET, MAX_OPSET = 9, 20  # the TorchScript exporter's range that still makes sense for these CNNs
DEFAULT_MAX_BATCH = 8
DEFAULT_WORKSPACE_MB = 1024


def check_opset(opset: int) -> int:
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise EdgeError(
            f"--opset {opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET} "
            f"({DEFAULT_OPSET} for old Jetson TensorRT 7.x/8.x, the default)"
        )
    return opset


def _at_least(flag: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise EdgeError(f"{flag} must be an integer >= {lo}, got {value!r}")


@dataclass(frozen=True)
class ExportOptions:
    """Every setting of an export; the field names are the `edge export` flags (`fmt` is --format).

    fmt "onnx": model.onnx (FP32), or model.fp16.onnx with fp16. fmt "engine": a TensorRT engine (fp32, or fp16 /
    int8), building the FP32 ONNX first when given a checkpoint. fmt "all": both (and the FP16 ONNX with fp16).
    `output`: the file to write for a single result, or a directory (existing, or ending in '/'); None: beside
    the model. `cache_dir` holds TensorRT's timing and calibration caches (default: beside the engine).
    """

    fmt: str = "onnx"
    fp16: bool = False
    int8: bool = False
    calib_data: str | os.PathLike | None = None  # images for verification and INT8 calibration
    opset: int = DEFAULT_OPSET
    output: str | os.PathLike | None = None
    verify_images: int = DEFAULT_VERIFY_IMAGES
    max_batch: int = DEFAULT_MAX_BATCH
    workspace_mb: int = DEFAULT_WORKSPACE_MB
    cache_dir: str | os.PathLike | None = None
    force: bool = False  # rebuild an engine even when the cached one is up to date
    verify: bool = True  # verify a built engine against the ONNX file (ONNX files are always verified)
    calib_images: int = DEFAULT_CALIB_IMAGES
    calib_batch: int = DEFAULT_CALIB_BATCH

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise EdgeError(f"unknown format {self.fmt!r}; choose one of: {', '.join(FORMATS)}")
        check_opset(self.opset)
        if self.int8 and self.fmt == "onnx":
            raise EdgeError("--int8 applies to TensorRT engines only; use --format engine (or all) with --int8 "
                            "--calib-data DIR")
        for flag, value, lo in (("--verify-images", self.verify_images, 1), ("--max-batch", self.max_batch, 1),
                                ("--workspace-mb", self.workspace_mb, 1), ("calib_images", self.calib_images, 1),
                                ("calib_batch", self.calib_batch, 1)):
            _at_least(flag, value, lo)
        if self.output is not None:
            if self.fmt == "all" and not is_dir_arg(self.output):
                raise EdgeError(f"--format all writes several files; --output must be a directory (ending in '/'), "
                                f"not {str(self.output)!r}")
            if self.fmt != "all":
                check_output_suffix(self.output, self.fmt)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "ExportOptions":
        """The options named in `values` (e.g. vars() of parsed arguments; other keys are ignored)."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    @classmethod
    def engine(cls, precision: str = "fp16", **kw: Any) -> "ExportOptions":
        """Options for building one engine at `precision` ("fp32", "fp16" or "int8")."""
        if precision not in ("fp32", "fp16", "int8"):
            raise EdgeError(f"unknown precision {precision!r}; choose one of: fp32, fp16, int8")
        return cls(fmt="engine", fp16=precision == "fp16", int8=precision == "int8", **kw)

    @property
    def precision(self) -> str:
        """The engine's precision."""
        return "int8" if self.int8 else "fp16" if self.fp16 else "fp32"

    @property
    def wants_engine(self) -> bool:
        return self.fmt in ("engine", "all")


def output_path(options: ExportOptions, kind: str, source: str | os.PathLike) -> Path:
    """Where the export writes its `kind` file ("onnx", "onnx-fp16" or "engine") made from `source` (the
    checkpoint for ONNX files, the ONNX file for an engine); checked writable, its folder created.

    - an --output file is the file of the format asked for; the FP32 ONNX an engine is built from goes beside it;
    - an --output directory gets the default names (model.onnx, model.fp16.onnx, model.fp16.engine);
    - without --output, every file goes beside its source under the default name.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}; one of {KINDS}")
    default = default_engine_path(source, options.precision) if kind == "engine" else \
        default_onnx_path(source, kind == "onnx-fp16")
    output = options.output
    if output is None:
        out = default
    elif is_dir_arg(output):
        out = Path(output) / default.name
    elif kind == "engine" or options.fmt == "onnx":  # the file of the format asked for
        out = Path(output)
    else:  # the ONNX file an engine is built from: beside the engine
        out = Path(output).parent / default.name
    if out.is_dir():
        raise EdgeError(f"output {str(out)!r} is a directory; pass a file name such as {default.name!r}")
    with contextlib.suppress(OSError):
        if out.resolve() == Path(source).resolve():
            raise EdgeError(f"output {str(out)!r} is the {'ONNX file' if kind == 'engine' else 'checkpoint'} itself; "
                            "choose another --output")
    return prepare_output(out, "engine directory" if kind == "engine" else "output directory")
