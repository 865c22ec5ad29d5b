"""One total deadline per fetch_image()/post() call, enforced by a watchdog.

Socket timeouts only bound each recv(); a server that trickles headers or body bytes never
trips them (one byte every 0.5 s ran 7.5 s past a 2 s read timeout). The deadline covers
DNS, connect, TLS handshake, request, response headers and body: when it expires, a timer
thread shuts down every socket the call has used, which makes a blocked recv/send/handshake
return at once.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

from imageproc.engine.http.errors import FetchError


class Deadline:
    """The deadline of one call. Sockets are registered through a dup'ed descriptor we own,
    so that a closed-and-reused descriptor number can never be shut down by mistake."""

    def __init__(self, seconds: float) -> None:
        self._expires_at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._fired = False
        self._closed = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return self._expires_at - time.monotonic()

    @property
    def expired(self) -> bool:
        return self._fired or self.remaining() <= 0

    def check(self) -> None:
        if self.expired:
            raise FetchError("timeout", "the total time limit for the request was exceeded")

    def watch(self, sock: socket.socket) -> None:
        try:
            dup = socket.fromfd(sock.fileno(), sock.family, sock.type)
        except (OSError, ValueError):
            return
        with self._lock:
            if self._closed:
                dup.close()
                return
            self._socks.append(dup)
            if self._fired:
                _shutdown(dup)

    def _fire(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._fired = True
            for sock in self._socks:
                _shutdown(sock)

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._closed = True
            socks, self._socks = self._socks, []
        for sock in socks:
            sock.close()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Current(threading.local):
    deadline: Deadline | None = None


_current = _Current()


def watch(sock: socket.socket) -> None:
    """Put a socket under the deadline of the call running in this thread, if any (the
    connections do this as they open, and when a pooled one is used again)."""
    deadline = _current.deadline
    if deadline is not None:
        deadline.watch(sock)


@contextlib.contextmanager
def deadline_scope(seconds: float) -> Iterator[Deadline]:
    """The deadline of one call, current in this thread until the block ends."""
    deadline = Deadline(seconds)
    previous = _current.deadline
    _current.deadline = deadline
    try:
        yield deadline
    finally:
        _current.deadline = previous
        deadline.close()
