"""The HTTP side of `edge serve`: live page, MJPEG stream, JSON API, health and Prometheus metrics (stdlib server).

- Dependencies are handed in, typed: `HttpServer(host, port, app, token, allowed_hosts, extra_handler, page)`;
  `app` is an `HttpApp` (what the service's state gives: each camera's `StreamOutput`, predictions, cameras, health,
  metrics; edge.service.state.LiveState in `edge serve` and `edge teach`). /stream.mjpg and /snapshot.jpg send the
  JPEGs of a camera's `StreamOutput` (edge.runtime.outputs.stream: one encoder, every client the same JPEG).
- Endpoints: `/` (page), `/stream.mjpg`, `/snapshot.jpg`, `/api/prediction`, `/api/cameras`, `/healthz`,
  `/metrics`. One StreamOutput per camera: `?camera=N` picks the camera of /stream.mjpg, /snapshot.jpg and
  /api/prediction (none: camera 0, so single-camera clients never change); a camera the service lacks is a 404.
- Extension point: `HttpServer.extra_handler` (a `RouteHandler`) sees every GET, POST and DELETE after the Host
  check and the token, before the built-in routes, and answers with a `Response` or None (not mine); `page` is
  the HTML served at `/`. `edge teach` adds its JSON API and page this way. POST and DELETE exist only for it:
  they are refused from a page of another origin (`Origin` must name this server), and a POST body must be JSON.
- With a token, every endpoint except /healthz needs `Authorization: Bearer TOKEN` or `?token=TOKEN`
  (/healthz says only ok/stale, for load balancers and probes that cannot send headers).
- The Host header must name this machine: an IP address, `localhost`, the host given to --http or one of
  `allowed_hosts`; anything else gets an empty 403. That stops DNS rebinding: a web page elsewhere re-points its
  own name at this address to read the camera through the browser on the device, and its requests carry that
  name. Any IP is safe: a browser sends one as Host only for a URL naming that IP, then the page's own origin.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import socket
import threading
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable, Protocol, Sequence
from urllib.parse import parse_qs, unquote, unquote_plus, urlsplit

from edge.core.errors import EdgeError
from edge.runtime.outputs.stream import StreamOutput
from edge.runtime.sources import redact_uri
from edge.service.config import is_ip_address
from edge.service.limits import ConnectionGuard

log = logging.getLogger(__name__)

CLIENT_TIMEOUT_S = 10.0  # a client that accepts no data for this long is dropped
BOUNDARY = "frame"
_PART_HEAD = b"--" + BOUNDARY.encode() + b"\r\nContent-Type: image/jpeg\r\nContent-Length: "
# a Host header: `[IPv6]` or a name / IPv4 (no userinfo, path or spaces), then an optional `:port`
_HOST_HEADER = re.compile(r"(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<name>[^\s:/@\[\]]+))(?::\d{1,5})?")
MAX_BODY_BYTES = 1 << 20  # request bodies are small JSON documents


@dataclass
class Request:
    """What an extra route sees: the method (HEAD arrives as GET), the URL path (still percent-encoded), the
    query, the body (POST) and the headers."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes = b""
    headers: Message = field(default_factory=Message)


