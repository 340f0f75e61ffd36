"""The preview window behind a small seam (show / wait_key / is_open / close), so key handling is testable."""

from __future__ import annotations

import os
import re
import sys
from typing import Protocol

import cv2
import numpy as np


class Display(Protocol):
    def show(self, image: np.ndarray) -> None: ...

    def wait_key(self, ms: int) -> int:
        """The key pressed within `ms` milliseconds (its code, e.g. ord('q')), or -1."""

    def is_open(self) -> bool: ...

    def close(self) -> None: ...


class CvDisplay:
    """An OpenCV highgui window."""

    def __init__(self, title: str):
        self.title = title
        cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE)

    def show(self, image: np.ndarray) -> None:
        cv2.imshow(self.title, image)

    def wait_key(self, ms: int) -> int:
        key = cv2.waitKey(ms)
        return -1 if key == -1 else key & 0xFF

    def is_open(self) -> bool:
        try:
            return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error:
            return False

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)  # lets the window system process the close
        except cv2.error:
            pass


def gui_available() -> bool:
    """False for OpenCV builds without highgui windows (opencv-python-headless says `GUI: NONE`)."""
    m = re.search(r"GUI:\s*(\S+)", cv2.getBuildInformation())
    return m is None or m.group(1).upper() != "NONE"


def display_present() -> bool:
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def open_display(title: str) -> Display:
    return CvDisplay(title)
