"""Crash safety with real qcluster processes: kill workers and whole clusters in the middle of a
request, and check that nothing is lost and nothing is done twice.

Runs on the lane E2E_LANE names: SQLite + ORM broker + local files with one qcluster
(`make test`), or PostgreSQL + Redis + S3 with two qclusters (`make test-scale`).

Workers are killed from outside, as the OOM killer or a dying machine would: SIGKILL to a
worker process that `ps` shows running a batch, or to the one holding a download of the
image server open (found from the connection's socket in /proc).

Most tests compress the timings through the environment (IMAGE_LEASE_SECONDS,
IMAGE_ORPHAN_AFTER, Q_TIMEOUT, IMAGE_MAX_ATTEMPTS) and run `manage.py sweep --every 0.5`
beside the clusters, the same service function on a shorter period than the workers' own
(IMAGE_SWEEP_SECONDS); one test keeps every default and measures what a crash costs then.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.core.management import call_command
from django.utils import timezone

from tests.conftest import (
    IMAGE_HOST,
    ROOT,
    ImageServer,
    Stack,
    csv_bytes,
    e2e_lane,
    make_image,
    start_stack,
    stop_stack,
    wait_clusters,
)
from tests.lanes import alive, cmdline

FAST = {
    "IMAGE_BATCH_SIZE": "4",
    # Two downloads in flight per worker: a 100-image request lasts seconds, not one.
    "IMAGE_IO_THREADS": "2",
    "Q_WORKERS": "2",
    "UPLOAD_THROTTLE_RATE": "1000/min",
}
# The sweeper's thresholds, compressed. A live worker renews its leases every quarter of
# IMAGE_LEASE_SECONDS, however long its batch takes.
COMPRESSED = {"IMAGE_LEASE_SECONDS": "3", "IMAGE_ORPHAN_AFTER": "3"}
SWEEP_EVERY = "0.5"
FINISHED = ("completed", "completed_with_errors", "failed")


def cluster_count() -> int:
    # Two qclusters stand for two machines on the scale lane; one machine on SQLite.
    return 2 if e2e_lane() == "scale" else 1


# --- A webhook receiver -------------------------------------------------------------------------


class WebhookReceiver:
    """Records every POST (a completion webhook) it receives and answers 200."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.events.append({"id": self.headers.get("webhook-id"), **json.loads(body)})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((IMAGE_HOST, 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{IMAGE_HOST}:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def for_request(self, request_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e["data"]["request_id"] == request_id]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    yield server
    server.close()


# --- The stack: web server only; each test starts its clusters and sweeper ------------------------


@pytest.fixture(scope="module")
def crash_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("crash"), FAST, web_only=True)
    yield s
    stop_stack(s)


@contextmanager
def workers_running(
    stack: Stack, extra_env: dict[str, str] | None = None, *, compressed: bool = True
) -> Iterator[list[Any]]:
    """The lane's qclusters, all with the same environment, for one test; with `compressed`,
    short sweeper thresholds and a sweeper loop beside them, else the defaults alone."""
    env = {**FAST, **(COMPRESSED if compressed else {}), **(extra_env or {})}
    clusters = [stack.start_cluster(env) for _ in range(cluster_count())]
    sweeper = None
    if compressed:
        sweeper = subprocess.Popen(
            [sys.executable, "manage.py", "sweep", "--every", SWEEP_EVERY],
            cwd=ROOT,
            env={**stack.env, **env},
            stdout=subprocess.DEVNULL,
            stderr=(stack.log.parent / "sweeper.log").open("ab"),
        )
    try:
        assert wait_clusters(stack, len(clusters)), stack.logs()
        yield clusters
    finally:
        if sweeper is not None:
            sweeper.send_signal(signal.SIGTERM)
            sweeper.wait(timeout=30)
        for cluster in list(stack.clusters):
            # A cluster still stuck on a hanging download would drain for Q_TIMEOUT: no need.
            stack.kill_cluster(cluster)


# --- Reading the outcome ------------------------------------------------------------------------


def upload(stack: Stack, rows: list[tuple[str, str, list[str]]], webhook_url: str) -> str:
    response = stack.post(
        "/csv/upload", files={"file": ("c.csv", csv_bytes(rows), "text/csv")}, data={"webhook_url": webhook_url}
    )
    assert response.status_code == 202, response.text
    return str(response.json()["request_id"])


