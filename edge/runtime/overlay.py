"""The on-frame overlay: top label, confidence bar, novelty, optional top-k, FPS, inference ms and frame age.

Drawn with a handful of OpenCV primitives into a canvas the caller reuses (no per-frame allocation), on a solid
panel (no alpha blending: blending a region costs more than all the text together).
"""

from __future__ import annotations

import cv2
import numpy as np

from edge.core.labels import UNKNOWN_LABEL
from edge.runtime.prediction import Prediction

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_PANEL = (32, 32, 32)
_WHITE = (255, 255, 255)
_GREY = (170, 170, 170)
_GOOD = (80, 200, 80)
_MID = (40, 200, 230)
_BAD = (60, 60, 230)


def _bar_color(conf: float) -> tuple[int, int, int]:
    return _GOOD if conf >= 0.75 else _MID if conf >= 0.5 else _BAD


def draw_overlay(img: np.ndarray, pred: Prediction, top_k: int = 0) -> np.ndarray:
    """Draw `pred` onto the BGR image `img` in place and return it.

    Scales with the frame height (readable from 240p to 1080p). A model with a novelty score adds a line
    "novelty 0.41" (red while the label is `unknown`). `top_k` > 0 adds that many lines of "label probability".
    """
    h, w = img.shape[:2]
    s = max(0.45, h / 480.0)
    pad = int(8 * s)
    line = int(22 * s)
    k = min(top_k, len(pred.probabilities)) if top_k > 0 else 0
    panel_w = min(w, int(300 * s))
    novelty = getattr(pred, "novelty", None)
    panel_h = pad * 2 + int(30 * s) + int(14 * s) + line * (1 + k + (novelty is not None))
    cv2.rectangle(img, (0, 0), (panel_w, min(h, panel_h)), _PANEL, -1)

    # label (big) and confidence
    y = pad + int(24 * s)
    cv2.putText(img, pred.label, (pad, y), _FONT, 0.9 * s, _WHITE, max(1, int(2 * s)), cv2.LINE_AA)
    cv2.putText(img, f"{pred.confidence * 100:.0f}%", (panel_w - int(62 * s), y), _FONT, 0.6 * s, _WHITE, 1,
                cv2.LINE_AA)
    # confidence bar
    y += int(8 * s)
    bar_w = panel_w - 2 * pad
    bar_h = int(10 * s)
    cv2.rectangle(img, (pad, y), (pad + bar_w, y + bar_h), _GREY, 1)
    fill = int(round(bar_w * min(max(pred.confidence, 0.0), 1.0)))
    if fill > 0:
        cv2.rectangle(img, (pad, y), (pad + fill, y + bar_h), _bar_color(pred.confidence), -1)
    y += bar_h + line - int(4 * s)
    if novelty is not None:  # how unlike the training images this frame is (above the threshold: unknown)
        color = _BAD if pred.label == UNKNOWN_LABEL else _GREY
        cv2.putText(img, f"novelty {novelty:.2f}", (pad, y), _FONT, 0.5 * s, color, 1, cv2.LINE_AA)
        y += line
    # top-k
    if k:
        items = sorted(pred.probabilities.items(), key=lambda kv: kv[1], reverse=True)[:k]
        for name, p in items:
            cv2.putText(img, f"{name[:18]:<18} {p * 100:5.1f}%", (pad, y), _FONT, 0.5 * s, _WHITE, 1, cv2.LINE_AA)
            y += line
    # timing line
    stats = f"{pred.fps:4.1f} fps  infer {pred.infer_ms:4.1f} ms  age {pred.frame_age_ms:3.0f} ms"
    cv2.putText(img, stats, (pad, y), _FONT, 0.45 * s, _GREY, 1, cv2.LINE_AA)
    return img
