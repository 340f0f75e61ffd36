"""`edge export` / `python -m export`: checkpoint -> verified ONNX (FP32/FP16) -> TensorRT engine on the device."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from edge.core.cli_parser import CliParser
from edge.core.errors import cli_entry
from edge.core.logs import setup_logging

from .options import (
    DEFAULT_MAX_BATCH,
    DEFAULT_OPSET,
    DEFAULT_WORKSPACE_MB,
    FORMATS,
    MAX_OPSET,
    MIN_OPSET,
    ExportOptions,
)
from .run import ExportedFile, run_export
from .verify import DEFAULT_VERIFY_IMAGES

EPILOG = """\
examples:
  edge export runs/x/model.pt                        # runs/x/model.onnx (FP32, opset 11), verified
  edge export runs/x/model.pt --fp16                 # runs/x/model.fp16.onnx for onnxruntime's CUDA/TensorRT providers
  edge export model.onnx --format engine --fp16      # on the Jetson: model.fp16.engine + model.fp16.engine.json
  edge export model.pt --format engine --int8 --calib-data data/   # INT8, calibrated on real images

Every ONNX file is checked against PyTorch (onnxruntime, same inputs) before it is kept; a failed check writes
nothing and exits 3. Engines are built on the device that runs them and reused while the ONNX file, TensorRT
version, GPU, precision and input shape are unchanged.
"""


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog="edge export",
        description="Export a trained checkpoint to ONNX (verified against PyTorch) and build TensorRT engines.",
        epilog=EPILOG,
    )
    p.add_argument("model", help="model.pt written by `train` (or, with --format engine, an exported .onnx)")
    p.add_argument("--format", dest="fmt", default="onnx", metavar="|".join(FORMATS),
                   help="what to write (default onnx); engine/all need TensorRT (JetPack)")
    p.add_argument("--fp16", action="store_true", help="FP16: model.fp16.onnx with --format onnx; an FP16 engine")
    p.add_argument("--int8", action="store_true", help="INT8 engine, calibrated on real images (--calib-data)")
    p.add_argument("--calib-data", metavar="DIR",
                   help="images for verification and INT8 calibration (default: the training data, if still there)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N",
                   help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} "
                        f"(default {DEFAULT_OPSET}: every JetPack TensorRT parses it)")
    p.add_argument("--output", "-o", metavar="PATH",
                   help="output file (.onnx; for an engine .engine or .plan), "
                        "or a directory (default: beside the model)")
    p.add_argument("--verify-images", type=int, default=DEFAULT_VERIFY_IMAGES, metavar="N",
                   help=f"images to verify on (default {DEFAULT_VERIFY_IMAGES})")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, metavar="N",
                   help=f"largest engine batch (default {DEFAULT_MAX_BATCH})")
    p.add_argument("--workspace-mb", type=int, default=DEFAULT_WORKSPACE_MB, metavar="MB",
                   help=f"TensorRT builder workspace (default {DEFAULT_WORKSPACE_MB}; lower it on a 2-4 GB Jetson if "
                        "the build fails)")
    p.add_argument("--cache-dir", metavar="DIR", help="timing and calibration caches (default: beside the engine)")
    p.add_argument("--force", action="store_true", help="rebuild the engine even when the cached one is up to date")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for TensorRT's)")
    return p


class _ProgressLine:
    """Engine build progress: one line rewritten in place on a terminal, a line every 30 s otherwise (logs)."""

    def __init__(self, stream=sys.stderr, every_s: float = 30.0):
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.every_s = every_s
        self._last = 0.0
        self._drawn = False

    def __call__(self, line: str) -> None:
        if self.tty:
            self.stream.write("\r" + line[:150].ljust(100))
            self._drawn = True
        elif time.monotonic() - self._last >= self.every_s:
            self.stream.write(line + "\n")
            self._last = time.monotonic()
        self.stream.flush()

    def end(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def _size(path) -> str:
    try:
        return f"{path.stat().st_size / 1e6:.1f} MB"
    except OSError:
        return "?"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose >= 2 else logging.INFO if args.verbose == 1 else logging.WARNING
    setup_logging(level)
    progress = _ProgressLine()

    def show(f: ExportedFile) -> None:
        progress.end()
        if f.note:
            print(f.note)
        if f.report is not None:
            print(f.report.summary())
        print(f"wrote {f.path} ({_size(f.path)})")
        sys.stdout.flush()

    options = ExportOptions.from_mapping(vars(args))  # the flags' dests are the options' field names
    try:
        run_export(args.model, options, progress=progress, on_file=show,
                   on_phase=lambda line: print(line, flush=True))
    finally:
        progress.end()
    return 0


if __name__ == "__main__":
    sys.exit(main())
