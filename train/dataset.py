"""Dataset scanning, validation, stratified split and in-memory loading for training.

Layout: torchvision ImageFolder (`DATA/<label>/*.jpg`); if `DATA/train` and `DATA/val` exist they are used as
they are, otherwise a seeded, stratified split. Every image is decoded once up front: unreadable or truncated
files are skipped and counted (never a crash mid-epoch), empty classes and strong imbalance are flagged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from edge.core.errors import EdgeError
from edge.core.files import IMAGE_EXTENSIONS, is_image_name
from edge.core.images import check_pixels, pixel_problem

log = logging.getLogger(__name__)

IMG_EXTENSIONS = IMAGE_EXTENSIONS  # one list, shared with capture, sources and export (edge.runtime.sources)
IMBALANCE_RATIO = 3.0  # largest/smallest class count above which we warn
# Images are kept in memory with this shorter side at most (enough for 224 crops; memory-aware on a Nano).
MAX_KEEP_SIDE = 320


is_image_file = is_image_name  # extension known, not hidden, not a temporary .tmp-* name


@dataclass
class Sample:
    path: str
    target: int


@dataclass
class DatasetInfo:
    root: Path
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    presplit: bool
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    warnings: list[str] = field(default_factory=list)

    def counts(self, which: str) -> dict[str, int]:
        c = Counter(s.target for s in getattr(self, which))
        return {name: c.get(i, 0) for i, name in enumerate(self.classes)}

    def summary_lines(self) -> list[str]:
        tr, va = self.counts("train"), self.counts("val")
        width = max(len(c) for c in self.classes)
        lines = [f"dataset {self.root} ({'train/val folders' if self.presplit else 'stratified split'}):"]
        lines += [f"  {c:<{width}}  train {tr[c]:>5}  val {va[c]:>5}" for c in self.classes]
        if self.skipped:
            first = self.skipped[0]
            lines.append(f"  skipped {len(self.skipped)} unreadable image(s), e.g. {first[0]}: {first[1]}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return lines


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _walk_images(top: str, real_root: str, outside: dict[str, str]) -> Iterator[str]:
    """Image paths under `top` in sorted order, following directory links that stay inside `real_root`, each real
    directory once (a link loop is visited once, not until the path gets too long). Links that leave `real_root`
    go to `outside` (where the link really is -> the path it was met by)."""
    seen: set[str] = set()
    for dirpath, dirnames, names in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen or not _inside(real, real_root):
            if real not in seen:
                outside.setdefault(os.path.join(os.path.realpath(os.path.dirname(dirpath)), os.path.basename(dirpath)),
                                   dirpath)
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        for name in filter(is_image_file, sorted(names)):
            path = os.path.join(dirpath, name)
            if _inside(os.path.realpath(path), real_root):
                yield path
            else:
                outside.setdefault(os.path.join(real, name), path)


def _find_classes(folder: str) -> list[str]:
    """Class folder names under `folder`, sorted (none when it is missing); an entry that cannot be followed (a
    symlink loop, a dangling link) is no class folder."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise EdgeError(f"cannot list {folder!r}: {e.strerror}") from e
    names = []
    for entry in entries:
        try:
            if entry.is_dir():
                names.append(entry.name)
        except OSError as e:
            log.warning("skipping %s: %s", entry.path, e.strerror)
    undecodable = [n for n in names if any("\udc80" <= c <= "\udcff" for c in n)]
    if undecodable:
        raise EdgeError(f"class folder {os.fsencode(undecodable[0])!r} in {folder!r} is not valid UTF-8 (class names "
                        "are stored as UTF-8 text in labels.txt and the model); rename it")
    return sorted(names)


def _file_id(path: str) -> tuple:
    try:
        st = os.stat(path)
    except OSError:  # a dangling link: unique, and reported as unreadable later
        return ("missing", path)
    return (st.st_dev, st.st_ino)


@dataclass
class _Listing:
    files: dict[str, dict[str, list[str]]]  # split -> class -> image paths
    duplicates: int = 0  # paths left out because they lead to a file already listed
    outside: dict[str, str] = field(default_factory=dict)  # links leading out of the dataset (not followed)


