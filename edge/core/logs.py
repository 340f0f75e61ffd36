"""The one logging set-up of every command (`edge ...`, `train`, `capture`, `python -m export`): library code
logs through module loggers; a command's `main` calls `setup_logging` once."""

from __future__ import annotations

import logging
import os
import sys
from typing import IO

DETAILED = "%(levelname)s %(name)s: %(message)s"
PLAIN = "%(message)s"  # commands whose log lines are their progress report (train, demo)


def setup_logging(level: int | str, *, stream: IO[str] | None = None, plain: bool = False,
                  timestamps: bool = False, force: bool = False) -> None:
    """Send log records at `level` (a logging level or its name) to `stream` (default stderr, so stdout keeps a
    command's results) as `LEVEL logger: message`, or the message alone with `plain`. `timestamps` prefixes the
    time, except under systemd, whose journal adds its own. `force` replaces an earlier set-up (a service run
    again in one process)."""
    if isinstance(level, str):
        level = getattr(logging, level.upper())
    fmt = PLAIN if plain else DETAILED
    if timestamps and not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level, format=fmt, stream=stream or sys.stderr, force=force)
