"""Evaluation metrics (accuracy, per-class precision/recall, confusion matrix) and the pictures `train` writes:
confusion_matrix.png, training_curves.png (loss and accuracy per epoch) and mistakes.png (the val images it got
wrong). Each is rendered with matplotlib's Agg backend and written atomically, in a font that has the labels'
characters."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


def _write_png(path: str | os.PathLike, text: str, render: Callable[[], Any]) -> None:
    """render() -> a matplotlib figure, drawn in a font that has every character of `text`, saved atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = font_families_for(text)
    with matplotlib.rc_context({"font.family": families}) if families else contextlib.nullcontext():
        fig = render()
        try:
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png")
        finally:
            plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_confusion_matrix(cm: Sequence[Sequence[int]], class_names: Sequence[str], path: str | os.PathLike,
                          title: str = "") -> None:
    """Write the confusion matrix as a PNG (atomically), in a font that has the labels' characters."""
    _write_png(path, "".join(class_names) + title, lambda: _render_confusion_matrix(np.asarray(cm), class_names, title))


def _render_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], title: str):
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
    return fig


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "",
                         best: dict[str, Any] | None = None) -> None:
    """Loss and accuracy (train and val) per epoch, every stage in order, the `best` epoch (one of `history`, the
    one whose weights were kept) marked; PNG, atomic."""
    _write_png(path, title, lambda: _render_curves(list(history), title, best))


def _render_curves(history: list[dict[str, Any]], title: str, best: dict[str, Any] | None):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    x = np.arange(1, len(history) + 1)
    for ax, key, name in ((loss_ax, "loss", "loss"), (acc_ax, "accuracy", "accuracy")):
        if history:
            ax.plot(x, [e[f"train_{key}"] for e in history], "o-", ms=3, label=f"train {name}")
            ax.plot(x, [e[f"val_{key}"] for e in history], "o-", ms=3, label=f"val {name}")
        for i in range(1, len(history)):  # two-stage: where the fine-tune stage starts
            if history[i]["stage"] != history[i - 1]["stage"]:
                ax.axvline(i + 0.5, color="grey", ls="--", lw=1)
                ax.text(i + 0.6, 0.98, history[i]["stage"], transform=ax.get_xaxis_transform(), va="top",
                        color="grey")
        ax.set_xlabel(f"epoch ({' + '.join(dict.fromkeys(e['stage'] for e in history)) or 'none'})")
        ax.set_ylabel(name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if best in history:
        i = history.index(best)
        acc_ax.plot([i + 1], [best["val_accuracy"]], "*", ms=14, color="gold", mec="black", label="kept (best)")
    for ax in (loss_ax, acc_ax) if history else ():
        ax.legend(loc="best")
    acc_ax.set_ylim(-0.02, 1.02)
    if title:
        fig.suptitle(title)
    return fig


@dataclass
class Mistake:
    """One val image the model got wrong."""

    path: str
    true: str
    predicted: str
    confidence: float  # of the predicted class
    novelty: float | None = None


def mistakes_from(paths: Sequence[str], targets: Sequence[int], logits: Any, class_names: Sequence[str],
                  novelty: Sequence[float] | None = None) -> list[Mistake]:
    """The val images whose top class (of `logits`, N x C) is not their target."""
    probs = np.asarray(logits, np.float64)
    probs = np.exp(probs - probs.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    out = []
    for i, (p, t) in enumerate(zip(paths, targets)):
        top = int(probs[i].argmax())
        if top != int(t):
            out.append(Mistake(p, class_names[int(t)], class_names[top], float(probs[i, top]),
                               None if novelty is None else float(novelty[i])))
    return out


def plot_mistakes(mistakes: Sequence[Mistake], total: int, path: str | os.PathLike,
                  novelty_threshold: float | None = None, limit: int = 30) -> None:
    """A grid of val images the model got wrong (most confident first, at most `limit`), each titled with the true
    and predicted labels, the confidence and the novelty; a picture saying so when there are none. PNG, atomic."""
    shown = sorted(mistakes, key=lambda m: -m.confidence)[:limit]
    text = "".join(m.true + m.predicted for m in shown)
    _write_png(path, text, lambda: _render_mistakes(shown, len(mistakes), total, novelty_threshold))


def _render_mistakes(shown: Sequence[Mistake], wrong: int, total: int, threshold: float | None):
    import matplotlib.pyplot as plt

    if not shown:
        fig, ax = plt.subplots(figsize=(5, 2.5), dpi=100)
        ax.axis("off")
        ax.text(0.5, 0.5, f"no mistakes\nall {total} val images classified correctly", ha="center", va="center",
                fontsize=14, color="green")
        return fig
    from .dataset import load_rgb

    cols = min(6, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(2.3 * cols, 6), 2.7 * rows + 0.5), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, m in zip(axes.flat, shown):
        try:
            ax.imshow(load_rgb(m.path, 192))
        except Exception:  # noqa: BLE001 - a file gone since training: the labels still tell the story
            ax.text(0.5, 0.5, "(image unreadable)", ha="center", va="center", transform=ax.transAxes)
        lines = [f"true {m.true}", f"pred {m.predicted} {m.confidence:.2f}"]
        if m.novelty is not None:
            novel = threshold is not None and m.novelty > threshold
            lines.append(f"novelty {m.novelty:.2f}" + (" (unknown)" if novel else ""))
        ax.set_title("\n".join(lines), fontsize=8, color="darkred")
    more = f" (the {len(shown)} most confident shown)" if wrong > len(shown) else ""
    fig.suptitle(f"{wrong} of {total} val images misclassified{more}")
    return fig
