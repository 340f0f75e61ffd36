"""Runtime test helpers shared by test_camera.py, test_pipeline.py and test_multicam.py: fake backends and sources,
a local MJPEG server you can stop and restart, and a polling wait."""

from __future__ import annotations

import http.server
import socketserver
import threading
import time

import cv2
import numpy as np

from edge.core.metadata import ModelMeta
from edge.core.preprocess import PreprocessSpec


def wait_until(predicate, timeout=5.0, step=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


class MjpegServer:
    """multipart/x-mixed-replace JPEG stream on 127.0.0.1, like an IP camera or mjpg-streamer."""

    def __init__(self, port=0):
        self.alive = threading.Event()
        server_self = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                while server_self.alive.is_set():
                    img = np.full((48, 64, 3), (i * 10) % 256, np.uint8)
                    data = cv2.imencode(".jpg", img)[1].tobytes()
                    try:
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                         % len(data) + data + b"\r\n")
                    except OSError:
                        return
                    i += 1
                    time.sleep(0.02)

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.alive.set()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.alive.clear()
        self.server.shutdown()
        self.server.server_close()


class FakeBackend:
    """Probabilities from each frame's mean brightness (bright -> first class); optional fixed latency."""

    name = "fake"

    def __init__(self, names=("bright", "dark"), delay: float = 0.0, size: int = 32):
        self.meta = ModelMeta("fake", list(names), PreprocessSpec(size, size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
        self.delay = delay
        self.closed = False
        self.calls = 0

    def run(self, batch):
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        b = np.clip(batch.mean(axis=(1, 2, 3)) * 0.5 + 0.5, 0, 1)  # per frame; input normalised to [-1, 1]
        p = np.zeros((batch.shape[0], len(self.meta.class_names)), np.float32)
        p[:, 0], p[:, 1] = b, 1 - b
        return p, None

    def close(self):
        self.closed = True


class ListSource:
    """A finite FrameSource over a list of frames."""

    is_live = False
    uri = "list://"
    fps = None

    def __init__(self, frames):
        self.frames = list(frames)
        self.closed = False

    def read(self):
        return self.frames.pop(0) if self.frames else None

    def close(self):
        self.closed = True


def frame(value: int, h: int = 120, w: int = 160) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)
