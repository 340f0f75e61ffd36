"""Label rules: a label becomes a folder name under the dataset, so anything that could escape it is refused."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from edge.core.errors import EdgeError

MAX_LABEL_LENGTH = 64
SPLITS = ("train", "val")


def check_label(label: str, flag_hints: bool = True) -> str:
    """Return `label` if it is a safe class-folder name, else raise EdgeError naming the rule it breaks.

    `flag_hints=False` (the teach page) words the advice without command-line flags."""
    if not label or not label.strip():
        raise EdgeError("label is empty; give a class name, e.g. " + ("--label " if flag_hints else "") + "thumbs_up")
    if len(label) > MAX_LABEL_LENGTH:
        raise EdgeError(f"label {label[:20]!r}... is {len(label)} characters; the limit is {MAX_LABEL_LENGTH}")
    bad = next((c for c in label if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")), None)
    if bad is not None:
        raise EdgeError(f"label {label!r} contains the control character {bad!r} (NUL, newline, tab...); "
                        "use letters, digits, '_' or '-'")
    if "/" in label or "\\" in label:
        raise EdgeError(f"label {label!r} contains a path separator ('/' or '\\'); a label is one folder name")
    if ".." in label:
        raise EdgeError(f"label {label!r} contains '..'; a label must stay inside the dataset folder")
    if label.startswith("."):
        raise EdgeError(f"label {label!r} starts with '.'; hidden folders are skipped by the trainer")
    if label != label.strip():
        raise EdgeError(f"label {label!r} starts or ends with whitespace; remove it")
    if label in SPLITS:
        raise EdgeError(f"label {label!r} is reserved for the train/val split folders; "
                        + (f"use --split {label} to write into it, with another label" if flag_hints
                           else "choose another label"))
    return label


def label_dir(data_dir: str | Path, label: str, split: str | None = None) -> Path:
    """The folder for `label` (DIR/LABEL or DIR/SPLIT/LABEL), refusing one that resolves outside DIR."""
    check_label(label)
    if split is not None and split not in SPLITS:
        raise EdgeError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    root = Path(data_dir)
    target = (root / split if split else root) / label
    real_root = root.resolve()
    real = target.resolve()  # follows a symlinked label (or split) folder
    if real.parent != (real_root / split if split else real_root):
        raise EdgeError(f"label {label!r} resolves outside {str(root)!r} (to {str(real)!r}, through a symlink); "
                        "remove the link or choose another label")
    return target
