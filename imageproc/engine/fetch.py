"""The one seam for outbound HTTP: image downloads and webhook deliveries.

No Django imports: callers pass a FetchPolicy built from settings.

SSRF design (see shared notes, "Fetching"):

* ``validate_url`` rejects, from the string alone, everything that is not a plain http(s) URL
  with a host: other schemes, userinfo, backslashes, whitespace/control/format characters, and
  non-canonical numeric hosts (``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.1``, ``0``)
  that the C resolver would silently turn into an IPv4 address.
* The host is resolved ONCE per request hop; EVERY address returned must pass
  ``is_address_allowed``; the connection is then opened to one of those checked addresses
  (the pool is keyed by the IP, so nothing resolves the name a second time: DNS rebinding
  cannot swap in another address). The ``Host`` header, TLS SNI and certificate verification
  use the original host name.
* Redirects (``fetch_image`` only) are followed here, one hop at a time, and every Location
  goes through the same validation, resolution and address check.
* One deadline covers DNS, connect, TLS handshake, request, response headers and body: a
  watchdog timer shuts the socket down when it expires, which interrupts a blocking read
  that per-recv timeouts would let run forever (a server trickling a byte every 0.5 s).
* Content-Length above the cap is refused before reading; streamed (decoded) bytes are
  counted and the download is cut at the cap.

Why not ``requests`` + ``requests-hardened`` (1.3.0)? We reuse its technique (pin the resolved
IP as the pool host; Host header + ``server_hostname``/``assert_hostname`` for TLS) but not the
package, because it:
  - checks only the first ``getaddrinfo`` answer, not every address;
  - has no per-network exemptions (only ``allow_loopback``), so FETCH_ALLOWED_NETWORKS cannot
    be expressed;
  - filters with ``is_private`` plus a deny-list, where we require ``is_global`` (Python 3.11
    still calls 224.0.0.1, 192.0.0.8, ::7f00:1 (IPv4-compatible) and fec0::/10 global or
    non-private);
  - resolves DNS without any timeout and has per-read timeouts only: no total deadline, no
    byte cap, no Content-Length check;
  - sits on ``requests.Session``, which is not documented as thread-safe and brings
    environment proxies/.netrc (``trust_env``) and a cookie jar shared between tenants.
So this module talks to urllib3 2.x directly (installed with requests, as are idna and certifi),
with one urllib3 PoolManager per thread (``threading.local``) for keep-alive reuse.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import quote, urljoin, urlsplit

import certifi
import idna
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    DecodeError,
    LocationParseError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.exceptions import (
    SSLError as Urllib3SSLError,
)
from urllib3.response import BaseHTTPResponse
from urllib3.util import Timeout
from urllib3.util.connection import HAS_IPV6

logger = logging.getLogger(__name__)

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


# --------------------------------------------------------------------------------------------
# String-level URL validation
# --------------------------------------------------------------------------------------------


class InvalidUrl(ValueError):
    """A URL that we refuse before any network traffic."""


_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
# Non-ASCII characters that are invisible, control-like or spacing (NBSP, U+2028, bidi
# overrides, zero-width space, ...): refused anywhere in the URL.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zs", "Zl", "Zp"})
_MAX_URL_LENGTH = 8192
_HOST_RE = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")
# WHATWG URL: a host whose last label is a number is parsed as IPv4 (decimal/hex/octal parts).
_NUMERIC_LABEL_RE = re.compile(r"[0-9]+|0x[0-9a-f]*")


def _normalize_host(netloc: str, hostname: str) -> str:
    """Return the host as lowercase ASCII (IDNA), without brackets or one trailing dot.

    Raises InvalidUrl for hosts that are not a DNS name or an IP literal.
    """
    if "[" in netloc or "]" in netloc or ":" in hostname:
        # Brackets hold an IPv6 literal and nothing else (urlsplit also lets "[v1.x]" through,
        # as hostname "v1.x").
        try:
            ipaddress.IPv6Address(hostname)
        except ValueError:
            raise InvalidUrl("URL has an invalid IPv6 address") from None
        return hostname.lower()
    host = hostname[:-1] if hostname.endswith(".") else hostname
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            raise InvalidUrl("URL has an invalid international domain name") from None
        if host.endswith("."):
            host = host[:-1]
    host = host.lower()
    if len(host) > 253 or not _HOST_RE.fullmatch(host):
        raise InvalidUrl("URL has an invalid host name")
    return host


def _check_numeric_host(host: str) -> None:
    if ":" in host:
        return
    last_label = host.rsplit(".", 1)[-1]
    if _NUMERIC_LABEL_RE.fullmatch(last_label):
        try:
            ipaddress.IPv4Address(host)  # dotted-quad decimal, no leading zeros
        except ValueError:
            raise InvalidUrl("URL host is an ambiguous numeric address; use a dotted-quad IPv4 address") from None


def validate_url(url: str) -> str:
    """Return the URL if it is an http(s) URL we are willing to fetch; raise InvalidUrl otherwise.

    Checks only the string: the address it resolves to is checked at connect time.
    """
    if not url:
        raise InvalidUrl("empty URL")
    if len(url) > _MAX_URL_LENGTH:
        raise InvalidUrl("URL is too long")
    if _FORBIDDEN_CHARS.search(url) or any(
        ord(ch) > 0x7F and unicodedata.category(ch) in _FORBIDDEN_CATEGORIES for ch in url
    ):
        raise InvalidUrl("URL contains whitespace, a control character or a backslash")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidUrl(f"malformed URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidUrl("only http and https URLs are allowed")
    if "@" in parts.netloc:
        raise InvalidUrl("URL must not contain credentials")
    if not parts.hostname:
        raise InvalidUrl("URL has no host")
    if port == 0:
        raise InvalidUrl("URL has an invalid port")
    _check_numeric_host(_normalize_host(parts.netloc, parts.hostname))
    return url


# --------------------------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------------------------

FETCH_ERROR_CODES = frozenset(
    {
        "invalid_url",
        "blocked_address",
        "dns_error",
        "connect_error",
        "timeout",
        "too_large",
        "too_many_redirects",
        "redirect_blocked",
        "not_an_image",
        "fetch_error",
    }
)  # plus f"http_{status}" for non-2xx answers to fetch_image


class FetchError(Exception):
    """The only exception fetch_image() and post() raise. ``code`` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"FetchError({self.code!r}, {self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (task queues)
        return (type(self), (self.code, self.message))


