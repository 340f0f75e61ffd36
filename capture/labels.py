"""Where a label's images go: DIR/LABEL or DIR/SPLIT/LABEL, never outside DIR (the rules of a label itself are
`edge.core.labels.check_label`)."""

from __future__ import annotations

from pathlib import Path

from edge.core.errors import EdgeError
from edge.core.labels import SPLITS, check_label


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
