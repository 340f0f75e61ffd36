"""`--display`: an OpenCV window on its own GUI thread (needs a desktop and an OpenCV with GUI support)."""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

import numpy as np

from edge.core.errors import EdgeError
from edge.runtime.outputs.base import Output

log = logging.getLogger(__name__)


class DisplayOutput(Output):
    """An OpenCV window showing the overlaid video; GUI calls all happen on its own thread."""

    name = "display"

    def __init__(self, title: str = "edge serve", startup_timeout: float = 5.0) -> None:
        super().__init__()
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise EdgeError("--display needs a desktop session ($DISPLAY is not set); use --http to watch remotely")
        self.title = title
        self._frame: np.ndarray | None = None
        self._lock = threading.Lock()
        self._new = threading.Event()
        self._stop = threading.Event()
        self._started = threading.Event()
        self._error: str | None = None
        self._thread = threading.Thread(target=self._loop, name="display", daemon=True)
        self._thread.start()
        if not self._started.wait(startup_timeout):
            raise EdgeError("--display: the window did not open within 5 s")
        if self._error:
            raise EdgeError(f"--display: cannot open a window ({self._error}); the pip `opencv-python-headless` has "
                            f"no GUI: use the system OpenCV or --http")

    def write(self, frame: np.ndarray, prediction: Any) -> None:
        with self._lock:
            if self._frame is None or self._frame.shape != frame.shape:
                self._frame = frame.copy()
            else:
                np.copyto(self._frame, frame)
        self._new.set()

    def _loop(self) -> None:
        import cv2

        try:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
        except cv2.error as e:
            self._error = str(e).strip().splitlines()[-1][:200]
            self._started.set()
            return
        self._started.set()
        try:
            while not self._stop.is_set():
                if self._new.wait(0.05):
                    self._new.clear()
                    with self._lock:
                        img = None if self._frame is None else self._frame.copy()
                    if img is not None:
                        cv2.imshow(self.title, img)
                cv2.waitKey(1)
                if cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
                    log.info("display window closed; the service goes on without it")
                    self.alive = False
                    return
        except cv2.error as e:
            self.alive = False
            log.error("display failed (%s); the service goes on without it", e)
        finally:
            try:
                cv2.destroyWindow(self.title)
            except cv2.error:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
