"""Dependency outages in the middle of a request: S3, an image origin, Redis and PostgreSQL go
away and come back, and nothing is lost, failed for good or done twice.

The scale lane only (`make test-scale`): PostgreSQL, Redis, S3 (moto's server mode) and two
qclusters. Every server these tests take down is the test's own, never the shared ones:
a PostgreSQL cluster (initdb in a temporary folder, its own port), a redis-server on its
own port, and a fault-injecting HTTP proxy in front of the moto server. The service runs
with its default settings for everything these tests measure (leases, sweeps, retries);
each test prints what its outage cost (images done and failed, work repeated, seconds from
the end of the outage to the request's end), the figures of docs/outages.md.

The parts, one at a time and in-process (retries, leases, set-aside images, the 503
middleware), are tested in tests/test_pipeline.py.
"""

from __future__ import annotations

import http.client
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import (
    ImageServer,
    Stack,
    _start_stack,
    csv_bytes,
    free_port,
    make_image,
    require_service,
    stop_stack,
    wait_clusters,
)
from tests.lanes import AWS_ENV, S3_REGION, S3Bucket, ScaleServices

pytestmark = [pytest.mark.e2e, pytest.mark.scale_lane]

FINISHED = ("completed", "completed_with_errors", "failed")


# --- Servers the tests own ----------------------------------------------------------------------


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