def images(stack: Stack, request_id: str) -> list[dict[str, Any]]:
    columns = ("source_url", "status", "attempts", "error_code", "error_message", "output_name", "claimed_at")
    rows = stack.rows(
        f"SELECT {', '.join(columns)} FROM products_productimage WHERE request_id = %s", uuid.UUID(request_id)
    )
    found = [dict(zip(columns, row, strict=True)) for row in rows]
    for row in found:
        # SQLite hands back text (UTC), PostgreSQL an aware datetime.
        claimed = row["claimed_at"]
        if isinstance(claimed, str):
            claimed = datetime.fromisoformat(claimed)
        if claimed is not None and claimed.tzinfo is None:
            claimed = claimed.replace(tzinfo=UTC)
        row["claimed_at"] = claimed
    return found


def images_done(stack: Stack, request_id: str) -> int:
    rows = stack.rows("SELECT images_done FROM requests_app_processingrequest WHERE id = %s", uuid.UUID(request_id))
    return int(rows[0][0])


def assert_nothing_lost_or_doubled(stack: Stack, request_id: str, receiver: WebhookReceiver) -> list[dict[str, Any]]:
    """The invariants every crash must keep; returns the image rows for more checks."""
    status = stack.get(f"/csv/status/{request_id}").json()
    assert status["status"] in FINISHED
    rows = images(stack, request_id)
    counts = Counter(row["status"] for row in rows)
    # Every image ended, failed ones with a reason.
    assert set(counts) <= {"done", "failed"}, counts
    assert all(row["error_code"] and row["error_message"] for row in rows if row["status"] == "failed")
    assert all(row["output_name"] for row in rows if row["status"] == "done")
    # The counters are the rows.
    assert status["progress"]["images_done"] == counts["done"]
    assert status["progress"]["images_failed"] == counts["failed"]
    assert status["progress"]["images_total"] == len(rows)
    # Each output exists exactly once in storage, and nothing else does (no renamed copies).
    expected = {row["output_name"] for row in rows if row["status"] == "done"} | {f"outputs/{request_id}/output.csv"}
    keys = stack.storage_keys(f"outputs/{request_id}/")
    assert sorted(keys) == sorted(expected), set(keys) ^ expected
    # The completion webhook: delivered, and once.
    deadline = time.monotonic() + 30
    while not receiver.for_request(request_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)  # a few sweeper rounds: any duplicate would arrive now
    events = receiver.for_request(request_id)
    assert len(events) == 1, events
    assert events[0]["type"] == "request.completed"
    assert events[0]["data"]["status"] == status["status"]
    # The webhook carries the counters; the status answer adds the ETA (none once finished).
    assert {**events[0]["data"]["progress"], "eta_seconds": None} == status["progress"]
    deliveries = stack.rows(
        "SELECT status, attempt FROM requests_app_webhookdelivery WHERE request_id = %s", uuid.UUID(request_id)
    )
    assert deliveries == [("succeeded", 1)]
    return rows


def wait_until(predicate: Any, timeout: float, what: str, stack: Stack) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{stack.logs()}")


def hundred_images(server: ImageServer, name: str) -> list[tuple[str, str, list[str]]]:
    # 100 distinct URLs, slow enough (0.4 s each) that a request lasts several seconds.
    body = make_image(240, 180)
    urls = [server.add(f"/{name}/{i}.jpg", body, delay=0.4) for i in range(100)]
    return [(str(p + 1), f"Product {p}", urls[p * 4 : p * 4 + 4]) for p in range(25)]


def busy_batch_worker(stack: Stack, clusters: list[Any]) -> tuple[int, Any] | None:
    """A worker in the middle of a process_images task, and its cluster: its title says so,
    and still names the same task a moment later (its batch is claimed by then). Any cluster:
    a task that is under way claims more of its request's images, so one cluster may well
    be doing all of a request."""
    for cluster in clusters:
        for pid in stack.workers(cluster, busy=True):
            title = cmdline(pid)
            if "imageproc.tasks.process_images" in title:
                time.sleep(0.15)
                if cmdline(pid) == title:
                    return pid, cluster
    return None


def worker_holding_connection(client: tuple[str, int], workers: list[int]) -> int | None:
    """The process among `workers` that owns the TCP connection whose local end is `client`
    (the address a server sees its client at): /proc/net/tcp names the socket's inode,
    /proc/<pid>/fd links to it."""
    ip, port = client
    local = f"{ipaddress.IPv4Address(ip).packed[::-1].hex().upper()}:{port:04X}"
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local:
            inode = fields[9]
            break
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in workers:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    return pid
            except OSError:
                continue
    return None


