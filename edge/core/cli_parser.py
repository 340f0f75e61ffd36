"""The one argument parser every command uses (`edge ...`, `train`, `capture`, `edge export`).

- A wrong flag or value prints two lines, the error and where the options are, and exits 2 (argparse's code), instead
  of argparse's whole usage block above the one line that matters.
- `--help` shows each option's default where its help does not already say it (the description and epilog keep
  their line breaks).
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Raw description/epilog; "(default: X)" appended to an option's help unless it names its default already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (action.help is argparse.SUPPRESS or "default" in text.lower() or default in (None, False, True, "")
                or default is argparse.SUPPRESS or not action.option_strings):
            return action.help
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class CliParser(argparse.ArgumentParser):
    """argparse.ArgumentParser with HelpFormatter and a two-line error: `error: ...` and a hint."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message}\nsee `{self.prog} --help` for the options\n")
        sys.exit(2)
