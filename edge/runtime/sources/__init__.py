"""Video sources behind one URI scheme, shared by `capture`, `edge serve` and `edge bench`.

`open_source(uri)` picks an implementation from `SOURCES` (scheme -> factory) and returns an opened FrameSource.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qsl, urlsplit

from edge.core.files import IMAGE_EXTENSIONS, is_image_name, list_images  # noqa: F401 - re-exported for users
from edge.runtime.sources.base import FrameSource, Pacer, SourceError
from edge.runtime.sources.csi import open_csi
from edge.runtime.sources.folder import open_folder
from edge.runtime.sources.opencv_source import open_file, open_stream, open_v4l2
from edge.runtime.sources.testpattern import open_test

__all__ = ["FrameSource", "SourceError", "Pacer", "open_source", "SOURCES", "SOURCE_HELP", "list_images",
           "is_image_name", "IMAGE_EXTENSIONS"]

log = logging.getLogger(__name__)

SOURCE_HELP = (
    "0 or /dev/video0 or v4l2:///dev/video0 (USB camera), csi://0 (Jetson CSI camera), a video file, "
    "rtsp://..., http(s)://... (e.g. MJPEG), an image folder, test:// (synthetic, e.g. test://?width=320&fps=15)"
)


def _v4l2(uri, parts, options, **kw):
    device = parts.path or parts.netloc
    if not device:
        raise SourceError(f"source {uri!r} names no device; use v4l2:///dev/video0")
    return open_v4l2(uri, options, int(device) if device.isdigit() else device, **kw)


def _csi(uri, parts, options, **kw):
    sensor = parts.netloc or parts.path.strip("/") or "0"
    if not sensor.isdigit():
        raise SourceError(f"CSI sensor id {sensor!r} in {uri!r} is not a number; use csi://0 or csi://1")
    return open_csi(uri, options, int(sensor), **kw)


def _test(uri, parts, options, **kw):
    return open_test(uri, options, **kw)


def _stream(uri, parts, options, **kw):
    return open_stream(uri, options, **kw)


def _path(uri, parts, options, **kw):
    path = Path(parts.path if parts.scheme == "file" else uri).expanduser()
    if path.is_dir() or path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
        return open_folder(uri, options, path, **kw)
    if path.is_file():
        return open_file(uri, options, path, **kw)
    if not path.exists():
        raise SourceError(f"no such file or folder: {str(path)!r}; valid sources: {SOURCE_HELP}")
    raise SourceError(f"{str(path)!r} is neither a video file nor a folder of images")


# scheme -> factory(uri, urlsplit parts, query options, width=, height=, fps=, loop=, realtime=) -> FrameSource
SOURCES: dict[str, Callable[..., FrameSource]] = {
    "v4l2": _v4l2,
    "csi": _csi,
    "test": _test,
    "rtsp": _stream,
    "rtsps": _stream,
    "http": _stream,
    "https": _stream,
    "file": _path,
}


def _scheme_of(uri: str) -> str:
    if uri.isdigit() or uri.startswith("/dev/video"):
        return "v4l2"
    if "://" not in uri:
        return "file"
    scheme = uri.split("://", 1)[0].lower()
    if sys.platform == "win32" and re.fullmatch(r"[a-z]", scheme):  # C://path is a drive, not a scheme
        return "file"
    return scheme


def open_source(uri: str, *, width: int | None = None, height: int | None = None, fps: float | None = None,
                loop: bool = False, realtime: bool = True) -> FrameSource:
    """Open `uri` and return a ready FrameSource, or raise SourceError naming the source and what to try.

    realtime=True paces files, folders and test:// to their fps like a camera; False reads as fast as possible.
    loop=True repeats files, folders and finite test:// sources forever.
    """
    uri = str(uri).strip()
    if not uri:
        raise SourceError(f"empty video source; valid sources: {SOURCE_HELP}")
    scheme = _scheme_of(uri)
    factory = SOURCES.get(scheme)
    if factory is None:
        raise SourceError(f"unknown source scheme {scheme + '://'!r} in {uri!r}; valid: "
                          f"{', '.join(s + '://' for s in SOURCES)} or a device, file or folder path")
    if "://" in uri:
        parts = urlsplit(uri)
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
    else:  # a bare device or path: no query options (a file name may contain '?')
        parts, options = urlsplit("")._replace(path=uri), {}
    for name, value in (("width", width), ("height", height), ("fps", fps)):
        if value is not None and value <= 0:
            raise SourceError(f"--{name} must be > 0, got {value}")
    try:
        source = factory(uri, parts, options, width=width, height=height, fps=fps, loop=loop, realtime=realtime)
    except SourceError:
        raise
    except (OSError, ValueError, RuntimeError) as e:  # cv2.error is an Exception subclass, handled below
        raise SourceError(f"cannot open {uri!r}: {e}") from e
    except Exception as e:  # cv2.error from a backend
        raise SourceError(f"cannot open {uri!r}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}") from e
    log.info("opened %s (%s, fps %s)", uri, type(source).__name__, source.fps)
    return source