def kills_its_worker(stack: Stack, kills: list[int]) -> Any:
    """A route that holds the download open, finds the worker process downloading it and
    SIGKILLs it: an image whose processing kills its worker every time (a decoder that
    segfaults, the OOM killer), seen from outside."""

    def respond(handler: BaseHTTPRequestHandler) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            workers = [pid for cluster in stack.clusters for pid in stack.workers(cluster)]
            pid = worker_holding_connection(handler.client_address[:2], workers)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                kills.append(pid)
                return
            time.sleep(0.05)

    return respond


# --- The tests ----------------------------------------------------------------------------------

pytestmark = pytest.mark.e2e


def test_a_worker_killed_mid_request_loses_and_duplicates_nothing(
    crash_stack: Stack, module_image_server: ImageServer, receiver: WebhookReceiver
) -> None:
    with workers_running(crash_stack) as clusters:
        started = time.monotonic()
        request_id = upload(crash_stack, hundred_images(module_image_server, "kill-worker"), receiver.url)
        wait_until(lambda: images_done(crash_stack, request_id) >= 10, 60, "10 images done", crash_stack)
        victim, cluster = wait_until(lambda: busy_batch_worker(crash_stack, clusters), 30, "a busy worker", crash_stack)
        done_before = images_done(crash_stack, request_id)
        killed_at, killed_wall = time.monotonic(), datetime.now(UTC)
        os.kill(victim, signal.SIGKILL)
        status = crash_stack.wait_finished(request_id, timeout=120)
        converged = time.monotonic() - killed_at

        assert victim not in crash_stack.workers(cluster)  # dead; django-q2 started another
        assert len(crash_stack.workers(cluster)) == 2
    assert status["status"] == "completed"
    rows = assert_nothing_lost_or_doubled(crash_stack, request_id, receiver)
    assert all(row["status"] == "done" for row in rows)
    # The kill hit a claimed batch: its images were processed again, by another worker.
    retried = [row for row in rows if row["attempts"] >= 2]
    assert retried, "the killed worker held no claimed image"
    again = sorted((row["claimed_at"] - killed_wall).total_seconds() for row in retried)
    print(
        f"\n[{e2e_lane()}] worker SIGKILLed at {done_before}/100 done, holding {len(retried)} images; "
        f"claimed again {again[0]:.1f}-{again[-1]:.1f}s after the kill; request final {converged:.1f}s "
        f"after the kill, {time.monotonic() - started:.1f}s after the upload"
    )
    assert max(row["attempts"] for row in rows) <= 3
    # Fetched once per attempt at most: an image finished once is never processed again.
    assert all(1 <= module_image_server.hits[urlsplit(row["source_url"]).path] <= row["attempts"] for row in rows)


def test_a_whole_cluster_killed_and_restarted_loses_and_duplicates_nothing(
    crash_stack: Stack, module_image_server: ImageServer, receiver: WebhookReceiver
) -> None:
    with workers_running(crash_stack) as clusters:
        request_id = upload(crash_stack, hundred_images(module_image_server, "kill-cluster"), receiver.url)
        wait_until(lambda: images_done(crash_stack, request_id) >= 20, 60, "20 images done", crash_stack)
        # The cluster of a worker that is under way (on two clusters, one may be idle).
        _, victim = wait_until(lambda: busy_batch_worker(crash_stack, clusters), 30, "a busy worker", crash_stack)
        processes = [victim.pid, *crash_stack.workers(victim)]
        killed_at = time.monotonic()
        crash_stack.kill_cluster(victim)  # SIGKILL to its process group: main, sentinel, workers
        wait_until(
            lambda: not any(alive(pid) for pid in processes), 10, "every process of the cluster dead", crash_stack
        )
        time.sleep(1)  # the machine is down for a moment
        crash_stack.start_cluster(FAST)
        status = crash_stack.wait_finished(request_id, timeout=120)
        converged = time.monotonic() - killed_at
    assert status["status"] == "completed"
    rows = assert_nothing_lost_or_doubled(crash_stack, request_id, receiver)
    assert all(row["status"] == "done" for row in rows)
    retried = [row for row in rows if row["attempts"] >= 2]
    assert retried, "the killed cluster held no claimed image"
    print(
        f"\n[{e2e_lane()}] whole qcluster SIGKILLed holding {len(retried)} claimed images, restarted 1 s later: "
        f"request final {converged:.1f}s after the kill"
    )


