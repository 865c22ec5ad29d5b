"""Fixtures that start real servers on loopback: an image server, and for end-to-end tests
the whole service (gunicorn + the image qcluster + the webhooks' qcluster through
`manage.py serve`) on a file database.

E2E_LANE=scale runs the same end-to-end tests on the scale-out lane instead: PostgreSQL,
Redis (broker and cache) and S3 (moto's server mode), with two separate qcluster processes
standing in for two machines (tests/lanes.py; `make test-scale`)."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from tests.lanes import (
    S3Bucket,
    ScaleServices,
    cluster_workers,
    db_rows,
    postgres_available,
    redis_available,
    scale_services_for,
)

ROOT = Path(__file__).resolve().parent.parent
# Loopback addresses: the service is told that 127.0.0.2 is an allowed image host.
IMAGE_HOST = "127.0.0.2"


def require_service(name: str, available: bool) -> None:
    """Skip locally when a service is missing; in CI (REQUIRE_SERVICES=1) fail instead."""
    if available:
        return
    if os.environ.get("REQUIRE_SERVICES") == "1":
        pytest.fail(f"{name} is required (REQUIRE_SERVICES=1) but unavailable")
    pytest.skip(reason=f"{name} unavailable")


def make_image(width: int = 640, height: int = 480, fmt: str = "JPEG", mode: str = "RGB", **save: Any) -> bytes:
    """A photograph-like test image: smooth gradients with some texture, so that it
    compresses like a real photo rather than like flat colour or pure noise."""
    gradient = Image.linear_gradient("L").resize((width, height))
    noise = Image.effect_noise((width, height), 40)
    rgb = Image.merge("RGB", (gradient, noise, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    img = rgb.convert(mode) if mode != "RGB" else rgb
    buf = io.BytesIO()
    if fmt == "JPEG":
        save.setdefault("quality", 92)
    img.save(buf, fmt, **save)
    return buf.getvalue()


@dataclass
class Route:
    body: bytes
    content_type: str = "image/jpeg"
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    # Writes the whole raw answer itself (trickling, lying Content-Length, ...); the fields
    # above are then ignored.
    respond: Callable[[BaseHTTPRequestHandler], None] | None = None


class ImageServer:
    """A threaded HTTP server with routes set by the test; it counts every hit."""

    def __init__(self, host: str = IMAGE_HOST) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                server.hits[path] += 1
                route = server.routes.get(path)
                if route is None:
                    route = Route(b"not found", "text/plain", 404)
                if route.delay:
                    time.sleep(route.delay)
                if route.respond is not None:
                    self.close_connection = True
                    try:
                        route.respond(self)
                    except OSError:
                        pass  # the client hung up on purpose (deadline, size cap)
                    return
                self.send_response(route.status)
                self.send_header("Content-Type", route.content_type)
                self.send_header("Content-Length", str(len(route.body)))
                for key, value in route.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(route.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://{host}:{self.httpd.server_address[1]}"
        # A short poll: shutdown() waits for it, once per test that uses the server.
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def add(self, path: str, body: bytes, **kwargs: Any) -> str:
        self.routes[path] = Route(body, **kwargs)
        return self.base_url + path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    server = ImageServer()
    yield server
    server.close()


def csv_bytes(rows: list[tuple[str, str, list[str]]]) -> bytes:
    lines = ["S. No.,Product Name,Input Image Urls"]
    for serial, name, urls in rows:
        lines.append(f'{serial},{name},"{",".join(urls)}"')
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def api_key(db: Any) -> str:
    from requests_app.services.clients import api_client_create, api_key_create

    client, _ = api_client_create(name="acme")
    return api_key_create(client=client)


@pytest.fixture
def api(api_key: str) -> Any:
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key}")
    return client


# --- The whole service as subprocesses ------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    base_url: str
    api_key: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path
    lane: str = "sqlite"
    # qcluster processes started directly (start_stack(clusters=N)), not by `serve`.
    clusters: list[subprocess.Popen[bytes]] = field(default_factory=list)
    scale: ScaleServices | None = None
    # The webhooks' own qcluster (`manage.py webhook_cluster`), when started directly; and
    # how many run, by `serve` or directly (/health/ counts them with the image ones).
    webhook_clusters: list[subprocess.Popen[bytes]] = field(default_factory=list)
    webhook_cluster_count: int = 0

    @property
    def bucket(self) -> S3Bucket | None:
        return self.scale.bucket if self.scale else None

    def start_cluster(self, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """One more `manage.py qcluster`, as on another machine; in its own session so that
        a signal to the test's process group does not reach it."""
        log = self.log.with_name(f"qcluster-{len(list(self.log.parent.glob('qcluster-*.log')))}.log")
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "manage.py", "qcluster"],
                cwd=ROOT,
                env={**self.env, **(extra_env or {})},
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        self.clusters.append(process)
        return process

    def start_webhook_cluster(self, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """The qcluster that sends webhooks, as `serve` starts it beside the image one."""
        log = self.log.with_name(f"webhooks-{len(list(self.log.parent.glob('webhooks-*.log')))}.log")
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "manage.py", "webhook_cluster"],
                cwd=ROOT,
                env={**self.env, **(extra_env or {})},
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        self.webhook_clusters.append(process)
        return process

    def stop_cluster(self, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
        """The graceful way: SIGTERM to the main process only; it drains its workers."""
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill_cluster(process)
        for started in (self.clusters, self.webhook_clusters):
            if process in started:
                started.remove(process)

    def kill_cluster(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the whole cluster, main process and every child, as a machine dying would."""
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)
        for started in (self.clusters, self.webhook_clusters):
            if process in started:
                started.remove(process)

    def workers(self, process: subprocess.Popen[bytes], *, busy: bool = False) -> list[int]:
        return cluster_workers(process.pid, busy=busy)

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Query the stack's database directly (%s placeholders), SQLite or PostgreSQL."""
        return db_rows(self.env["DATABASE_URL"], sql, params)

    def storage_keys(self, prefix: str = "outputs/") -> list[str]:
        """Every object under `prefix` in the stack's storage: S3 objects, or local files."""
        if self.bucket:
            return self.bucket.keys(prefix)
        root = Path(self.env["VAR_DIR"]) / "media"
        return sorted(str(p.relative_to(root)) for p in (root / prefix).rglob("*") if p.is_file())

    def logs(self) -> str:
        parts = [
            self.log,
            *sorted(self.log.parent.glob("qcluster-*.log")),
            *sorted(self.log.parent.glob("webhooks-*.log")),
        ]
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in parts if p.exists())

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(
            self.base_url + path, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=30, **kwargs
        )

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(
            self.base_url + path, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=60, **kwargs
        )

    def manage(self, *args: str) -> str:
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, check=True, capture_output=True, text=True
        ).stdout

    def wait_finished(self, request_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body: dict[str, Any] = self.get(f"/csv/status/{request_id}").json()
            if body["status"] in ("completed", "completed_with_errors", "failed"):
                return body
            time.sleep(0.2)
        raise AssertionError(f"request {request_id} did not finish in {timeout}s: {body}\n{self.logs()}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests of the scale lane only (taking PostgreSQL or Redis down mid-request) are left out
    of the embedded lane's run, not skipped: `make test-scale` runs them."""
    if e2e_lane() == "scale":
        return
    other_lane = [item for item in items if item.get_closest_marker("scale_lane")]
    if other_lane:
        config.hook.pytest_deselected(items=other_lane)
        items[:] = [item for item in items if not item.get_closest_marker("scale_lane")]


def e2e_lane() -> str:
    lane = os.environ.get("E2E_LANE", "sqlite")
    if lane not in ("sqlite", "scale"):
        raise RuntimeError(f"E2E_LANE must be sqlite or scale, got {lane!r}")
    return lane


def start_stack(
    tmp: Path,
    extra_env: dict[str, str] | None = None,
    *,
    lane: str | None = None,
    clusters: int | None = None,
    web_only: bool = False,
    public_s3: bool = False,
    webhook_cluster: bool = True,
) -> Stack:
    """The whole service as subprocesses. `lane`: "sqlite" (SQLite, ORM broker, local files)
    or "scale" (PostgreSQL, Redis, S3 on moto); E2E_LANE by default. `clusters`: how many
    image qcluster processes to start directly, `serve --no-workers` then being only the web
    server; 0 lets `serve` start its own. By default 0 on sqlite and 2 on scale.
    `web_only`: no image qcluster (start some later with Stack.start_cluster).
    `webhook_cluster`: the webhooks' own qcluster, started with the image one(s) by `serve`,
    else directly (also with `web_only`); False for none."""
    lane = lane or e2e_lane()
    scale: ScaleServices | None = None
    if lane == "scale":
        require_service("PostgreSQL on 127.0.0.1:5432", postgres_available())
        require_service("Redis on 127.0.0.1:6379", redis_available())
        scale = scale_services_for(tmp, public_s3=public_s3)
    if clusters is None:
        clusters = 2 if lane == "scale" else 0
    return _start_stack(
        tmp, extra_env, lane=lane, clusters=clusters, web_only=web_only, scale=scale, webhook_cluster=webhook_cluster
    )


def _start_stack(
    tmp: Path,
    extra_env: dict[str, str] | None,
    *,
    lane: str,
    clusters: int,
    web_only: bool,
    scale: ScaleServices | None,
    webhook_cluster: bool = True,
) -> Stack:
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "settings.base",
        "VAR_DIR": str(tmp),
        "DATABASE_URL": f"sqlite:///{tmp}/db.sqlite3",
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "FETCH_ALLOWED_NETWORKS": f"{IMAGE_HOST}/32",
        "Q_WORKERS": "2",
        "PYTHONUNBUFFERED": "1",
        **(scale.env if scale else {}),
        **(extra_env or {}),
    }
    env.pop("PYTEST_XDIST_WORKER", None)

    def manage(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True
        ).stdout

    manage("migrate", "--noinput")
    key = manage("create_api_client", "e2e").strip().splitlines()[-1]
    log = tmp / "serve.log"
    command = [sys.executable, "manage.py", "serve", "--port", str(port)]
    serve_workers = not (clusters or web_only)  # `serve` starts both qclusters
    if not serve_workers:
        command.append("--no-workers")
    elif not webhook_cluster:
        raise ValueError("`serve` starts the webhooks' qcluster with the image one: pass clusters or web_only")
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    stack = Stack(f"http://127.0.0.1:{port}", key, env, process, log, lane=lane, scale=scale)
    stack.webhook_cluster_count = 1 if webhook_cluster else 0
    for _ in range(clusters):
        stack.start_cluster()
    if webhook_cluster and not serve_workers:
        stack.start_webhook_cluster()
    if not wait_clusters(stack, 0 if web_only else max(clusters, 1)):
        stop_stack(stack)
        raise RuntimeError(f"the service did not start:\n{stack.logs()}")
    return stack


def wait_clusters(stack: Stack, count: int, timeout: float = 30) -> bool:
    """Wait until /health/ answers and sees at least `count` running image qclusters, and
    the stack's webhooks qcluster (/health/ counts both kinds)."""
    count += stack.webhook_cluster_count
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            checks = requests.get(stack.base_url + "/health/", timeout=5).json()["checks"]
            if not count or checks["workers"]["clusters"] >= count:
                return True
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(0.3)
    return False


def stop_stack(stack: Stack) -> None:
    for cluster in [*stack.clusters, *stack.webhook_clusters]:
        stack.stop_cluster(cluster)
    if stack.process.poll() is None:
        stack.process.send_signal(2)  # SIGINT, as Ctrl-C would
        try:
            stack.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stack.process.kill()
    # The scale lane's database, Redis keys and bucket outlive the stack, as its SQLite file
    # does: a stack restarted on the same folder finds them (tests/lanes.py).


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("stack"))
    yield s
    stop_stack(s)


@pytest.fixture(scope="module")
def module_image_server() -> Iterator[ImageServer]:
    server = ImageServer()
    yield server
    server.close()


ImageFactory = Callable[..., bytes]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove this run's media folder (settings.test names one per process)."""
    import shutil

    from django.conf import settings

    if not settings.configured:  # run without pytest-django
        return
    media = Path(str(getattr(settings, "MEDIA_ROOT", "")))
    if media.name.startswith("test-media-"):
        shutil.rmtree(media, ignore_errors=True)
