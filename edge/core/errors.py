"""User-facing errors: one clear line, shown without a traceback by every CLI."""

from __future__ import annotations

import functools
import logging
import sys
from typing import Callable


class EdgeError(Exception):
    """An error caused by the user's input or environment; its message says what was wrong and what to do."""

    exit_code = 2


def brief(e: BaseException, limit: int = 160) -> str:
    """`Type: first line of message`, short enough for a one-line error (library messages can span pages)."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else ""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def run_cli(main: Callable[[], int]) -> int:
    """Run a CLI body, turning EdgeError (and Ctrl-C) into one line on stderr and a non-zero exit code."""
    try:
        return main()
    except EdgeError as e:
        # one line, whatever a wrapped library put in the message
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        logging.getLogger(__name__).debug("details", exc_info=True)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def cli_entry(func: Callable[..., int]) -> Callable[..., int]:
    """Decorator for `main(argv=None) -> int` functions: EdgeError becomes one line and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs) -> int:
        return run_cli(lambda: func(*args, **kwargs))

    return wrapper
