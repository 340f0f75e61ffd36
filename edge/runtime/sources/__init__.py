"""Video sources behind one URI scheme, shared by `capture`, `edge serve` and `edge bench`.

`SOURCES` is the one table of URI schemes: each entry (`SourceKind`, added with `register_source`) holds the
scheme's opener, its validator and its help text. `open_source(uri)` opens through the entry and returns a ready
FrameSource; `validate_source_uri(uri)` runs the same parsing and the entry's checks without opening anything (a
service checks its configuration with it at start). Errors are `SourceConfigError` when the URI itself is wrong
(retrying cannot help) and plain `SourceError` for an outage (a camera unplugged, a stream down: worth retrying).
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NoReturn
from urllib.parse import SplitResult, parse_qsl, urlsplit

from edge.core.files import IMAGE_EXTENSIONS
from edge.runtime.sources.base import (
    FrameSource,
    SourceConfigError,
    SourceError,
    check_options,
    redact_uri,
)
from edge.runtime.sources.csi import csi_flip, open_csi
from edge.runtime.sources.folder import open_folder
from edge.runtime.sources.opencv_source import (
    FILE_OPTIONS,
    check_stream,
    open_file,
    open_stream,
    open_v4l2,
    v4l2_settings,
)
from edge.runtime.sources.testpattern import open_test

__all__ = ["FrameSource", "SourceError", "SourceConfigError", "SourceKind", "open_source", "validate_source_uri",
           "redact_uri", "register_source", "unregister_source", "source_help", "SOURCES", "SOURCE_HELP"]

log = logging.getLogger(__name__)

def _v4l2_device(uri: str, parts: SplitResult) -> str | int:
    device = parts.path or parts.netloc
    if not device:
        raise SourceConfigError(f"source {uri!r} names no device; use v4l2:///dev/video0")
    return int(device) if device.isdigit() else device


def _v4l2(uri, parts, options, **kw):
    return open_v4l2(uri, options, _v4l2_device(uri, parts), **kw)


def _check_v4l2(uri, parts, options):
    _v4l2_device(uri, parts)  # whether it exists is not checked: a USB camera unplugged at boot is an outage
    v4l2_settings(uri, options)


def _csi_sensor(uri: str, parts: SplitResult) -> int:
    sensor = parts.netloc or parts.path.strip("/") or "0"
    if not sensor.isdigit():
        raise SourceConfigError(f"CSI sensor id {sensor!r} in {uri!r} is not a number; use csi://0 or csi://1")
    return int(sensor)


def _csi(uri, parts, options, **kw):
    return open_csi(uri, options, _csi_sensor(uri, parts), **kw)


def _check_csi(uri, parts, options):
    _csi_sensor(uri, parts)
    csi_flip(uri, options)


def _test(uri, parts, options, **kw):
    return open_test(uri, options, **kw)


def _check_test(uri, parts, options):
    open_test(uri, options, realtime=False).close()  # parses every option; renders nothing


def _stream(uri, parts, options, **kw):
    return open_stream(uri, options, **kw)


def _check_stream(uri, parts, options):
    check_stream(uri)  # options belong to the server; whether it answers is an outage question


def _path_of(uri: str, parts: SplitResult) -> Path:
    """The file or folder a path source names. A missing one is a configuration error, not an outage."""
    path = Path(parts.path if parts.scheme == "file" else uri).expanduser()
    if not path.exists():
        raise SourceConfigError(f"no such file or folder: {str(path)!r}; valid sources: {source_help()}")
    if not (path.is_dir() or path.is_file()):
        raise SourceConfigError(f"{str(path)!r} is neither a video file nor a folder of images")
    return path


def _is_folder_source(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() in IMAGE_EXTENSIONS


def _path(uri, parts, options, **kw):
    path = _path_of(uri, parts)
    if _is_folder_source(path):
        return open_folder(uri, options, path, **kw)
    return open_file(uri, options, path, **kw)


def _check_path(uri, parts, options):
    path = _path_of(uri, parts)
    if _is_folder_source(path):
        open_folder(uri, options, path, realtime=False).close()  # lists the images and parses options; decodes none
    else:
        check_options(uri, options, FILE_OPTIONS)


@dataclass(frozen=True)
class SourceKind:
    """One URI scheme: how to open it, how to check it without opening anything, and its line in the help.

    open(uri, urlsplit parts, query options, width=, height=, fps=, loop=, realtime=) -> FrameSource
    check(uri, urlsplit parts, query options) -> None, raising SourceConfigError for a wrong URI; it must not open
    a device or stream (a service checks its configuration with it at start).
    """

    open: Callable[..., FrameSource]
    check: Callable[[str, SplitResult, dict[str, str]], None]
    help: str


# scheme -> SourceKind: the one table of sources; register_source adds to it
SOURCES: dict[str, SourceKind] = {}


def register_source(scheme: str, *, open: Callable[..., FrameSource],
                    check: Callable[[str, SplitResult, dict[str, str]], None], help: str) -> SourceKind:
    """Add a URI scheme: one entry holds its opener, its validator and its help text (all three required, so a
    scheme that `edge serve` could open but not validate cannot exist). Returns the entry."""
    scheme = scheme.lower()
    if not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme):
        raise ValueError(f"source scheme {scheme!r} is not a URI scheme")
    if scheme in SOURCES:
        raise ValueError(f"source scheme {scheme!r} is already registered")
    if not (callable(open) and callable(check)):
        raise TypeError(f"source scheme {scheme!r} needs an open and a check function")
    if not help.strip():
        raise ValueError(f"source scheme {scheme!r} needs a help text")
    SOURCES[scheme] = kind = SourceKind(open=open, check=check, help=help)
    return kind


def unregister_source(scheme: str) -> None:
    """Remove a scheme (tests that register a fake one)."""
    SOURCES.pop(scheme.lower(), None)


def source_help() -> str:
    """What --source accepts, one phrase per registered kind (several schemes may share one phrase)."""
    return ", ".join(dict.fromkeys(kind.help for kind in SOURCES.values()))


register_source("v4l2", open=_v4l2, check=_check_v4l2,
                help="0 or /dev/video0 or v4l2:///dev/video0 (USB camera)")
register_source("csi", open=_csi, check=_check_csi, help="csi://0 (Jetson CSI camera)")
register_source("file", open=_path, check=_check_path, help="a video file, an image folder")
for _scheme in ("rtsp", "rtsps", "http", "https"):
    register_source(_scheme, open=_stream, check=_check_stream, help="rtsp://..., http(s)://... (e.g. MJPEG)")
register_source("test", open=_test, check=_check_test, help="test:// (synthetic, e.g. test://?width=320&fps=15)")
SOURCE_HELP = source_help()  # the built-in kinds, for argparse help texts built at import


def _scheme_of(uri: str) -> str:
    if uri.isdigit() or uri.startswith("/dev/video"):
        return "v4l2"
    if "://" not in uri:
        return "file"
    scheme = uri.split("://", 1)[0].lower()
    if sys.platform == "win32" and re.fullmatch(r"[a-z]", scheme):  # C://path is a drive, not a scheme
        return "file"
    return scheme


def _parse(uri: str) -> tuple[str, str, SplitResult, dict[str, str]]:
    """(uri stripped, scheme, urlsplit parts, query options); SourceConfigError for an empty URI or unknown scheme."""
    uri = str(uri).strip()
    if not uri:
        raise SourceConfigError(f"empty video source; valid sources: {source_help()}")
    scheme = _scheme_of(uri)
    if scheme not in SOURCES:
        raise SourceConfigError(f"unknown source scheme {scheme + '://'!r} in {redact_uri(uri)!r}; valid: "
                                f"{', '.join(s + '://' for s in SOURCES)} or a device, file or folder path")
    if "://" in uri:
        try:
            parts = urlsplit(uri)
        except ValueError as e:  # e.g. "Invalid IPv6 URL" for http://[::1
            raise SourceConfigError(f"{redact_uri(uri)!r} is not a valid URL ({e}); "
                                    "e.g. http://[::1]:8080/video") from None
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
    else:  # a bare device or path: no query options (a file name may contain '?')
        parts, options = urlsplit("")._replace(path=uri), {}
    return uri, scheme, parts, options


def _raise_without_secrets(error: SourceError, cause: BaseException | None = None) -> NoReturn:
    """Raise `error` (chained to `cause`), or when its message quotes credentials, a copy with them redacted and
    no chain (the original would carry the secret into debug tracebacks). Messages end up in the journal."""
    text = redact_uri(str(error))
    if text != str(error):
        raise type(error)(text) from None
    raise error from (cause or error.__cause__)


def validate_source_uri(uri: str) -> None:
    """Check a source URI without opening a camera or stream: the scheme, its options, that a file or folder
    exists (and a folder holds images), that csi:// has GStreamer. Raises SourceConfigError (one line) when wrong.

    Whether a device or server answers is not checked: that is an outage a service waits out, not a mistake.
    """
    uri, scheme, parts, options = _parse(uri)
    try:
        SOURCES[scheme].check(uri, parts, options)
    except SourceError as e:
        _raise_without_secrets(e)


def open_source(uri: str, *, width: int | None = None, height: int | None = None, fps: float | None = None,
                loop: bool = False, realtime: bool = True) -> FrameSource:
    """Open `uri` and return a ready FrameSource, or raise SourceError naming the source and what to try
    (SourceConfigError when the URI itself is wrong). Credentials in the URI never appear in logs or errors.

    realtime=True paces files, folders and test:// to their fps like a camera; False reads as fast as possible.
    loop=True repeats files, folders and finite test:// sources forever.
    """
    uri, scheme, parts, options = _parse(uri)
    for name, value in (("width", width), ("height", height), ("fps", fps)):
        if value is not None and value <= 0:
            raise SourceConfigError(f"--{name} must be > 0, got {value}")
    try:
        source = SOURCES[scheme].open(uri, parts, options, width=width, height=height, fps=fps, loop=loop,
                                 realtime=realtime)
    except SourceError as e:
        _raise_without_secrets(e)
    except (OSError, ValueError, RuntimeError) as e:  # cv2.error is an Exception subclass, handled below
        _raise_without_secrets(SourceError(f"cannot open {uri!r}: {e}"), e)
    except Exception as e:  # noqa: BLE001 - cv2.error from a backend (an Exception subclass)
        _raise_without_secrets(SourceError(f"cannot open {uri!r}: {_last_line(e)}"), e)
    log.info("opened %s (%s, fps %s)", redact_uri(uri), type(source).__name__, source.fps)
    return source


def _last_line(e: BaseException) -> str:
    """The last line of a native library's (OpenCV's) multi-line message: the one that says what failed."""
    text = str(e).strip()
    return text.splitlines()[-1] if text else repr(e)
