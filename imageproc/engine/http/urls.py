"""String-level URL rules: what we refuse before any network traffic, and the parts of an
accepted URL that a request is built from."""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import idna

from imageproc.engine.http.errors import FetchError


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


def normalize_host(netloc: str, hostname: str) -> str:
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
    _check_numeric_host(normalize_host(parts.netloc, parts.hostname))
    return url


@dataclass(frozen=True)
class Target:
    """A validated URL, split the way a request needs it."""

    url: str
    scheme: str
    host: str  # lowercase ASCII, no brackets, no trailing dot
    port: int
    host_header: str
    request_target: str  # path?query, ASCII


_TARGET_SAFE = "/?:@!$&'()*+,;=%[]"  # plus letters, digits and "_.-~": re-quotes only non-ASCII


def parse_target(url: str) -> Target:
    """Validate the URL and split it; raises FetchError("invalid_url") if it is refused."""
    try:
        validate_url(url)
        parts = urlsplit(url)
        host = normalize_host(parts.netloc, parts.hostname or "")
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
    return Target(url, scheme, host, port, host_header, quote(target, safe=_TARGET_SAFE))