class OwnPostgres:
    """A throwaway PostgreSQL cluster on its own port, in a temporary folder: stopping it
    takes down nobody else's database. As root, it runs as the `postgres` user (initdb
    refuses root)."""

    def __init__(self) -> None:
        bin_dir = _pg_bin()
        assert bin_dir is not None
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="imageproc-pg-"))
        self.data = self.dir / "data"
        self.logfile = self.dir / "postgres.log"
        self.port = free_port()
        self.as_owner: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.start()

    def _run(self, *command: str) -> None:
        subprocess.run([*self.as_owner, *command], check=True, capture_output=True, timeout=120)

    def _ctl(self, *args: str) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60", *args)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._ctl("start", "-o", options)

    def stop(self) -> None:
        # -m fast: what a restart or a fail-over does to the clients (their sessions end).
        self._ctl("stop", "-m", "fast")

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def close(self) -> None:
        try:
            self._ctl("stop", "-m", "immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class OwnRedis:
    """A redis-server of the test's own, without persistence, as the issue's outage has it:
    `shutdown nosave`, then a new server on the same port."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.folder / "redis.log").open("ab")
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen([*command, "--dir", str(self.folder)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while not self.ping():
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False

    def shutdown(self) -> None:
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "nosave"], capture_output=True, timeout=10)
        if self.process is not None:
            self.process.wait(timeout=10)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


class FaultyProxy:
    """An HTTP proxy in front of the S3 endpoint (moto), which fails on a plan: from the
    `after`-th upload (PUT) on, each (mode, seconds) of the plan in turn, then back to `ok`.
    `503` answers every request with S3's ServiceUnavailable; `reset` closes every
    connection without an answer (a refused or dropped connection, as the client sees it).
    Triggered by the uploads themselves, the outage falls in the middle of a request however
    fast the service works."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.plan: list[tuple[str, float]] = []
        self.after = 0
        self.puts = 0
        self.started: float | None = None
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                mode = proxy.mode(put=self.command == "PUT")
                proxy.counts[mode] += 1
                if mode == "reset":
                    self.close_connection = True
                    return
                if mode == "503":
                    error = (
                        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
                        b"<Message>Please reduce your request rate.</Message></Error>"
                    )
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(error)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(error)
                    self.close_connection = True
                    return
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "expect")}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                    self.send_response(answer.status)
                    for key, value in answer.getheaders():
                        if key.lower() not in ("connection", "transfer-encoding", "keep-alive", "content-length"):
                            self.send_header(key, value)
                    length_header = answer.getheader("Content-Length")
                    self.send_header("Content-Length", length_header if self.command == "HEAD" else str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def fail(self, plan: list[tuple[str, float]], *, after: int) -> None:
        with self.lock:
            self.plan, self.after, self.puts, self.started = plan, after, 0, None

    def mode(self, *, put: bool = False) -> str:
        with self.lock:
            if put:
                self.puts += 1
                if self.plan and self.started is None and self.puts > self.after:
                    self.started = time.monotonic()
            if self.started is None:
                return "ok"
            elapsed = time.monotonic() - self.started
            for mode, seconds in self.plan:
                if elapsed < seconds:
                    return mode
                elapsed -= seconds
            return "ok"

    @property
    def ends_at(self) -> float:
        assert self.started is not None
        return self.started + sum(seconds for _, seconds in self.plan)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --- The stack --------------------------------------------------------------------------------


@dataclass
class Outages:
    stack: Stack
    postgres: OwnPostgres
    redis: OwnRedis
    proxy: FaultyProxy
    bucket: S3Bucket
    figures: list[str] = field(default_factory=list)


# Small batches and few download threads, so that a request of a few dozen images lasts long
# enough for an outage to fall in its middle. Everything the outages are about (leases,
# sweeps, retries, backoff) keeps its default.
STACK_ENV = {
    "IMAGE_BATCH_SIZE": "4",
    "IMAGE_IO_THREADS": "4",
    "Q_WORKERS": "2",
    "UPLOAD_THROTTLE_RATE": "1000/min",
    # test_a_slow_origin_cannot_hold_every_worker: four downloads from one host at once.
    "FETCH_PER_HOST": "4",
}


@pytest.fixture(scope="module")
def outages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outages]:
    require_service(
        "PostgreSQL's server binaries and redis-server", _pg_bin() is not None and bool(shutil.which("redis-server"))
    )
    folder = tmp_path_factory.mktemp("outages")
    postgres = OwnPostgres()
    redis_server = OwnRedis(folder)
    bucket = S3Bucket.create()
    proxy = FaultyProxy(bucket.endpoint)
    database = "imageproc_outages"
    postgres.create_database(database)
    prefix = f"imageproc-outages-{uuid.uuid4().hex[:8]}"
    env = {
        **AWS_ENV,
        "DATABASE_URL": postgres.url(database),
        "REDIS_URL": redis_server.url,
        "REDIS_KEY_PREFIX": prefix,
        "S3_BUCKET": bucket.name,
        # The service speaks to S3 through the proxy; the test reads the bucket directly.
        "S3_ENDPOINT_URL": proxy.endpoint,
        "S3_REGION": S3_REGION,
        **STACK_ENV,
    }
    services = ScaleServices(database, prefix, bucket, env)
    stack = _start_stack(folder, env, lane="scale", clusters=2, web_only=False, scale=services)
    outages = Outages(stack, postgres, redis_server, proxy, bucket)
    try:
        yield outages
    finally:
        stop_stack(stack)
        proxy.close()
        redis_server.close()
        postgres.close()
        print("\n" + "\n".join(outages.figures))


# --- Helpers ----------------------------------------------------------------------------------


def upload(stack: Stack, rows: list[tuple[str, str, list[str]]]) -> str:
    response = stack.post("/csv/upload", files={"file": ("c.csv", csv_bytes(rows), "text/csv")})
    assert response.status_code == 202, response.text
    return str(response.json()["request_id"])


def products(urls: list[str], per_product: int = 4) -> list[tuple[str, str, list[str]]]:
    return [
        (str(n + 1), f"Product {n}", urls[i : i + per_product]) for n, i in enumerate(range(0, len(urls), per_product))
    ]


def image_rows(stack: Stack, request_id: str) -> list[dict[str, Any]]:
    columns = ("source_url", "status", "attempts", "transient_errors", "error_code", "output_name", "bytes_out")
    rows = stack.rows(
        f"SELECT {', '.join(columns)} FROM products_productimage WHERE request_id = %s", uuid.UUID(request_id)
    )
    return [dict(zip(columns, row, strict=True)) for row in rows]


def done_count(stack: Stack, request_id: str) -> int:
    return sum(1 for row in image_rows(stack, request_id) if row["status"] == "done")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, stack: Stack) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # a dependency down while we look: look again
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{stack.logs()}")


