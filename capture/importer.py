"""Importing existing photos (e.g. from a phone) into the dataset, under the same rules as captured shots."""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path

from PIL import Image, ImageOps

from edge.core.errors import EdgeError
from edge.core.files import IMAGE_EXTENSIONS, list_images
from edge.core.images import pixel_problem

from .dataset import DatasetWriter

log = logging.getLogger(__name__)

EXIF_ORIENTATION = 0x0112


def import_photos(folder: str | Path, writer: DatasetWriter, label: str, count: int | None = None,
                  out=print, stop: threading.Event | None = None) -> tuple[int, list[Path]]:
    """Copy the images under `folder` (recursively) into the label folder: plain upright JPEGs byte for byte,
    anything else re-encoded as JPEG with EXIF rotation applied. Returns (imported, unreadable files)."""
    files = list_images(folder, recursive=True)
    if not files:
        raise EdgeError(f"no images in {str(folder)!r} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    if count is not None:
        files = files[:count]
    imported, bad = 0, []
    for path in files:
        if stop is not None and stop.is_set():
            out("stopped")
            break
        problem = pixel_problem(path)  # from the header: a decompression bomb is never decoded
        if problem:
            bad.append(path)
            out(f"skipped {problem}")
            continue
        try:
            data = convert(path.read_bytes(), writer.quality)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            log.debug("cannot read %s: %s", path, e)
            bad.append(path)
            out(f"skipped {path}: not a readable image")
            continue
        dest = writer.save_bytes(label, data)
        imported += 1
        out(f"[{imported}/{len(files)}] {path.name} -> {dest}")
    return imported, bad


def convert(data: bytes, quality: int) -> bytes:
    """`data` itself when it is a complete, upright RGB/grey JPEG; otherwise an upright JPEG re-encoding."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()  # decodes fully: raises on truncated or corrupt files
        upright = im.getexif().get(EXIF_ORIENTATION, 1) == 1
        if im.format == "JPEG" and upright and im.mode in ("RGB", "L"):
            return data
        im = ImageOps.exif_transpose(im)
        if im.mode != "RGB":
            im = im.convert("RGBA").convert("RGB") if "A" in im.mode or im.mode == "P" else im.convert("RGB")
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        return buf.getvalue()
