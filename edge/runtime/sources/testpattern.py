"""`test://`: a synthetic moving scene (edge.core.synthetic.SceneRenderer) that needs no hardware."""

from __future__ import annotations

import numpy as np

from edge.core.synthetic import DIRECTIONS, SceneRenderer
from edge.runtime.sources.base import FrameSource, Pacer, SourceConfigError, check_options, number_option

MAX_SIDE = 4096  # a synthetic frame needs tens of bytes per pixel to render: 20000x20000 would take 12 GiB

OPTIONS = {
    "width": f"pixels, default 640, at most {MAX_SIDE}",
    "height": f"pixels, default 480, at most {MAX_SIDE}",
    "fps": "frames per second, default 30",
    "frames": "end after this many frames, default never",
    "seed": "background seed, default 0",
    "period": "seconds between arrow flips, default 3",
    "arrow": "up, down, left or right: the arrow always points that way, default flips up/down",
    "scene": "arrows (default), empty or shapes (scenes to show a model that never saw them), or a schedule such "
             "as arrows:60,empty",
}


class TestPatternSource(FrameSource):
    """Frames of a drifting scene whose arrow flips up/down; the scene time is frame_index / fps (deterministic)."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, uri: str, options: dict[str, str], *, width=None, height=None, fps=None, loop=False,
                 realtime=True):
        check_options(uri, options, OPTIONS)
        self.uri = uri
        w = int(width or number_option(uri, options, "width", 640, int))
        h = int(height or number_option(uri, options, "height", 480, int))
        if max(w, h) > MAX_SIDE:
            raise SourceConfigError(f"{uri}: {w}x{h} is too large for the test pattern; width and height are at "
                                    f"most {MAX_SIDE}")
        self.fps = float(fps or number_option(uri, options, "fps", 30.0))
        self.frames = number_option(uri, options, "frames", None, int)
        seed = number_option(uri, options, "seed", 0, int, positive=False)
        period = number_option(uri, options, "period", 3.0)
        arrow = options.get("arrow")
        if arrow is not None and arrow not in DIRECTIONS:
            raise SourceConfigError(f"option arrow={arrow!r} in source {uri!r} must be one of {', '.join(DIRECTIONS)}")
        self.loop = loop
        try:
            self.renderer = SceneRenderer(w, h, period_s=period, seed=seed, scene=options.get("scene", "arrows"),
                                          arrow=arrow)
        except ValueError as e:
            raise SourceConfigError(f"option scene in source {uri!r}: {e}") from None
        self._pacer = Pacer(self.fps) if realtime else None
        self._index = 0
        self._closed = False

    def read(self) -> np.ndarray | None:
        if self._closed:
            raise OSError(f"{self.uri}: read after close")
        if self.frames is not None and self._index >= self.frames:
            if not self.loop:
                return None
            self._index = 0
        if self._pacer:
            self._pacer.wait()
        i = self._index
        self._index += 1
        return self.renderer.render(i / self.fps, i)

    def close(self) -> None:
        self._closed = True


def open_test(uri, options, **kw) -> TestPatternSource:
    return TestPatternSource(uri, options, **kw)