def finished(stack: Stack, request_id: str, timeout: float) -> tuple[dict[str, Any], float]:
    """Wait for the request's end, asking the API; returns its status and when it ended."""

    def status() -> dict[str, Any] | None:
        body: dict[str, Any] = stack.get(f"/csv/status/{request_id}").json()
        return body if body.get("status") in FINISHED else None

    body = wait_for(status, timeout, f"request {request_id} to finish", stack)
    return body, time.monotonic()


def check_outputs(outages: Outages, request_id: str, status: dict[str, Any]) -> list[dict[str, Any]]:
    """Every image ended; the counters are the rows; every output exists once in the bucket,
    with the size the status reports. Returns the rows."""
    rows = image_rows(outages.stack, request_id)
    counts = Counter(row["status"] for row in rows)
    assert set(counts) <= {"done", "failed"}, counts
    progress = status["progress"]
    assert (progress["images_done"], progress["images_failed"], progress["images_total"]) == (
        counts["done"],
        counts["failed"],
        len(rows),
    )
    done = [row for row in rows if row["status"] == "done"]
    expected = {row["output_name"] for row in done} | {f"outputs/{request_id}/output.csv"}
    keys = outages.bucket.keys(f"outputs/{request_id}/")
    assert sorted(keys) == sorted(expected), set(keys) ^ expected  # nothing missing, nothing extra
    for row in done:
        assert outages.bucket.head(row["output_name"])["ContentLength"] == row["bytes_out"]
    assert status["bytes_out"] == sum(row["bytes_out"] for row in done)
    return rows


def health(stack: Stack) -> dict[str, Any]:
    response = requests.get(stack.base_url + "/health/", timeout=15, headers={"Connection": "close"})
    body: dict[str, Any] = response.json()
    return body


def record(outages: Outages, line: str) -> None:
    outages.figures.append(line)
    print("\n" + line)


# --- 1. S3 -------------------------------------------------------------------------------------


def test_s3_down_for_20_seconds_fails_no_image(outages: Outages, module_image_server: ImageServer) -> None:
    stack, proxy = outages.stack, outages.proxy
    body = make_image(320, 240)
    urls = [module_image_server.add(f"/s3-outage/{i}.jpg", body, delay=0.25) for i in range(60)]
    # 20 s of outage from the 9th upload on: S3 answers 503 for 10 s, then drops every
    # connection for 10 s.
    proxy.fail([("503", 10), ("reset", 10)], after=8)
    request_id = upload(stack, products(urls))
    wait_for(lambda: proxy.started, 60, "the outage to start", stack)
    done_before = done_count(stack, request_id)
    storage_down = wait_for(
        lambda: health(stack)["checks"]["storage"]["ok"] is False, 8, "/health/ to report the storage down", stack
    )
    time.sleep(max(0.0, proxy.started + 15 - time.monotonic()))
    assert proxy.mode() == "reset"
    assert health(stack)["checks"]["storage"]["ok"] is False
    time.sleep(max(0.0, proxy.ends_at - time.monotonic()))
    ended = proxy.ends_at
    wait_for(lambda: health(stack)["checks"]["storage"]["ok"] is True, 10, "/health/ to report the storage", stack)

    status, final = finished(stack, request_id, 150)
    assert storage_down
    assert status["status"] == "completed", status
    rows = check_outputs(outages, request_id, status)
    assert all(row["status"] == "done" for row in rows)
    # The outage cost time, not attempts: no image was claimed twice.
    assert all(row["attempts"] == 1 for row in rows), Counter(row["attempts"] for row in rows)
    fetched_twice = sum(module_image_server.hits[f"/s3-outage/{i}.jpg"] - 1 for i in range(60))
    assert proxy.counts["503"] and proxy.counts["reset"]
    record(
        outages,
        f"[outage] S3 down 20 s (503 then resets) from {done_before}/60 done: done {len(rows)}, failed 0, "
        f"duplicate outputs 0, images downloaded again {fetched_twice}, "
        f"request end {final - ended:.1f} s after S3 came back",
    )


