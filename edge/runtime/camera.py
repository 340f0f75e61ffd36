"""A traitlets camera in the style of NVIDIA's jetcam, for scripts, services and Jupyter notebooks.

Differences from jetcam, each a field problem: only the latest frame is kept (no queue, no latency build-up);
a read error or a silent source never kills capture (it is counted, logged once per outage, and the source is
reopened with capped exponential backoff, forever); the device is released on every exit path (stop, end of
stream, errors, interpreter exit); trait observers run on their own thread, so a slow observer (e.g. inference
in a notebook callback) cannot slow capture down.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
import weakref
from typing import Callable, Iterator

import numpy as np
import traitlets

from edge.runtime.sources import FrameSource, open_source
from edge.runtime.sources.base import redact_uri

log = logging.getLogger(__name__)

INITIAL_BACKOFF_S = 0.25
REMIND_EVERY_S = 60.0  # during a long outage, one reminder line a minute instead of one per attempt
MAX_STUCK_READERS = 3  # readers abandoned inside a blocking call that never returned; beyond this, wait for them

_LIVE: "weakref.WeakSet[Camera]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    # daemon threads die without running their finally blocks at exit; an unreleased CSI camera then stays
    # locked in the Argus daemon ("Failed to create CaptureSession") until it is restarted
    for cam in list(_LIVE):
        with contextlib.suppress(Exception):
            cam.stop()


class Camera(traitlets.HasTraits):
    """The latest frame of a video source (`open_source` URI), read continuously on a daemon thread.

    Traits: `value` (latest BGR frame; treat as read-only), `running` (True starts capture, False stops it),
    `state` ("stopped", "starting", "streaming", "reconnecting", "ended"), `frame_id`, `frame_time`
    (time.monotonic() when read), `errors` (failed opens/reads and stalls), `reconnects` (reopen attempts after
    the first open), `last_error`. `value`, `frame_id` and `frame_time` are set on a notifier thread, and may
    skip frames when observers are slow; `read_latest` is the exact, blocking way to get frames, `poll_latest`
    the non-blocking one, and `add_frame_callback` wakes a consumer that waits on several cameras at once.
    """

    value = traitlets.Any(None, allow_none=True)
    running = traitlets.Bool(False)
    state = traitlets.Unicode("stopped")
    frame_id = traitlets.Int(-1)
    frame_time = traitlets.Float(0.0)
    errors = traitlets.Int(0)
    reconnects = traitlets.Int(0)
    last_error = traitlets.Unicode("")

    def __init__(self, uri: str, width: int | None = None, height: int | None = None, fps: float | None = None,
                 loop: bool = False, realtime: bool = True, stall_timeout: float = 5.0, max_backoff: float = 10.0,
                 *, opener: Callable[[], FrameSource] | None = None):
        super().__init__()
        self.uri = str(uri)
        self._log_name = redact_uri(self.uri)  # logs and thread names never carry a password or ?token=
        self.stall_timeout = float(stall_timeout)
        self.max_backoff = float(max_backoff)
        kwargs = dict(width=width, height=height, fps=fps, loop=loop, realtime=realtime)
        # `opener` is a seam for tests; `from_source` starts on a source the caller opened already
        self._opener = opener or (lambda: open_source(self.uri, **kwargs))
        self._cond = threading.Condition()
        self._latest: tuple[np.ndarray, int, float] | None = None
        self._next_id = 0
        self._stop_event = threading.Event()
        self._stop_event.set()
        self._ended = False
        self._gen = 0  # generation of the current reader; older readers exit as soon as they notice
        self._reader: threading.Thread | None = None
        self._notifier: threading.Thread | None = None
        self._stuck: list[threading.Thread] = []
        self._busy: tuple[int, float, str] | None = None  # (generation, since, "open"|"read") of a blocking call
        self._opens = 0
        self._reader_started = 0.0
        self._source_fps: float | None = fps
        self._outage_since: float | None = None
        self._last_outage_log = 0.0
        self._observer_failed = False
        self._frame_callbacks: tuple[Callable[[], None], ...] = ()
        self._callback_failed = False

    @classmethod
    def from_source(cls, source: FrameSource, uri: str | None = None, **kwargs) -> Camera:
        """A camera that starts on `source`, already opened (e.g. to fail fast with a one-line error before
        starting), and after a loss reopens `uri` (default: `source.uri`) with the same options (`kwargs` as for
        `Camera`)."""
        cam = cls(source.uri if uri is None else uri, **kwargs)
        reopen, pending = cam._opener, [source]
        cam._opener = lambda: pending.pop() if pending else reopen()
        return cam

    # ---- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> "Camera":
        self.running = True
        return self

    def stop(self) -> None:
        """Stop capture, join the threads and release the device (also when the source had ended)."""
        if self.running:
            self.running = False
        else:
            self._stop_threads()

    def __enter__(self) -> "Camera":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @traitlets.observe("running")
    def _on_running(self, change) -> None:
        if change["new"]:
            self._start_threads()
        else:
            self._stop_threads()

    def _start_threads(self) -> None:
        with self._cond:
            if self._reader is not None and self._reader.is_alive() and not self._stop_event.is_set():
                return
            self._stop_event.clear()
            self._ended = False
            self._latest = None  # a frame from before a restart is not "latest"
            self._opens = 0
            self._gen += 1
            gen = self._gen
        self.state = "starting"
        _LIVE.add(self)
        self._reader = self._spawn_reader(gen)
        self._notifier = threading.Thread(target=self._notify_loop, name=f"camera-notify {self._log_name}", daemon=True)
        self._notifier.start()

    def _spawn_reader(self, gen: int) -> threading.Thread:
        t = threading.Thread(target=self._read_loop, args=(gen,), name=f"camera-read {self._log_name}", daemon=True)
        self._reader_started = time.monotonic()
        t.start()
        return t

    def _stop_threads(self) -> None:
        self._stop_event.set()
        with self._cond:
            self._gen += 1
            self._cond.notify_all()
        me = threading.current_thread()
        timeout = self.stall_timeout + 1.0
        # the notifier first: until it has seen the stop, its watchdog may replace `_reader` with a new thread
        for name in ("_notifier", "_reader"):
            t = getattr(self, name)
            if t is not None and t is not me and t.is_alive():
                t.join(timeout)
                if t.is_alive():
                    log.warning("%s: capture thread is blocked in the driver; it releases the device when that "
                                "call returns", self._log_name)
        _LIVE.discard(self)
        if self.state != "ended":
            self.state = "stopped"
        self._wake_callbacks()

    # ---- frames ---------------------------------------------------------------------------------------------

    def read_latest(self, after_id: int = -1, timeout: float | None = None) -> tuple[np.ndarray, int, float] | None:
        """Block until a frame newer than `after_id` exists; (frame, frame_id, frame_time), or None on timeout,
        end of stream or stop."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                latest = self._latest
                if latest is not None and latest[1] > after_id:
                    return latest
                if self._ended or self._stop_event.is_set():
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def poll_latest(self, after_id: int = -1) -> tuple[np.ndarray, int, float] | None:
        """The newest (frame, frame_id, frame_time) if it is newer than `after_id`, else None; never waits."""
        latest = self._latest  # one reference read: the reader replaces the tuple whole
        return latest if latest is not None and latest[1] > after_id else None

    def add_frame_callback(self, callback: Callable[[], None]) -> None:
        """Call `callback()` after every new frame, and at end of stream and stop.

        It runs on the capture thread, so it must be quick and must not block (e.g. `threading.Event.set`): a
        consumer of several cameras waits on one event that all of them set, then polls each (`poll_latest`).
        """
        with self._cond:
            self._frame_callbacks = (*self._frame_callbacks, callback)

    def remove_frame_callback(self, callback: Callable[[], None]) -> None:
        with self._cond:
            self._frame_callbacks = tuple(c for c in self._frame_callbacks if c is not callback)

    def _wake_callbacks(self) -> None:
        for callback in self._frame_callbacks:
            try:
                callback()
            except Exception:  # a consumer's bug must not stop capture
                if not self._callback_failed:
                    self._callback_failed = True
                    log.exception("%s: a frame callback raised; capture goes on", self._log_name)

    def _publish(self, frame: np.ndarray) -> None:
        now = time.monotonic()
        with self._cond:
            self._latest = (frame, self._next_id, now)
            self._next_id += 1
            self._cond.notify_all()
        self._wake_callbacks()
        if self._outage_since is not None:
            log.warning("%s: frames are back after %.1f s", self._log_name, now - self._outage_since)
            self._outage_since = None
        if self.state != "streaming":
            self.state = "streaming"

    # ---- reader thread --------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _blocking(self, gen: int, what: str) -> Iterator[None]:
        self._busy = (gen, time.monotonic(), what)
        try:
            yield
        finally:
            if self._busy is not None and self._busy[0] == gen:
                self._busy = None

    def _read_loop(self, gen: int) -> None:
        source: FrameSource | None = None
        backoff = min(INITIAL_BACKOFF_S, self.max_backoff)

        def current() -> bool:
            return gen == self._gen and not self._stop_event.is_set()

        def wait_backoff() -> bool:
            """Sleep the current backoff (doubling it, capped); True when stop() was called meanwhile."""
            nonlocal backoff
            if self._stop_event.wait(backoff):
                return True
            backoff = min(backoff * 2, self.max_backoff)
            return False

        try:
            while current():
                if source is None:
                    if self._opens:
                        self.reconnects += 1
                    self._opens += 1
                    try:
                        with self._blocking(gen, "open"):
                            source = self._opener()
                        self._source_fps = source.fps or self._source_fps
                    except Exception as e:  # noqa: BLE001 - any open failure is a retry with backoff, not a dead reader
                        self._failed(gen, f"cannot open: {e}")
                        if wait_backoff():
                            break
                        continue
                    if not current():
                        break
                try:
                    with self._blocking(gen, "read"):
                        frame = source.read()
                    if frame is None and source.is_live:
                        raise OSError("the stream ended")
                except Exception as e:  # noqa: BLE001 - any read failure is a reconnect, not a dead reader
                    self._failed(gen, f"read failed: {e}")
                    self._close(source)
                    source = None
                    if wait_backoff():
                        break
                    continue
                if not current():
                    break
                if frame is None:
                    self._end()
                    break
                self._publish(frame)
                backoff = min(INITIAL_BACKOFF_S, self.max_backoff)
        except Exception as e:  # a bug, not a camera problem: count it; the watchdog starts a new reader
            log.debug("%s: capture thread crashed", self._log_name, exc_info=True)
            self._failed(gen, f"capture thread crashed: {e!r}")
        finally:
            self._close(source)

    def _close(self, source: FrameSource | None) -> None:
        if source is not None:
            try:
                source.close()
            except Exception as e:  # noqa: BLE001 - a failing close must not keep the device from being released
                log.warning("%s: error while releasing the source: %s", self._log_name, e)

    def _failed(self, gen: int, message: str) -> None:
        if gen != self._gen:  # a reader we gave up on; its news is stale
            return
        self.errors += 1
        self.last_error = message
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
            self._last_outage_log = now
            log.warning("%s: %s; reconnecting (backoff up to %g s)", self._log_name, message, self.max_backoff)
        elif now - self._last_outage_log >= REMIND_EVERY_S:
            self._last_outage_log = now
            log.warning("%s: still reconnecting after %.0f s (%d errors): %s", self._log_name, now - self._outage_since,
                        self.errors, message)
        else:
            log.debug("%s: %s", self._log_name, message)
        self.state = "reconnecting"

    def _end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()
        log.info("%s: end of stream", self._log_name)
        self.state = "ended"
        self._wake_callbacks()
        self.running = False  # the observer sees it is on the reader thread and does not join itself

    # ---- notifier thread: traits and the stall watchdog -----------------------------------------------------

    def _notify_loop(self) -> None:
        published = -1
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda seen=published: (self._stop_event.is_set()
                                            or (self._latest is not None and self._latest[1] != seen)),
                    timeout=0.2,
                )
                latest = self._latest
                stopping = self._stop_event.is_set()
            if latest is not None and latest[1] != published:
                published = latest[1]
                self._set_frame_traits(latest)
            if stopping:
                return
            self._watchdog()

    def _set_frame_traits(self, latest: tuple[np.ndarray, int, float]) -> None:
        # one by one, not under hold_trait_notifications(): that swaps the instance's notify_change for every
        # thread, so a `running = False` set by stop() meanwhile would be run later on this thread, and stop()
        # would return with capture still going
        try:
            self.frame_id = latest[1]
            self.frame_time = latest[2]
            self.value = latest[0]  # last: a `value` observer reads the matching frame_id and frame_time
        except Exception:
            if not self._observer_failed:  # once: a broken callback must not flood the log
                self._observer_failed = True
                log.exception("%s: a `value` observer raised; capture goes on", self._log_name)

    def _stall_limit(self, what: str) -> float:
        limit = self.stall_timeout
        if self._source_fps:
            limit = max(limit, 3.0 / self._source_fps)  # a 1 fps slideshow is slow, not stalled
        return limit * 2 if what == "open" else limit

    def _watchdog(self) -> None:
        """Give up on a reader stuck in a call that never returns, and keep one reader alive while running."""
        busy = self._busy
        with self._cond:
            if self._stop_event.is_set() or self._ended:
                return
            gen = self._gen
            stalled = (busy is not None and busy[0] == gen
                       and time.monotonic() - busy[1] > self._stall_limit(busy[2]))
            if stalled:
                self._gen += 1
                gen = self._gen
        if stalled:
            self._failed(gen, f"no frame for {self._stall_limit(busy[2]):.1f} s (stuck in {busy[2]})")
            if self._reader is not None:
                self._stuck.append(self._reader)
            self._reader = None
        elif self._reader is not None and not self._reader.is_alive():
            # the reader crashed (a bug): restart it, but not faster than the longest backoff
            if time.monotonic() - self._reader_started < self.max_backoff:
                return
            self._reader = None
        if self._reader is None:
            self._stuck = [t for t in self._stuck if t.is_alive()]
            if len(self._stuck) >= MAX_STUCK_READERS:
                return  # wait for a stuck call to return rather than pile up threads on a dead device
            self._reader = self._spawn_reader(gen)