def _list_images(root: Path, splits: dict[str, Path]) -> _Listing:
    """Image files per split and class folder, each real file once (symlinks and hard links are deduplicated).

    A file reachable by several paths is kept at its own path (not through a link), in the first split given.
    Links that leave `root` are never followed.
    """
    real_root = os.path.realpath(root)
    listing = _Listing({})
    found: list[tuple[str, str, str]] = []  # (split, class, path)
    for split, folder in splits.items():
        classes = _find_classes(str(folder))
        listing.files[split] = {c: [] for c in classes}
        for c in classes:
            found += [(split, c, p) for p in _walk_images(str(folder / c), real_root, listing.outside)]

    def preference(i: int) -> tuple[bool, int]:
        path = found[i][2]
        via_link = os.path.realpath(path) != os.path.join(real_root, os.path.relpath(path, root))
        return via_link, i

    keep: dict[tuple, int] = {}
    for i in sorted(range(len(found)), key=preference):
        keep.setdefault(_file_id(found[i][2]), i)
    for i in sorted(keep.values()):
        split, c, path = found[i]
        listing.files[split][c].append(path)
    listing.duplicates = len(found) - len(keep)
    return listing


def _list_class_files(folder: Path) -> dict[str, list[str]]:
    """Image files per class folder of `folder` (a dataset root or split), as `train` counts them."""
    return _list_images(folder, {"": folder}).files[""]


def check_image(path: str) -> str | None:
    """Decode an image fully (at reduced JPEG scale, fast); return the reason it is unusable, or None."""
    problem = pixel_problem(path)  # from the header: a decompression bomb is never decoded
    if problem:
        return problem
    try:
        with Image.open(path) as img:
            img.draft("RGB", (64, 64))
            img.load()
            if img.width < 8 or img.height < 8:
                return f"too small ({img.width}x{img.height})"
    except Exception as e:  # noqa: BLE001 - any decoder failure means the file is skipped
        return f"{type(e).__name__}: {e}"
    return None


