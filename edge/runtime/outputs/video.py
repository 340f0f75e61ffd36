"""Which video files this OpenCV can write that browsers play: probed by writing and reading back a tiny file.

Used by `edge demo` (which picks the format) and `--record` (which writes H.264 into `.mp4` where it can, else
says in one line what it wrote and how to view it).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from edge.core.fsutil import TEMP_PREFIX

# (file suffix, OpenCV fourcc) that browsers play, best first
BROWSER_VIDEO = ((".mp4", "avc1"), (".webm", "VP80"))
FALLBACK_VIDEO = (".mp4", "mp4v")  # MPEG-4 Part 2: every OpenCV writes it; VLC plays it, browsers do not


@contextlib.contextmanager
def native_stderr_off() -> Iterator[None]:
    """Probing codecs makes FFmpeg and OpenCV print lines to fd 2 ("Could not open codec", "tag ... is not
    supported") that mean nothing to the user: send them to /dev/null meanwhile. Only before a pipeline
    starts: no other thread writes then."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def writes_and_reads_back(folder: Path, suffix: str, fourcc: str) -> bool:
    """Whether this OpenCV writes a `suffix` file in `fourcc` (in `folder`) that it can read back."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=suffix)
    os.close(fd)
    try:
        with native_stderr_off():
            writer = cv2.VideoWriter(name, cv2.VideoWriter_fourcc(*fourcc), 10.0, (64, 48))
            if not writer.isOpened():
                return False
            for i in range(3):
                writer.write(np.full((48, 64, 3), 60 * i, np.uint8))
            writer.release()
            reader = cv2.VideoCapture(name)
            ok = reader.read()[0]
            reader.release()
        return bool(ok)
    finally:
        os.unlink(name)


def mpeg4_part2_hint(video: str | Path, fourcc: str) -> str:
    """How to watch a recording in MPEG-4 Part 2, which browsers do not play."""
    h264 = Path(video).with_name(f"{Path(video).stem}-h264.mp4")
    return (f"{Path(video).name} is MPEG-4 Part 2 ({fourcc}; this OpenCV has no H.264 or VP8 encoder), which "
            f"browsers do not play: open it in VLC, or convert it with "
            f"ffmpeg -i {video} -c:v libx264 -pix_fmt yuv420p {h264}")
