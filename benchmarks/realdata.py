"""Real-photo and synthetic test scenarios built from images that ship inside installed packages (no download).

Photos: scikit-image's `skimage.data`, matplotlib's sample_data and, when scikit-learn is installed, its sample
images. Synthetic: the project's arrow renderer (edge.core.synthetic). Every image is RGB uint8 HxWx3.

A Scenario has known classes split into train (the bank / the head), val (calibration) and test (known images
used for nothing else; `shifted_test()` gives them a lighting change, as on another day), plus named groups of
unknowns, reported separately:

- photos-1 / photos-2: two classes of several photos each; train crops come from the left 60% of each photo,
  val and test crops (independent draws) from the right 40%, so no known test crop shares pixels with the bank
  while val stands for what deployment looks like; unknowns are crops of the other photos and empty synthetic
  clutter. The two splits use disjoint photos as knowns (photos-2, textures vs grey/colour scenes, is the hard one).
- arrows: up / down arrows on clutter; unknowns are empty clutter ("an empty room"), real photo crops, and
  left / right arrows (near-novel: same glyph, same backgrounds, new direction; the hard case).

    from benchmarks.realdata import all_scenarios
    for s in all_scenarios(seed=0): print(s.summary())
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge.core.synthetic import render_sample

log = logging.getLogger(__name__)

Image = np.ndarray  # HxWx3 uint8 RGB


def _rgb(a: np.ndarray) -> Image:
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=2)
    return np.ascontiguousarray(a[..., :3].astype(np.uint8))


def _skimage_photos() -> dict[str, Callable[[], np.ndarray]]:
    from skimage import data

    return {
        "chelsea": data.chelsea, "coffee": data.coffee, "astronaut": data.astronaut, "rocket": data.rocket,
        "horse": data.horse, "motorcycle": lambda: data.stereo_motorcycle()[0], "brick": data.brick,
        "grass": data.grass, "gravel": data.gravel, "coins": data.coins, "moon": data.moon, "page": data.page,
        "text": data.text, "retina": data.retina, "hubble": data.hubble_deep_field, "cell": data.cell,
        "ihc": data.immunohistochemistry, "camera": data.camera, "clock": data.clock, "colorwheel": data.colorwheel,
        "logo": data.logo,
    }


def _file_photos() -> dict[str, str]:
    paths = {}
    try:
        import matplotlib

        sample = os.path.join(matplotlib.get_data_path(), "sample_data")
        paths["grace_hopper"] = os.path.join(sample, "grace_hopper.jpg")
        paths["present"] = os.path.join(sample, "Minduka_Present_Blue_Pack.png")
    except ImportError:
        pass
    try:
        import sklearn.datasets

        images = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
        paths["china"] = os.path.join(images, "china.jpg")
        paths["flower"] = os.path.join(images, "flower.jpg")
    except ImportError:
        pass
    return paths


def photo_library() -> dict[str, Image]:
    """Every shipped photo that loads here, by short name, as RGB uint8 (grey and binary images expanded)."""
    import cv2

    photos: dict[str, Image] = {}
    try:
        loaders = _skimage_photos()
    except ImportError:
        loaders = {}
        log.warning("scikit-image is not installed: its photos are left out")
    for name, load in loaders.items():
        try:
            photos[name] = _rgb(load())
        except Exception as e:  # noqa: BLE001 - a photo that needs a download is simply left out
            log.warning("photo %s left out: %s", name, e)
    for name, path in _file_photos().items():
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            log.warning("photo %s left out: cannot read %s", name, path)
            continue
        photos[name] = np.ascontiguousarray(bgr[..., ::-1])
    return photos


def random_crops(image: Image, n: int, rng: np.random.Generator,
                 scale: tuple[float, float] = (0.5, 1.0)) -> list[Image]:
    """n crops of `image`, each side a random fraction `scale` of the image's side, at random positions."""
    h, w = image.shape[:2]
    out = []
    for _ in range(n):
        s = rng.uniform(*scale)
        ch, cw = max(8, int(h * s)), max(8, int(w * s))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        out.append(np.ascontiguousarray(image[y:y + ch, x:x + cw]))
    return out


def strip_crops(image: Image, n: int, rng: np.random.Generator, x0: float, x1: float) -> list[Image]:
    """n roughly square crops from the vertical strip [x0, x1) (fractions of the width) of `image`."""
    w = image.shape[1]
    strip = np.ascontiguousarray(image[:, int(w * x0):int(w * x1)])
    sh, sw = strip.shape[:2]
    out = []
    for _ in range(n):
        side = max(8, int(min(sh, sw) * rng.uniform(0.6, 1.0)))
        y, x = rng.integers(0, sh - side + 1), rng.integers(0, sw - side + 1)
        out.append(np.ascontiguousarray(strip[y:y + side, x:x + side]))
    return out


def arrows(label: str, n: int, rng: np.random.Generator, size: int = 224) -> list[Image]:
    """n synthetic images of `label` ('up', 'down', 'left', 'right', or 'none' for clutter only), RGB."""
    return [np.ascontiguousarray(render_sample(label, rng, size, size)[..., ::-1]) for _ in range(n)]


