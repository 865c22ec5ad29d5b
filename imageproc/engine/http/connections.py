"""urllib3 connections pinned to a checked IP, pooled per thread, watched by the deadline.

The pool is keyed by the IP we checked, so nothing resolves the host name a second time:
DNS rebinding cannot swap in another address. The ``Host`` header, TLS SNI and certificate
verification use the original host name (the technique of ``requests-hardened``).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Mapping
from typing import Any

import certifi
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ProtocolError
from urllib3.response import BaseHTTPResponse
from urllib3.util import Timeout

from imageproc.engine.http import deadline as watchdog
from imageproc.engine.http.deadline import Deadline
from imageproc.engine.http.urls import Target


class _ThreadState(threading.local):
    def __init__(self) -> None:
        self.pools: urllib3.PoolManager | None = None
        self.reused = False  # whether the last request went out on a kept-alive connection


_state = _ThreadState()


class _GuardedHTTPConnection(HTTPConnection):
    _fetch_fresh = False  # True from connect until the end of the first request on it

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # connects to the pinned IP: the pool's host
        self._fetch_fresh = True
        watchdog.watch(sock)  # before the TLS handshake, so a trickled handshake is cut too
        return sock

    def request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        *,
        chunked: bool = False,
        preload_content: bool = True,
        decode_content: bool = True,
        enforce_content_length: bool = True,
    ) -> None:
        # A plain-HTTP connection is opened lazily inside request() (HTTPS: just before it),
        # so "kept-alive" means: a socket exists and it was not opened for this request.
        _state.reused = self.sock is not None and not self._fetch_fresh
        if _state.reused and self.sock is not None:
            watchdog.watch(self.sock)  # a new call's deadline must be able to cut a pooled socket
        try:
            super().request(
                method,
                url,
                body,
                headers,
                chunked=chunked,
                preload_content=preload_content,
                decode_content=decode_content,
                enforce_content_length=enforce_content_length,
            )
        finally:
            self._fetch_fresh = False


class _GuardedHTTPSConnection(_GuardedHTTPConnection, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


_CA_BUNDLE: str = certifi.where()  # a module global, so that tests can trust their own CA


def _pool_manager() -> urllib3.PoolManager:
    manager = _state.pools
    if manager is None:
        # Pools are keyed by (scheme, pinned IP, port, SNI/verify host): a kept-alive connection
        # is only reused for an address that has just passed the check again.
        manager = urllib3.PoolManager(num_pools=16, maxsize=1, block=False, retries=False)
        manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        _state.pools = manager
    return manager


def send_to(
    ip: str,
    target: Target,
    method: str,
    headers: Mapping[str, str],
    body: bytes | None,
    *,
    connect_timeout: float,
    deadline: Deadline,
) -> BaseHTTPResponse:
    """Send one request to ``ip`` (already checked) and return the response, body unread."""
    pool_kwargs: dict[str, Any] = {}
    if target.scheme == "https":
        pool_kwargs = {
            "server_hostname": target.host,  # SNI (urllib3 omits it for IP literals)
            "assert_hostname": target.host,  # certificate must match the name, not the IP
            "cert_reqs": "CERT_REQUIRED",
            "ca_certs": _CA_BUNDLE,
        }
    pool = _pool_manager().connection_from_host(ip, target.port, scheme=target.scheme, pool_kwargs=pool_kwargs)
    for attempt in (1, 2):
        deadline.check()
        remaining = max(deadline.remaining(), 0.001)
        _state.reused = False
        try:
            return pool.urlopen(
                method,
                target.request_target,
                body=body,
                headers=dict(headers),
                retries=False,
                redirect=False,
                assert_same_host=False,
                timeout=Timeout(connect=min(connect_timeout, remaining), read=remaining),
                preload_content=False,
                decode_content=True,
                release_conn=False,
            )
        except ProtocolError:
            # A kept-alive connection the server had already closed: retry a GET once on a
            # fresh connection to the same checked address. Never retry a POST.
            if attempt == 1 and _state.reused and method == "GET" and not deadline.expired:
                continue
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def finish(resp: BaseHTTPResponse, *, reuse: bool) -> None:
    """Give the connection back to the pool; close it first unless its response was read whole."""
    if not reuse:
        resp.close()  # unread or broken body: the connection cannot be reused
    resp.release_conn()
