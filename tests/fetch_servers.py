"""Real loopback servers for tests/test_fetch.py (no mocks of the network).

* ``Origin``: the "allowed" server on 127.0.0.2 (tests allow 127.0.0.2/32). Its behaviour is
  chosen by the request path (see ``OriginHandler``): images, HTML, errors, redirects,
  trickling bodies and headers, lying Content-Length, gzip bombs, webhook endpoints.
* ``Canary``: a server that must never be reached. It listens on 127.0.0.3 (not allowed) AND on
  127.0.0.1 and [::1], all on the origin's port, so that every loopback spelling of the form
  ``http://<spelling>:<port>/`` (127.0.0.1, 0.0.0.0, localhost, [::], [::ffff:127.0.0.1], ...)
  would land on it if the guard let the connection through. It answers every request with a
  valid JPEG, so a leak also shows up as an unexpected success.
* ``TLSOrigin``: an HTTPS server (certificate for "localhost" from a throw-away CA) that
  records the SNI name it was asked for.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

ORIGIN_HOST = "127.0.0.2"
CANARY_HOSTS = ("127.0.0.3", "127.0.0.1", "::1")

# Signature + filler: imageproc.engine.http only checks the magic bytes (decoding is compress.py's job).
SAMPLES: dict[str, tuple[bytes, str]] = {
    "jpeg": (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 100 + b"\xff\xd9", "image/jpeg"),
    "png": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 100, "image/png"),
    "gif": (b"GIF89a\x01\x00\x01\x00" + b"\x00" * 100 + b";", "image/gif"),
    "webp": (b"RIFF\x70\x00\x00\x00WEBPVP8 " + b"\x00" * 100, "image/webp"),
    "bmp": (b"BM" + b"\x00" * 12 + (40).to_bytes(4, "little") + b"\x00" * 100, "image/bmp"),
    "tiff": (b"II*\x00\x08\x00\x00\x00" + b"\x00" * 100, "image/tiff"),
}
JPEG = SAMPLES["jpeg"][0]


@dataclass
class Hit:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client: tuple[Any, ...]


@dataclass
class Log:
    hits: list[Hit] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, hit: Hit) -> None:
        with self.lock:
            self.hits.append(hit)

    def clear(self) -> None:
        with self.lock:
            self.hits.clear()
            self.connections = 0

    def paths(self) -> list[str]:
        with self.lock:
            return [h.path for h in self.hits]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = 128  # the default 5 drops SYNs when 16 threads connect at once

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], log: Log) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.log = log
        self.stopping = threading.Event()
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up on purpose (deadline, size cap) are expected


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is exercised

    served = 0  # requests answered on this connection (one handler instance per connection)

    def setup(self) -> None:
        super().setup()
        with self.server.log.lock:
            self.server.log.connections += 1

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _record(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.log.add(Hit(self.command, self.path, dict(self.headers.items()), body, self.client_address))
        return body

    def _send(self, status: int, body: bytes, content_type: str = "application/octet-stream", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)


class CanaryHandler(_Handler):
    def do_GET(self) -> None:
        self._record()
        self._send(200, JPEG, "image/jpeg")

    do_POST = do_HEAD = do_PUT = do_DELETE = do_GET


class OriginHandler(_Handler):
    """Behaviour by path. ``?to=`` values are used verbatim as Location."""

    def do_GET(self) -> None:
        self._record()
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        segments = path.strip("/").split("/")
        head = segments[0]
        if head == "img":  # /img/<format>
            body, ctype = SAMPLES[segments[1]]
            self._send(200, body, ctype)
        elif head == "img-as-html":  # a PNG served with a lying Content-Type
            self._send(200, SAMPLES["png"][0], "text/html")
        elif head == "html":
            self._send(200, b"<!doctype html><html><body>not an image</body></html>", "text/html")
        elif head == "svg":
            self._send(200, b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', "image/svg+xml")
        elif head == "empty":
            self._send(200, b"", "image/jpeg")
        elif head == "status":  # /status/<code>[?retry_after=<Retry-After>]
            extra = {"Retry_After": query["retry_after"][0]} if "retry_after" in query else {}
            self._send(int(segments[1]), b"status body", "text/plain", **extra)
        elif head == "redirect":  # /redirect?to=<location>&code=<3xx>
            code = int(query.get("code", ["302"])[0])
            self._send(code, b"", Location=query["to"][0])
        elif head == "redirect-no-location":
            self._send(302, b"")
        elif head == "chain":  # /chain/<n>: n redirects, then an image
            n = int(segments[1])
            if n > 0:
                self._send(302, b"", Location=f"/chain/{n - 1}")
            else:
                self._send(200, JPEG, "image/jpeg")
        elif head == "loop":
            self._send(302, b"", Location="/loop")
        elif head == "trickle-body":  # a JPEG whose body arrives one byte every 0.5 s
            self._trickle_body()
        elif head == "trickle-headers":  # a header line that arrives one byte every 0.3 s
            self._trickle_headers()
        elif head == "stall":  # no answer at all for 10 s
            self.server.stopping.wait(10)
            self._send(200, JPEG, "image/jpeg")
        elif head == "big-no-length":  # ?n=<bytes>, close-delimited, no Content-Length
            self._big(int(query["n"][0]), chunked=False)
        elif head == "big-chunked":  # ?n=<bytes>, Transfer-Encoding: chunked
            self._big(int(query["n"][0]), chunked=True)
        elif head == "huge-length":  # claims 1 TB, sends 1 KiB
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
            self.wfile.write(JPEG + b"\x00" * 1024)
            self.close_connection = True
        elif head == "short-length":  # claims 16 bytes, then sends 256 KiB more
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "16")
            self.end_headers()
            self.wfile.write(JPEG[:16] + b"\xaa" * 256 * 1024)
            self.close_connection = True
        elif head == "cut-short":  # claims 100,000 bytes, sends a JPEG's first 1,000, hangs up
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write((JPEG * 1000)[:1000])
            self.close_connection = True
        elif head == "gzip-bomb":  # ?n=<decoded bytes>: a few KB on the wire
            body = gzip.compress(JPEG + b"\x00" * int(query["n"][0]))
            self._send(200, body, "image/jpeg", Content_Encoding="gzip")
        elif head == "drop-second":  # answers the first request of a connection, drops the rest
            self._drop_or_answer()
        elif head == "utf8-redirect":  # Location with raw UTF-8 bytes, as real servers send it
            self.wfile.write(b"HTTP/1.1 302 Found\r\nLocation: /caf\xc3\xa9.png\r\nContent-Length: 0\r\n\r\n")
        elif head == "caf%C3%A9.png":
            self._send(200, SAMPLES["png"][0], "image/png")
        elif head == "host":  # echo nothing: tests read the recorded Host header
            self._send(200, JPEG, "image/jpeg")
        else:
            self._send(404, b"no such route", "text/plain")

    def do_POST(self) -> None:
        self._record()
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        segments = path.strip("/").split("/")
        head = segments[0]
        if head == "drop-second":
            self._drop_or_answer()
        elif head == "hook":
            self._send(200, b'{"ok": true}', "application/json", X_Echo_Length="0")
        elif head == "redirect":
            self._send(int(query.get("code", ["302"])[0]), b"moved", "text/plain", Location=query["to"][0])
        elif head == "status":
            self._send(int(segments[1]), b"gone", "text/plain", Retry_After="120")
        elif head == "big-response":
            self._send(200, b"x" * (1024 * 1024), "text/plain")
        elif head == "trickle-body":
            self._trickle_body()
        else:
            self._send(404, b"no such route", "text/plain")

    def _drop_or_answer(self) -> None:
        self.served += 1
        if self.served > 1:
            self.close_connection = True  # hang up without answering, like an idle-timeout race
            return
        self._send(200, JPEG, "image/jpeg")

    def _trickle_body(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", "40")
        self.end_headers()
        self.close_connection = True
        with contextlib.suppress(OSError):
            for byte in (JPEG + b"\x00" * 40)[:40]:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                if self.server.stopping.wait(0.5):
                    return

    def _trickle_headers(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n")
            for byte in b"X-Slow: " + b"a" * 100:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                if self.server.stopping.wait(0.3):
                    return

    def _big(self, n: int, *, chunked: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        data = JPEG + b"\x00" * max(n - len(JPEG), 0)
        with contextlib.suppress(OSError):
            for start in range(0, len(data), 64 * 1024):
                piece = data[start : start + 64 * 1024]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")


class Running:
    """A set of servers sharing one Log, served from background threads."""

    def __init__(self, servers: list[_Server], log: Log) -> None:
        self.servers = servers
        self.log = log
        self.threads = [
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True) for s in servers
        ]
        for t in self.threads:
            t.start()

    @property
    def port(self) -> int:
        return int(self.servers[0].server_address[1])

    def close(self) -> None:
        for s in self.servers:
            s.stopping.set()
            s.shutdown()
            s.server_close()


def start_origin_and_canary() -> tuple[Running, Running]:
    """The origin on 127.0.0.2:P and the canary on 127.0.0.3:P, 127.0.0.1:P, [::1]:P."""
    for _ in range(50):
        origin_log, canary_log = Log(), Log()
        origin = _Server((ORIGIN_HOST, 0), OriginHandler, origin_log)
        port = int(origin.server_address[1])
        canaries: list[_Server] = []
        try:
            for host in CANARY_HOSTS:
                try:
                    canaries.append(_Server((host, port), CanaryHandler, canary_log))
                except OSError:
                    if host == "::1" and not socket.has_ipv6:
                        continue
                    raise
        except OSError:
            origin.server_close()
            for c in canaries:
                c.server_close()
            continue
        return Running([origin], origin_log), Running(canaries, canary_log)
    raise RuntimeError("no port free on all loopback addresses")


def free_port(host: str = ORIGIN_HOST) -> int:
    """A port with nothing listening (bound then closed)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --- TLS --------------------------------------------------------------------------------------


