"""Atomic file writes and writable-directory checks."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator

from edge.core.errors import DiskFullError, EdgeError, disk_full

TEMP_PREFIX = ".tmp-"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files 0600; finished files get the permissions a plain open() would give them, so a service
# running as another user (systemd's dedicated user) can read the models and datasets we write
_FILE_MODE = 0o666 & ~_current_umask()


def is_temp_name(name: str) -> bool:
    """True for the temporary names our atomic writers use (readers such as the trainer skip them)."""
    return os.path.basename(name).startswith(TEMP_PREFIX)


def ensure_writable_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Create `path` if needed and check we can write into it; raise EdgeError with the fix otherwise."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgeError(f"cannot create {what} {str(p)!r}: {e.strerror}; choose a writable location") from e
    if not p.is_dir():
        raise EdgeError(f"{what} {str(p)!r} exists and is not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=p, prefix=TEMP_PREFIX):
            pass
    except OSError as e:
        raise EdgeError(f"{what} {str(p)!r} is not writable ({e.strerror}); "
                        "choose another or fix its permissions") from e
    return p


def make_readable(path: str | os.PathLike) -> None:
    """Give a file created by mkstemp (0600) the permissions a plain open() would have given it."""
    with contextlib.suppress(OSError):
        os.chmod(path, _FILE_MODE)


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory, so a rename or a new file in it survives a power cut (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (and Windows) cannot fsync a directory; the rename itself still happened
        pass
    finally:
        os.close(fd)


def replace_durably(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """`os.replace(src, dst)`, then fsync `dst`'s directory: without it a power cut can undo the rename."""
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike, permissions: int | None = None) -> None:
    """Copy `src` to `dst` atomically: a reader (or a power cut) sees the old file or the whole new one."""
    with open(src, "rb") as fin, atomic_write(dst, "wb", permissions) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", permissions: int | None = None) -> Iterator[IO]:
    """Write to a temporary file beside `path`, fsync it, `os.replace` it into place, then fsync the directory.

    If the block raises (or the process dies), `path` is untouched and no partial file is left under its name.
    `permissions` (e.g. 0o640 for a file holding a token) are set before the file appears under its name;
    default: what a plain open() would give.
    """
    target = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=TEMP_PREFIX, suffix=target.suffix)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), _FILE_MODE if permissions is None else permissions)
            os.fsync(f.fileno())
        replace_durably(tmp, target)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if disk_full(e) and not isinstance(e, DiskFullError):
            raise DiskFullError(target, e) from e
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, permissions: int | None = None) -> None:
    with atomic_write(path, "wb", permissions) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, permissions: int | None = None) -> None:
    with atomic_write(path, "w", permissions) as f:
        f.write(text)


def remove_stale_temps(folder: str | os.PathLike, older_than_s: float = 60.0) -> int:
    """Delete the temporary (.tmp-*) files in `folder` older than `older_than_s`: left by a writer that was killed
    (kill -9, a power cut) before it could clean up. Returns how many were removed."""
    import time

    cutoff = time.time() - older_than_s
    removed = 0
    for p in Path(folder).glob(TEMP_PREFIX + "*"):
        try:
            if p.is_file() and p.stat().st_mtime < cutoff:
                p.unlink()
                removed += 1
        except OSError:
            pass
    return removed