@dataclass(frozen=True)
class FetchPolicy:
    allowed_networks: tuple[IPNetwork, ...] = ()  # exemptions (FETCH_ALLOWED_NETWORKS)
    connect_timeout: float = 5.0
    total_timeout: float = 30.0  # whole download deadline, including slow trickling bodies
    max_bytes: int = 25 * 1024 * 1024
    max_redirects: int = 3
    user_agent: str = "imageproc/1.0"

    def __post_init__(self) -> None:
        nets = tuple(
            n if isinstance(n, ipaddress.IPv4Network | ipaddress.IPv6Network) else ipaddress.ip_network(n)
            for n in self.allowed_networks
        )
        object.__setattr__(self, "allowed_networks", nets)
        if not (self.connect_timeout > 0 and self.total_timeout > 0):
            raise ValueError("timeouts must be positive")
        if self.max_bytes <= 0 or self.max_redirects < 0:
            raise ValueError("max_bytes must be positive and max_redirects not negative")
        if re.search(r"[\x00-\x1f\x7f]", self.user_agent):
            raise ValueError("user_agent must not contain control characters")


@dataclass(frozen=True)
class FetchResult:
    data: bytes
    content_type: str  # sniffed from the magic bytes (e.g. "image/png"), not the server's header
    url: str  # final URL after redirects
    elapsed: float  # seconds


