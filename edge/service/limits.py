"""Connection limits of the HTTP server: slow or idle clients can never starve the API.

A thread per connection (the stdlib server) is simple, but about a thousand connections that send their request a
byte at a time used to take every file descriptor and thread, and the token-holding client got no answer. Here:

- every connection gets `header_s` seconds to send its request line and headers, and `body_s` for a body; a
  watchdog thread shuts down (never closes: the handler thread owns the descriptor) a connection past its deadline,
  which ends the handler's blocked read at once, however the bytes trickle in;
- at most `per_client` connections from one address and `total` in all. A new connection over a cap takes the
  place of the oldest connection that has still not sent its request (a slow client), so a client that sends its
  request at once is always answered; only when every connection is busy answering is the new one refused.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 10.0  # request line and headers, from accept (or the previous answer, with keep-alive)
BODY_TIMEOUT_S = 10.0  # a request body (at most edge.service.http.MAX_BODY_BYTES)
MAX_PER_CLIENT = 64
MAX_TOTAL = 256  # well under systemd's default of 1024 open files, with room for cameras, models and logs


@dataclass
class _Conn:
    address: str
    since: float  # time.monotonic() the connection was admitted
    deadline: float | None  # time.monotonic() by which its current read must be done; None while it is answered


class ConnectionGuard:
    """Admits, times and evicts the connections of one server (thread-safe)."""

    def __init__(self, per_client: int = MAX_PER_CLIENT, total: int = MAX_TOTAL, header_s: float = HEADER_TIMEOUT_S,
                 body_s: float = BODY_TIMEOUT_S) -> None:
        self.per_client, self.total = int(per_client), int(total)
        self.header_s, self.body_s = float(header_s), float(body_s)
        self.refused = 0  # connections refused because every slot was busy answering
        self.evicted = 0  # slow connections shut down for a new one, or past their deadline
        self._conns: dict[socket.socket, _Conn] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="http-watchdog", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def admit(self, sock: socket.socket, address: str) -> bool:
        """Take a new connection (its request must arrive within header_s), evicting the oldest slow one when a
        cap is reached; False (refuse it) when every connection over the cap is being answered."""
        now = time.monotonic()
        with self._lock:
            for cap, mine in ((self.per_client, True), (self.total, False)):
                conns = [(s, c) for s, c in self._conns.items() if not mine or c.address == address]
                if len(conns) < cap:
                    continue
                waiting = [(c.since, s) for s, c in conns if c.deadline is not None]
                if not waiting:
                    self.refused += 1
                    log.warning("refused a connection from %s: %d connections are being answered (limit %d%s)",
                                address, len(conns), cap, " per client" if mine else "")
                    return False
                self._evict(min(waiting, key=lambda w: w[0])[1], "to make room for a new connection")
            self._conns[sock] = _Conn(address, now, now + self.header_s)
        return True

    def release(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.pop(sock, None)

    def reading(self, sock: socket.socket, body: bool = False) -> None:
        """The connection now reads a request (headers) or its body: it has header_s (body_s) for it."""
        with self._lock:
            conn = self._conns.get(sock)
            if conn is not None:
                conn.deadline = time.monotonic() + (self.body_s if body else self.header_s)

    def answering(self, sock: socket.socket) -> None:
        """The request is in: no deadline while it is answered (a stream may last hours; writes have their own
        socket timeout)."""
        with self._lock:
            conn = self._conns.get(sock)
            if conn is not None:
                conn.deadline = None

    def _evict(self, sock: socket.socket, why: str) -> None:
        conn = self._conns.pop(sock)  # under the lock; the handler's release() then finds nothing
        self.evicted += 1
        log.debug("dropping a connection from %s that sent no complete request in %.1f s (%s)", conn.address,
                  time.monotonic() - conn.since, why)
        try:
            sock.shutdown(socket.SHUT_RDWR)  # its handler's read returns at once; the handler closes the socket
        except OSError:
            pass

    def _watch(self) -> None:
        while not self._stop.wait(0.25):
            now = time.monotonic()
            with self._lock:
                late = [s for s, c in self._conns.items() if c.deadline is not None and c.deadline < now]
                for sock in late:
                    self._evict(sock, "too slow")
