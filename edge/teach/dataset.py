"""The dataset being taught: labels are class folders under DIR, snapshots are the images in them.

Written exactly as `capture` writes (`capture.dataset.DatasetWriter`: DIR/LABEL/, atomic, collision-free names,
DIR/labels.txt), so `train --data DIR` can retrain on it later. The folders are the only truth: every listing
and lookup reads them again, so an image deleted by hand is gone from the page at once.

A snapshot's id is its file name without the suffix when `capture` named it (those names never collide);
any other image (imported photos, another tool's names) gets its stem plus a short hash of LABEL/NAME, so two
`img_0001.jpg` in two labels have two ids.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from capture.dataset import DatasetWriter
from capture.labels import label_dir
from edge.core.errors import EdgeError
from edge.core.files import is_image_name
from edge.core.fsutil import is_temp_name
from edge.core.images import pixel_problem
from edge.core.labels import SPLITS, check_label

log = logging.getLogger(__name__)

CAPTURE_NAME = re.compile(r"\d{8}-\d{6}-\d{6}-[0-9a-f]{6}")  # capture.dataset.new_name's stems
RECENT = 8  # thumbnails per label on the page
MIN_EXAMPLES = 10  # below this a label gets a note: the model will be shaky
MIN_TO_TRAIN = 2  # one for training, one for validation
IMBALANCE_RATIO = 3.0  # as train.dataset: the largest class over the smallest
THUMB_WIDTH = 160
_THUMB_CACHE = 512


class ApiError(EdgeError):
    """A refused request: the HTTP status and one line saying what was wrong and what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def snapshot_id(label: str, path: Path) -> str:
    stem = path.stem
    if CAPTURE_NAME.fullmatch(stem):
        return stem
    return f"{stem}-{hashlib.sha1(f'{label}/{path.name}'.encode()).hexdigest()[:8]}"


def label_notes(counts: dict[str, int]) -> list[str]:
    """What the page says about the examples: labels with too few, and imbalance."""
    notes = []
    for label, n in counts.items():
        if n < MIN_EXAMPLES:
            notes.append(f"{label!r} has {n} example{'' if n == 1 else 's'}; {MIN_EXAMPLES} or more give a "
                         "steadier model")
    filled = {k: v for k, v in counts.items() if v}
    if len(filled) >= 2:
        big, small = max(filled, key=filled.get), min(filled, key=filled.get)
        if filled[big] / filled[small] > IMBALANCE_RATIO:
            notes.append(f"labels are imbalanced: {big!r} has {filled[big]} examples, {small!r} only "
                         f"{filled[small]}; snap more of {small!r}")
    return notes