class _Headers(Mapping[str, str]):
    """Read-only, case-insensitive header mapping; repeated headers are joined with ", "."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        merged: dict[str, tuple[str, str]] = {}
        for key, value in items:
            low = key.lower()
            if low in merged:
                merged[low] = (merged[low][0], f"{merged[low][1]}, {value}")
            else:
                merged[low] = (key, value)
        self._items = merged

    def __getitem__(self, key: str) -> str:
        if not isinstance(key, str):
            raise KeyError(key)
        return self._items[key.lower()][1]

    def __iter__(self) -> Iterator[str]:
        return (original for original, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({dict(self)!r})"


@dataclass(frozen=True)
class PostResult:
    status_code: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes  # at most 64 KiB read
    elapsed: float


# --------------------------------------------------------------------------------------------
# Address policy
# --------------------------------------------------------------------------------------------


def parse_networks(value: str) -> tuple[IPNetwork, ...]:
    """Parse "10.0.0.0/8, 127.0.0.2/32" (commas and/or whitespace) into networks.

    A bare address means a single host (/32 or /128). Host bits must be zero.
    Raises ValueError naming the bad entry.
    """
    networks: list[IPNetwork] = []
    for entry in re.split(r"[,\s]+", value.strip()):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=True))
        except ValueError as exc:
            raise ValueError(f"invalid network {entry!r}: {exc}") from None
    return tuple(networks)


def _nets(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# Refused even when ``is_global`` says otherwise (Python's tables lag the IANA registries and
# differ between patch releases, so the important ranges are listed explicitly).
_BLOCKED_V4 = _nets(
    "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches localhost on Linux
    "10.0.0.0/8",
    "100.64.0.0/10",  # carrier-grade NAT, often internal workloads
    "127.0.0.0/8",
    "169.254.0.0/16",  # link-local, cloud metadata
    "172.16.0.0/12",
    "192.0.0.0/24",  # IETF protocol assignments
    "192.0.2.0/24",
    "192.88.99.0/24",  # 6to4 relay anycast
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",  # multicast (is_global is True for it)
    "240.0.0.0/4",  # reserved, includes 255.255.255.255
)
_BLOCKED_V6 = _nets(
    "::/96",  # unspecified, loopback, deprecated IPv4-compatible (::127.0.0.1 is "global")
    "::ffff:0:0/96",  # IPv4-mapped (unwrapped and checked as IPv4 first)
    "::ffff:0:0:0/96",  # IPv4-translated
    "64:ff9b::/96",  # NAT64 well-known prefix: 64:ff9b::7f00:1 reaches the gateway's 127.0.0.1
    "64:ff9b:1::/48",  # local-use NAT64
    "100::/64",  # discard-only
    "2001::/23",  # IETF protocol assignments, includes Teredo 2001::/32 (embeds an IPv4)
    "2001:db8::/32",
    "2002::/16",  # 6to4 (embeds an IPv4; deprecated, refused whole)
    "3fff::/20",
    "5f00::/16",  # segment routing
    "fc00::/7",  # unique local
    "fe80::/10",  # link-local
    "fec0::/10",  # deprecated site-local (is_global is True for it)
    "ff00::/8",  # multicast
)


def _to_address(ip: object) -> IPAddress | None:
    if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return ip
    if isinstance(ip, str):
        text = ip.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            return None
    return None


def _in_any(addr: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(addr.version == net.version and addr in net for net in networks)


def is_address_allowed(
    ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
    allowed_networks: Iterable[IPNetwork] = (),
) -> bool:
    """True if we may connect to this address.

    Only globally routable unicast addresses are allowed, unless the address lies inside one of
    ``allowed_networks`` (explicit exemptions). IPv4-mapped IPv6 (::ffff:a.b.c.d) is judged as
    the IPv4 address it carries. Anything that does not parse as an address is refused.
    """
    original = _to_address(ip)
    if original is None:
        return False
    addr: IPAddress = original
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    allowed = tuple(allowed_networks)
    if _in_any(addr, allowed) or _in_any(original, allowed):
        return True
    if not addr.is_global or addr.is_multicast or addr.is_unspecified or addr.is_loopback:
        return False
    if addr.is_link_local or addr.is_private or addr.is_reserved:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.is_site_local:
        return False
    return not _in_any(addr, _BLOCKED_V4 if addr.version == 4 else _BLOCKED_V6)


# --------------------------------------------------------------------------------------------
# Deadline watchdog
# --------------------------------------------------------------------------------------------


class _Deadline:
    """A total deadline for one fetch_image()/post() call.

    Socket timeouts only bound each recv(); a server that trickles headers or body bytes
    never trips them. When the deadline passes, a timer thread shuts down every socket this
    call has used (through a dup'ed descriptor we own, so a closed-and-reused descriptor
    number can never be hit), which makes the blocked recv/send/handshake return at once.
    """

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


# --------------------------------------------------------------------------------------------
# Per-thread connection pools (urllib3), with every socket registered with the deadline
# --------------------------------------------------------------------------------------------


class _ThreadState(threading.local):
    def __init__(self) -> None:
        self.deadline: _Deadline | None = None
        self.pools: urllib3.PoolManager | None = None
        self.reused = False  # whether the last request went out on a kept-alive connection


_state = _ThreadState()


def _watch(sock: socket.socket) -> None:
    deadline = _state.deadline
    if deadline is not None:
        deadline.watch(sock)


class _GuardedHTTPConnection(HTTPConnection):
    _fetch_fresh = False  # True from connect until the end of the first request on it

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # connects to the pinned IP: the pool's host
        self._fetch_fresh = True
        _watch(sock)  # before the TLS handshake, so a trickled handshake is cut too
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
            _watch(self.sock)  # a new call's deadline must be able to cut a pooled socket
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


_CA_BUNDLE: str = certifi.where()


def _pool_manager() -> urllib3.PoolManager:
    manager = _state.pools
    if manager is None:
        # Pools are keyed by (scheme, pinned IP, port, SNI/verify host): a kept-alive connection
        # is only reused for an address that has just passed the check again.
        manager = urllib3.PoolManager(num_pools=16, maxsize=1, block=False, retries=False)
        manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        _state.pools = manager
    return manager


@contextlib.contextmanager
def _deadline_scope(seconds: float) -> Iterator[_Deadline]:
    deadline = _Deadline(seconds)
    previous = _state.deadline
    _state.deadline = deadline
    try:
        yield deadline
    finally:
        _state.deadline = previous
        deadline.close()


# --------------------------------------------------------------------------------------------
# Targets, resolution and sending
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    url: str
    scheme: str
    host: str  # lowercase ASCII, no brackets, no trailing dot
    port: int
    host_header: str
    request_target: str  # path?query, ASCII


_TARGET_SAFE = "/?:@!$&'()*+,;=%[]"  # plus letters, digits and "_.-~": re-quotes only non-ASCII


def _parse_target(url: str) -> _Target:
    try:
        validate_url(url)
        parts = urlsplit(url)
        host = _normalize_host(parts.netloc, parts.hostname or "")
        port = parts.port
    except (InvalidUrl, ValueError) as exc:
        raise FetchError("invalid_url", str(exc)) from None
    scheme = parts.scheme.lower()
    default_port = 443 if scheme == "https" else 80
    port = port or default_port
    host_header = f"[{host}]" if ":" in host else host
    if port != default_port:
        host_header += f":{port}"
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return _Target(url, scheme, host, port, host_header, quote(target, safe=_TARGET_SAFE))


def _resolve(host: str, port: int, deadline: _Deadline) -> list[str]:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [host]  # IP literal: nothing to resolve

    # getaddrinfo() cannot be interrupted: run it in a helper thread and stop waiting at the
    # deadline (the helper ends on its own when the system resolver gives up).
    box: list[Any] = []

    def lookup() -> None:
        family = socket.AF_UNSPEC if HAS_IPV6 else socket.AF_INET
        try:
            box.append(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM))
        except BaseException as exc:  # handed to the caller below
            box.append(exc)

    thread = threading.Thread(target=lookup, name="fetch-dns", daemon=True)
    thread.start()
    thread.join(max(deadline.remaining(), 0.0))
    if not box:
        raise FetchError("timeout", f"DNS lookup for {host!r} timed out")
    result = box[0]
    if isinstance(result, UnicodeError):
        raise FetchError("invalid_url", "URL has an invalid host name")
    if isinstance(result, BaseException):
        raise FetchError("dns_error", f"could not resolve host {host!r}")
    addresses: list[str] = []
    for family, _type, _proto, _canon, sockaddr in result:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = str(sockaddr[0])
            if address not in addresses:
                addresses.append(address)
    if not addresses:
        raise FetchError("dns_error", f"could not resolve host {host!r}")
    return addresses


def _resolve_checked(host: str, port: int, policy: FetchPolicy, deadline: _Deadline) -> list[str]:
    """Resolve once; refuse unless EVERY address is allowed; return the checked addresses."""
    addresses = _resolve(host, port, deadline)
    refused = [a for a in addresses if not is_address_allowed(a, policy.allowed_networks)]
    if refused:
        logger.warning("fetch refused: host %r resolves to non-allowed %s", host, refused)
        raise FetchError("blocked_address", f"host {host!r} resolves to an address that is not allowed")
    return addresses


def _send_to(
    ip: str,
    target: _Target,
    method: str,
    headers: Mapping[str, str],
    body: bytes | None,
    policy: FetchPolicy,
    deadline: _Deadline,
) -> BaseHTTPResponse:
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
                timeout=Timeout(connect=min(policy.connect_timeout, remaining), read=remaining),
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


def _send(
    target: _Target,
    method: str,
    headers: Mapping[str, str],
    body: bytes | None,
    policy: FetchPolicy,
    deadline: _Deadline,
) -> BaseHTTPResponse:
    addresses = _resolve_checked(target.host, target.port, policy, deadline)
    last_error: Exception | None = None
    for ip in addresses:  # try each checked address until one accepts the connection
        try:
            return _send_to(ip, target, method, headers, body, policy, deadline)
        except ConnectTimeoutError as exc:  # includes NewConnectionError; nothing was sent
            last_error = exc
            if deadline.expired:
                break
    if last_error is None:  # pragma: no cover - _resolve never returns an empty list
        raise FetchError("dns_error", f"no address for host {target.host!r}")
    raise last_error


def _to_fetch_error(exc: BaseException, deadline: _Deadline) -> FetchError:
    if isinstance(exc, FetchError):
        return exc
    if deadline.expired:
        return FetchError("timeout", "the total time limit for the request was exceeded")
    if isinstance(exc, NewConnectionError):
        return FetchError("connect_error", "could not connect to the host")
    if isinstance(exc, ConnectTimeoutError):
        return FetchError("timeout", "connecting to the host timed out")
    if isinstance(exc, ReadTimeoutError | TimeoutError):
        return FetchError("timeout", "the host did not respond in time")
    if isinstance(exc, Urllib3SSLError | ssl.SSLError | ssl.CertificateError):
        return FetchError("connect_error", "TLS handshake or certificate verification failed")
    if isinstance(exc, LocationParseError):
        return FetchError("invalid_url", "malformed URL")
    if isinstance(exc, DecodeError):
        return FetchError("fetch_error", "could not decode the response content-encoding")
    if isinstance(exc, ProtocolError | http.client.HTTPException | OSError):
        return FetchError("fetch_error", "the connection failed or the response was malformed")
    return FetchError("fetch_error", f"request failed ({type(exc).__name__})")


def _read_body(resp: BaseHTTPResponse, limit: int, deadline: _Deadline, *, truncate: bool) -> tuple[bytes, bool]:
    """Read up to ``limit`` decoded bytes. Returns (data, reached_eof).

    With truncate=False, more than ``limit`` bytes raises too_large.
    """
    declared = resp.length_remaining
    encoding = resp.headers.get("Content-Encoding", "").strip().lower()
    if declared and declared <= limit and encoding in ("", "identity"):
        # The length is known and nothing needs decoding: one read, straight from the
        # socket into the final bytes object. The chunked loop below costs a copy of
        # every byte, and page faults on each copy, for nothing (bench/: a third of the
        # I/O threads' CPU). The watchdog interrupts this read like any other.
        data = resp.read(declared, decode_content=False)
        deadline.check()
        if len(data) != declared:  # the connection ended early: a truncated image is no image
            raise FetchError("fetch_error", f"the connection closed after {len(data)} of {declared} bytes")
        return data, True
    buf = bytearray()
    while True:
        deadline.check()
        want = limit - len(buf) if truncate else limit - len(buf) + 1
        if want <= 0:
            return bytes(buf), False
        # read1: returns as soon as some bytes arrive, so the deadline is checked between them
        chunk = resp.read1(min(want, 64 * 1024))
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            raise FetchError("too_large", f"the response is larger than {limit} bytes")
    deadline.check()  # a watchdog shutdown also looks like an end of body
    return bytes(buf), True


def _finish(resp: BaseHTTPResponse, *, reuse: bool) -> None:
    if not reuse:
        resp.close()  # unread or broken body: the connection cannot be reused
    resp.release_conn()


# --------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


def _header_text(value: str) -> str:
    """http.client decodes header bytes as latin-1; servers send UTF-8 in Location."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def _sniff_image(data: bytes) -> str | None:
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if (
        data[:2] == b"BM"
        and len(data) >= 26
        and int.from_bytes(data[14:18], "little") in (12, 16, 40, 52, 56, 64, 108, 124)
    ):
        return "image/bmp"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    return None


