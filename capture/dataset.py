"""Writing snapshots into an ImageFolder dataset: collision-free names, atomic writes, undo, labels.txt."""

from __future__ import annotations

import contextlib
import datetime
import errno
import logging
import secrets
import time
from pathlib import Path

import cv2
import numpy as np

from edge.core.errors import EdgeError
from edge.core.files import is_image_name
from edge.core.fsutil import (
    TEMP_PREFIX,
    atomic_write_bytes,
    atomic_write_text,
    ensure_writable_dir,
)
from edge.core.labels import SPLITS, check_label

from .labels import label_dir

log = logging.getLogger(__name__)

LABELS_FILE = "labels.txt"
STALE_TEMP_S = 60.0  # temporary files older than this were left by a killed capture


def new_name(suffix: str = ".jpg") -> str:
    """A name that sorts by capture time and never collides: microsecond timestamp plus a random suffix."""
    now = datetime.datetime.now()
    return f"{now:%Y%m%d-%H%M%S-%f}-{secrets.token_hex(3)}{suffix}"


def count_images(folder: Path) -> int:
    """Images in `folder` as the trainer sees them (same extensions; hidden and temporary names skipped)."""
    try:
        return sum(1 for p in folder.iterdir() if is_image_name(p.name))
    except OSError:
        return 0


def _write_error(path: Path, e: OSError) -> EdgeError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "the disk is full; free some space or choose another --data"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        what = "the folder is read-only; choose a writable --data or fix its permissions"
    else:
        what = f"{e.strerror or e}; check the --data folder"
    return EdgeError(f"cannot write {str(path)!r}: {what}")


class DatasetWriter:
    """Saves images under DIR/LABEL/ (or DIR/SPLIT/LABEL/) and keeps DIR/labels.txt listing the classes."""

    def __init__(self, data_dir: str | Path, split: str | None = None, quality: int = 95):
        if not 1 <= quality <= 100:
            raise EdgeError(f"--quality must be 1-100, got {quality}")
        self.root = Path(data_dir)
        self.split = split
        self.quality = quality
        self.history: list[tuple[str, Path]] = []  # this session's shots, for undo
        self._counts: dict[str, int] = {}

    @property
    def base(self) -> Path:
        return self.root / self.split if self.split else self.root

    def prepare(self, label: str) -> Path:
        """Check the label, create its folder (checking it is writable) and remove stale temporary files."""
        folder = label_dir(self.root, label, self.split)
        ensure_writable_dir(folder, "label folder")
        cutoff = time.time() - STALE_TEMP_S
        for p in folder.glob(TEMP_PREFIX + "*"):
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
                    log.info("removed %s, left by an interrupted capture", p)
            except OSError:
                pass
        self._counts[label] = count_images(folder)
        return folder

    def count(self, label: str) -> int:
        if label not in self._counts:
            self._counts[label] = count_images(self.base / label)
        return self._counts[label]

    def _bases(self) -> list[Path]:
        """The folders holding class folders: every split's when the dataset is split, else the root."""
        return [self.root / s for s in SPLITS] if self.split else [self.root]

    def known_labels(self) -> list[str]:
        """Class folders already in the dataset (all splits), sorted; invalid folder names are left out."""
        names = set()
        for base in self._bases():
            if base.is_dir():
                for p in base.iterdir():
                    if p.is_dir() and not p.name.startswith(".") and p.name not in SPLITS:
                        names.add(p.name)
        return sorted(n for n in names if _valid(n))

    def totals(self) -> dict[str, int]:
        """Images per class in this split (or the whole dataset when not split)."""
        return {label: count_images(self.base / label) for label in self.known_labels()
                if (self.base / label).is_dir()}

    def save(self, label: str, frame: np.ndarray) -> Path:
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise EdgeError(f"could not encode a {frame.shape} frame as JPEG")
        return self.save_bytes(label, buf.tobytes())

    def save_bytes(self, label: str, data: bytes, suffix: str = ".jpg") -> Path:
        folder = self.base / label
        path = folder / new_name(suffix)
        while path.exists():  # cannot happen in practice (random suffix); cheap to be sure
            path = folder / new_name(suffix)
        first = self.count(label) == 0
        try:
            atomic_write_bytes(path, data)
        except OSError as e:
            raise _write_error(path, e) from e
        self.history.append((label, path))
        self._counts[label] = self.count(label) + 1
        if first:
            self.sync_labels()
        return path

    def undo(self) -> Path | None:
        """Delete this session's last shot; None when there is nothing to undo."""
        while self.history:
            label, path = self.history.pop()
            try:
                path.unlink()
            except FileNotFoundError:
                continue  # removed by hand meanwhile: undo the one before
            self._counts[label] = max(0, self.count(label) - 1)
            if self._counts[label] == 0:
                self.sync_labels()
            return path
        return None

    def remove_empty_folders(self) -> None:
        """Remove label folders this session created or used that hold no file at all."""
        for label in self._counts:
            with contextlib.suppress(OSError):
                (self.base / label).rmdir()  # fails, as it should, unless the folder is empty

    def sync_labels(self) -> None:
        """Rewrite DIR/labels.txt (atomically) with the classes that have at least one image, if it changed."""
        bases = self._bases()
        labels = [n for n in self.known_labels() if any(count_images(b / n) for b in bases)]
        text = "".join(f"{n}\n" for n in labels)
        path = self.root / LABELS_FILE
        try:
            if path.is_file() and path.read_text() == text:
                return
            atomic_write_text(path, text)
        except OSError as e:
            raise _write_error(path, e) from e


def _valid(name: str) -> bool:
    try:
        check_label(name)
    except EdgeError:
        return False
    return True


def describe_totals(writer: DatasetWriter) -> str:
    totals = writer.totals()
    where = str(writer.base)
    if not totals:
        return f"totals in {where}: no images"
    body = ", ".join(f"{k} {v}" for k, v in totals.items())
    return f"totals in {where}: {body} ({sum(totals.values())} images)"

