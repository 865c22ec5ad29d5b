"""Which addresses we connect to, and resolving a host name within a deadline.

Only globally routable unicast addresses are allowed, plus explicit exemptions
(FETCH_ALLOWED_NETWORKS). Python's ``is_private`` is not enough (100.64.0.1, 224.0.0.1 and
64:ff9b::/96 are not "private"): we require ``is_global`` and refuse listed ranges on top.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import threading
from collections.abc import Iterable
from typing import Any, TypeAlias

from urllib3.util.connection import HAS_IPV6

from imageproc.engine.http.errors import FetchError

logger = logging.getLogger("imageproc.engine.http")

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


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


def _unwrap(addr: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 (::ffff:a.b.c.d) is judged as the IPv4 address it carries."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_exempt(ip: str | IPAddress, networks: Iterable[IPNetwork]) -> bool:
    """True if the address lies inside one of ``networks`` (FETCH_ALLOWED_NETWORKS): an
    explicit exemption, not merely a public address."""
    original = _to_address(ip)
    if original is None:
        return False
    networks = tuple(networks)
    return _in_any(_unwrap(original), networks) or _in_any(original, networks)


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
    if is_exempt(original, allowed_networks):
        return True
    addr = _unwrap(original)
    if not addr.is_global or addr.is_multicast or addr.is_unspecified or addr.is_loopback:
        return False
    if addr.is_link_local or addr.is_private or addr.is_reserved:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.is_site_local:
        return False
    return not _in_any(addr, _BLOCKED_V4 if addr.version == 4 else _BLOCKED_V6)


def resolve(host: str, port: int, *, timeout: float) -> list[str]:
    """Every address of ``host`` (an IP literal is its own answer), waiting for DNS no longer
    than ``timeout`` seconds. Raises FetchError: timeout, dns_error, or invalid_url for a name
    the resolver cannot encode."""
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
    thread.join(max(timeout, 0.0))
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


def resolve_allowed(host: str, port: int, *, allowed_networks: Iterable[IPNetwork], timeout: float) -> list[str]:
    """Resolve once; refuse (FetchError "blocked_address") unless EVERY address is allowed;
    return the checked addresses, the only ones a connection may then be opened to."""
    allowed = tuple(allowed_networks)
    addresses = resolve(host, port, timeout=timeout)
    refused = [a for a in addresses if not is_address_allowed(a, allowed)]
    if refused:
        logger.warning("fetch refused: host %r resolves to non-allowed %s", host, refused)
        raise FetchError("blocked_address", f"host {host!r} resolves to an address that is not allowed")
    return addresses