def lighting_shift(image: Image, rng: np.random.Generator) -> Image:
    """The same scene under other light: dimmer or brighter, a colour cast, lower contrast, sensor noise."""
    f = image.astype(np.float32)
    f = (f - f.mean()) * rng.uniform(0.6, 0.9) + f.mean()  # contrast
    f = f * rng.uniform(0.5, 1.3) * rng.uniform(0.85, 1.15, 3)  # exposure, white balance
    f += rng.normal(0, 5, f.shape)
    return np.clip(f, 0, 255).astype(np.uint8)


@dataclass
class Scenario:
    name: str
    description: str
    class_names: list[str]
    train: list[Image]
    train_labels: list[int]
    val: list[Image]
    val_labels: list[int]
    test: list[Image]  # known classes, in neither the bank nor the calibration
    test_labels: list[int]
    unknowns: dict[str, list[Image]] = field(default_factory=dict)
    near_novel: tuple[str, ...] = ()  # unknown groups that are the hard case

    def shifted_test(self, seed: int = 0) -> list[Image]:
        """The test images under a lighting change (labels: test_labels), deterministic for a seed."""
        rng = np.random.default_rng(seed)
        return [lighting_shift(im, rng) for im in self.test]

    def summary(self) -> str:
        groups = ", ".join(f"{k} {len(v)}" for k, v in self.unknowns.items())
        return (f"{self.name}: {self.description}; train {len(self.train)}, val {len(self.val)}, "
                f"test {len(self.test)}; unknowns: {groups}")


def photo_scenario(
    name: str, classes: dict[str, list[str]], photos: dict[str, Image], rng: np.random.Generator,
    per_photo: tuple[int, int, int] = (16, 10, 10), unknown_per_photo: int = 8, clutter: int = 60,
) -> Scenario:
    """Known classes made of photos: train crops from the left 60% of each, val and test crops from the rest."""
    missing = [p for ps in classes.values() for p in ps if p not in photos]
    if missing:
        raise ValueError(f"photos not available here: {', '.join(missing)}")
    splits: dict[str, tuple[list[Image], list[int]]] = {s: ([], []) for s in ("train", "val", "test")}
    strips = {"train": (0.0, 0.6), "val": (0.6, 1.0), "test": (0.6, 1.0)}
    for label, names in enumerate(classes.values()):
        for photo in names:
            for split, n in zip(strips, per_photo):
                crops = strip_crops(photos[photo], n, rng, *strips[split])
                splits[split][0].extend(crops)
                splits[split][1].extend([label] * len(crops))
    known = {p for ps in classes.values() for p in ps}
    others = [c for p, im in photos.items() if p not in known for c in random_crops(im, unknown_per_photo, rng)]
    desc = " vs ".join(f"{c} ({'+'.join(ps)})" for c, ps in classes.items())
    return Scenario(
        name, desc, list(classes), *splits["train"], *splits["val"], *splits["test"],
        unknowns={"other photos": others, "empty clutter": arrows("none", clutter, rng)},
    )


def arrow_scenario(
    rng: np.random.Generator, photos: dict[str, Image], per_class: tuple[int, int, int] = (60, 50, 50),
    unknown: int = 100, photo_crops: int = 5,
) -> Scenario:
    """Up / down arrows known; empty clutter, photo crops and left / right arrows unknown."""
    def split(n: int) -> tuple[list[Image], list[int]]:
        return arrows("up", n, rng) + arrows("down", n, rng), [0] * n + [1] * n

    train, val, test = (split(n) for n in per_class)
    half = unknown // 2
    return Scenario(
        "arrows", "up vs down arrows on clutter", ["up", "down"], *train, *val, *test,
        unknowns={
            "empty clutter": arrows("none", unknown, rng),
            "photo crops": [c for im in photos.values() for c in random_crops(im, photo_crops, rng)],
            "left/right arrows": arrows("left", half, rng) + arrows("right", unknown - half, rng),
        },
        near_novel=("left/right arrows",),
    )


PHOTO_SPLITS = {
    "photos-1": {"living": ["chelsea", "astronaut", "grace_hopper", "horse"],
                 "objects": ["coffee", "rocket", "motorcycle", "clock"]},
    "photos-2": {"textures": ["brick", "grass", "gravel"], "scenes": ["china", "flower", "camera"]},
}


def all_scenarios(seed: int = 0, photos: dict[str, Image] | None = None, train_per_photo: int = 16,
                  train_per_arrow_class: int = 60) -> list[Scenario]:
    """Every scenario whose photos are available here, deterministic for a seed and sizes."""
    photos = photo_library() if photos is None else photos
    rng = np.random.default_rng(seed)
    out = []
    for name, classes in PHOTO_SPLITS.items():
        try:
            out.append(photo_scenario(name, classes, photos, rng, per_photo=(train_per_photo, 10, 10)))
        except ValueError as e:
            log.warning("scenario %s skipped: %s", name, e)
    out.append(arrow_scenario(rng, photos, per_class=(train_per_arrow_class, 50, 50)))
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    lib = photo_library()
    print(f"{len(lib)} photos: " + ", ".join(f"{k} {v.shape[1]}x{v.shape[0]}" for k, v in lib.items()))
    for s in all_scenarios(0, lib):
        print(s.summary())
