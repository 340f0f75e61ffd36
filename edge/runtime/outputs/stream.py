"""`StreamOutput`: the overlaid video as shared JPEGs for MJPEG clients (/stream.mjpg, /snapshot.jpg).

`write` only keeps a copy of the newest frame; one encoder thread turns it into a JPEG once per frame (and only
while someone watches), and every client thread sends that same JPEG. A slow client only falls behind itself.
The JPEG is dropped when the last client leaves: frames are not encoded while nobody watches, so a JPEG kept from
then would greet the next viewer with a picture that may be hours old.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from edge.runtime.outputs.base import Output

log = logging.getLogger(__name__)

MAX_STREAM_CLIENTS = 16  # each is a thread and an upload of the video; more is a mistake or an attack


class StreamOutput(Output):
    """Pipeline output that serves the overlaid video as shared JPEGs (encoded once per frame, lazily)."""

    name = "http-stream"

    def __init__(self, quality: int = 80, max_clients: int = MAX_STREAM_CLIENTS) -> None:
        super().__init__()
        self.quality = int(quality)
        self.max_clients = int(max_clients)
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._frame_seq = 0
        self._jpeg: bytes | None = None
        self._jpeg_seq = 0
        self._encoded_seq = 0
        self._fresh_from = 0  # frames numbered below this were written before the last client left
        self.clients = 0
        self.closed = False
        self.encode_errors = 0
        self._thread = threading.Thread(target=self._encoder, name="mjpeg-encoder", daemon=True)
        self._thread.start()

    def write(self, frame: np.ndarray, prediction: Any) -> None:
        if self.clients <= 0:  # nobody watching: no copy, no encode
            return
        copy = frame.copy()  # the pipeline reuses its buffer after we return
        with self._cond:
            self._frame = copy
            self._frame_seq += 1
            self._cond.notify_all()

    def _encoder(self) -> None:
        import cv2

        params = [int(cv2.IMWRITE_JPEG_QUALITY), self.quality]
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self.closed or self._frame_seq > self._encoded_seq)
                if self.closed:
                    return
                frame, seq = self._frame, self._frame_seq
                if frame is None:  # the last client left before this frame was encoded
                    self._encoded_seq = seq
                    continue
            ok, buf = cv2.imencode(".jpg", frame, params)
            if not ok:
                self.encode_errors += 1
                if self.encode_errors == 1:
                    log.error("JPEG encoding failed for a %s frame", getattr(frame, "shape", "?"))
            with self._cond:
                self._encoded_seq = max(self._encoded_seq, seq)
                if ok and seq >= self._fresh_from:  # not a frame from before the last client left
                    self._jpeg = buf.tobytes()
                    self._jpeg_seq += 1
                    self._cond.notify_all()

    def wait_jpeg(self, after: int, timeout: float) -> tuple[bytes, int] | None:
        """The newest JPEG with a sequence number above `after`, or None on timeout / close."""
        with self._cond:
            self._cond.wait_for(lambda: self.closed or (self._jpeg is not None and self._jpeg_seq > after), timeout)
            if self._jpeg is not None and self._jpeg_seq > after and not self.closed:
                return self._jpeg, self._jpeg_seq
            return None

    def latest_jpeg(self) -> tuple[bytes, int] | None:
        with self._cond:
            return None if self._jpeg is None else (self._jpeg, self._jpeg_seq)

    def add_client(self) -> bool:
        with self._cond:
            if self.clients >= self.max_clients:
                return False
            self.clients += 1
            return True

    def remove_client(self) -> None:
        with self._cond:
            self.clients -= 1
            if self.clients <= 0:  # nobody watches: what we hold would be stale by the time anyone does
                self._jpeg, self._frame = None, None
                self._encoded_seq = self._frame_seq
                self._fresh_from = self._frame_seq + 1

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self._thread.join(timeout=2.0)