def test_an_image_that_kills_its_worker_or_hangs_fails_after_the_attempt_cap(
    crash_stack: Stack, module_image_server: ImageServer, receiver: WebhookReceiver
) -> None:
    env = {
        "IMAGE_MAX_ATTEMPTS": "2",
        # One batch per request here, so that the poison image takes innocent batch-mates down.
        "IMAGE_BATCH_SIZE": "16",
        # The hanging download is stopped by django-q2's timeout, not by our fetch deadline.
        "Q_TIMEOUT": "10",
        "FETCH_TOTAL_TIMEOUT": "120",
    }
    body = make_image(200, 150)
    innocent = [module_image_server.add(f"/cap/{i}.jpg", body) for i in range(14)]
    # Every worker that downloads it dies: SIGKILLed from outside, holding the download open.
    kills: list[int] = []
    poison = module_image_server.add("/poison/p.jpg", body, respond=kills_its_worker(crash_stack, kills))
    hanging = module_image_server.add("/cap/hang.jpg", body, delay=60)
    with workers_running(crash_stack, env):
        started = time.monotonic()
        crashing = upload(crash_stack, [("1", "A", [*innocent[:6], poison]), ("2", "B", innocent[6:11])], receiver.url)
        slow = upload(crash_stack, [("1", "C", [innocent[11], hanging, innocent[12], innocent[13]])], receiver.url)
        first = crash_stack.wait_finished(crashing, timeout=120)
        second = crash_stack.wait_finished(slow, timeout=120)
        converged = time.monotonic() - started
        logs = "".join(log.read_text(errors="replace") for log in crash_stack.log.parent.glob("qcluster-*.log"))
    print(f"\n[{e2e_lane()}] poison and hanging images failed by the cap in {converged:.1f}s")

    assert first["status"] == second["status"] == "completed_with_errors"
    rows = {row["source_url"]: row for row in assert_nothing_lost_or_doubled(crash_stack, crashing, receiver)}
    assert rows[poison]["status"] == "failed"
    assert rows[poison]["error_code"] == "too_many_attempts"
    assert rows[poison]["attempts"] == 2
    assert len(kills) == 2 and len(set(kills)) == 2  # one worker per attempt, each dead
    # Its batch-mates died with it once, then were re-queued alone and completed: not punished.
    mates = [rows[url] for url in innocent[:11]]
    assert all(row["status"] == "done" for row in mates)
    assert all(row["attempts"] == 2 for row in mates)

    rows = {row["source_url"]: row for row in assert_nothing_lost_or_doubled(crash_stack, slow, receiver)}
    assert rows[hanging]["status"] == "failed"
    assert rows[hanging]["error_code"] == "too_many_attempts"
    assert rows[hanging]["attempts"] == 2
    assert "crash or timeout" in rows[hanging]["error_message"]
    # The batch's other images were recorded as they landed, before the timeout struck.
    assert all(rows[url]["status"] == "done" and rows[url]["attempts"] == 1 for url in innocent[11:])
    assert "after timeout" in logs  # django-q2 killed (and replaced) the hung worker
    # A slow claim is not a dead one: its worker renewed the lease (3 s) all along, and the
    # image was taken back only once the timeout (10 s) had killed that worker.
    assert module_image_server.hits["/cap/hang.jpg"] == 2


