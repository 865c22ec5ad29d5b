"""The one seam for outbound HTTP: image downloads and webhook deliveries.

No Django imports: callers pass a FetchPolicy built from settings. One purpose per module:

* ``urls``: ``validate_url`` rejects, from the string alone, everything that is not a plain
  http(s) URL with a host: other schemes, userinfo, backslashes, whitespace/control/format
  characters, and non-canonical numeric hosts (``2130706433``, ``0x7f.1``, ``0177.0.0.1``,
  ``127.1``, ``0``) that the C resolver would silently turn into an IPv4 address.
* ``addresses``: the host is resolved ONCE per request hop, within the deadline; EVERY
  address returned must pass ``is_address_allowed`` (globally routable unicast, or inside
  FETCH_ALLOWED_NETWORKS).
* ``connections``: the connection is opened to one of those checked addresses (the pool is
  keyed by the IP, so nothing resolves the name a second time: DNS rebinding cannot swap in
  another address). The ``Host`` header, TLS SNI and certificate verification use the name.
* ``deadline``: one deadline covers DNS, connect, TLS handshake, request, response headers
  and body: a watchdog timer shuts the socket down when it expires.
* ``client``: ``fetch_image`` (redirects followed one hop at a time, each re-checked; byte cap;
  Content-Length check; the type sniffed by ``sniff``) and ``post`` (never follows redirects).
* ``errors``: ``FetchError``, the only exception they raise, with ``transient`` and
  ``retry_after`` for callers that retry.

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
So this package talks to urllib3 2.x directly (installed with requests, as are idna and
certifi), with one urllib3 PoolManager per thread (``threading.local``) for keep-alive reuse.
"""

from __future__ import annotations

from imageproc.engine.http.addresses import (
    IPAddress,
    IPNetwork,
    is_address_allowed,
    is_exempt,
    parse_networks,
    resolve,
    resolve_allowed,
)
from imageproc.engine.http.client import (
    FetchPolicy,
    FetchResult,
    PostResult,
    fetch_image,
    post,
)
from imageproc.engine.http.errors import FetchError, parse_retry_after, transient_status
from imageproc.engine.http.sniff import sniff_image
from imageproc.engine.http.urls import InvalidUrl, Target, normalize_host, parse_target, validate_url

__all__ = [
    "FetchError",
    "FetchPolicy",
    "FetchResult",
    "IPAddress",
    "IPNetwork",
    "InvalidUrl",
    "PostResult",
    "Target",
    "fetch_image",
    "is_address_allowed",
    "is_exempt",
    "normalize_host",
    "parse_networks",
    "parse_retry_after",
    "parse_target",
    "post",
    "resolve",
    "resolve_allowed",
    "sniff_image",
    "transient_status",
    "validate_url",
]
