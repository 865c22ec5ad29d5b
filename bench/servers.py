"""The outside world of the benchmark, each in its own process so that it does not share a
GIL with the measuring code: an image server and S3 (moto's server), both adding a
configurable latency to every response.

The latency lives in shared memory (`multiprocessing.Value`): the benchmark changes it
between phases without restarting anything.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import socket
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

IMAGE_HOST = "127.0.0.2"  # the service is told that this address may be fetched from
S3_HOST = "127.0.0.1"
BUCKET = "bench"

_ctx = mp.get_context("fork")


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _wait_port(host: str, port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # 32+ fetch threads connect at once; the default backlog of 5 drops SYNs, and a
    # dropped SYN costs a 1 s retransmit.
    request_queue_size = 256


def _serve_images(folder: str, names: list[str], host: str, port: int, latency: Synchronized[float]) -> None:
    files = {f"/{name}": (Path(folder) / name).read_bytes() for name in names}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            # /<run tag>/<file>: the tag keeps the URLs of two runs distinct.
            path = "/" + self.path.split("?", 1)[0].rsplit("/", 1)[-1]
            body = files.get(path)
            delay = latency.value
            if delay:
                time.sleep(delay)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png" if path.endswith(".png") else "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    _Server((host, port), Handler).serve_forever()


def _serve_s3(host: str, port: int, latency: Synchronized[float]) -> None:
    from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    # S3 alone, as `moto_server s3` serves it: moto's all-services dispatcher lists its
    # module folders on disk for every request (a tenth of its CPU per PutObject here).
    app = create_backend_app("s3")

    def delayed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        delay = latency.value
        if delay:
            time.sleep(delay)
        return app(environ, start_response)  # type: ignore[no-any-return]

    server = make_server(host, port, delayed, threaded=True, request_handler=MotoRequestHandler)
    server.serve_forever()


class Servers:
    """The image server and S3, started in child processes; `latency` is in seconds."""

    def __init__(self, folder: Path, names: list[str]) -> None:
        self._image_latency: Synchronized[float] = _ctx.Value("d", 0.0)  # type: ignore[assignment]
        self._s3_latency: Synchronized[float] = _ctx.Value("d", 0.0)  # type: ignore[assignment]
        image_port = free_port(IMAGE_HOST)
        s3_port = free_port(S3_HOST)
        self.image_base = f"http://{IMAGE_HOST}:{image_port}"
        self.s3_endpoint = f"http://{S3_HOST}:{s3_port}"
        self.processes = [
            _ctx.Process(
                target=_serve_images,
                args=(str(folder), names, IMAGE_HOST, image_port, self._image_latency),
                daemon=True,
                name="bench-images",
            ),
            _ctx.Process(target=_serve_s3, args=(S3_HOST, s3_port, self._s3_latency), daemon=True, name="bench-s3"),
        ]
        for process in self.processes:
            process.start()
        _wait_port(IMAGE_HOST, image_port)
        _wait_port(S3_HOST, s3_port)
        self.s3_client().create_bucket(Bucket=BUCKET)

    def set_latency(self, *, images: float, s3: float) -> None:
        self._image_latency.value = images
        self._s3_latency.value = s3

    def s3_env(self) -> dict[str, str]:
        return {
            "S3_BUCKET": BUCKET,
            "S3_ENDPOINT_URL": self.s3_endpoint,
            "S3_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",  # moto accepts any credentials
        }

    def s3_client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )

    def close(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.join(5)
