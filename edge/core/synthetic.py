"""Synthetic orientation dataset and frames: an arrow glyph pointing up / down (or left / right) on clutter.

The label depends only on the glyph's orientation, so a correct pipeline learns it and a pipeline that flips
images vertically (which swaps up and down) cannot. Used by the demo, the tests and the `test://` source.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from edge.core.fsutil import atomic_write_bytes

DIRECTIONS = {"up": -90.0, "down": 90.0, "left": 180.0, "right": 0.0}
DEFAULT_CLASSES = ("up", "down")

# arrow outline pointing right (+x), unit length, centred on the origin
_ARROW = np.array(
    [[-0.5, -0.12], [0.1, -0.12], [0.1, -0.3], [0.5, 0.0], [0.1, 0.3], [0.1, 0.12], [-0.5, 0.12]], np.float32
)


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    c0 = rng.integers(0, 256, 3).astype(np.float32)
    c1 = rng.integers(0, 256, 3).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx * math.cos(angle) + yy * math.sin(angle)) / max(w, h)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    img = img.astype(np.uint8)
    for _ in range(rng.integers(1, 5)):  # clutter: circles and rectangles of random colours
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.circle(img, center, int(rng.integers(3, max(4, w // 8))), color, -1, cv2.LINE_AA)
        else:
            p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p1 = (p0[0] + int(rng.integers(-w // 6, w // 6)), p0[1] + int(rng.integers(-h // 6, h // 6)))
            cv2.rectangle(img, p0, p1, color, -1)
    return img


def draw_arrow(img: np.ndarray, center: tuple[float, float], length: float, angle_deg: float, color) -> None:
    """Draw a filled arrow pointing at `angle_deg` (image coordinates: 90 points down) onto img, in place."""
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], np.float32)
    pts = (_ARROW * length) @ rot.T + np.asarray(center, np.float32)
    outline = tuple(255 - int(c) for c in color)
    cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], color, cv2.LINE_AA, shift=4)
    cv2.polylines(img, [np.round(pts * 16).astype(np.int32)], True, outline, max(1, int(length / 40)), cv2.LINE_AA,
                  shift=4)


def render_sample(label: str, rng: np.random.Generator, width: int = 160, height: int = 160) -> np.ndarray:
    """One BGR image of class `label` ('up', 'down', 'left', 'right' or 'none' for background only)."""
    img = _background(rng, width, height)
    if label != "none":
        base = DIRECTIONS[label]
        size = min(width, height)
        length = rng.uniform(0.5, 0.8) * size
        margin = length * 0.55
        cx = rng.uniform(margin, max(margin + 1, width - margin))
        cy = rng.uniform(margin, max(margin + 1, height - margin))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw_arrow(img, (cx, cy), length, base + rng.uniform(-15, 15), color)
    noise = rng.normal(0, rng.uniform(2, 12), img.shape)
    img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    return img


def make_dataset(
    root: str | os.PathLike,
    per_class: int = 100,
    classes: Sequence[str] = DEFAULT_CLASSES,
    size: tuple[int, int] = (160, 160),
    seed: int = 0,
    split: bool = False,
    val_fraction: float = 0.2,
) -> Path:
    """Write an ImageFolder dataset (`root/<class>/*.jpg`, or `root/{train,val}/<class>/` when split) and return
    root."""
    for c in classes:
        if c != "none" and c not in DIRECTIONS:
            raise ValueError(f"unknown synthetic class {c!r}; choose from {sorted(DIRECTIONS) + ['none']}")
    rng = np.random.default_rng(seed)
    root = Path(root)
    for c in classes:
        for i in range(per_class):
            sub = ("val" if i < round(per_class * val_fraction) else "train") if split else ""
            d = root / sub / c
            d.mkdir(parents=True, exist_ok=True)
            img = render_sample(c, rng, *size)
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
            atomic_write_bytes(d / f"{c}_{i:05d}.jpg", buf.tobytes())
    return root


# What `test://?scene=` shows: the arrow flipping up/down (what teach and the demo learn), or a scene to show a
# model that never saw it: "empty" (the same drifting background, no arrow: an empty room) or "shapes" (another
# background with moving discs: the camera pointed elsewhere).
SCENES = ("arrows", "empty", "shapes")


def parse_scenes(text: str) -> list[tuple[str, float | None]]:
    """`arrows`, or a schedule `arrows:60,empty` (60 s of arrows, then empty for good) -> [(scene, seconds)].

    Every entry but the last needs its seconds; the last without seconds lasts forever, with seconds the whole
    schedule repeats. Raises ValueError naming what is wrong."""
    out: list[tuple[str, float | None]] = []
    for part in (p.strip() for p in text.split(",")):
        name, _, secs = part.partition(":")
        if name not in SCENES:
            raise ValueError(f"unknown scene {name!r}; choose from {', '.join(SCENES)} (a schedule: arrows:60,empty)")
        try:
            seconds = float(secs) if secs else None
        except ValueError:
            raise ValueError(f"scene {part!r}: {secs!r} is not a number of seconds") from None
        if seconds is not None and not seconds > 0:
            raise ValueError(f"scene {part!r}: the seconds must be > 0")
        out.append((name, seconds))
    if any(s is None for _, s in out[:-1]):
        raise ValueError(f"scene schedule {text!r}: every scene but the last needs its seconds, e.g. arrows:60,empty")
    return out


class SceneRenderer:
    """Frames for the `test://` source: a drifting background and an arrow that flips up/down every few seconds
    (scene "arrows"; `arrow` fixes its direction), or an untaught scene ("empty", "shapes"), or a schedule of
    them (parse_scenes)."""

    def __init__(self, width: int = 640, height: int = 480, period_s: float = 3.0, seed: int = 0,
                 scene: str = "arrows", arrow: str | None = None):
        """`arrow` ('up', 'down', 'left' or 'right') fixes the arrow's direction in scene "arrows"; None flips
        up/down."""
        if arrow is not None and arrow not in DIRECTIONS:
            raise ValueError(f"unknown arrow {arrow!r}; one of {', '.join(DIRECTIONS)}")
        self.width, self.height, self.period_s, self.arrow = width, height, period_s, arrow
        self.schedule = parse_scenes(scene)
        rng = np.random.default_rng(seed)
        self._bg = _background(rng, width * 2, height)
        self._other = _background(np.random.default_rng(seed + 1000), width * 2, height)
        self._color = (40, 200, 255)

    def scene_at(self, t: float) -> str:
        total = sum(s or 0.0 for _, s in self.schedule)
        if self.schedule[-1][1] is not None:  # every entry timed: the schedule repeats
            t = t % total
        for name, seconds in self.schedule:
            if seconds is None or t < seconds:
                return name
            t -= seconds
        return self.schedule[-1][0]

    def label_at(self, t: float) -> str:
        """What the frame at `t` shows: the arrow's direction (scene arrows), else the scene's name."""
        scene = self.scene_at(t)
        if scene != "arrows":
            return scene
        if self.arrow is not None:
            return self.arrow
        return "up" if int(t // self.period_s) % 2 == 0 else "down"

    def render(self, t: float, frame_index: int = 0) -> np.ndarray:
        shift = int((t * 40) % self.width)
        scene = self.scene_at(t)
        img = (self._other if scene == "shapes" else self._bg)[:, shift:shift + self.width].copy()
        size = min(self.width, self.height)
        cx = self.width / 2 + 0.2 * self.width * math.sin(t * 0.7)
        cy = self.height / 2 + 0.1 * self.height * math.cos(t * 0.9)
        if scene == "arrows":
            draw_arrow(img, (cx, cy), 0.6 * size, DIRECTIONS[self.label_at(t)] + 8 * math.sin(t), self._color)
        elif scene == "shapes":
            for i, color in enumerate(((255, 80, 40), (60, 220, 90), (200, 60, 220))):
                x = self.width * (0.5 + 0.35 * math.sin(t * (0.5 + 0.2 * i) + 2 * i))
                y = self.height * (0.5 + 0.3 * math.cos(t * (0.6 + 0.15 * i) + i))
                cv2.circle(img, (int(x), int(y)), int(size * (0.12 + 0.04 * i)), color, -1, cv2.LINE_AA)
        cv2.putText(img, f"#{frame_index}", (8, self.height - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
        return img
