"""`edge models`: list the registry's architectures."""

from __future__ import annotations

from edge.core.cli_parser import CliParser
from edge.core.registry import ARCHS, DEFAULT_ARCH


def main(argv: list[str] | None = None) -> int:
    CliParser(prog="edge models", description="List the architectures in the model registry.").parse_args(argv)
    for name, spec in ARCHS.items():
        offline = " (ImageNet weights offline)" if spec.offline_imagenet else ""
        default = " [default]" if name == DEFAULT_ARCH else ""  # what `train --arch` uses when not given
        print(f"{name:<20} {spec.description}{offline}{default}")
    return 0
