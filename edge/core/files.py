"""Reading the files users hand us: PyTorch files and images, each with one clear error or a None."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.errors import EdgeError, brief
from edge.core.fsutil import is_temp_name

# the one list of image types every reader takes: train, capture, predict, export and the folder source
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def is_image_name(name: str) -> bool:
    """True for an image file name readers take: a known extension, not hidden, not a temporary (.tmp-*) name."""
    name = os.path.basename(name)
    return name.lower().endswith(IMAGE_EXTENSIONS) and not is_temp_name(name) and not name.startswith(".")


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files in `folder` sorted by path, skipping hidden and temporary (.tmp-*) names and hidden folders."""
    root = Path(folder)
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(
        p for p in found
        if is_image_name(p.name) and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def load_torch_file(path: str | os.PathLike, what: str = "PyTorch file", hint: str = "") -> Any:
    """`torch.load(weights_only=True)` on CPU; a missing, corrupt or foreign file is one EdgeError naming `what`."""
    import torch

    p = Path(path)
    if p.is_dir():
        raise EdgeError(f"{what} {str(p)!r} is a folder, not a file" + (f"; {hint}" if hint else ""))
    if not p.is_file():
        raise EdgeError(f"{what} {str(p)!r} not found" + (f"; {hint}" if hint else ""))
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # every unpickling failure means the file is not usable
        raise EdgeError(f"cannot read {what} {str(p)!r}: corrupt, truncated or not a PyTorch checkpoint "
                        f"({brief(e)})") from e


def read_image_bgr(path: str | os.PathLike) -> np.ndarray | None:
    """HxWx3 uint8 BGR image (EXIF orientation applied, as in training), or None when it cannot be decoded or
    declares more pixels than edge.core.images.MAX_PIXELS (checked from the header, before decoding)."""
    import cv2

    from edge.core.images import pixel_problem

    problem = pixel_problem(path)
    if problem:
        logging.getLogger(__name__).warning("%s", problem)
        return None

    try:
        buf = np.fromfile(str(path), np.uint8)
    except OSError:
        return None
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    return img if img is not None and img.ndim == 3 and img.shape[2] == 3 else None