class TeachDataset:
    """Labels and snapshots under `root`, safe to call from several HTTP threads."""

    def __init__(self, root: str | os.PathLike, quality: int = 95) -> None:
        self.root = Path(root).absolute()  # answers name files wherever the client runs
        self.writer = DatasetWriter(self.root, None, quality)
        self.frames: dict[str, int] = {}  # snapshot id -> camera frame id, for this session's snapshots
        self._lock = threading.RLock()
        self._thumbs: OrderedDict[tuple, bytes] = OrderedDict()

    # ------------------------------------------------------------------ reading
    def check_root(self) -> None:
        if not self.root.is_dir():
            raise ApiError(409, f"the data folder {str(self.root)!r} is gone (deleted or unmounted); create it "
                           "again, or restart teach with another --data")

    def inside(self, path: str | os.PathLike) -> bool:
        """Whether `path`, every link resolved, stays inside the data folder (nothing outside is read or deleted)."""
        root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        return real == root or real.startswith(root.rstrip(os.sep) + os.sep)

    def labels(self) -> list[str]:
        self.check_root()
        return [label for label in self.writer.known_labels() if self.inside(self.root / label)]

    def images(self, label: str) -> list[Path]:
        """The label's images, newest first (by modification time, then name); none that lead outside the folder."""
        folder = self.root / label
        if not self.inside(folder):
            return []
        try:
            entries = [(e.stat().st_mtime_ns, e.name, Path(e.path)) for e in os.scandir(folder)
                       if is_image_name(e.name) and e.is_file() and self.inside(e.path)]
        except OSError:
            return []
        return [p for *_, p in sorted(entries, reverse=True)]

    def counts(self) -> dict[str, int]:
        return {label: len(self.images(label)) for label in self.labels()}

    def listing(self) -> dict[str, Any]:
        """GET /api/dataset: labels, counts, the newest ids per label, notes."""
        with self._lock:
            labels = self.labels()
            images = {label: self.images(label) for label in labels}
        counts = {label: len(files) for label, files in images.items()}
        return {
            "data": str(self.root),
            "labels": labels,
            "counts": counts,
            "total": sum(counts.values()),
            "recent": {label: [snapshot_id(label, p) for p in files[:RECENT]] for label, files in images.items()},
            "notes": label_notes(counts),
        }

    def find(self, sid: str) -> tuple[str, Path]:
        """(label, path) of a snapshot id; 404 when no image has it."""
        for label in self.labels():
            for path in self.images(label):
                if snapshot_id(label, path) == sid:
                    return label, path
        raise ApiError(404, f"no snapshot {sid!r} (deleted?); GET /api/dataset lists the ids")

    def describe(self, sid: str) -> dict[str, Any]:
        label, path = self.find(sid)
        return {"id": sid, "label": label, "path": str(path), "frame": self.frames.get(sid)}

    def thumbnail(self, sid: str) -> bytes:
        """A small JPEG of the snapshot (cached by path, size and modification time)."""
        _, path = self.find(sid)
        try:
            st = path.stat()
        except OSError as e:
            raise ApiError(404, f"snapshot {sid!r} is gone") from e
        key = (str(path), st.st_mtime_ns, st.st_size)
        with self._lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        problem = pixel_problem(path)  # from the header: a decompression bomb is never decoded
        if problem:
            raise ApiError(409, f"snapshot {sid!r}: {problem}")
        img = cv2.imread(str(path), cv2.IMREAD_REDUCED_COLOR_2)
        if img is None:
            raise ApiError(409, f"snapshot {sid!r} ({path.name}) cannot be decoded; delete it")
        h, w = img.shape[:2]
        if w > THUMB_WIDTH:
            img = cv2.resize(img, (THUMB_WIDTH, max(1, round(h * THUMB_WIDTH / w))), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if not ok:
            raise ApiError(409, f"snapshot {sid!r} cannot be encoded as a thumbnail")
        with self._lock:
            self._thumbs[key] = buf.tobytes()
            while len(self._thumbs) > _THUMB_CACHE:
                self._thumbs.popitem(last=False)
        return buf.tobytes()

    # ------------------------------------------------------------------ changing
    def _checked_label(self, name: Any) -> str:
        if not isinstance(name, str):
            raise ApiError(400, f"a label must be a string, got {name!r}")
        try:
            label_dir(self.root, check_label(name, flag_hints=False))
        except EdgeError as e:
            raise ApiError(400, str(e)) from e
        return name

    def existing_label(self, name: Any) -> str:
        """`name`, if it is a label of the dataset; 400 when it breaks the label rules, 404 when it is unknown."""
        label = self._checked_label(name)
        if (self.root / label).is_dir() and not self.inside(self.root / label):
            raise ApiError(403, f"label folder {label!r} is a link leading outside the data folder "
                           f"{str(self.root)!r}; teach neither reads nor deletes there")
        if not (self.root / label).is_dir():
            known = ", ".join(self.labels()) or "none yet"
            raise ApiError(404, f"no label {label!r} (labels: {known}); add it first with POST /api/labels")
        return label

    def add_label(self, name: Any) -> bool:
        """Create the label's folder; False when it already existed."""
        with self._lock:
            self.check_root()
            label = self._checked_label(name)
            if (self.root / label).is_dir():
                return False
            try:
                self.writer.prepare(label)
            except EdgeError as e:
                raise ApiError(409, str(e)) from e
            log.info("label %r added", label)
            return True

    def remove_label(self, name: str) -> int:
        """Delete a label's folder and its images -> how many; refused (nothing deleted) when it holds anything
        that is not an image."""
        with self._lock:
            self.check_root()
            label = self.existing_label(name)
            folder = self.root / label
            entries = list(folder.iterdir())
            others = [e.name for e in entries if not (e.is_file() and (is_image_name(e.name) or is_temp_name(e.name)))]
            if others:
                raise ApiError(409, f"label folder {str(folder)!r} also holds {', '.join(sorted(others)[:3])}, which "
                               "are not snapshots; move them out first (nothing was deleted)")
            try:
                for e in entries:
                    e.unlink()
                folder.rmdir()
                self.writer.sync_labels()
            except OSError as e:
                raise ApiError(409, f"cannot delete {str(folder)!r}: {e.strerror}") from e
            log.info("label %r removed with %d image(s)", label, len(entries))
            return sum(1 for e in entries if is_image_name(e.name))

    def snap(self, name: Any, frame: np.ndarray, frame_id: int) -> dict[str, Any]:
        """Save `frame` as a new snapshot of the label -> the POST /api/snapshots answer."""
        with self._lock:
            self.check_root()
            label = self.existing_label(name)
            try:
                self.writer.prepare(label)  # recounts (images may have been deleted) and clears stale temp files
                path = self.writer.save(label, frame)
            except EdgeError as e:
                raise ApiError(409, str(e)) from e
            sid = snapshot_id(label, path)
            self.frames[sid] = int(frame_id)
            return {"id": sid, "label": label, "path": str(path), "frame": int(frame_id), "counts": self.counts()}

    def delete(self, sid: str) -> tuple[str, Path]:
        """Delete one snapshot -> (label, path)."""
        with self._lock:
            self.check_root()
            label, path = self.find(sid)
            try:
                path.unlink()
                if not self.images(label):
                    self.writer.sync_labels()
            except FileNotFoundError as e:
                raise ApiError(404, f"snapshot {sid!r} is already gone") from e
            except OSError as e:
                raise ApiError(409, f"cannot delete {str(path)!r}: {e.strerror}") from e
            self.frames.pop(sid, None)
            return label, path

    def check_trainable(self) -> dict[str, int]:
        """The counts, if a training can start on them; else 400 saying what is missing."""
        counts = self.counts()
        filled = [label for label, n in counts.items() if n]
        if len(filled) < 2:
            have = ", ".join(f"{k} {v}" for k, v in counts.items()) or "no labels"
            raise ApiError(400, f"training needs at least 2 labels with examples, have {have}; add labels and snap "
                           "examples of each")
        short = {k: v for k, v in counts.items() if v < MIN_TO_TRAIN}
        if short:
            which = ", ".join(f"{k!r} has {v}" for k, v in short.items())
            raise ApiError(400, f"every label needs at least {MIN_TO_TRAIN} examples (one to train on, one to "
                           f"check with): {which}; snap more or remove the label")
        return counts


def flat_dataset_problem(root: Path) -> str | None:
    """Why teach cannot write into `root` (a train/val split), or None."""
    if any((root / s).is_dir() for s in SPLITS):
        return (f"{str(root)!r} has train/ or val/ folders; teach writes DIR/LABEL/ and splits by itself: point "
                "--data at a folder of label folders (or a new one)")
    return None
