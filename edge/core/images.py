"""The one pixel limit for every image a user hands us, checked from the file's header before decoding.

A 876 KB PNG can declare 30000x30000 pixels: decoding it costs gigabytes (a decompression bomb). Every reader
(predict, the folder source, teach's thumbnails, train, capture's import) asks `pixel_problem` first, which
reads only the header (Pillow opens lazily), so a refusal costs milliseconds and no memory.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from typing import Union

from edge.core.errors import EdgeError

MAX_PIXELS = 64_000_000  # 8000x8000; a 48-megapixel phone photo passes, a decompression bomb does not
MAX_SIDE = 32768  # no side longer than this either (OpenCV and JPEG limits are near)

ImageSource = Union[str, "os.PathLike[str]", bytes]


class ImageTooLarge(EdgeError):
    """An image whose header declares more pixels than MAX_PIXELS."""


def _describe(source: ImageSource) -> str:
    return "the image" if isinstance(source, (bytes, bytearray, memoryview)) else repr(os.fspath(source))


def too_large(width: int, height: int) -> bool:
    return width * height > MAX_PIXELS or max(width, height) > MAX_SIDE


def pixel_problem(source: ImageSource) -> str | None:
    """Why `source` (a path or the file's bytes) must not be decoded (its header declares too many pixels), or
    None: fine, or no header Pillow knows (then the decoder decides whether it is an image at all)."""
    from PIL import Image

    limit = f"the limit is {MAX_PIXELS / 1e6:.0f} megapixels (e.g. 8000x8000); downscale it first"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source)
            with opened as im:
                width, height = im.size
    except Image.DecompressionBombError as e:  # Pillow's own limit (about 179 megapixels) is well above ours
        m = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(m.group(1)) / 1e6:.0f} megapixels" if m else "far more pixels than can be decoded safely"
        return f"{_describe(source)} declares {size}; {limit}"
    except Exception:  # noqa: BLE001 - unreadable or unknown: not ours to judge here
        return None
    if too_large(width, height):
        return f"{_describe(source)} is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels); {limit}"
    return None


def check_pixels(source: ImageSource) -> None:
    """Raise ImageTooLarge (one line) when `source` declares too many pixels (see pixel_problem)."""
    problem = pixel_problem(source)
    if problem:
        raise ImageTooLarge(problem)
