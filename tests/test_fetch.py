"""SSRF guard and download limits of imageproc.engine.http: attack tables, input -> expected code.

Real servers on loopback (tests/fetch_servers.py):
  origin  127.0.0.2:P   "allowed" (policies below exempt 127.0.0.2/32 only)
  canary  127.0.0.3:P + 127.0.0.1:P + [::1]:P   must never be reached; every refused case
          asserts it saw no connection and no request.
The only stub is the resolver in the DNS-rebinding section.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import pickle
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from imageproc.engine.http import (
    FetchError,
    FetchPolicy,
    FetchResult,
    InvalidUrl,
    fetch_image,
    is_address_allowed,
    parse_networks,
    post,
    resolve_allowed,
    validate_url,
)
from imageproc.engine.http import connections as http_connections
from tests.fetch_servers import (
    JPEG,
    SAMPLES,
    Certs,
    Running,
    free_port,
    make_certs,
    start_origin_and_canary,
    tls_origin,
)

net = ipaddress.ip_network
ORIGIN = "127.0.0.2"

# No exemptions: what production runs with by default.
NO_EXEMPTIONS = FetchPolicy(connect_timeout=0.5, total_timeout=2.0, max_bytes=256 * 1024)
# The origin (and only the origin) is exempt.
ALLOW_ORIGIN = FetchPolicy(
    allowed_networks=(net("127.0.0.2/32"),), connect_timeout=0.5, total_timeout=2.0, max_bytes=256 * 1024
)
SLACK = 0.75  # seconds a refused/cut request may take beyond its total_timeout


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Running, Running]]:
    origin, canary = start_origin_and_canary()
    yield origin, canary
    origin.close()
    canary.close()


@pytest.fixture
def origin(servers: tuple[Running, Running]) -> Running:
    servers[0].log.clear()
    return servers[0]


@pytest.fixture
def canary(servers: tuple[Running, Running]) -> Iterator[Running]:
    servers[1].log.clear()
    yield servers[1]
    # Belt and braces: no test in this module may ever reach the canary, except the control test
    # that clears the log itself.
    assert servers[1].log.connections == 0, "the canary was connected to"


@pytest.fixture
def port(servers: tuple[Running, Running]) -> int:
    return servers[0].port


def assert_canary_untouched(canary: Running) -> None:
    assert canary.log.hits == []
    assert canary.log.connections == 0


def fetch_code(url: str, policy: FetchPolicy) -> str:
    with pytest.raises(FetchError) as info:
        fetch_image(url, policy=policy)
    assert str(info.value) == info.value.message and info.value.message
    return info.value.code


def post_code(url: str, policy: FetchPolicy) -> str:
    with pytest.raises(FetchError) as info:
        post(url, body=b"{}", headers={"Content-Type": "application/json"}, policy=policy)
    return info.value.code


# === Table 1: validate_url (string level, no network) =========================================

VALIDATE_URL_CASES = [
    # accepted: string-level only, the address is checked at connect time
    ("http://example.com/a.jpg", True),
    ("https://EXAMPLE.com:8443/a.jpg?x=1&y=2#frag", True),
    ("HTTP://example.com/a.jpg", True),
    ("http://bücher.example/bild.png", True),
    ("http://[2001:db8::1]/a.png", True),
    ("http://127.0.0.1/a.png", True),  # canonical dotted quad: refused later by the address guard
    ("http://example.com#@127.0.0.1/", True),  # "@" in the fragment: host really is example.com
    # schemes
    ("file:///etc/passwd", False),
    ("FILE:///etc/passwd", False),
    ("gopher://127.0.0.1:6379/_FLUSHALL", False),
    ("ftp://example.com/a.jpg", False),
    ("data:image/png;base64,iVBORw0KGgo=", False),
    ("javascript:alert(1)", False),
    ("dict://127.0.0.1:11211/stat", False),
    ("ldap://example.com/", False),
    ("jar:http://example.com!/a.jpg", False),
    ("//example.com/a.jpg", False),
    ("example.com/a.jpg", False),
    # userinfo and the backslash parser differential
    ("http://user@example.com/", False),
    ("http://user:pass@example.com/", False),
    ("http://:@example.com/", False),
    ("http://example.com@127.0.0.1/", False),
    ("http://example.com\\@127.0.0.1/", False),  # urlsplit: host 127.0.0.1; requests: example.com
    ("http://127.0.0.1\\@example.com/", False),
    ("http:\\\\example.com\\a.jpg", False),
    ("http://example.com%2F@127.0.0.1/", False),
    # whitespace, control and invisible characters
    ("", False),
    ("http://exa mple.com/", False),
    ("http://example.com/a b.jpg", False),
    (" http://example.com/", False),
    ("http://example.com/\ta.jpg", False),
    ("\thttp://example.com/", False),
    ("http://example.com/\n", False),
    ("http://example.com/\r\nX-Injected: 1", False),
    ("http://example.com/\x00.jpg", False),
    ("http://example.com/\x7f", False),
    ("http://example.com/\u00a0", False),  # NBSP
    ("http://example.com/\u2028", False),  # line separator
    ("http://exa\u200bmple.com/", False),  # zero-width space
    ("http://example.com/\u202egpj.exe", False),  # right-to-left override
    # missing or empty host
    ("http://", False),
    ("http:///a.jpg", False),
    ("http://:80/", False),
    ("http:example.com", False),
    ("http://?x=1", False),
    ("http://#frag", False),
    # ports
    ("http://example.com:0/", False),
    ("http://example.com:99999/", False),
    ("http://example.com:port/", False),
    ("http://example.com:-1/", False),
    # malformed hosts
    ("http://[::1/", False),
    ("http://[vff.x]/", False),
    ("http://[127.0.0.1]/", False),
    ("http://exa%41mple.com/", False),
    ("http://a..b/", False),
    ("http://" + "a" * 8200 + ".com/", False),
    # ambiguous numeric hosts (the C resolver turns them into IPv4 addresses)
    ("http://2130706433/", False),
    ("http://0x7f.1/", False),
    ("http://0x7f000001/", False),
    ("http://0177.0.0.1/", False),
    ("http://127.1/", False),
    ("http://0/", False),
    ("http://1.2.3.4.5/", False),
    ("http://example.123/", False),
]


@pytest.mark.parametrize(("url", "accepted"), VALIDATE_URL_CASES)
def test_validate_url(url: str, accepted: bool) -> None:
    if accepted:
        assert validate_url(url) == url
    else:
        with pytest.raises(InvalidUrl):
            validate_url(url)


@pytest.mark.parametrize("url", [url for url, accepted in VALIDATE_URL_CASES if not accepted])
def test_fetch_and_post_refuse_invalid_urls_before_any_traffic(url: str, canary: Running) -> None:
    assert fetch_code(url, ALLOW_ORIGIN) == "invalid_url"
    assert post_code(url, ALLOW_ORIGIN) == "invalid_url"
    assert_canary_untouched(canary)


# === Table 2: loopback / private / metadata spellings (no exemptions) =========================
# {port} is the canary's port on 127.0.0.3, 127.0.0.1 and ::1: a leak would hit it.

SPELLING_CASES = [
    ("http://127.0.0.3:{port}/img/jpeg", "blocked_address"),
    ("https://127.0.0.3:{port}/img/jpeg", "blocked_address"),
    ("http://127.0.0.3.:{port}/img/jpeg", "blocked_address"),  # trailing dot
    ("http://127.0.0.1:{port}/", "blocked_address"),
    ("http://localhost:{port}/", "blocked_address"),
    ("http://LOCALHOST.:{port}/", "blocked_address"),
    ("http://0.0.0.0:{port}/", "blocked_address"),  # Linux connects 0.0.0.0 to localhost
    ("http://2130706433:{port}/", "invalid_url"),  # 127.0.0.1 as one decimal number
    ("http://2130706435:{port}/", "invalid_url"),  # 127.0.0.3
    ("http://0x7f.1:{port}/", "invalid_url"),
    ("http://0x7f000003:{port}/", "invalid_url"),
    ("http://0177.0.0.1:{port}/", "invalid_url"),  # octal
    ("http://0177.0.0.3:{port}/", "invalid_url"),
    ("http://127.1:{port}/", "invalid_url"),
    ("http://127.3:{port}/", "invalid_url"),
    ("http://0:{port}/", "invalid_url"),
    ("http://127%2E0%2E0%2E3:{port}/", "invalid_url"),
    ("http://１２７.０.０.３:{port}/", "blocked_address"),  # fullwidth digits, IDNA-mapped
    ("http://127。0。0。3:{port}/", "blocked_address"),  # ideographic full stops
    ("http://[::1]:{port}/", "blocked_address"),
    ("http://[::]:{port}/", "blocked_address"),
    ("http://[0:0:0:0:0:0:0:1]:{port}/", "blocked_address"),
    ("http://[::ffff:127.0.0.1]:{port}/", "blocked_address"),
    ("http://[::ffff:127.0.0.3]:{port}/", "blocked_address"),
    ("http://[::ffff:7f00:3]:{port}/", "blocked_address"),
    ("http://[::127.0.0.3]:{port}/", "blocked_address"),  # IPv4-compatible (Python: is_global!)
    ("http://[64:ff9b::7f00:1]:{port}/", "blocked_address"),  # NAT64
    ("http://[64:ff9b::127.0.0.3]:{port}/", "blocked_address"),
    ("http://[64:ff9b:1::7f00:3]:{port}/", "blocked_address"),
    ("http://[2002:7f00:3::]:{port}/", "blocked_address"),  # 6to4 embedding 127.0.0.3
    ("http://[2001:0:4136:e378:8000:63bf:80ff:fffc]:{port}/", "blocked_address"),  # Teredo, 127.0.0.3
    ("http://[fd00::1]:{port}/", "blocked_address"),
    ("http://[fe80::1]:{port}/", "blocked_address"),
    ("http://[fe80::1%25lo]:{port}/", "blocked_address"),
    ("http://[fec0::1]:{port}/", "blocked_address"),  # site-local (Python: is_global!)
    ("http://[ff02::1]:{port}/", "blocked_address"),
    ("http://169.254.169.254/latest/meta-data/", "blocked_address"),
    ("http://[::ffff:169.254.169.254]/latest/meta-data/", "blocked_address"),
    ("http://[::ffff:a9fe:a9fe]/latest/meta-data/", "blocked_address"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "blocked_address"),
    ("http://10.0.0.1/", "blocked_address"),
    ("http://172.16.0.1/", "blocked_address"),
    ("http://172.31.255.255/", "blocked_address"),
    ("http://192.168.1.1/", "blocked_address"),
    ("http://100.64.0.1/", "blocked_address"),
    ("http://224.0.0.1/", "blocked_address"),
    ("http://239.255.255.250:1900/", "blocked_address"),
    ("http://255.255.255.255/", "blocked_address"),
    ("http://192.0.0.8/", "blocked_address"),
    ("http://198.18.0.1/", "blocked_address"),
]


@pytest.mark.parametrize(("template", "code"), SPELLING_CASES)
def test_loopback_private_and_metadata_spellings_are_refused(
    template: str, code: str, port: int, canary: Running
) -> None:
    url = template.format(port=port)
    start = time.monotonic()
    assert fetch_code(url, NO_EXEMPTIONS) == code
    assert post_code(url, NO_EXEMPTIONS) == code
    # Refused before connecting: a connection attempt to a remote private address would have
    # taken connect_timeout and given timeout/connect_error instead.
    assert time.monotonic() - start < 0.5
    assert_canary_untouched(canary)


def test_control_the_canary_does_count_hits(port: int, servers: tuple[Running, Running]) -> None:
    """Proves the zero-hit assertions above mean something: exempt 127.0.0.3 and it is reached."""
    canary = servers[1]
    canary.log.clear()
    policy = dataclasses.replace(NO_EXEMPTIONS, allowed_networks=(net("127.0.0.3/32"),))
    result = fetch_image(f"http://127.0.0.3:{port}/x", policy=policy)
    assert result.data == JPEG
    assert canary.log.paths() == ["/x"]
    canary.log.clear()


@pytest.mark.parametrize("host", ["0x7f.0.0.3", "2130706435", "127.3", "0177.0.0.3", "0", "localhost"])
def test_address_guard_alone_blocks_numeric_spellings(host: str, port: int, canary: Running) -> None:
    """Defence in depth: even if a spelling got past validate_url, the resolved address is refused."""
    with pytest.raises(FetchError) as info:
        resolve_allowed(host, port, allowed_networks=NO_EXEMPTIONS.allowed_networks, timeout=2.0)
    assert info.value.code == "blocked_address"
    assert_canary_untouched(canary)


# === Table 3: is_address_allowed ===============================================================

ADDRESS_CASES = [
    # (address, allowed_networks, expected)
    ("8.8.8.8", (), True),
    ("93.184.215.14", (), True),
    ("2606:4700:4700::1111", (), True),
    (ipaddress.ip_address("1.1.1.1"), (), True),
    ("::ffff:8.8.8.8", (), True),  # IPv4-mapped public: judged as 8.8.8.8
    ("127.0.0.1", (), False),
    ("127.255.255.254", (), False),
    ("0.0.0.0", (), False),
    ("0.1.2.3", (), False),
    ("10.1.2.3", (), False),
    ("172.16.0.1", (), False),
    ("192.168.0.1", (), False),
    ("169.254.169.254", (), False),
    ("100.64.0.1", (), False),
    ("100.127.255.255", (), False),
    ("192.0.0.8", (), False),
    ("192.0.2.1", (), False),
    ("192.88.99.1", (), False),
    ("198.18.0.1", (), False),
    ("224.0.0.1", (), False),
    ("239.255.255.250", (), False),
    ("240.0.0.1", (), False),
    ("255.255.255.255", (), False),
    ("::", (), False),
    ("::1", (), False),
    ("[::1]", (), False),
    ("::127.0.0.1", (), False),
    ("::ffff:127.0.0.1", (), False),
    ("::ffff:10.0.0.1", (), False),
    ("::ffff:0:7f00:1", (), False),  # IPv4-translated
    ("64:ff9b::7f00:1", (), False),
    ("64:ff9b::808:808", (), False),  # NAT64 refused whole: the gateway decides where it goes
    ("64:ff9b:1::1", (), False),
    ("2002:7f00:1::1", (), False),
    ("2002:808:808::1", (), False),  # 6to4 refused whole
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", (), False),  # Teredo
    ("2001:db8::1", (), False),
    ("fc00::1", (), False),
    ("fd00::1", (), False),
    ("fe80::1", (), False),
    ("fe80::1%eth0", (), False),
    ("fec0::1", (), False),
    ("ff02::1", (), False),
    ("ff0e::1", (), False),  # global-scope multicast
    ("100::1", (), False),
    ("5f00::1", (), False),
    ("not an ip", (), False),
    ("", (), False),
    ("127.0.0.1/32", (), False),
    # exemptions are exact
    ("127.0.0.2", (net("127.0.0.2/32"),), True),
    ("127.0.0.3", (net("127.0.0.2/32"),), False),
    ("::ffff:127.0.0.2", (net("127.0.0.2/32"),), True),
    ("10.1.2.3", (net("10.0.0.0/8"),), True),
    ("169.254.169.254", (net("10.0.0.0/8"),), False),
    ("fd00::5", (net("fd00::/64"),), True),
    ("fd01::5", (net("fd00::/64"),), False),
    ("127.0.0.2", (net("::/0"),), False),  # an IPv6 network never exempts an IPv4 address
]


@pytest.mark.parametrize(("address", "allowed", "expected"), ADDRESS_CASES)
def test_is_address_allowed(address: Any, allowed: tuple[Any, ...], expected: bool) -> None:
    assert is_address_allowed(address, allowed) is expected


# === Table 4: parse_networks =====================================================================

PARSE_OK = [
    ("", ()),
    ("   ", ()),
    ("127.0.0.2/32", (net("127.0.0.2/32"),)),
    ("127.0.0.2", (net("127.0.0.2/32"),)),
    ("10.0.0.0/8, 127.0.0.2/32", (net("10.0.0.0/8"), net("127.0.0.2/32"))),
    (" 10.0.0.0/8,\n fd00::/8 ,", (net("10.0.0.0/8"), net("fd00::/8"))),
]
PARSE_BAD = ["10.0.0.1/8", "bogus", "10.0.0.0/33", "10.0.0.0/8, nope/8", "10.0.0.0/8;127.0.0.1/32", "fd00::/129"]


@pytest.mark.parametrize(("value", "expected"), PARSE_OK)
def test_parse_networks(value: str, expected: tuple[Any, ...]) -> None:
    assert parse_networks(value) == expected


@pytest.mark.parametrize("value", PARSE_BAD)
def test_parse_networks_names_the_bad_entry(value: str) -> None:
    bad = value.split(",")[-1].strip()
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        parse_networks(value)


# === Table 5: what the allowed origin serves (policy exempts 127.0.0.2 only) ======================

SHORT = {"total_timeout": 1.0}
ORIGIN_CASES = [
    # (path, policy overrides, expected: "ok:<content type>" or an error code)
    ("/img/jpeg", {}, "ok:image/jpeg"),
    ("/img/png", {}, "ok:image/png"),
    ("/img/gif", {}, "ok:image/gif"),
    ("/img/webp", {}, "ok:image/webp"),
    ("/img/bmp", {}, "ok:image/bmp"),
    ("/img/tiff", {}, "ok:image/tiff"),
    ("/img-as-html", {}, "ok:image/png"),  # the magic bytes decide, not Content-Type
    ("/html", {}, "not_an_image"),
    ("/svg", {}, "not_an_image"),
    ("/empty", {}, "not_an_image"),
    ("/status/404", {}, "http_404"),
    ("/status/500", {}, "http_500"),
    ("/status/403", {}, "http_403"),
    ("/redirect-no-location", {}, "http_302"),
    ("/huge-length", {}, "too_large"),  # Content-Length 1 TB: refused before reading
    ("/cut-short", {}, "fetch_error"),  # the connection ends before Content-Length: nothing kept
    ("/big-no-length?n=1048576", {}, "too_large"),  # no Content-Length: counted while streaming
    ("/big-chunked?n=1048576", {}, "too_large"),
    ("/gzip-bomb?n=8388608", {}, "too_large"),  # 8 KB on the wire, 8 MB decoded
    ("/img/jpeg", {"max_bytes": 64}, "too_large"),  # Content-Length just over the cap
    ("/trickle-body", SHORT, "timeout"),  # 1 byte / 0.5 s: each read is quick, the total is not
    ("/trickle-headers", SHORT, "timeout"),  # 1 header byte / 0.3 s
    ("/stall", SHORT, "timeout"),  # accepts, never answers
]


@pytest.mark.parametrize(("path", "overrides", "expected"), ORIGIN_CASES)
def test_origin_behaviour(
    path: str, overrides: dict[str, Any], expected: str, port: int, origin: Running, canary: Running
) -> None:
    policy = dataclasses.replace(ALLOW_ORIGIN, **overrides)
    url = f"http://{ORIGIN}:{port}{path}"
    start = time.monotonic()
    if expected.startswith("ok:"):
        result = fetch_image(url, policy=policy)
        assert result.content_type == expected[3:]
        assert result.url == url
        assert result.data.startswith(SAMPLES[expected[9:]][0][:4])
        assert 0 <= result.elapsed < policy.total_timeout
    else:
        assert fetch_code(url, policy) == expected
    assert time.monotonic() - start < policy.total_timeout + SLACK
    assert len(origin.log.hits) == 1
    assert_canary_untouched(canary)


def test_content_length_that_lies_small_never_yields_more_than_claimed(port: int, origin: Running) -> None:
    result = fetch_image(f"http://{ORIGIN}:{port}/short-length", policy=ALLOW_ORIGIN)
    assert result.data == JPEG[:16]
    # The 256 KiB of junk left on that connection must not be read as the next response.
    assert fetch_image(f"http://{ORIGIN}:{port}/img/png", policy=ALLOW_ORIGIN).content_type == "image/png"


def test_huge_content_length_is_refused_without_reading(port: int, origin: Running) -> None:
    start = time.monotonic()
    assert fetch_code(f"http://{ORIGIN}:{port}/huge-length", ALLOW_ORIGIN) == "too_large"
    assert time.monotonic() - start < 0.5


def test_connection_refused_is_connect_error(canary: Running) -> None:
    assert fetch_code(f"http://{ORIGIN}:{free_port()}/", ALLOW_ORIGIN) == "connect_error"


def test_unresolvable_host_is_dns_error() -> None:
    policy = dataclasses.replace(NO_EXEMPTIONS, total_timeout=5.0)
    assert fetch_code("http://nonexistent.invalid/a.jpg", policy) == "dns_error"


# === Table 6: redirects (fetch_image follows at most max_redirects, each hop re-checked) ==========

REDIRECT_CASES = [
    # (Location, status, policy overrides, expected, final path when ok)
    ("/img/png", 302, {}, "ok", "/img/png"),
    ("http://127.0.0.2:{port}/img/gif", 301, {}, "ok", "/img/gif"),
    ("/img/png", 303, {}, "ok", "/img/png"),
    ("/img/png", 307, {}, "ok", "/img/png"),
    ("/img/png", 308, {}, "ok", "/img/png"),
    ("//127.0.0.2:{port}/img/webp", 302, {}, "ok", "/img/webp"),
    ("img/png", 302, {}, "ok", "/img/png"),  # relative to /redirect
    ("http://127.0.0.3:{port}/img/jpeg", 302, {}, "blocked_address", None),
    ("//127.0.0.3:{port}/img/jpeg", 302, {}, "blocked_address", None),
    ("http://localhost:{port}/", 302, {}, "blocked_address", None),
    ("http://[::1]:{port}/", 307, {}, "blocked_address", None),
    ("http://[::ffff:127.0.0.3]:{port}/", 308, {}, "blocked_address", None),
    ("http://0.0.0.0:{port}/", 302, {}, "blocked_address", None),
    ("http://169.254.169.254/latest/meta-data/", 302, {}, "blocked_address", None),
    ("http://2130706435:{port}/", 302, {}, "invalid_url", None),
    ("http://0x7f.0.0.3:{port}/", 302, {}, "invalid_url", None),
    ("file:///etc/passwd", 302, {}, "invalid_url", None),
    ("gopher://127.0.0.3:{port}/_GET", 302, {}, "invalid_url", None),
    ("http://user:pw@127.0.0.2:{port}/img/png", 302, {}, "invalid_url", None),
    ("/\\127.0.0.3:{port}/", 302, {}, "invalid_url", None),  # browsers read "/\" as "//"
    ("/redirect?to=http://127.0.0.3:{port}/", 302, {}, "blocked_address", None),  # 2nd hop
    ("/img/png", 302, {"max_redirects": 0}, "redirect_blocked", None),
    ("/img/png", 301, {"max_redirects": 0}, "redirect_blocked", None),
    ("/chain/3", 302, {}, "too_many_redirects", None),  # 1 + 3 redirects > 3
    ("/chain/2", 302, {}, "ok", "/chain/0"),  # 1 + 2 = 3 redirects: allowed
    ("/chain/0", 302, {"max_redirects": 1}, "ok", "/chain/0"),
    ("/chain/1", 302, {"max_redirects": 1}, "too_many_redirects", None),
    ("/loop", 302, {}, "too_many_redirects", None),
]


@pytest.mark.parametrize(("location", "status", "overrides", "expected", "final_path"), REDIRECT_CASES)
def test_redirects(
    location: str, status: int, overrides: dict[str, Any], expected: str, final_path: str | None,
    port: int, origin: Running, canary: Running,
) -> None:  # fmt: skip
    policy = dataclasses.replace(ALLOW_ORIGIN, **overrides)
    url = f"http://{ORIGIN}:{port}/redirect?" + urlencode({"to": location.format(port=port), "code": status})
    if expected == "ok":
        result = fetch_image(url, policy=policy)
        assert result.url.endswith(final_path or "")
        assert result.url.startswith(f"http://{ORIGIN}:{port}/")
        assert origin.log.paths()[-1] == final_path
    else:
        assert fetch_code(url, policy) == expected
        if expected in ("invalid_url", "blocked_address", "redirect_blocked"):
            assert len(origin.log.hits) == (2 if location.startswith("/redirect") else 1)
    assert_canary_untouched(canary)


# === Table 7: post() for webhooks (never follows redirects) ======================================

POST_CASES = [
    # (path, policy overrides, expected status or error code, expected body length)
    ("/hook", {}, 200, 12),
    ("/redirect?code=302&to=http://127.0.0.3:{port}/hook", {}, 302, 5),  # target is the canary
    ("/redirect?code=307&to=http://127.0.0.3:{port}/hook", {}, 307, 5),
    ("/redirect?code=308&to=http://127.0.0.3:{port}/hook", {}, 308, 5),
    ("/redirect?code=301&to=/hook", {}, 301, 5),
    ("/status/410", {}, 410, 4),  # returned, not raised: the sender disables the endpoint
    ("/status/500", {}, 500, 4),
    ("/big-response", {}, 200, 64 * 1024),  # at most 64 KiB read
    ("/trickle-body", SHORT, "timeout", None),
]


@pytest.mark.parametrize(("path", "overrides", "expected", "body_length"), POST_CASES)
def test_post(
    path: str, overrides: dict[str, Any], expected: int | str, body_length: int | None,
    port: int, origin: Running, canary: Running,
) -> None:  # fmt: skip
    policy = dataclasses.replace(ALLOW_ORIGIN, **overrides)
    url = f"http://{ORIGIN}:{port}{path.format(port=port)}"
    start = time.monotonic()
    if isinstance(expected, str):
        assert post_code(url, policy) == expected
    else:
        result = post(url, body=b'{"event":"done"}', headers={"Content-Type": "application/json"}, policy=policy)
        assert result.status_code == expected
        assert len(result.body) == body_length
        assert 0 <= result.elapsed < policy.total_timeout
        if 300 <= expected < 400:
            assert result.headers["location"] == result.headers["LOCATION"]
    assert time.monotonic() - start < policy.total_timeout + SLACK
    assert [h.method for h in origin.log.hits] == ["POST"]  # exactly one request: nothing followed
    assert_canary_untouched(canary)


def test_post_sends_body_and_headers_but_never_a_caller_host(port: int, origin: Running) -> None:
    body = b'{"type":"request.completed"}'
    result = post(
        f"http://{ORIGIN}:{port}/hook",
        body=body,
        headers={
            "Content-Type": "application/json",
            "webhook-id": "msg_1",
            "Host": "evil.example",
            "Content-Length": "1",
        },
        policy=ALLOW_ORIGIN,
    )
    assert result.status_code == 200
    assert result.headers["content-type"] == "application/json"
    (hit,) = origin.log.hits
    assert hit.body == body
    assert hit.headers["Host"] == f"{ORIGIN}:{port}"
    assert hit.headers["webhook-id"] == "msg_1"
    assert hit.headers["Content-Length"] == str(len(body))
    assert hit.headers["User-Agent"] == ALLOW_ORIGIN.user_agent


def test_post_rejects_header_injection(port: int, origin: Running) -> None:
    with pytest.raises(FetchError) as info:
        post(f"http://{ORIGIN}:{port}/hook", body=b"", headers={"X-A": "1\r\nX-B: 2"}, policy=ALLOW_ORIGIN)
    assert info.value.code == "fetch_error"
    assert origin.log.hits == []


# === Table 8: DNS rebinding (the only stub: the resolver) ========================================


class FlippingResolver:
    """Answers ``name`` with answers[0] on the first lookup, answers[1] on the next, ...;
    every other name (including the IP literals urllib3 passes when connecting) goes to the
    real resolver. 127.0.0.2 stands in for "a public address": it is the one the policy allows."""

    def __init__(self, real: Callable[..., Any], name: str, answers: list[list[str]], delay: float = 0.0) -> None:
        self.real, self.name, self.answers, self.delay = real, name, answers, delay
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0) -> Any:
        if host != self.name:
            return self.real(host, port, family, type, proto, flags)
        with self.lock:
            self.calls += 1
            ips = self.answers[min(self.calls, len(self.answers)) - 1]
        time.sleep(self.delay)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, int(port))) for ip in ips]


@pytest.fixture
def rebinding(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FlippingResolver]:
    def install(answers: list[list[str]], delay: float = 0.0) -> FlippingResolver:
        resolver = FlippingResolver(socket.getaddrinfo, "rebind.test", answers, delay)
        monkeypatch.setattr(socket, "getaddrinfo", resolver)
        return resolver

    return install


def test_dns_rebinding_connects_only_to_the_checked_address(
    rebinding: Any, port: int, origin: Running, canary: Running
) -> None:
    resolver = rebinding([[ORIGIN], ["127.0.0.3"]])
    result = fetch_image(f"http://rebind.test:{port}/host", policy=ALLOW_ORIGIN)
    assert result.data == JPEG
    assert resolver.calls == 1  # resolved once; the connection used that answer
    (hit,) = origin.log.hits
    assert hit.headers["Host"] == f"rebind.test:{port}"
    assert_canary_untouched(canary)
    # The next call resolves again, gets 127.0.0.3 and is refused, although a kept-alive
    # connection for rebind.test to 127.0.0.2 is sitting in this thread's pool.
    assert fetch_code(f"http://rebind.test:{port}/host", ALLOW_ORIGIN) == "blocked_address"
    assert resolver.calls == 2
    assert len(origin.log.hits) == 1
    assert_canary_untouched(canary)


def test_dns_rebinding_between_redirect_hops(rebinding: Any, port: int, origin: Running, canary: Running) -> None:
    resolver = rebinding([[ORIGIN], ["127.0.0.3"]])
    url = f"http://rebind.test:{port}/redirect?to=/img/png"  # same host: resolved again, refused
    assert fetch_code(url, ALLOW_ORIGIN) == "blocked_address"
    assert resolver.calls == 2
    assert origin.log.paths() == ["/redirect?to=/img/png"]
    assert_canary_untouched(canary)


@pytest.mark.parametrize("answer", [[ORIGIN, "127.0.0.3"], ["127.0.0.3", ORIGIN], [ORIGIN, "::1"]])
def test_every_resolved_address_must_be_allowed(
    answer: list[str], rebinding: Any, port: int, origin: Running, canary: Running
) -> None:
    rebinding([answer])
    assert fetch_code(f"http://rebind.test:{port}/img/png", ALLOW_ORIGIN) == "blocked_address"
    assert post_code(f"http://rebind.test:{port}/hook", ALLOW_ORIGIN) == "blocked_address"
    assert origin.log.hits == []
    assert_canary_untouched(canary)


# === Connection reuse, exemptions and threads ====================================================


def run_in_new_thread(fn: Callable[[], Any]) -> Any:
    with ThreadPoolExecutor(max_workers=1) as pool:  # a fresh thread: fresh per-thread pools
        return pool.submit(fn).result()


def test_kept_alive_connection_is_reused_within_a_thread(port: int, origin: Running) -> None:
    url = f"http://{ORIGIN}:{port}/img/png"
    run_in_new_thread(lambda: [fetch_image(url, policy=ALLOW_ORIGIN) for _ in range(3)])
    assert len(origin.log.hits) == 3
    assert origin.log.connections == 1


@pytest.mark.parametrize("path", ["/trickle-headers", "/trickle-body", "/stall"])
def test_deadline_also_cuts_a_kept_alive_connection(path: str, port: int, origin: Running) -> None:
    policy = dataclasses.replace(ALLOW_ORIGIN, **SHORT)

    def reuse_then_slow() -> tuple[str, float]:
        fetch_image(f"http://{ORIGIN}:{port}/img/png", policy=policy)
        start = time.monotonic()
        return fetch_code(f"http://{ORIGIN}:{port}{path}", policy), time.monotonic() - start

    code, elapsed = run_in_new_thread(reuse_then_slow)
    assert code == "timeout"
    assert elapsed < policy.total_timeout + SLACK
    assert origin.log.connections == 1  # the slow request really went out on the pooled socket


def test_get_is_retried_once_when_a_kept_alive_connection_was_dropped(port: int, origin: Running) -> None:
    url = f"http://{ORIGIN}:{port}/drop-second"
    results = run_in_new_thread(lambda: [fetch_image(url, policy=ALLOW_ORIGIN) for _ in range(2)])
    assert [r.data for r in results] == [JPEG, JPEG]
    assert origin.log.paths() == ["/drop-second"] * 3  # the dropped request, then its retry
    assert origin.log.connections == 2


def test_post_is_never_retried(port: int, origin: Running) -> None:
    url = f"http://{ORIGIN}:{port}/drop-second"

    def twice() -> tuple[int, str]:
        first = post(url, body=b"1", headers={}, policy=ALLOW_ORIGIN)
        with pytest.raises(FetchError) as info:
            post(url, body=b"2", headers={}, policy=ALLOW_ORIGIN)
        return first.status_code, info.value.code

    assert run_in_new_thread(twice) == (200, "fetch_error")
    assert [h.body for h in origin.log.hits] == [b"1", b"2"]  # delivered once each, never repeated


def test_utf8_location_is_followed_as_utf8(port: int, origin: Running) -> None:
    result = fetch_image(f"http://{ORIGIN}:{port}/utf8-redirect", policy=ALLOW_ORIGIN)
    assert result.content_type == "image/png"
    assert origin.log.paths() == ["/utf8-redirect", "/caf%C3%A9.png"]


def test_exemption_does_not_outlive_its_policy(port: int, origin: Running) -> None:
    url = f"http://{ORIGIN}:{port}/img/png"

    def both() -> str:
        fetch_image(url, policy=ALLOW_ORIGIN)  # leaves a kept-alive connection to 127.0.0.2
        return fetch_code(url, NO_EXEMPTIONS)

    assert run_in_new_thread(both) == "blocked_address"
    assert len(origin.log.hits) == 1


def test_many_threads_at_once(port: int, origin: Running, canary: Running) -> None:
    cases = [
        (f"http://{ORIGIN}:{port}/img/png", "ok"),
        (f"http://{ORIGIN}:{port}/html", "not_an_image"),
        (f"http://127.0.0.3:{port}/img/png", "blocked_address"),
        (f"http://{ORIGIN}:{port}/redirect?to=/img/gif", "ok"),
        (f"http://{ORIGIN}:{port}/redirect?" + urlencode({"to": f"http://127.0.0.3:{port}/"}), "blocked_address"),
        (f"http://{ORIGIN}:{port}/status/404", "http_404"),
    ] * 8

    def one(url: str) -> str:
        try:
            fetch_image(url, policy=ALLOW_ORIGIN)
        except FetchError as exc:
            return exc.code
        return "ok"

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(one, [url for url, _ in cases]))
    assert outcomes == [expected for _, expected in cases]
    assert_canary_untouched(canary)


# === HTTPS: pinned IP, but SNI and certificate checks use the name ================================


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    from tests.conftest import require_service

    # Skips on a machine without the openssl CLI; fails in CI (REQUIRE_SERVICES=1).
    require_service("openssl CLI", shutil.which("openssl") is not None)
    return make_certs(tmp_path_factory.mktemp("certs"))


TLS_POLICY = dataclasses.replace(ALLOW_ORIGIN, allowed_networks=(net("127.0.0.1/32"), net("::1/128")))


def test_https_verifies_the_host_name_and_sends_sni(certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_connections, "_CA_BUNDLE", str(certs.ca))
    with tls_origin(certs.localhost_cert, certs.localhost_key) as server:
        result = fetch_image(f"https://localhost:{server.port}/img/png", policy=TLS_POLICY)
        assert result.content_type == "image/png"
        assert server.sni == ["localhost"]
        assert server.log.hits[0].headers["Host"] == f"localhost:{server.port}"


@pytest.mark.parametrize(
    ("which", "host", "trust_test_ca"),
    [
        ("localhost", "127.0.0.1", True),  # certificate names localhost, URL names the IP
        ("other", "localhost", True),  # certificate for other.test
        ("localhost", "localhost", False),  # unknown CA
    ],
)
def test_https_certificate_problems_are_connect_errors(
    which: str, host: str, trust_test_ca: bool, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    if trust_test_ca:
        monkeypatch.setattr(http_connections, "_CA_BUNDLE", str(certs.ca))
    cert: Path = getattr(certs, f"{which}_cert")
    key: Path = getattr(certs, f"{which}_key")
    with tls_origin(cert, key) as server:
        assert fetch_code(f"https://{host}:{server.port}/img/png", TLS_POLICY) == "connect_error"
        assert server.log.hits == []


# === The error type =============================================================================


def test_fetch_error_shape() -> None:
    exc = FetchError("blocked_address", "host 'x' resolves to an address that is not allowed")
    assert (exc.code, exc.message, str(exc)) == ("blocked_address", exc.message, exc.message)
    assert (exc.retry_after, exc.transient) == (None, False)
    again = pickle.loads(pickle.dumps(exc))
    assert (again.code, again.message) == (exc.code, exc.message)
    assert (again.retry_after, again.transient) == (None, False)


def test_fetch_error_keeps_retry_after_and_transient_through_pickle() -> None:
    # Task queues pickle exceptions: what a retry decision needs must survive the trip.
    exc = FetchError("http_503", "the server answered HTTP 503", retry_after=120.0)
    again = pickle.loads(pickle.dumps(exc))
    assert (again.code, again.message, again.retry_after, again.transient) == ("http_503", exc.message, 120.0, True)
    overridden = pickle.loads(pickle.dumps(FetchError("fetch_error", "ambiguous redirect", transient=False)))
    assert (overridden.code, overridden.transient) == ("fetch_error", False)
    assert FetchError("fetch_error", "the connection failed").transient


# === Transient or not: what the pipeline may retry, against the real servers ======================

# (path on the origin, expected code, transient, retry_after)
TRANSIENT_CASES = [
    ("/status/500", "http_500", True, None),
    ("/status/502", "http_502", True, None),
    ("/status/503?retry_after=120", "http_503", True, 120.0),
    ("/status/429?retry_after=7", "http_429", True, 7.0),
    ("/status/429", "http_429", True, None),
    ("/status/429?retry_after=soon", "http_429", True, None),  # unparsable: ignored
    ("/status/500?retry_after=30", "http_500", True, None),  # only a 429 or a 503 sets it
    ("/status/408", "http_408", True, None),
    ("/status/404", "http_404", False, None),
    ("/status/403", "http_403", False, None),
    ("/status/410?retry_after=30", "http_410", False, None),
    ("/html", "not_an_image", False, None),
    ("/huge-length", "too_large", False, None),
    ("/big-chunked?n=1048576", "too_large", False, None),
    ("/cut-short", "fetch_error", True, None),  # the connection ended mid-body
    ("/stall", "timeout", True, None),
    ("/chain/5", "too_many_redirects", False, None),
]


def fetch_error(url: str, policy: FetchPolicy) -> FetchError:
    with pytest.raises(FetchError) as info:
        fetch_image(url, policy=policy)
    return info.value


@pytest.mark.parametrize(("path", "code", "transient", "retry_after"), TRANSIENT_CASES)
def test_fetch_errors_say_whether_they_are_transient(
    path: str, code: str, transient: bool, retry_after: float | None, port: int, origin: Running, canary: Running
) -> None:
    policy = dataclasses.replace(ALLOW_ORIGIN, **SHORT)
    exc = fetch_error(f"http://{ORIGIN}:{port}{path}", policy)
    assert (exc.code, exc.transient, exc.retry_after) == (code, transient, retry_after)
    assert origin.log.hits  # the origin really answered (or stalled)
    assert_canary_untouched(canary)


def test_retry_after_as_an_http_date_is_seconds_from_now(port: int, origin: Running) -> None:
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 90))
    exc = fetch_error(f"http://{ORIGIN}:{port}/status/503?" + urlencode({"retry_after": when}), ALLOW_ORIGIN)
    assert exc.code == "http_503" and exc.transient
    assert exc.retry_after is not None and 80 <= exc.retry_after <= 90


def test_refused_connections_and_dns_failures_are_transient(canary: Running) -> None:
    refused = fetch_error(f"http://{ORIGIN}:{free_port()}/", ALLOW_ORIGIN)
    assert (refused.code, refused.transient) == ("connect_error", True)
    unknown = fetch_error("http://nonexistent.invalid/a.jpg", dataclasses.replace(NO_EXEMPTIONS, total_timeout=5.0))
    assert (unknown.code, unknown.transient) == ("dns_error", True)
    assert_canary_untouched(canary)


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://127.0.0.3:{port}/img/jpeg", "blocked_address"),
        ("http://localhost:{port}/img/jpeg", "blocked_address"),
        ("http://2130706435:{port}/", "invalid_url"),
        ("ftp://127.0.0.2:{port}/img/jpeg", "invalid_url"),
    ],
)
def test_refused_addresses_and_invalid_urls_are_not_transient(url: str, code: str, port: int, canary: Running) -> None:
    for policy in (NO_EXEMPTIONS, ALLOW_ORIGIN):
        exc = fetch_error(url.format(port=port), policy)
        assert (exc.code, exc.transient, exc.retry_after) == (code, False, None)
        with pytest.raises(FetchError) as info:
            post(url.format(port=port), body=b"{}", headers={}, policy=policy)
        assert (info.value.code, info.value.transient) == (code, False)
    assert_canary_untouched(canary)


def test_results_are_frozen(port: int, origin: Running) -> None:
    result = fetch_image(f"http://{ORIGIN}:{port}/img/jpeg", policy=ALLOW_ORIGIN)
    assert isinstance(result, FetchResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.data = b""  # type: ignore[misc]


def test_slow_dns_counts_against_the_total_deadline(
    rebinding: Any, port: int, origin: Running, canary: Running
) -> None:
    """Same resolver stub, answering after 5 s: the lookup is abandoned at total_timeout."""
    rebinding([[ORIGIN]], delay=5.0)
    policy = dataclasses.replace(ALLOW_ORIGIN, **SHORT)
    start = time.monotonic()
    assert fetch_code(f"http://rebind.test:{port}/img/png", policy) == "timeout"
    assert time.monotonic() - start < policy.total_timeout + SLACK
    assert origin.log.hits == []
    assert_canary_untouched(canary)
