"""A folder of images (or one image file) played as a video: sorted by name, paced like a slideshow."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from edge.core.files import IMAGE_EXTENSIONS, list_images
from edge.core.images import pixel_problem
from edge.runtime.sources.base import (
    FrameSource,
    Pacer,
    SourceConfigError,
    SourceError,
    check_options,
    number_option,
)

log = logging.getLogger(__name__)

# the one list of image files every reader takes (sources, capture, export, training); OpenCV and PIL decode them all
DEFAULT_FPS = 1.0  # a slideshow: each image stays a second when paced in real time
OPTIONS = {"fps": f"images per second when paced, default {DEFAULT_FPS:g}"}


class ImageFolderSource(FrameSource):
    """Each image of a folder in turn; unreadable images are skipped with a warning."""

    def __init__(self, uri: str, options: dict[str, str], path: Path, *, width=None, height=None, fps=None,
                 loop=False, realtime=True):
        check_options(uri, options, OPTIONS)
        self.uri = uri
        self.files = [path] if path.is_file() else list_images(path)
        if not self.files:
            raise SourceConfigError(f"no images in folder {str(path)!r} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        self.fps = float(fps or number_option(uri, options, "fps", DEFAULT_FPS))
        self.size = (int(width), int(height)) if width and height else None
        self.loop = loop
        self._pacer = Pacer(self.fps) if realtime else None
        self._index = 0

    def read(self) -> np.ndarray | None:
        misses = 0
        while True:
            if self._index >= len(self.files):
                if not self.loop:
                    return None
                self._index = 0
            path = self.files[self._index]
            self._index += 1
            problem = pixel_problem(path)  # from the header: a decompression bomb is never decoded
            img = None if problem else cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is not None:
                break
            log.warning("skipping %s", problem or f"unreadable image {path}")
            misses += 1
            if misses >= len(self.files):
                why = f" ({problem})" if problem else ""
                raise SourceError(f"none of the {len(self.files)} images in {self.uri!r} can be decoded{why}")
        if self.size and (img.shape[1], img.shape[0]) != self.size:
            img = cv2.resize(img, self.size, interpolation=cv2.INTER_AREA)
        if self._pacer:
            self._pacer.wait()
        return img


def open_folder(uri, options, path, **kw) -> ImageFolderSource:
    return ImageFolderSource(uri, options, Path(path), **kw)