# --- 2. An image origin ---------------------------------------------------------------------------


@dataclass
class FlakyOrigin:
    """An origin that goes down for `seconds` once it has served `after` images: the outage
    falls in the middle of the request however fast the service downloads. While down, each
    image answers one of three ways, by its number: 503, 429 with Retry-After, or a reset
    connection (closed without an answer)."""

    body: bytes
    after: int
    seconds: float
    served: int = 0
    started: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def down(self) -> bool:
        with self.lock:
            if self.started is None and self.served >= self.after:
                self.started = time.monotonic()
            return self.started is not None and time.monotonic() - self.started < self.seconds

    def route(self, n: int) -> Callable[[BaseHTTPRequestHandler], None]:
        def respond(handler: BaseHTTPRequestHandler) -> None:
            if self.down():
                if n % 3 == 2:
                    return  # the connection closes without an answer
                status, headers = (503, {}) if n % 3 == 0 else (429, {"Retry-After": "5"})
                handler.send_response(status)
                for key, value in {"Content-Type": "text/plain", "Content-Length": "0", **headers}.items():
                    handler.send_header(key, value)
                handler.end_headers()
                return
            time.sleep(0.3)
            handler.send_response(200)
            handler.send_header("Content-Type", "image/jpeg")
            handler.send_header("Content-Length", str(len(self.body)))
            handler.end_headers()
            handler.wfile.write(self.body)
            with self.lock:
                self.served += 1

        return respond


def test_an_origin_down_for_15_seconds_then_back_fails_no_image(
    outages: Outages, module_image_server: ImageServer
) -> None:
    stack, server = outages.stack, module_image_server
    origin = FlakyOrigin(make_image(320, 240), after=6, seconds=15)
    flaky = [server.add(f"/origin-outage/{i}.jpg", b"", respond=origin.route(i)) for i in range(40)]
    missing = server.base_url + "/origin-outage/missing.jpg"  # 404, before, during and after
    page = server.add("/origin-outage/page.jpg", b"<html>not an image</html>", content_type="image/jpeg")
    request_id = upload(stack, products([*flaky[:20], missing, *flaky[20:], page]))
    wait_for(lambda: origin.started, 60, "the origin to go down", stack)
    done_before = done_count(stack, request_id)
    assert origin.started is not None
    time.sleep(max(0.0, origin.started + origin.seconds - time.monotonic()))
    ended = origin.started + origin.seconds

    status, final = finished(stack, request_id, 150)
    assert status["status"] == "completed_with_errors", status
    rows = {row["source_url"]: row for row in check_outputs(outages, request_id, status)}
    assert all(rows[url]["status"] == "done" for url in flaky), [r for r in rows.values() if r["status"] != "done"]
    # Permanent errors are final at once: asked once, never again.
    assert (rows[missing]["status"], rows[missing]["error_code"]) == ("failed", "http_404")
    assert (rows[page]["status"], rows[page]["error_code"]) == ("failed", "not_an_image")
    assert server.hits["/origin-outage/missing.jpg"] == server.hits["/origin-outage/page.jpg"] == 1
    # Transient errors were retried within the budget, without spending attempts.
    retried = [row for row in rows.values() if row["transient_errors"]]
    assert retried, "the outage hit no download"
    assert all(row["transient_errors"] <= 5 for row in rows.values())
    assert all(row["attempts"] == 1 for row in rows.values())
    record(
        outages,
        f"[outage] origin down 15 s (503, 429 Retry-After 5, resets) from {done_before}/42 done: "
        f"done {len(flaky)}, failed 2 (the 404 and the page, asked once each), duplicate outputs 0, "
        f"{len(retried)} images retried ({sum(r['transient_errors'] for r in retried)} transient errors, "
        f"at most {max(r['transient_errors'] for r in retried)} for one), "
        f"request end {final - ended:.1f} s after the origin came back",
    )