def shared_images(files: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Byte-identical images filed under different classes: one (path, path in another class) pair per image."""
    first: dict[bytes, tuple[str, str]] = {}  # content hash -> (class, path) where first seen
    pairs = []
    for c, paths in files.items():
        for path in paths:
            try:
                with open(path, "rb") as f:
                    digest = hashlib.sha1(f.read()).digest()
            except OSError:
                continue
            seen = first.setdefault(digest, (c, path))
            if seen[0] != c:
                pairs.append((seen[1], path))
    return pairs


def scan_dataset(root: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0) -> DatasetInfo:
    """List, validate and split an ImageFolder dataset. Raises EdgeError for unusable input."""
    root = Path(root)
    if not root.is_dir():
        raise EdgeError(
            f"data directory {str(root)!r} not found; create it with `capture --label NAME --data {root}` "
            f"or point --data at an ImageFolder dataset (DATA/<label>/*.jpg)"
        )
    if not 0.0 < val_fraction < 1.0:
        raise EdgeError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    presplit = (root / "train").is_dir() and (root / "val").is_dir()
    # val first: a file in both splits stays a validation image, never leaking into training
    listing = _list_images(root, {"val": root / "val", "train": root / "train"} if presplit else {"train": root})
    train_files, val_files = listing.files["train"], listing.files.get("val", {})
    skipped: list[tuple[str, str]] = []

    def good(files: list[str]) -> list[str]:
        kept = []
        for f in files:
            reason = check_image(f)
            if reason is None:
                kept.append(f)
            else:
                skipped.append((f, reason))
                log.warning("skipping unreadable image %s (%s)", f, reason)
        return kept

    train_files = {c: good(fs) for c, fs in train_files.items()}
    val_files = {c: good(fs) for c, fs in val_files.items()}
    warnings = []
    if listing.outside:
        warnings.append(f"{len(listing.outside)} symlink(s) leading outside {str(root)!r} not followed, e.g. "
                        f"{next(iter(listing.outside.values()))}; copy those images into the dataset instead")
    if listing.duplicates:
        warnings.append(f"{listing.duplicates} path(s) lead to an image already counted (symlinks or hard links); "
                        "each image is used once")
    empty = [c for c, fs in train_files.items() if not fs]
    if empty:
        warnings.append(f"class(es) with no usable images left out: {', '.join(empty)}")
    classes = [c for c, fs in train_files.items() if fs]
    shared = shared_images({c: train_files.get(c, []) + val_files.get(c, []) for c in classes})
    if shared:
        a, b = shared[0]
        warnings.append(f"{len(shared)} image(s) appear identically in more than one class, e.g. {a} and {b}: "
                        "nothing in them tells the classes apart; capture each class showing what makes it that class")
    if len(classes) < 2:
        found = f"{len(classes)} ({', '.join(classes)})" if classes else "none"
        where = root / "train" if presplit else root
        raise EdgeError(
            f"need at least 2 classes with images in {str(where)!r}, found {found}; "
            f"add one folder of images per label, e.g. `capture --label OTHER --data {root}`"
        )
    extra_val = sorted(set(val_files) - set(classes))
    if extra_val:
        warnings.append(f"val classes not in train ignored: {', '.join(extra_val)}")
    target = {c: i for i, c in enumerate(classes)}
    train: list[Sample] = []
    val: list[Sample] = []
    if presplit:
        for c in classes:
            train += [Sample(f, target[c]) for f in train_files[c]]
            val += [Sample(f, target[c]) for f in val_files.get(c, [])]
            if not val_files.get(c):
                warnings.append(f"class {c!r} has no validation images")
    else:
        rng = random.Random(seed)
        for c in classes:
            files = list(train_files[c])
            rng.shuffle(files)
            n_val = int(round(len(files) * val_fraction))
            if len(files) >= 2:
                n_val = min(max(n_val, 1), len(files) - 1)
            else:
                n_val = 0
                warnings.append(f"class {c!r} has a single image: nothing to validate it with")
            val += [Sample(f, target[c]) for f in sorted(files[:n_val])]
            train += [Sample(f, target[c]) for f in sorted(files[n_val:])]
    counts = Counter(s.target for s in train)
    lo, hi = min(counts.values()), max(counts.values())
    if lo and hi / lo > IMBALANCE_RATIO:
        small = classes[min(counts, key=counts.get)]
        big = classes[max(counts, key=counts.get)]
        warnings.append(
            f"strong class imbalance: {big!r} has {hi} training images, {small!r} only {lo}; capture more of {small!r}"
        )
    if not val:
        raise EdgeError(f"no validation images in {str(root)!r}; add images (at least 2 per class) or a val/ folder")
    return DatasetInfo(root, classes, train, val, presplit, skipped, warnings)


def load_rgb(path: str, max_side: int = MAX_KEEP_SIDE) -> Image.Image:
    """Decode an image as RGB, downscaled so its shorter side is at most `max_side` (keeps memory bounded)."""
    check_pixels(path)
    with Image.open(path) as img:
        img.draft("RGB", (max_side, max_side))
        img = ImageOps.exif_transpose(img).convert("RGB")  # phone photos: upright, as the user saw them
    short = min(img.size)
    if short > max_side:
        scale = max_side / short
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    return img


class InMemoryImages:
    """A torch-style dataset over images decoded once into memory, with a transform applied per access."""

    def __init__(self, images: list[Image.Image], targets: list[int], transform=None):
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = self.images[i]
        return (self.transform(img) if self.transform else img), self.targets[i]


def load_samples(samples: list[Sample], max_side: int = MAX_KEEP_SIDE) -> tuple[list[Image.Image], list[int]]:
    return [load_rgb(s.path, max_side) for s in samples], [s.target for s in samples]


def eval_batch(samples: list[Sample], spec) -> np.ndarray:
    """Val images through the exact runtime preprocessing (full-resolution decode) -> N x 3 x S x S float32."""
    from edge.core.preprocess import preprocess_image

    out = np.empty((len(samples), 3, spec.input_size, spec.input_size), np.float32)
    for i, s in enumerate(samples):
        with Image.open(s.path) as img:
            preprocess_image(np.asarray(ImageOps.exif_transpose(img).convert("RGB")), spec, "RGB", out=out[i])
    return out
