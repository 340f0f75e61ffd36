"""Evaluation metrics (accuracy, per-class precision/recall, confusion matrix) and the confusion-matrix plot."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from edge.core.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

# Tried first when the default font (DejaVu Sans) lacks a label's characters, e.g. "猫"; then every installed font.
FALLBACK_FAMILIES = (
    "Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR", "Source Han Sans",
    "Droid Sans Fallback", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Noto Sans",
)


def confusion_matrix(targets: Sequence[int], preds: Sequence[int], num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(targets, np.int64), np.asarray(preds, np.int64)), 1)
    return cm


def classification_metrics(targets: Sequence[int], preds: Sequence[int],
                           class_names: Sequence[str]) -> dict[str, Any]:
    cm = confusion_matrix(targets, preds, len(class_names))
    total = int(cm.sum())
    per_class = {}
    for i, name in enumerate(class_names):
        tp = int(cm[i, i])
        predicted = int(cm[:, i].sum())
        actual = int(cm[i, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    return {
        "val_accuracy": float(np.trace(cm) / total) if total else 0.0,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


@functools.cache
def _charmap(path: str) -> frozenset[int]:
    from matplotlib import font_manager

    try:
        return frozenset(font_manager.get_font(path).get_charmap())
    except Exception:  # noqa: BLE001 - an unreadable font file just covers nothing
        return frozenset()


def font_families_for(text: str) -> list[str] | None:
    """matplotlib font families that draw every character of `text`; None when the default font already does
    (or when no installed font can, which is logged)."""
    import matplotlib
    from matplotlib import font_manager

    needed = {ord(c) for c in text if not c.isspace()}
    missing = needed - _charmap(str(font_manager.findfont(font_manager.FontProperties())))
    if not missing:
        return None
    rank = {name: i for i, name in enumerate(FALLBACK_FAMILIES)}
    for entry in sorted(font_manager.fontManager.ttflist, key=lambda e: rank.get(e.name, len(rank))):
        if missing <= _charmap(entry.fname):
            defaults = list(matplotlib.rcParams["font.family"])
            # matplotlib >= 3.6 falls back glyph by glyph along the list; older ones use only the first family
            per_glyph = tuple(int(v) for v in matplotlib.__version__.split(".")[:2]) >= (3, 6)
            return [*defaults, entry.name] if per_glyph else [entry.name, *defaults]
    log.warning("no installed font can draw %s in the confusion matrix labels; install one (e.g. fonts-noto-cjk)",
                "".join(sorted(map(chr, missing))))
    return None


def plot_confusion_matrix(cm: Sequence[Sequence[int]], class_names: Sequence[str], path: str | os.PathLike,
                          title: str = "") -> None:
    """Write the confusion matrix as a PNG (atomically), in a font that has the labels' characters."""
    import matplotlib

    matplotlib.use("Agg")
    families = font_families_for("".join(class_names) + title)
    with matplotlib.rc_context({"font.family": families}) if families else contextlib.nullcontext():
        png = _render_confusion_matrix(np.asarray(cm), class_names, title)
    atomic_write_bytes(path, png)


def _render_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], title: str) -> bytes:
    import matplotlib.pyplot as plt

    n = len(class_names)
    size = max(3.5, 0.6 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > threshold else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