@dataclass
class Response:
    """An extra route's answer. `headers` may replace the default `Cache-Control: no-store`."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, obj: Any) -> "Response":
        return cls(status, (json.dumps(obj) + "\n").encode())


RouteHandler = Callable[[Request], "Response | None"]


def _redacted(line: str) -> str:
    """A request line for the log: percent-decoding undone (so `?tok%65n=` is seen as `?token=`), then
    redact_uri."""
    for _ in range(4):
        decoded = unquote(line)
        if decoded == line:
            break
        line = decoded
    return redact_uri(line)


def host_of(header: str) -> str | None:
    """The host a Host header names, lower-case, without port or root dot; None when it is not a valid one."""
    m = _HOST_HEADER.fullmatch(header.strip())
    if m is None:
        return None
    return (m.group("ip6") or m.group("name")).lower().rstrip(".")


class HttpApp(Protocol):
    """What the HTTP server needs from the service."""

    streams: Sequence[StreamOutput]  # one per camera, camera 0 first

    def prediction_json(self, camera: int = 0) -> dict[str, Any] | None: ...

    def cameras_json(self) -> list[dict[str, Any]]: ...

    def health(self) -> tuple[bool, dict[str, Any]]: ...

    def metrics(self) -> tuple[bytes, str]: ...


def page_html() -> bytes:
    return resources.files("edge.service").joinpath("page.html").read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: "HttpServer"
    server_version = "edge-serve"
    timeout = CLIENT_TIMEOUT_S  # socket timeout: a stalled client cannot hold its thread forever

    def log_message(self, format: str, *args: Any) -> None:  # `format`: http.server's parameter name
        # request lines carry `?token=`: redacted, like every URL this service logs
        log.debug("%s %s", self.address_string(), _redacted(format % args))

    # --- connection limits (edge.service.limits): a deadline while the request is read, none while answered ---
    def handle_one_request(self) -> None:
        self.server.guard.reading(self.connection)
        super().handle_one_request()

    def parse_request(self) -> bool:
        ok = super().parse_request()  # the headers are in (or refused)
        self.server.guard.answering(self.connection)
        return ok

    # --- helpers ---------------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        extra = extra or {}
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if "Cache-Control" not in extra:
            self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, (json.dumps(obj) + "\n").encode(), "application/json")

    def _authorized(self, query: dict[str, list[str]]) -> bool:
        token = self.server.token
        if not token:
            return True
        want = token.encode()
        auth = self.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer " and hmac.compare_digest(auth[7:].strip().encode(), want):
            return True
        # the parameter named exactly `token`: no percent-encoded spelling of the name (`tok%65n`) counts
        raw = [p.partition("=") for p in urlsplit(self.path).query.split("&")]
        return any(k == "token" and hmac.compare_digest(unquote_plus(v).encode(), want) for k, _, v in raw)

    def _camera(self, query: dict[str, list[str]]) -> int | None:
        """The request's `?camera=N` (camera 0 without one); None, after a 404, for a camera the service lacks."""
        text = (query.get("camera") or ["0"])[0]
        count = len(self.server.app.streams)
        if text.isascii() and text.isdigit() and int(text) < count:
            return int(text)
        self._json(404, {"error": f"no camera {text[:40]!r}: this service has cameras 0..{count - 1}",
                         "cameras": list(range(count))})
        return None

    # --- routes ----------------------------------------------------------------------------------------------
    def do_HEAD(self) -> None:  # http.server's method name
        self.do_GET()

    def _host_refused(self) -> bool:
        """Answer 403 when the Host header names another machine (see the module docstring: DNS rebinding)."""
        host = self.headers.get("Host")
        # no Host at all is no browser (HTTP/1.0 tools): DNS rebinding needs a browser, which always sends one
        if host is not None and not self.server.host_allowed(host):
            log.debug("403 for Host %r (not an IP, localhost or --allowed-hosts)", host[:100])
            self._send(403, b"", "text/plain")
            return True
        return False

    def _auth_refused(self, query: dict[str, list[str]]) -> bool:
        if self._authorized(query):
            return False
        self._send(401, b"unauthorized: send `Authorization: Bearer TOKEN` or ?token=TOKEN\n",
                   "text/plain; charset=utf-8", {"WWW-Authenticate": 'Bearer realm="edge-serve"'})
        return True

    def _extra(self, request: Request) -> bool:
        """Offer the request to the server's extra handler; True when it answered."""
        handler = self.server.extra_handler
        if handler is None:
            return False
        try:
            response = handler(request)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            raise
        except Exception as e:  # a bug in one route must not cost the client its answer
            log.exception("%s %s failed", request.method, redact_uri(self.path))
            response = Response.json(500, {"error": f"internal error: {type(e).__name__}: {e}"})
        if response is None:
            return False
        self._send(response.status, response.body, response.content_type, response.headers)
        return True

    def do_GET(self) -> None:  # http.server's method name
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        path = url.path
        app = self.server.app
        try:
            if self._host_refused():
                return
            if path == "/healthz":
                ok, info = app.health()
                # open for probes, which cannot send a token: without it, only ok/stale (no reasons or URLs)
                self._json(200 if ok else 503, info if self._authorized(query) else {"status": info.get("status")})
                return
            if self._auth_refused(query) or self._extra(Request("GET", path, query, headers=self.headers)):
                return
            if path in ("/", "/index.html"):
                self._send(200, self.server.page, "text/html; charset=utf-8",
                           {"X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"})
            elif path in ("/api/prediction", "/stream.mjpg", "/snapshot.jpg"):
                camera = self._camera(query)
                if camera is not None:
                    self._camera_route(path, camera)
            elif path == "/api/cameras":
                self._json(200, app.cameras_json())
            elif path == "/metrics":
                body, ctype = app.metrics()
                self._send(200, body, ctype)
            else:
                self._json(404, {"error": f"no such endpoint {path}",
                                 "endpoints": ["/", "/stream.mjpg", "/snapshot.jpg", "/api/prediction", "/api/cameras",
                                               "/healthz", "/metrics"]})
        except (BrokenPipeError, ConnectionResetError, socket.timeout) as e:
            log.debug("client %s went away: %s", self.address_string(), e)
            self.close_connection = True

    def _camera_route(self, path: str, camera: int) -> None:
        app = self.server.app
        if path == "/api/prediction":
            pred = app.prediction_json(camera)
            if pred is None:
                self._json(503, {"error": "no prediction yet", "label": None, "camera": camera})
            else:
                self._json(200, pred)
        elif path == "/stream.mjpg":
            self._stream(app.streams[camera])
        else:
            self._snapshot(app.streams[camera])

    def do_POST(self) -> None:  # http.server's method name
        self._change()

    def do_DELETE(self) -> None:  # http.server's method name
        self._change()

    def _change(self) -> None:
        """POST and DELETE: only for the extra handler, only from this server's own pages (or non-browsers)."""
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        try:
            if self._host_refused() or self._auth_refused(query) or self._foreign_origin():
                return
            body = self._read_body()
            if body is None:
                return
            if not self._extra(Request(self.command, url.path, query, body, self.headers)):
                self._json(404 if self.server.extra_handler is None else 405,
                           {"error": f"no {self.command} endpoint {url.path}"})
        except (BrokenPipeError, ConnectionResetError, socket.timeout) as e:
            log.debug("client %s went away: %s", self.address_string(), e)
            self.close_connection = True

    def _foreign_origin(self) -> bool:
        """403 for a change requested by a page of another origin (cross-site request forgery): browsers send
        `Origin` with every POST and DELETE, and it must name the host the request is addressed to."""
        origin = self.headers.get("Origin")
        if origin is None:
            return False  # not a browser (curl, scripts): the token and the Host check are the protection
        parts = urlsplit(origin)
        if parts.scheme in ("http", "https") and parts.netloc.lower() == str(self.headers.get("Host", "")).lower():
            return False
        log.debug("403 for %s from Origin %r", self.command, origin[:100])
        self._json(403, {"error": "cross-origin request refused: changes are accepted from this server's own page"})
        return True

    def _read_body(self) -> bytes | None:
        """The request body (JSON when not empty), or None after an error answer."""
        if self.headers.get("Transfer-Encoding"):
            self._json(411, {"error": "send the body with a Content-Length (no chunked encoding)"})
            self.close_connection = True
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self._json(413, {"error": f"request body must be 0 to {MAX_BODY_BYTES} bytes of JSON"})
            self.close_connection = True
            return None
        self.server.guard.reading(self.connection, body=True)
        body = self.rfile.read(length) if length else b""
        self.server.guard.answering(self.connection)
        if len(body) < length:
            self.close_connection = True
            return None  # the client went away (or was too slow) before sending its whole body
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if body and ctype != "application/json":
            # a browser sends a cross-site form post as text/plain or a form type, never as application/json
            self._json(415, {"error": f"send the body as Content-Type: application/json, not {ctype or 'none'!r}"})
            return None
        return body

    def _snapshot(self, stream: StreamOutput) -> None:
        # registering as a client makes the encoder produce a fresh JPEG of the next frame; when the streams are
        # full, their clients keep it encoding anyway, so a snapshot never waits for a stream client to leave
        registered = stream.add_client()
        try:
            latest = stream.latest_jpeg()
            got = stream.wait_jpeg(0 if latest is None else latest[1], 2.0) or latest
        finally:
            if registered:
                stream.remove_client()
        if got is None:
            self._json(503, {"error": "no frame yet"})
        else:
            self._send(200, got[0], "image/jpeg")

    def _stream(self, stream: StreamOutput) -> None:
        if not stream.add_client():
            self._json(503, {"error": f"too many stream clients (max {stream.max_clients})"})
            return
        sent = 0
        try:
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Pragma", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command == "HEAD":
                return
            last = -1
            while not stream.closed and not self.server.stopping:
                got = stream.wait_jpeg(last, timeout=1.0)
                if got is None:
                    continue  # source silent: keep the connection; the client sees the last picture
                jpeg, last = got
                self.wfile.write(_PART_HEAD + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                sent += 1
        except (BrokenPipeError, ConnectionResetError, socket.timeout, OSError) as e:
            log.debug("stream client %s dropped after %d frames: %s", self.address_string(), sent, e)
        finally:
            stream.remove_client()
            self.close_connection = True


class HttpServer(ThreadingHTTPServer):
    """Threaded HTTP server bound at construction (so a busy port is an error at start), served on a thread."""

    daemon_threads = True  # a client thread never keeps the process alive at exit
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = 128  # a burst of connections waits in the kernel, not refused

    def __init__(self, host: str, port: int, app: HttpApp, token: str | None = None,
                 allowed_hosts: tuple[str, ...] = (), extra_handler: RouteHandler | None = None,
                 page: bytes | None = None) -> None:
        self.app = app
        self.token = token
        self.extra_handler = extra_handler  # more routes (see the module docstring); settable after construction
        # besides any IP address: localhost, the host we were told to bind (when it is a name) and the user's names
        self.allowed_names = frozenset(h.lower().rstrip(".") for h in ("localhost", host, *allowed_hosts))
        self.page = page if page is not None else page_html()
        self.stopping = False
        self.guard = ConnectionGuard()
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            super().__init__((host, port), _Handler)
        except OSError as e:
            raise EdgeError(f"--http: cannot listen on {host}:{port}: {e.strerror or e}; "
                            "choose another port or host") from e
        self._thread: threading.Thread | None = None

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if self.guard.admit(request, str(client_address[0])):
            return True
        try:  # every connection is being answered: say so without waiting on this client
            request.setblocking(False)
            request.send(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n"
                         b"Connection: close\r\n\r\n")
        except OSError:
            pass
        return False

    def shutdown_request(self, request: Any) -> None:
        self.guard.release(request)
        super().shutdown_request(request)

    def host_allowed(self, header: str) -> bool:
        """May a request with this Host header be answered? (See the module docstring: DNS rebinding.)"""
        host = host_of(header)
        return host is not None and (is_ip_address(host) or host in self.allowed_names)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.25}, name="http",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopping = True
        self.guard.close()
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=2.0)
        self.server_close()