def fetch_image(url: str, *, policy: FetchPolicy) -> FetchResult:
    """GET an image, following at most policy.max_redirects redirects, each one re-checked.

    Raises FetchError only.
    """
    started = time.monotonic()
    with _deadline_scope(policy.total_timeout) as deadline:
        current = url
        redirects = 0
        while True:
            target = _parse_target(current)
            headers = {
                "Host": target.host_header,
                "User-Agent": policy.user_agent,
                "Accept": "image/*, */*;q=0.5",
                "Accept-Encoding": "identity",
            }
            try:
                resp = _send(target, "GET", headers, None, policy, deadline)
            except Exception as exc:
                raise _to_fetch_error(exc, deadline) from None
            reuse = False
            try:
                status = resp.status
                if status in _REDIRECT_STATUSES and resp.headers.getlist("Location"):
                    locations = resp.headers.getlist("Location")
                    if policy.max_redirects == 0:
                        raise FetchError("redirect_blocked", f"redirects are not allowed ({status})")
                    if redirects >= policy.max_redirects:
                        raise FetchError("too_many_redirects", f"more than {policy.max_redirects} redirects")
                    if len(set(locations)) != 1:
                        raise FetchError("fetch_error", "ambiguous redirect (several Location)")
                    redirects += 1
                    current = urljoin(current, _header_text(locations[0]))
                    continue  # validated, resolved and checked again at the top of the loop
                if not 200 <= status < 300:
                    raise FetchError(f"http_{status}", f"the server answered HTTP {status}")
                declared = resp.length_remaining
                if declared is not None and declared > policy.max_bytes:
                    raise FetchError("too_large", f"Content-Length {declared} exceeds {policy.max_bytes} bytes")
                data, reuse = _read_body(resp, policy.max_bytes, deadline, truncate=False)
                content_type = _sniff_image(data)
                if content_type is None:
                    raise FetchError("not_an_image", "the response is not a supported image")
                return FetchResult(
                    data=data,
                    content_type=content_type,
                    url=current,
                    elapsed=time.monotonic() - started,
                )
            except Exception as exc:
                reuse = reuse and isinstance(exc, FetchError) and exc.code == "not_an_image"
                raise _to_fetch_error(exc, deadline) from None
            finally:
                _finish(resp, reuse=reuse)


