"""Adapters that give a plain `FrameSource` the camera interface the pipeline reads (`read_latest`).

`SyncSource` decodes on the caller's thread (no drops); `PrefetchSource` decodes one frame ahead on a reader thread
(throughput on files). A live camera uses `edge.runtime.camera.Camera` instead, which keeps only the newest frame.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

log = logging.getLogger(__name__)


class SyncSource:
    """Adapts a plain `FrameSource` (`read()`) to the camera interface, reading on the caller's thread.

    No capture thread, so no frame is ever dropped: each `read_latest` decodes the next frame. Useful for files
    processed frame by frame, and for tests.
    """

    def __init__(self, source) -> None:
        self.source = source
        self.frame_id = -1
        self.state = "stopped"
        self.running = False

    def start(self) -> None:
        self.running = True
        self.state = "streaming"

    def stop(self) -> None:
        self.running = False
        if self.state != "ended":
            self.state = "stopped"
        self.source.close()

    def read_latest(self, after_id: int = -1, timeout: float | None = None):
        frame = self.source.read()
        if frame is None:
            self.state = "ended"
            return None
        self.frame_id += 1
        return frame, self.frame_id, time.monotonic()


class PrefetchSource(SyncSource):
    """Adapts a non-live `FrameSource` (file, folder, unpaced test://) for throughput: a reader thread decodes
    frame n+1 while frame n is classified, then waits until n+1 is taken (one frame ahead, just in time).

    Nothing is decoded only to be dropped, unlike a latest-frame camera on an unpaced file, which decodes
    hundreds of frames per second that inference never sees and steals the CPU inference needs.

    Like `Camera`, it can be polled (`poll_latest`) and wakes `add_frame_callback` callbacks, so several files
    can feed one multi-camera pipeline.
    """

    def __init__(self, source) -> None:
        super().__init__(source)
        self._q: queue.Queue = queue.Queue()
        self._slot = threading.Semaphore(1)  # one frame decoded ahead at most
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._callbacks: list = []
        self.error: BaseException | None = None

    def add_frame_callback(self, callback) -> None:
        """Call `callback()` (quick, non-blocking) on the reader thread when a frame, or the end, is ready."""
        self._callbacks.append(callback)

    def remove_frame_callback(self, callback) -> None:
        self._callbacks = [c for c in self._callbacks if c is not callback]

    def _put(self, item) -> None:
        self._q.put(item)
        for callback in list(self._callbacks):
            callback()

    def start(self) -> None:
        if self._thread is not None:
            return
        super().start()
        self._thread = threading.Thread(target=self._loop, name="edge-prefetch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        fid = 0
        try:
            while not self._stop.is_set():
                if not self._slot.acquire(timeout=0.1):
                    continue
                frame = self.source.read()
                if frame is None:
                    self._put(None)
                    return
                self._put((frame, fid, time.monotonic()))
                fid += 1
        except Exception as e:  # noqa: BLE001 - reported as the end of the stream, with the reason logged
            log.error("reading %s failed: %s", getattr(self.source, "uri", "source"), e)
            self.error = e
            self._put(None)

    def read_latest(self, after_id: int = -1, timeout: float | None = None):
        return self._take(timeout)

    def poll_latest(self, after_id: int = -1):
        """The next frame if it is decoded already, else None; never waits."""
        return self._take(0.0)

    def _take(self, timeout: float | None):
        if self.state == "ended":
            return None
        try:
            item = self._q.get(timeout=timeout) if timeout != 0.0 else self._q.get_nowait()
        except queue.Empty:
            return None
        if item is None:
            self.state = "ended"
            return None
        self._slot.release()
        self.frame_id = item[1]
        return item

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        super().stop()
