"""User-facing errors: one clear line, shown without a traceback by every CLI."""

from __future__ import annotations

import errno
import functools
import logging
import sys
from typing import Callable


class EdgeError(Exception):
    """An error caused by the user's input or environment; its message says what was wrong and what to do."""

    exit_code = 2


_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(e: BaseException | None) -> bool:
    """Whether `e`, or an exception that caused it, is a full disk (or an exhausted quota)."""
    seen = 0
    while e is not None and seen < 20:
        if isinstance(e, OSError) and e.errno in _FULL or "No space left on device" in str(e):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


class DiskFullError(EdgeError, OSError):
    """A write failed because the disk is full: an EdgeError (one line for the user) that is still an OSError
    (ENOSPC) for code that handles write errors."""

    def __init__(self, path: object, cause: OSError | None = None) -> None:
        OSError.__init__(self, errno.ENOSPC, "No space left on device", str(path))
        self.message = (f"no space left on the disk while writing {str(path)!r}; free some space (df -h) or write "
                        "somewhere else")

    def __str__(self) -> str:
        return self.message


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
    except OSError as e:
        if not disk_full(e):
            raise
        print(f"error: no space left on the disk ({e.filename or 'while writing'}); free some space (df -h) or "
              "write somewhere else", file=sys.stderr)
        logging.getLogger(__name__).debug("details", exc_info=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def cli_entry(func: Callable[..., int]) -> Callable[..., int]:
    """Decorator for `main(argv=None) -> int` functions: EdgeError becomes one line and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs) -> int:
        return run_cli(lambda: func(*args, **kwargs))

    return wrapper