_POST_BODY_LIMIT = 64 * 1024
# Framing and routing headers are ours to set: a caller-supplied Host would defeat pinning.
_DROPPED_POST_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "proxy-authorization",
        "proxy-connection",
    }
)
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def post(url: str, *, body: bytes, headers: Mapping[str, str], policy: FetchPolicy) -> PostResult:
    """POST ``body`` (webhooks). Never follows redirects: any status, 3xx included, is returned.

    Same URL validation and address guard as fetch_image, same total deadline; reads at most
    64 KiB of the response body. Raises FetchError only (never http_<status>).
    """
    started = time.monotonic()
    with _deadline_scope(policy.total_timeout) as deadline:
        target = _parse_target(url)
        request_headers = {"Host": target.host_header, "User-Agent": policy.user_agent}
        for name, value in headers.items():
            if (
                not isinstance(name, str)
                or not isinstance(value, str)
                or not _HEADER_NAME_RE.fullmatch(name)
                or re.search(r"[\x00-\x1f\x7f]", value)
            ):
                raise FetchError("fetch_error", f"invalid request header {name!r}")
            if name.lower() in _DROPPED_POST_HEADERS:
                continue
            if name.lower() == "user-agent":
                request_headers["User-Agent"] = value
            else:
                request_headers[name] = value
        try:
            resp = _send(target, "POST", request_headers, bytes(body), policy, deadline)
        except Exception as exc:
            raise _to_fetch_error(exc, deadline) from None
        reuse = False
        try:
            data, reuse = _read_body(resp, _POST_BODY_LIMIT, deadline, truncate=True)
            return PostResult(
                status_code=resp.status,
                headers=_Headers(resp.headers.items()),
                body=data,
                elapsed=time.monotonic() - started,
            )
        except Exception as exc:
            raise _to_fetch_error(exc, deadline) from None
        finally:
            _finish(resp, reuse=reuse)
