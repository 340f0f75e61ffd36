"""`edge`: the umbrella command. Each subcommand is a module with `main(argv) -> int`, imported only when used."""

from __future__ import annotations

import importlib
import sys

# name -> (module with main(argv), one-line help). Modules import lazily so `edge --help` stays fast.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train.cli", "fine-tune a pretrained CNN on an ImageFolder dataset (same as `train`)"),
    "capture": ("capture.cli", "collect labeled camera snapshots into a dataset (same as `capture`)"),
    "export": ("export.cli", "export a checkpoint to ONNX / TensorRT, verified (same as `python -m export`)"),
    "serve": ("edge.cli.serve", "run the always-on camera service"),
    "teach": ("edge.cli.teach", "collect, train and go live from a browser (headless devices)"),
    "predict": ("edge.cli.predict", "classify image files, one JSON line each"),
    "bench": ("edge.cli.bench", "benchmark the real pipeline on a source"),
    "demo": ("edge.cli.demo", "end-to-end demo: synthetic data -> train -> export -> serve, no camera or network"),
    "synth": ("edge.cli.synth", "write the synthetic up/down arrow dataset"),
    "install-service": ("edge.cli.install_service", "install the systemd unit for `edge serve`"),
    "doctor": ("edge.cli.doctor", "check this machine: JetPack, torch/CUDA, TensorRT, onnxruntime, OpenCV, cameras"),
    "models": ("edge.cli.models", "list the architectures in the model registry"),
}


def _usage() -> str:
    lines = ["usage: edge <command> [options]", "", "commands:"]
    lines += [f"  {name:<16} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "`edge <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from edge import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown command {name!r}; choose one of: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    # no process-wide tuning here (train's malloc settings would hurt serve), but one that suits every command:
    # waiting OpenMP threads sleep instead of spinning on cores others need; it must precede torch's import
    from edge.core.threads import yield_when_waiting

    yield_when_waiting()
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
