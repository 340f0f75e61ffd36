"""Adapters around a plain `FrameSource`.

`SyncSource` decodes on the caller's thread (no drops); `PrefetchSource` decodes one frame ahead on a reader thread
(throughput on files); both give it the camera interface the pipeline reads (`read_latest`). A live camera uses
`edge.runtime.camera.Camera` instead, which keeps only the newest frame. `InterruptibleSource` lets a stop end a
read that blocks (a 0.1 fps source, a stalled stream) at once, so shutting down never waits for the source.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import numpy as np

from edge.runtime.sources.base import FrameSource

log = logging.getLogger(__name__)


class SyncSource:
    """Adapts a plain `FrameSource` (`read()`) to the camera interface, reading on the caller's thread.

    No capture thread, so no frame is ever dropped: each `read_latest` decodes the next frame. Useful for files
    processed frame by frame, and for tests.
    """

    # what a camera's status shows (edge.service.health.CameraStatus): a plain source neither reconnects nor retries
    frame_time = 0.0
    last_error = ""
    reconnects = 0
    errors = 0

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
        self.frame_time = time.monotonic()
        return frame, self.frame_id, self.frame_time


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
            item = self._q.get(timeout=timeout)  # 0: no waiting
        except queue.Empty:
            return None
        if item is None:
            self.state = "ended"
            return None
        self._slot.release()
        self.frame_id, self.frame_time = item[1], item[2]
        return item

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        super().stop()


class InterruptibleSource(FrameSource):
    """A FrameSource whose `read()` stops blocking soon after `interrupt` (an Event) is set.

    The wrapped source's `read()` runs on a daemon thread of its own. On `interrupt`, a read that only waits to
    pace frames (a 0.1 fps test:// or slideshow) returns its frame at once; one blocked in a driver or on a stalled
    stream raises OSError and is left behind, and the wrapped source is closed on that thread when the call
    returns (never from under a read in progress). A service sets `interrupt` when it stops, so the camera's
    capture thread never holds the stop past its 5 s promise.
    """

    POLL_S = 0.1  # how often a waiting read looks at `interrupt` (a frame that arrives wakes it at once)

    def __init__(self, source: FrameSource, interrupt: threading.Event) -> None:
        self.source = source
        self.uri, self.fps, self.is_live = source.uri, source.fps, source.is_live
        self._interrupt = interrupt
        self._request = threading.Event()
        self._done = threading.Event()
        self._result: tuple[np.ndarray | None, BaseException | None] = (None, None)
        self._closed = False
        self._thread = threading.Thread(target=self._worker, name=f"source-read {source.uri}", daemon=True)
        self._thread.start()

    def _worker(self) -> None:
        try:
            while True:
                self._request.wait()
                self._request.clear()
                if self._closed:
                    return
                try:
                    self._result = (self.source.read(), None)
                except BaseException as e:  # noqa: BLE001 - handed to the reading thread, which raises it
                    self._result = (None, e)
                self._done.set()
        finally:
            self.source.close()

    def read(self) -> np.ndarray | None:
        if self._closed:
            raise OSError(f"{self.uri}: read after close")
        self._done.clear()
        self._request.set()
        while not self._done.wait(self.POLL_S):
            if self._interrupt.is_set():
                self.source.interrupt()  # a pacing wait ends now, with its frame
                if not self._done.wait(self.POLL_S):
                    raise OSError(f"{self.uri}: read interrupted (stopping)")
        frame, error = self._result
        if error is not None:
            raise error
        return frame

    def close(self) -> None:
        self._closed = True
        self.source.interrupt()  # a read that only waits to pace frames returns now
        self._request.set()  # an idle worker closes the source now, a busy one once its read returns

    def wait_closed(self, timeout: float) -> bool:
        """After `close()`: wait up to `timeout` s for the wrapped source to be released; True when it was."""
        self._thread.join(timeout)
        return not self._thread.is_alive()