def test_a_crashed_workers_images_are_back_in_work_within_a_minute_with_the_defaults(
    crash_stack: Stack, module_image_server: ImageServer, receiver: WebhookReceiver
) -> None:
    # No compressed thresholds and no sweeper loop beside the clusters: the defaults, with
    # the sweep the workers run themselves (IMAGE_LEASE_SECONDS=30, IMAGE_SWEEP_SECONDS=10).
    with workers_running(crash_stack, compressed=False) as clusters:
        request_id = upload(crash_stack, hundred_images(module_image_server, "defaults"), receiver.url)
        wait_until(lambda: images_done(crash_stack, request_id) >= 10, 60, "10 images done", crash_stack)
        victim, _ = wait_until(lambda: busy_batch_worker(crash_stack, clusters), 30, "a busy worker", crash_stack)
        killed_at, killed_wall = time.monotonic(), datetime.now(UTC)
        os.kill(victim, signal.SIGKILL)
        status = crash_stack.wait_finished(request_id, timeout=90)
        converged = time.monotonic() - killed_at
    assert status["status"] == "completed"
    rows = assert_nothing_lost_or_doubled(crash_stack, request_id, receiver)
    retried = [row for row in rows if row["attempts"] >= 2]
    assert retried, "the killed worker held no claimed image"
    again = sorted((row["claimed_at"] - killed_wall).total_seconds() for row in retried)
    print(
        f"\n[{e2e_lane()}] defaults: worker SIGKILLed holding {len(retried)} images; claimed again "
        f"{again[0]:.1f}-{again[-1]:.1f}s after the kill; request final {converged:.1f}s after the kill"
    )
    # Back in work within a minute: the lease ran out and the workers' own sweep took them
    # back (it used to take IMAGE_STALE_AFTER = Q_TIMEOUT + 60 s, then a scheduled sweep).
    assert again[-1] < 60, again


def test_ctrl_c_on_serve_drains_in_flight_tasks(tmp_path: Path, module_image_server: ImageServer) -> None:
    # `make run` is `manage.py serve`; Ctrl-C sends SIGINT to it alone (its children run in
    # their own sessions).
    stack = start_stack(tmp_path, {"IMAGE_BATCH_SIZE": "1", "Q_WORKERS": "2"}, clusters=0)
    try:
        body = make_image(200, 150)
        urls = [module_image_server.add(f"/drain/{i}.jpg", body, delay=3) for i in range(6)]
        request_id = upload(stack, [("1", "Slow", urls)], "")
        in_flight = wait_until(
            lambda: [r["source_url"] for r in images(stack, request_id) if r["status"] == "processing"],
            30,
            "images in flight",
            stack,
        )
        stack.process.send_signal(signal.SIGINT)
        assert stack.process.wait(timeout=90) == 0
        rows = {row["source_url"]: row for row in images(stack, request_id)}
    finally:
        stop_stack(stack)
    assert "Stopped." in stack.log.read_text()
    # What was running finished; what was not started waits for the next start.
    assert all(rows[url]["status"] == "done" for url in in_flight), rows
    assert {row["status"] for row in rows.values()} <= {"done", "pending"}
    assert all(row["attempts"] <= 1 for row in rows.values())


@pytest.mark.django_db(transaction=True)
def test_sweep_command_gives_up_on_an_image_past_the_attempt_cap(settings: Any) -> None:
    from django.contrib.auth import get_user_model

    from products.models import ImageStatus, Product, ProductImage
    from requests_app.models import ProcessingRequest, RequestStatus

    owner = get_user_model().objects.create(username="sweeper")
    request = ProcessingRequest.objects.create(
        owner=owner, status=RequestStatus.PROCESSING, products_total=1, images_total=1
    )
    product = Product.objects.create(request=request, position=0, serial_number="1", product_name="A")
    image = ProductImage.objects.create(
        request=request,
        product=product,
        position=0,
        source_url="http://127.0.0.2/a.jpg",
        source_key="k",
        status=ImageStatus.PROCESSING,
        attempts=settings.IMAGE_MAX_ATTEMPTS,
        claim_token="dead-worker",
        claimed_at=timezone.now() - timedelta(seconds=settings.IMAGE_STALE_AFTER + 1),
    )
    out = io.StringIO()
    call_command("sweep", stdout=out)

    # It was the request's last image: the same sweep finalises the request (tasks run
    # synchronously in the test settings), without waiting for it to go quiet.
    assert "gave_up=1" in out.getvalue()
    assert "refinalized=1" in out.getvalue()
    image.refresh_from_db()
    request.refresh_from_db()
    assert (image.status, image.error_code) == (ImageStatus.FAILED, "too_many_attempts")
    assert (request.status, request.images_failed) == (RequestStatus.FAILED, 1)
    assert request.output_csv_name


def test_migrate_schedules_the_sweeper(crash_stack: Stack) -> None:
    # Without this row no sweep ever runs in a real deployment, and a crash is never repaired.
    rows = crash_stack.rows("SELECT name, func, schedule_type, minutes, repeats FROM django_q_schedule")
    assert rows == [("imageproc-sweep", "imageproc.tasks.sweep", "I", 1, -1)]
