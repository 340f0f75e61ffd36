"""The HTTP server of `edge serve`, in-process with a fake service: routes, token, MJPEG fan-out, bad clients."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from edge.core.errors import EdgeError
from edge.runtime.outputs.stream import StreamOutput
from edge.service.http import HttpServer
from edge.service.metrics import ServiceMetrics


class FakeApp:
    """The service as HTTP sees it; `cameras` StreamOutputs (`stream` is camera 0's). Camera N's prediction is
    `pred` with its label followed by N (`up`, `up1`, ...)."""

    def __init__(self, cameras: int = 1) -> None:
        self.streams = [StreamOutput(quality=70) for _ in range(cameras)]
        self.stream = self.streams[0]
        self.ok = True
        self.pred: dict | None = {"label": "up", "confidence": 0.9, "probabilities": {"up": 0.9, "down": 0.1},
                                  "frame": 7, "timestamp": time.time(), "fps": 12.5}
        self.prom = ServiceMetrics(lambda: {"healthy": 1, "cameras": [{"camera": 0, "frames_processed": 3}]})

    def prediction_json(self, camera: int = 0):
        if self.pred is None or camera == 0:
            return self.pred
        return {**self.pred, "label": f"up{camera}", "camera": camera}

    def cameras_json(self):
        return [{"camera": i, "source": f"test://?seed={i}", "state": "streaming"} for i in range(len(self.streams))]

    def close(self) -> None:
        for stream in self.streams:
            stream.close()

    def health(self):
        return self.ok, {"status": "ok" if self.ok else "stale"}

    def metrics(self):
        return self.prom.render(), "text/plain; version=0.0.4; charset=utf-8"


@pytest.fixture()
def server():
    app = FakeApp()
    srv = HttpServer("127.0.0.1", 0, app, token=None)
    srv.start()
    yield srv, app
    srv.stop()
    app.stream.close()


@pytest.fixture()
def token_server():
    app = FakeApp()
    srv = HttpServer("127.0.0.1", 0, app, token="s3cret")
    srv.start()
    yield srv, app
    srv.stop()
    app.stream.close()


def get(url: str, headers: dict | None = None, timeout: float = 5.0):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def feed(stream: StreamOutput, stop: threading.Event, fps: float = 50.0) -> None:
    i = 0
    while not stop.is_set():
        frame = np.full((48, 64, 3), i % 256, np.uint8)
        stream.write(frame, None)
        i += 1
        time.sleep(1.0 / fps)


def read_mjpeg_frames(sock_file, n: int) -> list[bytes]:
    frames = []
    while len(frames) < n:
        line = sock_file.readline()
        if not line:
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
            sock_file.readline()  # blank line
            frames.append(sock_file.read(length))
    return frames


def open_stream(url_host: str, port: int, path: str = "/stream.mjpg"):
    s = socket.create_connection((url_host, port), timeout=5)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {url_host}:{port}\r\n\r\n".encode())
    f = s.makefile("rb")
    status = f.readline()
    while f.readline() not in (b"\r\n", b""):
        pass
    return s, f, status


def test_routes(server):
    srv, app = server
    base = srv.url
    status, headers, body = get(base)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'id="label"' in body and b"stream.mjpg" in body
    status, headers, body = get(base + "api/prediction")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body)["label"] == "up"
    status, _, body = get(base + "healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    app.ok = False
    assert get(base + "healthz")[0] == 503
    status, headers, body = get(base + "metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert b'edge_frames_processed_total{camera="0"} 3.0' in body and b"edge_inference_seconds_bucket" in body
    status, _, body = get(base + "nope")
    assert status == 404 and b"/api/prediction" in body
    app.pred = None
    status, _, body = get(base + "api/prediction")
    assert status == 503 and json.loads(body)["label"] is None


def test_token_required_except_healthz(token_server):
    srv, _ = token_server
    base = srv.url
    for path in ("", "api/prediction", "metrics", "stream.mjpg", "snapshot.jpg"):
        status, headers, _ = get(base + path)
        assert status == 401, path
        assert "Bearer" in headers["WWW-Authenticate"]
    assert get(base + "api/prediction?token=wrong")[0] == 401
    assert get(base + "api/prediction", {"Authorization": "Bearer wrong"})[0] == 401
    assert get(base + "api/prediction?token=s3cret")[0] == 200
    assert get(base + "api/prediction", {"Authorization": "Bearer s3cret"})[0] == 200
    assert get(base + "healthz")[0] == 200  # probes cannot send headers; it says only ok/stale


def test_mjpeg_encodes_once_per_frame_for_all_clients(server, monkeypatch):
    srv, app = server
    import cv2

    calls = []
    real = cv2.imencode

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(cv2, "imencode", counting)
    host, port = srv.server_address[:2]
    clients = [open_stream(host, port) for _ in range(3)]
    for _, _, status in clients:
        assert b"200" in status
    deadline = time.monotonic() + 5
    while app.stream.clients < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop = threading.Event()
    t = threading.Thread(target=feed, args=(app.stream, stop, 20.0), daemon=True)
    t.start()
    try:
        got = [read_mjpeg_frames(f, 5) for _, f, _ in clients]
    finally:
        stop.set()
        t.join()
    for frames in got:
        assert len(frames) == 5 and all(fr.startswith(b"\xff\xd8") for fr in frames)
        img = cv2.imdecode(np.frombuffer(frames[-1], np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (48, 64, 3)
    written = app.stream._frame_seq
    # one encode per frame written (at most), however many clients: not one per client
    assert len(calls) <= written
    for s, f, _ in clients:
        f.close()
        s.close()


def test_no_clients_no_work():
    stream = StreamOutput()
    try:
        stream.write(np.zeros((10, 10, 3), np.uint8), None)
        time.sleep(0.05)
        assert stream._frame_seq == 0 and stream.latest_jpeg() is None
    finally:
        stream.close()


def test_slow_and_vanishing_clients_never_block_the_pipeline(server):
    srv, app = server
    host, port = srv.server_address[:2]
    # a client that connects and never reads, and one that disconnects mid-stream
    stuck = socket.create_connection((host, port), timeout=5)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.sendall(f"GET /stream.mjpg HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    s, f, status = open_stream(host, port)
    assert b"200" in status
    big = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)  # large, incompressible JPEGs
    worst = 0.0
    for i in range(60):
        t0 = time.perf_counter()
        app.stream.write(big, None)
        worst = max(worst, time.perf_counter() - t0)
        if i == 10:
            f.close()
            s.close()
        time.sleep(0.01)
    # a write that waited for the stuck client would block until it read (never); 1 s allows a busy machine's pauses
    assert worst < 1.0, f"write() blocked for {worst:.3f} s"
    stuck.close()
    deadline = time.monotonic() + 5
    while app.stream.clients and time.monotonic() < deadline:
        app.stream.write(big, None)
        time.sleep(0.05)
    assert app.stream.clients == 0  # both client threads ended and unregistered
    assert get(srv.url + "api/prediction")[0] == 200  # and the server still answers


def test_too_many_stream_clients(server, monkeypatch):
    srv, app = server
    monkeypatch.setattr(app.stream, "max_clients", 1)
    host, port = srv.server_address[:2]
    s, f, status = open_stream(host, port)
    assert b"200" in status
    deadline = time.monotonic() + 5
    while app.stream.clients < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert get(srv.url + "stream.mjpg")[0] == 503
    f.close()
    s.close()


def test_snapshot(server):
    srv, app = server
    stop = threading.Event()
    t = threading.Thread(target=feed, args=(app.stream, stop), daemon=True)
    t.start()
    try:
        status, headers, body = get(srv.url + "snapshot.jpg")
    finally:
        stop.set()
        t.join()
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and body.startswith(b"\xff\xd8")


def test_port_in_use_is_a_clear_error(server):
    srv, app = server
    port = srv.server_address[1]
    with pytest.raises(EdgeError, match=f"cannot listen on 127.0.0.1:{port}"):
        HttpServer("127.0.0.1", port, app)


def test_stop_ends_streaming_clients_quickly(server):
    srv, app = server
    host, port = srv.server_address[:2]
    s, f, _ = open_stream(host, port)
    t0 = time.monotonic()
    srv.stop()
    app.stream.close()
    assert time.monotonic() - t0 < 10.0  # the client never disconnects: without the stop it would stream forever
    s.close()


def raw_get(port: int, path: str, host: str | None) -> tuple[bytes, bytes]:
    """(status line, body) of a request with exactly this Host header (None: no Host line, as HTTP/1.0 tools do)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        head = f"GET {path} HTTP/1.1\r\n" + (f"Host: {host}\r\n" if host is not None else "") + "Connection: close\r\n"
        s.sendall((head + "\r\n").encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status, _, rest = data.partition(b"\r\n")
    return status, rest.partition(b"\r\n\r\n")[2]


def test_host_header_must_name_this_machine():
    """DNS rebinding: a page on attacker.example re-points its name at 127.0.0.1 and reads what we serve. Its
    requests say `Host: attacker.example`: refused with an empty 403; this machine's names and any IP are served."""
    app = FakeApp()
    srv = HttpServer("127.0.0.1", 0, app, allowed_hosts=("jetson.local",))
    srv.start()
    port = srv.server_address[1]
    try:
        for host in ("attacker.example", f"attacker.example:{port}", "jetson.local.attacker.example",
                     f"user@127.0.0.1:{port}", "", "[::1"):
            for path in ("/snapshot.jpg", "/stream.mjpg", "/api/prediction", "/healthz", "/"):
                status, body = raw_get(port, path, host)
                assert b" 403 " in status and body == b"", (host, path, status)
        for host in (f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", "LOCALHOST.", f"[::1]:{port}", "[::1]",
                     f"jetson.local:{port}", "Jetson.Local", f"192.168.1.7:{port}", None):
            status, body = raw_get(port, "/api/prediction", host)
            assert b" 200 " in status and json.loads(body)["label"] == "up", host
    finally:
        srv.stop()
        app.stream.close()


def test_the_bound_host_name_is_allowed():
    app = FakeApp()
    srv = HttpServer("localhost", 0, app)
    srv.start()
    try:
        assert b" 200 " in raw_get(srv.server_address[1], "/healthz", "localhost")[0]
        assert srv.host_allowed("LocalHost:80") and not srv.host_allowed("cam.example")
    finally:
        srv.stop()
        app.stream.close()


def test_the_token_is_never_logged(token_server, caplog):
    srv, _ = token_server
    caplog.set_level(logging.DEBUG, logger="edge.service.http")
    assert get(srv.url + "api/prediction?token=s3cret")[0] == 200
    assert get(srv.url + "metrics?x=1&token=s3cret")[0] == 200
    assert get(srv.url + "api/prediction?token=s3cretx")[0] == 401
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "GET /api/prediction?token=***" in logged and "x=1&token=***" in logged
    assert "s3cret" not in logged


def test_a_new_viewer_never_gets_a_picture_from_before_it_came(server):
    """Frames are not encoded while nobody watches, so the JPEG kept from the last viewer may be hours old: a new
    viewer (stream or snapshot) gets the next fresh frame instead."""
    srv, app = server
    host, port = srv.server_address[:2]
    s, f, _ = open_stream(host, port)
    deadline = time.monotonic() + 5
    while app.stream.clients < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    dark = np.full((48, 64, 3), 10, np.uint8)
    app.stream.write(dark, None)
    assert read_mjpeg_frames(f, 1)  # the first viewer saw the dark frame
    f.close()
    s.close()
    deadline = time.monotonic() + 5
    while app.stream.clients and time.monotonic() < deadline:  # its thread notices on the next frame it sends
        app.stream.write(dark, None)
        time.sleep(0.05)
    assert app.stream.clients == 0
    bright = np.full((48, 64, 3), 240, np.uint8)
    stop = threading.Event()

    def feed_bright() -> None:
        while not stop.is_set():
            app.stream.write(bright, None)
            time.sleep(0.05)

    t = threading.Thread(target=feed_bright, daemon=True)
    s, f, _ = open_stream(host, port)
    t.start()
    try:
        first = read_mjpeg_frames(f, 1)[0]
        status, _, snapshot = get(srv.url + "snapshot.jpg")
    finally:
        stop.set()
        t.join()
        f.close()
        s.close()
    import cv2

    assert cv2.imdecode(np.frombuffer(first, np.uint8), cv2.IMREAD_GRAYSCALE).mean() > 200
    assert status == 200 and cv2.imdecode(np.frombuffer(snapshot, np.uint8), cv2.IMREAD_GRAYSCALE).mean() > 200


def _luminance(hex_color: str) -> float:
    """WCAG relative luminance of #rgb / #rrggbb."""
    h = hex_color.lstrip("#")
    h = "".join(c * 2 for c in h) if len(h) == 3 else h
    channels = [int(h[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def _css_color(css: str, selector: str, prop: str) -> str | None:
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    for sel, body in re.findall(r"([^{}]+)\{([^}]*)\}", css):
        if selector in [x.strip() for x in sel.split(",")]:
            m = re.search(rf"(?:^|;)\s*{prop}\s*:\s*(#[0-9a-fA-F]{{3,6}})", body)
            if m:
                return m.group(1)
    return None


def test_page_links_are_readable_on_the_dark_background():
    """Links on the live page: WCAG AA contrast (4.5:1) against the page background, visited links too (the
    browser's default blue on near-black is about 2:1)."""
    from edge.service.http import page_html

    css = re.search(r"<style>(.*?)</style>", page_html().decode(), re.S).group(1)
    background = _luminance(_css_color(css, "body", "background"))
    for selector in ("a", "a:visited"):
        color = _css_color(css, selector, "color")
        assert color, f"no color for {selector} in the page's stylesheet (browser default: unreadable)"
        light, dark = sorted((_luminance(color), background), reverse=True)
        assert (light + 0.05) / (dark + 0.05) >= 4.5, (selector, color)


def test_camera_parameter_picks_the_camera_and_an_unknown_one_is_404():
    """Two cameras: ?camera=N picks /snapshot.jpg, /stream.mjpg and /api/prediction of camera N; no parameter is
    camera 0 (single-camera clients keep working); a camera the service lacks (or no number) is a JSON 404."""
    import cv2

    app = FakeApp(cameras=2)
    srv = HttpServer("127.0.0.1", 0, app, token="s3cret")
    srv.start()
    stop = threading.Event()

    def feed_both() -> None:  # camera 0 dark, camera 1 bright
        while not stop.is_set():
            app.streams[0].write(np.full((48, 64, 3), 20, np.uint8), None)
            app.streams[1].write(np.full((48, 64, 3), 230, np.uint8), None)
            time.sleep(0.02)

    t = threading.Thread(target=feed_both, daemon=True)
    t.start()
    auth = {"Authorization": "Bearer s3cret"}
    host, port = srv.server_address[:2]
    try:
        def brightness(path: str) -> float:
            status, headers, body = get(srv.url + path, auth)
            assert status == 200 and headers["Content-Type"] == "image/jpeg", (path, status, body[:200])
            return cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_GRAYSCALE).mean()

        assert brightness("snapshot.jpg") < 50 and brightness("snapshot.jpg?camera=0") < 50
        assert brightness("snapshot.jpg?camera=1") > 200
        s, f, status = open_stream(host, port, "/stream.mjpg?camera=1&token=s3cret")
        try:
            assert b"200" in status
            frame = read_mjpeg_frames(f, 1)[0]
            assert cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_GRAYSCALE).mean() > 200
        finally:
            f.close()
            s.close()
        assert json.loads(get(srv.url + "api/prediction", auth)[2])["label"] == "up"
        assert json.loads(get(srv.url + "api/prediction?camera=1", auth)[2])["label"] == "up1"
        status, _, body = get(srv.url + "api/cameras", auth)
        assert status == 200 and [c["camera"] for c in json.loads(body)] == [0, 1]

        for path in ("api/prediction", "snapshot.jpg", "stream.mjpg"):
            for bad in ("2", "x", "-1", "1.0", "%C2%B3"):  # "³" is a digit to str.isdigit
                status, headers, body = get(srv.url + f"{path}?camera={bad}", auth)
                assert status == 404 and headers["Content-Type"] == "application/json", (path, bad, status)
                answer = json.loads(body)
                assert "no camera" in answer["error"] and answer["cameras"] == [0, 1], answer
            assert get(srv.url + f"{path}?camera=5")[0] == 401  # without the token: not even the camera count
        assert get(srv.url + "nope", auth)[0] == 404 and b"/api/cameras" in get(srv.url + "nope", auth)[2]
    finally:
        stop.set()
        t.join()
        srv.stop()
        app.close()
