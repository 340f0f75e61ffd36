"""Record the annotated stream to a video file (`edge serve --record`, `edge demo`).

`write` only copies the frame into a bounded queue; a writer thread encodes (OpenCV VideoWriter: `.mp4` ->
H.264 where this OpenCV has an encoder for it, else MPEG-4 Part 2 (mp4v, which browsers do not play: said in one
line at start), `.avi`/`.mkv` -> MJPG, `.webm` -> VP8, which browsers play; `fourcc` picks another codec).
A disk that fills up stops the recording with one error line (the output is then dead, as `edge_output_alive`
shows): the writer stops while a little space is left, so the file is finalized and plays up to there; a file
that cannot be read back is removed. When the encoder falls behind, frames are dropped
and counted, never queued without bound. The file is written under a temporary name and moved into place on
`close()`, so a crash never leaves a half-written video under the final name. With `realtime=True` (default)
frames are repeated or skipped to keep the video's clock equal to the wall clock, so a 10 s run plays for 10 s
whatever the inference rate was. With several cameras each records its own file (`camera_path`).
"""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from edge.core.errors import DiskFullError, EdgeError
from edge.core.fsutil import TEMP_PREFIX, ensure_writable_dir, make_readable
from edge.runtime.outputs.base import Output
from edge.runtime.outputs.video import mpeg4_part2_hint, writes_and_reads_back
from edge.runtime.prediction import Prediction

log = logging.getLogger(__name__)

CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "MJPG", ".webm": "VP80"}
MIN_FREE_BYTES = 8 << 20  # stop recording below this much free space (or 1/20 of a small disk), to finalize the file
FREE_CHECK_S = 0.5
_STOP = object()


def camera_path(path: str | os.PathLike, camera: int, cameras: int) -> Path:
    """The file camera `camera` of `cameras` records to: `path` itself for a single camera, else
    `stem.camN.suffix` beside it (`run.mp4` -> `run.cam0.mp4`, `run.cam1.mp4`)."""
    p = Path(path)
    return p if cameras == 1 else p.with_name(f"{p.stem}.cam{camera}{p.suffix}")


class RecordOutput(Output):
    """Annotated frames -> a video file. `frames_written`, `dropped` count what happened."""

    name = "record"

    def __init__(self, path: str | os.PathLike, fps: float = 15.0, realtime: bool = True, queue_size: int = 32,
                 clock: Callable[[], float] = time.monotonic, fourcc: str | None = None) -> None:
        super().__init__()
        self._clock = clock
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in CODECS:
            raise EdgeError(f"cannot record to {str(self.path)!r}: use a file ending in {', '.join(CODECS)}")
        if not fps or fps <= 0:
            raise EdgeError(f"record fps must be > 0, got {fps}")
        self.fourcc = fourcc or CODECS[suffix]
        if len(self.fourcc) != 4:
            raise EdgeError(f"a video codec is a 4-character code (e.g. avc1, VP80, mp4v), got {self.fourcc!r}")
        ensure_writable_dir(self.path.parent, "recording directory")
        if fourcc is None and suffix == ".mp4":  # what browsers play, where this OpenCV can write it
            if writes_and_reads_back(self.path.parent, ".mp4", "avc1"):
                self.fourcc = "avc1"
            else:
                log.warning("%s; or record to a .webm file, which browsers play", mpeg4_part2_hint(self.path, "mp4v"))
        self.fps = float(fps)
        self.realtime = realtime
        self.frames_written = 0
        self.dropped = 0
        self._q: queue.Queue = queue.Queue(maxsize=queue_size)
        self._pool: queue.SimpleQueue = queue.SimpleQueue()  # recycled frame buffers: no per-frame allocation
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=TEMP_PREFIX, suffix=suffix)
        os.close(fd)
        self._tmp = Path(tmp)
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self._t0: float | None = None
        self._error: BaseException | None = None
        self._free_checked = 0.0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="edge-record", daemon=True)
        self._thread.start()

    def write(self, frame: np.ndarray, prediction: Prediction) -> None:
        if self._error is not None:
            raise RuntimeError(f"recording to {self.path} failed: {self._error}") from self._error
        try:
            buf = self._pool.get_nowait()
            if buf.shape != frame.shape:
                buf = np.empty_like(frame)
        except queue.Empty:
            buf = np.empty_like(frame)
        np.copyto(buf, frame)
        try:
            self._q.put_nowait((buf, self._clock()))
        except queue.Full:
            self.dropped += 1
            self._pool.put(buf)

    def _open(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (w, h))
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot open a {self.fourcc} video writer for {self.path}")
        self._writer, self._size = writer, (w, h)

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            frame, ts = item
            try:
                if self._writer is None:
                    self._open(frame)
                    self._t0 = ts
                if (frame.shape[1], frame.shape[0]) != self._size:
                    frame = cv2.resize(frame, self._size)
                repeats = 1
                if self.realtime and self._t0 is not None:
                    due = int((ts - self._t0) * self.fps) + 1  # frames the video should hold by now
                    repeats = due - self.frames_written
                # at most 5 s of repeats after a gap, but never fewer than one frame: at --fps 0.1, 5 s of video
                # is half a frame, and rounding that to 0 recorded nothing at all
                for _ in range(max(0, min(repeats, max(1, int(self.fps * 5))))):
                    self._writer.write(frame)
                    self.frames_written += 1
                self._check_free()
            except Exception as e:  # noqa: BLE001 - reported to the pipeline on the next write()
                log.error("recording to %s failed after %d frames: %s", self.path, self.frames_written, e)
                self._error = e
                self.alive = False  # said once, here: the pipeline skips a dead output (edge_output_alive 0)
                return
            finally:
                self._pool.put(item[0])

    def _check_free(self) -> None:
        """Raise DiskFullError when the disk is (nearly) full: OpenCV's writer fails silently there."""
        now = time.monotonic()
        if now - self._free_checked < FREE_CHECK_S:
            return
        self._free_checked = now
        st = os.statvfs(self._tmp.parent)
        free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        if free < min(MIN_FREE_BYTES, total // 20):
            raise DiskFullError(self.path)

    def _playable(self) -> bool:
        reader = cv2.VideoCapture(str(self._tmp))
        try:
            return bool(reader.isOpened() and reader.read()[0])
        finally:
            reader.release()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            try:
                self._q.put(_STOP, timeout=30)
            except queue.Full:
                log.warning("video writer for %s is stuck; closing it anyway", self.path)
            self._thread.join(30)
        if self._writer is not None:
            self._writer.release()
        keep = self._writer is not None and self.frames_written and (self._error is None or self._playable())
        try:
            if keep:
                with open(self._tmp, "rb+") as f:
                    os.fsync(f.fileno())
                make_readable(self._tmp)  # mkstemp creates 0600; a recording is meant to be shared
                os.replace(self._tmp, self.path)
        except OSError as e:
            log.error("cannot finish the recording %s: %s; removed it", self.path, e.strerror or e)
            keep = False
        if not keep:
            self._tmp.unlink(missing_ok=True)
        if keep and self._error is None:
            log.info("recorded %d video frames to %s (%d dropped by the recorder's full queue)", self.frames_written,
                     self.path, self.dropped)
        elif keep:
            log.warning("kept the %d frames recorded to %s before it failed", self.frames_written, self.path)
        elif self._error is not None:
            log.warning("removed %s: what was recorded before it failed cannot be played", self.path)
        else:
            log.warning("nothing recorded to %s (no frames)", self.path)