@dataclass
class Gauge:
    """Downloads in flight at a server, and the most seen at once."""

    now: int = 0
    most: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def slow(self, body: bytes, seconds: float) -> Callable[[BaseHTTPRequestHandler], None]:
        def respond(handler: BaseHTTPRequestHandler) -> None:
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
            try:
                time.sleep(seconds)
                handler.send_response(200)
                handler.send_header("Content-Type", "image/jpeg")
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body)
            finally:
                with self.lock:
                    self.now -= 1

        return respond


def test_a_slow_origin_cannot_hold_every_worker(outages: Outages, module_image_server: ImageServer) -> None:
    stack = outages.stack
    slow_server = ImageServer()  # another host:port, another origin
    try:
        gauge = Gauge()
        body = make_image(200, 150)
        slow = [slow_server.add(f"/slow/{i}.jpg", body, respond=gauge.slow(body, 3.0)) for i in range(24)]
        slow_id = upload(stack, products(slow))
        time.sleep(1.5)  # every worker has a batch of the slow origin by now
        fast = [module_image_server.add(f"/fast/{i}.jpg", body) for i in range(8)]
        started = time.monotonic()
        fast_id = upload(stack, products(fast))
        fast_status, fast_end = finished(stack, fast_id, 60)
        # The other origin's request went through while the slow one held its downloads.
        assert fast_status["status"] == "completed"
        assert fast_end - started < 15, fast_end - started
        slow_status, slow_end = finished(stack, slow_id, 120)
    finally:
        slow_server.close()
    assert slow_status["status"] == "completed", slow_status
    rows = check_outputs(outages, slow_id, slow_status)
    assert all(row["attempts"] == 1 and row["transient_errors"] == 0 for row in rows)
    # Four workers of four download threads, yet never more than FETCH_PER_HOST at the origin.
    assert gauge.most <= 4, gauge.most
    record(
        outages,
        f"[outage] slow origin (3 s per image, 24 images): at most {gauge.most} downloads from it at once; "
        f"a request of 8 images from another origin ended {fast_end - started:.1f} s after its upload; "
        f"the slow request ended {slow_end - started + 1.5:.1f} s after its upload",
    )


# --- 3. Redis --------------------------------------------------------------------------------------


def test_redis_restarted_mid_request_loses_and_duplicates_nothing(
    outages: Outages, module_image_server: ImageServer
) -> None:
    stack, redis_server = outages.stack, outages.redis
    body = make_image(320, 240)
    # Slow downloads: every worker is busy with this request for several seconds, and its
    # batches fill the clusters' prefetch queues and wait in Redis.
    urls = [module_image_server.add(f"/redis-outage/{i}.jpg", body, delay=2) for i in range(64)]
    request_id = upload(stack, products(urls))

    def claimed(one: str) -> int:
        return sum(1 for row in image_rows(stack, one) if row["status"] != "pending")

    wait_for(lambda: claimed(request_id) >= 16, 60, "every worker at work", stack)
    # A second request, uploaded while the workers are busy with the first: its dispatch task
    # waits in Redis behind the first one's batches, and dies with the queue.
    later = [module_image_server.add(f"/redis-outage/later-{i}.jpg", body) for i in range(16)]
    later_id = upload(stack, products(later))

    done_before = done_count(stack, request_id)
    redis_server.shutdown()  # shutdown nosave: the queue, the cache and the cluster stats are gone
    # The web process answers meanwhile, with a clear 503 for what needs Redis.
    during = stack.post("/csv/upload", files={"file": ("c.csv", csv_bytes([("1", "A", urls[:1])]), "text/csv")})
    assert during.status_code == 503, during.text
    assert during.json()["error"] == "service_unavailable"
    assert health(stack)["checks"]["broker"]["ok"] is False
    time.sleep(10)
    # Its images may have been taken up meanwhile by the tasks still running (a batch task
    # serves the fairest request, imageproc.pipeline.work); else the workers' sweep queues
    # them again once Redis is back (it restarted after they were queued).
    taken_during = claimed(later_id)
    redis_server.start()
    ended = time.monotonic()

    status, final = finished(stack, request_id, 120)
    later_status, later_final = finished(stack, later_id, 60)
    # Not after IMAGE_ORPHAN_AFTER and a scheduled sweep.
    assert later_final - ended < 30, later_final - ended
    for one, one_status in ((request_id, status), (later_id, later_status)):
        assert one_status["status"] == "completed", one_status
        rows = check_outputs(outages, one, one_status)
        assert all(row["status"] == "done" for row in rows)
        assert max(row["attempts"] for row in rows) == 1
    # Everyone reconnected by themselves: both clusters report again, and a new upload is
    # processed from start to end.
    assert wait_clusters(stack, 2, timeout=30), stack.logs()
    after = upload(stack, products([module_image_server.add("/redis-outage/after.jpg", body)]))
    assert finished(stack, after, 60)[0]["status"] == "completed"
    downloaded_again = sum(module_image_server.hits[urlsplit(url).path] - 1 for url in [*urls, *later])
    record(
        outages,
        f"[outage] Redis shutdown nosave, back 10 s later, from {done_before}/64 done and a request of 16 "
        f"uploaded just before: done 80, failed 0, duplicate outputs 0, images downloaded "
        f"again {downloaded_again}; the running request ended {final - ended:.1f} s after Redis came back; "
        f"the queued one ({taken_during}/16 of its images taken up by running tasks during the outage) "
        f"{later_final - ended:.1f} s after",
    )


