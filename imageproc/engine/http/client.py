"""fetch_image() and post(): the two requests the service makes, and their policy and results.

Each call validates the URL, resolves the host once and checks every address
(addresses.resolve_allowed), connects only to a checked address (connections.send_to), and
runs under one total deadline (deadline.deadline_scope). Redirects (fetch_image only) are
followed here, one hop at a time, each Location validated, resolved and checked again.
Content-Length above the cap is refused before reading; streamed (decoded) bytes are counted
and the download is cut at the cap. Every failure is a FetchError.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import ssl
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin

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

from imageproc.engine.http.addresses import IPNetwork, resolve_allowed
from imageproc.engine.http.connections import finish, send_to
from imageproc.engine.http.deadline import Deadline, deadline_scope
from imageproc.engine.http.errors import FetchError, parse_retry_after
from imageproc.engine.http.sniff import sniff_image
from imageproc.engine.http.urls import Target, parse_target


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
# Sending and reading
# --------------------------------------------------------------------------------------------


def _send(
    target: Target,
    method: str,
    headers: Mapping[str, str],
    body: bytes | None,
    policy: FetchPolicy,
    deadline: Deadline,
) -> BaseHTTPResponse:
    addresses = resolve_allowed(
        target.host, target.port, allowed_networks=policy.allowed_networks, timeout=deadline.remaining()
    )
    last_error: Exception | None = None
    for ip in addresses:  # try each checked address until one accepts the connection
        try:
            return send_to(ip, target, method, headers, body, connect_timeout=policy.connect_timeout, deadline=deadline)
        except ConnectTimeoutError as exc:  # includes NewConnectionError; nothing was sent
            last_error = exc
            if deadline.expired:
                break
    if last_error is None:  # pragma: no cover - resolve never returns an empty list
        raise FetchError("dns_error", f"no address for host {target.host!r}")
    raise last_error


def _to_fetch_error(exc: BaseException, deadline: Deadline) -> FetchError:
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
        return FetchError("fetch_error", "could not decode the response content-encoding", transient=False)
    if isinstance(exc, ProtocolError | http.client.HTTPException | OSError):
        return FetchError("fetch_error", "the connection failed or the response was malformed")
    return FetchError("fetch_error", f"request failed ({type(exc).__name__})")


def _read_body(resp: BaseHTTPResponse, limit: int, deadline: Deadline, *, truncate: bool) -> tuple[bytes, bool]:
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


def _status_error(resp: BaseHTTPResponse) -> FetchError:
    """A non-2xx answer to fetch_image; a 429 or 503 may say how long to wait."""
    status = resp.status
    retry_after = parse_retry_after(resp.headers.get("Retry-After")) if status in (429, 503) else None
    return FetchError(f"http_{status}", f"the server answered HTTP {status}", retry_after=retry_after)


def fetch_image(url: str, *, policy: FetchPolicy) -> FetchResult:
    """GET an image, following at most policy.max_redirects redirects, each one re-checked.

    Raises FetchError only.
    """
    started = time.monotonic()
    with deadline_scope(policy.total_timeout) as deadline:
        current = url
        redirects = 0
        while True:
            target = parse_target(current)
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
                        raise FetchError("fetch_error", "ambiguous redirect (several Location)", transient=False)
                    redirects += 1
                    current = urljoin(current, _header_text(locations[0]))
                    continue  # validated, resolved and checked again at the top of the loop
                if not 200 <= status < 300:
                    raise _status_error(resp)
                declared = resp.length_remaining
                if declared is not None and declared > policy.max_bytes:
                    raise FetchError("too_large", f"Content-Length {declared} exceeds {policy.max_bytes} bytes")
                data, reuse = _read_body(resp, policy.max_bytes, deadline, truncate=False)
                content_type = sniff_image(data)
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
                finish(resp, reuse=reuse)


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
    with deadline_scope(policy.total_timeout) as deadline:
        target = parse_target(url)
        request_headers = {"Host": target.host_header, "User-Agent": policy.user_agent}
        for name, value in headers.items():
            if (
                not isinstance(name, str)
                or not isinstance(value, str)
                or not _HEADER_NAME_RE.fullmatch(name)
                or re.search(r"[\x00-\x1f\x7f]", value)
            ):
                raise FetchError("fetch_error", f"invalid request header {name!r}", transient=False)
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
            finish(resp, reuse=reuse)