@dataclass
class Certs:
    ca: Path
    localhost_cert: Path
    localhost_key: Path
    other_cert: Path
    other_key: Path


def make_certs(directory: Path) -> Certs:
    """A throw-away CA, a leaf for DNS:localhost and a leaf for DNS:other.test (openssl CLI)."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=fetch-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    for name, san in (("localhost", "DNS:localhost"), ("other", "DNS:other.test")):
        (directory / f"{name}.ext").write_text(
            f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
        )
        run(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        )  # fmt: skip
        run(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        )  # fmt: skip
    return Certs(
        directory / "ca.pem",
        directory / "localhost.pem",
        directory / "localhost.key",
        directory / "other.pem",
        directory / "other.key",
    )


class TLSOrigin(Running):
    def __init__(self, cert: Path, key: Path, host: str = "127.0.0.1") -> None:
        log = Log()
        server = _Server((host, 0), OriginHandler, log)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.sni: list[str | None] = []

        def on_sni(_sock: Any, name: str | None, _ctx: Any) -> None:
            self.sni.append(name)

        context.sni_callback = on_sni
        server.socket = context.wrap_socket(server.socket, server_side=True)
        super().__init__([server], log)


@contextlib.contextmanager
def tls_origin(cert: Path, key: Path) -> Iterator[TLSOrigin]:
    server = TLSOrigin(cert, key)
    try:
        yield server
    finally:
        server.close()


def wait_until(predicate: Any, timeout: float = 2.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())