# --- 4. PostgreSQL ----------------------------------------------------------------------------------


def test_postgres_restarted_mid_request_loses_and_duplicates_nothing(
    outages: Outages, module_image_server: ImageServer
) -> None:
    stack, postgres = outages.stack, outages.postgres
    body = make_image(320, 240)
    urls = [module_image_server.add(f"/pg-outage/{i}.jpg", body, delay=0.3) for i in range(80)]
    request_id = upload(stack, products(urls))
    wait_for(lambda: done_count(stack, request_id) >= 8, 60, "8 images done", stack)

    done_before = done_count(stack, request_id)
    postgres.stop()
    stopped = time.monotonic()
    # Uploads meanwhile: a clear 503 at once, never a 500 or a hang.
    asked = time.monotonic()
    during = stack.post("/csv/upload", files={"file": ("c.csv", csv_bytes([("1", "A", urls[:1])]), "text/csv")})
    assert during.status_code == 503, during.text
    assert during.json() == {
        "error": "service_unavailable",
        "detail": "The database is unavailable at the moment; nothing was stored. Try again in a few seconds.",
    }
    assert during.headers["Retry-After"] == "10"
    assert time.monotonic() - asked < 10
    assert stack.get(f"/csv/status/{request_id}").status_code == 503
    assert health(stack)["checks"]["database"]["ok"] is False
    time.sleep(max(0.0, 10 - (time.monotonic() - stopped)))
    postgres.start()
    ended = time.monotonic()

    status, final = finished(stack, request_id, 120)
    assert status["status"] == "completed", status
    rows = check_outputs(outages, request_id, status)
    assert all(row["status"] == "done" for row in rows)
    # The workers waited for the database and carried on: no claim was lost to it.
    assert max(row["attempts"] for row in rows) == 1, Counter(row["attempts"] for row in rows)
    # No worker dead or wedged on a broken connection: both clusters and all four workers
    # report, and a new request is processed from start to end.
    assert wait_clusters(stack, 2, timeout=30), stack.logs()
    assert all(cluster.poll() is None and len(stack.workers(cluster)) == 2 for cluster in stack.clusters)
    after = [module_image_server.add(f"/pg-outage/after-{i}.jpg", body) for i in range(16)]
    assert finished(stack, upload(stack, products(after)), 60)[0]["status"] == "completed"
    downloaded_again = sum(module_image_server.hits[f"/pg-outage/{i}.jpg"] - 1 for i in range(80))
    record(
        outages,
        f"[outage] PostgreSQL stopped 10 s (fast shutdown) from {done_before}/80 done: done {len(rows)}, failed 0, "
        f"duplicate outputs 0, images downloaded again {downloaded_again}, "
        f"request end {final - ended:.1f} s after PostgreSQL came back",
    )
