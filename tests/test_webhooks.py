"""Completion webhooks against a real receiver on 127.0.0.2 (allowed by the test settings)
and a canary on 127.0.0.3 that must never be contacted. Signatures are checked with the
`standardwebhooks` library, as a client would. The retry schedule is compressed by
WEBHOOK_TIME_SCALE, so retries run on the real paths (held by the webhooks task, or queued
by the sweeper) in milliseconds. The tests' queue runs tasks in line; the end-to-end tests
at the bottom run the webhooks' own qcluster beside the image one."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.utils import timezone
from django_q.conf import Conf
from rest_framework.test import APIClient
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from imageproc.engine import signing
from imageproc.pipeline.finalize import request_finalize, request_finished
from imageproc.pipeline.sweep import sweep
from requests_app.models import ApiClient, ProcessingRequest, RequestStatus, WebhookDelivery
from requests_app.services import webhook_delivery, webhooks
from requests_app.services.clients import api_client_create, api_key_create
from requests_app.services.webhook_sweep import webhook_sweep
from tests.conftest import ImageServer, Stack, csv_bytes, e2e_lane, make_image, start_stack, stop_stack, wait_clusters

pytestmark = pytest.mark.django_db(transaction=True)

RECEIVER_HOST = "127.0.0.2"
CANARY_HOST = "127.0.0.3"


# --- A real receiver --------------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    hang: bool = False  # read the request, then answer nothing until the test ends


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """Answers POSTs with the scripted replies in order (the last one repeats) and records
    every request, headers and raw body included."""

    def __init__(self, host: str = RECEIVER_HOST, replies: list[Reply] | None = None) -> None:
        self.replies = replies or [Reply()]
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body leave in two writes: without this, Nagle and the client's
                # delayed ACK add 40 ms to every answer.
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.hits.append(Hit(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    reply = receiver.replies[min(len(receiver.hits), len(receiver.replies)) - 1]
                if reply.hang:
                    receiver.release.wait(30)
                    self.close_connection = True
                    return
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://{host}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def url(self, path: str = "/hook") -> str:
        return self.base_url + path

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def canary() -> Iterator[Receiver]:
    server = Receiver(CANARY_HOST)
    yield server
    server.close()


@pytest.fixture(autouse=True)
def fast_webhooks(settings: Any) -> None:
    settings.WEBHOOK_TIME_SCALE = 0.001  # 5 s, 5 min, 30 min ... become 5 ms, 0.3 s, 1.8 s ...
    settings.WEBHOOK_TIMEOUT = 1.0


@pytest.fixture
def client_obj(api_key: str) -> ApiClient:
    return ApiClient.objects.get(user__username="acme")


def finished_request(client: ApiClient, url: str, status: str = RequestStatus.COMPLETED_WITH_ERRORS) -> Any:
    now = timezone.now()
    return ProcessingRequest.objects.create(
        owner=client.user,
        status=status,
        webhook_url=url,
        products_total=2,
        images_total=3,
        images_done=2,
        images_failed=1,
        bytes_in=30_000,
        bytes_out=9_000,
        started_at=now - timedelta(seconds=5),
        completed_at=now,
        updated_at=now,
    )


def settled(request_id: Any, timeout: float = 15) -> list[WebhookDelivery]:
    """The attempts of a request once its last one is final: succeeded, disabled, or failed
    with no retry due (a failed row with next_retry_at has a successor coming)."""
    deadline = time.monotonic() + timeout
    rows: list[WebhookDelivery] = []
    while time.monotonic() < deadline:
        rows = list(WebhookDelivery.objects.filter(request_id=request_id).order_by("created_at", "attempt"))
        if rows and rows[-1].status in ("succeeded", "disabled"):
            return rows
        if rows and rows[-1].status == "failed" and rows[-1].next_retry_at is None:
            return rows
        time.sleep(0.02)
    raise AssertionError(f"deliveries did not settle: {[(r.attempt, r.status, r.error) for r in rows]}")


def verify(secret: str, hit: Hit) -> Any:
    return Webhook(secret).verify(hit.body, hit.headers)


def upload(api: APIClient, content: bytes, **data: str) -> Any:
    file = io.BytesIO(content)
    file.name = "catalogue.csv"
    return api.post("/csv/upload", {"file": file, **data}, format="multipart")


# --- Delivery and signature -------------------------------------------------------------------


def test_upload_with_webhook_url_delivers_a_signed_completion_event(
    api: APIClient, client_obj: ApiClient, receiver: Receiver, image_server: ImageServer, settings: Any
) -> None:
    image = image_server.add("/a.jpg", make_image(120, 90))
    response = upload(
        api, csv_bytes([("1", "Shoe", [image, image_server.base_url + "/gone.jpg"])]), webhook_url=receiver.url()
    )
    assert response.status_code == 202, response.content
    request_id = response.json()["request_id"]

    (delivery,) = settled(request_id)
    request = ProcessingRequest.objects.get(pk=request_id)
    assert (delivery.status, delivery.status_code, delivery.attempt) == ("succeeded", 200, 1)
    assert delivery.latency_ms is not None and delivery.url == receiver.url()
    (hit,) = receiver.hits
    assert hit.path == "/hook"
    assert hit.body.decode() == delivery.payload  # the log keeps the exact body sent
    assert hit.headers["webhook-id"] == delivery.event_id
    assert hit.headers["content-type"] == "application/json"
    assert hit.headers["user-agent"] == settings.WEBHOOK_USER_AGENT
    assert abs(int(hit.headers["webhook-timestamp"]) - time.time()) < 60
    assert hit.headers["webhook-signature"].startswith("v1,")

    payload = verify(client_obj.webhook_secret, hit)
    assert payload["type"] == "request.completed"
    assert payload["timestamp"].endswith("Z")
    data = payload["data"]
    assert data["request_id"] == request_id
    assert data["status"] == request.status == "completed_with_errors"
    assert data["progress"] == {"images_total": 2, "images_done": 1, "images_failed": 1, "percent": 100.0}
    assert (data["bytes_in"], data["bytes_out"]) == (request.bytes_in, request.bytes_out)
    assert data["bytes_in"] > 0
    assert data["status_url"] == response.json()["status_url"]
    assert data["output_url"] == response.json()["output_url"]


def test_every_attempt_goes_through_the_webhooks_own_queue_and_a_short_retry_is_held(
    client_obj: ApiClient, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    # In the image queue, an attempt would wait behind every batch queued before it: each
    # one goes to the webhooks' queue instead. (The tests' queue runs tasks in line; here
    # every queueing is also recorded.)
    queued: list[tuple[Any, ...]] = []
    enqueue = webhook_delivery.async_task

    def recording(func: str, *args: Any, **kwargs: Any) -> Any:
        queued.append((func, args, kwargs.get("cluster")))
        return enqueue(func, *args, **kwargs)

    monkeypatch.setattr(webhook_delivery, "async_task", recording)
    receiver.replies = [Reply(503), Reply(200)]
    request = finished_request(client_obj, receiver.url())
    request_finished(request_id=request.pk)

    rows = settled(request.pk)
    assert [(r.attempt, r.status, r.status_code) for r in rows] == [(1, "failed", 503), (2, "succeeded", 200)]
    assert len(receiver.hits) == 2
    # One task on the webhooks' queue: it sent the first attempt, then waited for the retry
    # due 5 s later (5 ms here) and sent it too, rather than leave it to the sweeper.
    assert queued == [("imageproc.tasks.webhook_deliver", (str(rows[0].pk),), settings.WEBHOOK_QUEUE)]
    assert settings.WEBHOOK_QUEUE != Conf.CLUSTER_NAME  # not the image queue
    assert settings.WEBHOOK_QUEUE in settings.Q_CLUSTER["ALT_CLUSTERS"]
    assert rows[1].attempted_at >= rows[0].next_retry_at - timedelta(seconds=1)  # type: ignore[operator]


class WorkerKilled(BaseException):
    """What a SIGKILL of the webhooks worker looks like from inside: nothing after it runs."""


def test_a_webhook_sender_killed_mid_attempt_loses_nothing_the_lease_ends_and_the_sweeper_sends_it(
    client_obj: ApiClient, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    post = webhook_delivery.http.post

    def killed(*args: Any, **kwargs: Any) -> Any:
        raise WorkerKilled

    monkeypatch.setattr(webhook_delivery.http, "post", killed)
    request = finished_request(client_obj, receiver.url())
    with pytest.raises(WorkerKilled):
        request_finished(request_id=request.pk)
    monkeypatch.setattr(webhook_delivery.http, "post", post)

    # The row was claimed, then nothing: it stays pending, leased past the attempt's timeout.
    (row,) = WebhookDelivery.objects.filter(request=request)
    assert (row.status, row.attempt) == ("pending", 1)
    assert row.attempted_at is not None and row.next_retry_at is not None
    lease = (row.next_retry_at - row.attempted_at).total_seconds()
    assert lease > settings.WEBHOOK_TIMEOUT
    # While the lease runs, the sweeper leaves it alone (the worker may only be slow).
    assert webhook_sweep() == 0
    assert receiver.hits == []

    # The lease ends: the sweeper queues it, through the same task, and it is sent once.
    WebhookDelivery.objects.filter(pk=row.pk).update(next_retry_at=timezone.now() - timedelta(seconds=1))
    assert sweep().webhooks == 1
    (row,) = settled(request.pk)
    assert (row.attempt, row.status, row.status_code) == (1, "succeeded", 200)
    (hit,) = receiver.hits
    assert hit.headers["webhook-id"] == row.event_id
    assert verify(client_obj.webhook_secret, hit)["data"]["request_id"] == str(request.pk)
    assert sweep().webhooks == 0  # nothing left to send
    assert len(receiver.hits) == 1


def test_signature_fails_on_a_tampered_body_or_timestamp_or_an_old_timestamp(
    client_obj: ApiClient, receiver: Receiver
) -> None:
    request = finished_request(client_obj, receiver.url())
    request_finished(request_id=request.pk)
    settled(request.pk)
    (hit,) = receiver.hits
    assert verify(client_obj.webhook_secret, hit)["data"]["request_id"] == str(request.pk)

    with pytest.raises(WebhookVerificationError):
        verify(client_obj.webhook_secret, Hit(hit.path, hit.headers, hit.body.replace(b'"completed', b'"complete')))
    shifted = {**hit.headers, "webhook-timestamp": str(int(hit.headers["webhook-timestamp"]) + 1)}
    with pytest.raises(WebhookVerificationError):
        verify(client_obj.webhook_secret, Hit(hit.path, shifted, hit.body))
    with pytest.raises(WebhookVerificationError):
        verify(webhooks.api_client_rotate_webhook_secret(client=client_obj), hit)  # another secret
    # Signed correctly, but ten minutes ago: a replay.
    old = signing.webhook_headers(
        event_id=hit.headers["webhook-id"],
        body=hit.body.decode(),
        secrets=[ApiClient.objects.get(pk=client_obj.pk).previous_webhook_secret],
        timestamp=timezone.now() - timedelta(minutes=10),
    )
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(ApiClient.objects.get(pk=client_obj.pk).previous_webhook_secret).verify(hit.body, old)


# --- Retries ----------------------------------------------------------------------------------


def test_500_500_200_is_three_attempts_with_one_webhook_id(client_obj: ApiClient, receiver: Receiver) -> None:
    receiver.replies = [Reply(500, body=b"boom"), Reply(503), Reply(200)]
    request = finished_request(client_obj, receiver.url())
    request_finished(request_id=request.pk)

    rows = settled(request.pk)
    assert [(r.attempt, r.status, r.status_code) for r in rows] == [
        (1, "failed", 500),
        (2, "failed", 503),
        (3, "succeeded", 200),
    ]
    assert rows[0].error == "HTTP 500: boom"
    assert rows[0].next_retry_at is not None and rows[1].next_retry_at is not None
    assert rows[0].next_retry_at <= rows[1].attempted_at  # type: ignore[operator]
    assert len({r.event_id for r in rows}) == 1 and len({r.payload for r in rows}) == 1
    assert len(receiver.hits) == 3
    assert {h.headers["webhook-id"] for h in receiver.hits} == {rows[0].event_id}
    assert {h.body for h in receiver.hits} == {rows[0].payload.encode()}
    for hit in receiver.hits:  # every attempt is signed afresh and verifies
        assert verify(client_obj.webhook_secret, hit)["data"]["status"] == "completed_with_errors"


def test_a_delivery_that_keeps_failing_gives_up_after_the_schedule(
    client_obj: ApiClient, receiver: Receiver, settings: Any
) -> None:
    settings.WEBHOOK_RETRY_SCHEDULE = (5.0, 5.0)
    receiver.replies = [Reply(502)]
    request = finished_request(client_obj, receiver.url())
    request_finished(request_id=request.pk)

    rows = settled(request.pk)
    assert [(r.attempt, r.status) for r in rows] == [(1, "failed"), (2, "failed"), (3, "failed")]
    assert rows[-1].next_retry_at is None
    assert rows[-1].error == "HTTP 502: ok (gave up after 3 attempts)"
    assert len(receiver.hits) == 3


def test_a_hanging_receiver_times_out_and_is_retried(client_obj: ApiClient, receiver: Receiver, settings: Any) -> None:
    settings.WEBHOOK_TIMEOUT = 0.5
    receiver.replies = [Reply(hang=True), Reply(200)]
    request = finished_request(client_obj, receiver.url())
    request_finished(request_id=request.pk)

    rows = settled(request.pk)
    assert [(r.attempt, r.status, r.status_code) for r in rows] == [(1, "failed", None), (2, "succeeded", 200)]
    assert rows[0].error.startswith("timeout:")
    assert [h.headers["webhook-id"] for h in receiver.hits] == [rows[0].event_id] * 2


def test_retry_after_is_honoured_and_a_due_retry_is_found_from_the_database(
    client_obj: ApiClient, receiver: Receiver, settings: Any
) -> None:
    settings.WEBHOOK_TIME_SCALE = 1.0  # real delays: nothing may be retried during this test
    receiver.replies = [Reply(429, headers={"Retry-After": "7200"}), Reply(200)]
    request = finished_request(client_obj, receiver.url())
    request_finished(request_id=request.pk)

    first, second = WebhookDelivery.objects.filter(request=request).order_by("attempt")
    assert (first.status, first.status_code, second.status) == ("failed", 429, "pending")
    assert second.next_retry_at == first.next_retry_at
    wait = (second.next_retry_at - first.attempted_at).total_seconds()  # type: ignore[operator]
    assert 7200 <= wait < 7260  # Retry-After beats the schedule's 5 s (± jitter)

    # Nothing holds the retry but its row (as after a worker restart): the sweeper finds it
    # once it is due, not before.
    sweep()
    assert len(receiver.hits) == 1
    WebhookDelivery.objects.filter(pk=second.pk).update(next_retry_at=timezone.now() - timedelta(seconds=1))
    report = sweep()
    assert report.webhooks == 1
    second.refresh_from_db()
    assert (second.status, second.status_code) == ("succeeded", 200)
    assert len(receiver.hits) == 2


def test_retry_delay_follows_the_schedule_with_jitter_and_retry_after(settings: Any) -> None:
    settings.WEBHOOK_TIME_SCALE = 1.0
    delays = [webhook_delivery.retry_delay(attempt=1) for _ in range(50)]
    assert all(4.5 <= d <= 5.5 for d in delays) and len(set(delays)) > 1
    assert 300 * 0.9 <= webhook_delivery.retry_delay(attempt=2) <= 300 * 1.1
    assert webhook_delivery.retry_delay(attempt=9) >= 86400 * 0.9
    assert webhook_delivery.retry_delay(attempt=1, retry_after=60) == 60
    assert webhook_delivery.retry_delay(attempt=1, retry_after=10**9) == settings.WEBHOOK_RETRY_AFTER_MAX
    now = timezone.now()
    assert webhook_delivery.parse_retry_after("120") == 120
    http_date = (now + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 85 <= webhook_delivery.parse_retry_after(http_date, now=now) <= 90  # type: ignore[operator]
    assert webhook_delivery.parse_retry_after("soon") is None


# --- Redirects, 410, addresses ------------------------------------------------------------------


def test_a_redirect_is_a_failure_and_is_never_followed(
    client_obj: ApiClient, receiver: Receiver, canary: Receiver, settings: Any
) -> None:
    # The canary is allowed too, so only "never follow" keeps it from being contacted.
    settings.FETCH_ALLOWED_NETWORKS = f"{RECEIVER_HOST}/32 {CANARY_HOST}/32"
    receiver.replies = [Reply(302, headers={"Location": canary.url("/stolen")})]
    request = finished_request(client_obj, receiver.url())
    request_finished(request_id=request.pk)

    (row,) = settled(request.pk)
    assert (row.status, row.status_code, row.next_retry_at) == ("failed", 302, None)
    assert "not followed" in row.error and canary.url("/stolen") in row.error
    assert len(receiver.hits) == 1
    assert canary.hits == []


def test_410_disables_the_clients_webhooks_until_a_resend(
    api: APIClient, client_obj: ApiClient, receiver: Receiver
) -> None:
    receiver.replies = [Reply(410), Reply(200)]
    request = finished_request(client_obj, receiver.url())
    request_finished(request_id=request.pk)
    (row,) = settled(request.pk)
    assert (row.status, row.status_code, row.next_retry_at) == ("disabled", 410, None)
    client_obj.refresh_from_db()
    assert client_obj.webhook_disabled_at is not None
    assert "410" in client_obj.webhook_disabled_reason and receiver.url() in client_obj.webhook_disabled_reason

    later = finished_request(client_obj, receiver.url("/other"))
    request_finished(request_id=later.pk)
    (skipped,) = settled(later.pk)
    assert skipped.status == "disabled" and skipped.error.startswith("Not sent")
    assert len(receiver.hits) == 1

    response = api.post(f"/csv/requests/{later.pk}/webhook/resend")
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "succeeded"
    client_obj.refresh_from_db()
    assert (client_obj.webhook_disabled_at, client_obj.webhook_disabled_reason) == (None, "")
    assert [h.path for h in receiver.hits] == ["/hook", "/other"]


@pytest.mark.parametrize(
    "webhook_url",
    [
        "http://127.0.0.3:{port}/hook",
        "http://localhost:{port}/hook",
        "http://[::1]:{port}/hook",
        "https://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.3]:{port}/hook",
        "http://8.8.8.8/hook",  # public, but plain http
        "ftp://example.com/hook",
    ],
)
def test_a_webhook_url_the_sender_would_refuse_is_400_at_upload_and_never_contacted(
    api: APIClient, canary: Receiver, webhook_url: str
) -> None:
    port = canary.base_url.rsplit(":", 1)[1]
    response = upload(
        api, csv_bytes([("1", "A", ["https://img.example/a.jpg"])]), webhook_url=webhook_url.format(port=port)
    )
    assert response.status_code == 400
    assert "webhook_url" in response.json()
    assert ProcessingRequest.objects.count() == 0
    assert canary.hits == []


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_the_address_guard_applies_again_at_send(client_obj: ApiClient, canary: Receiver, scheme: str) -> None:
    # Saved before the rules changed, or the name now resolves elsewhere: refused at send too.
    request = finished_request(client_obj, canary.url().replace("http:", f"{scheme}:"))
    request_finished(request_id=request.pk)
    (row,) = settled(request.pk)
    assert (row.status, row.next_retry_at) == ("failed", None)  # not worth retrying
    assert row.error.startswith("blocked_address:")
    assert canary.hits == []


# --- Once per event, resend, rotation -----------------------------------------------------------


def test_finishing_twice_sends_one_event(client_obj: ApiClient, receiver: Receiver) -> None:
    request = finished_request(client_obj, receiver.url(), status=RequestStatus.FINALIZING)
    ProcessingRequest.objects.filter(pk=request.pk).update(completed_at=None)
    assert request_finalize(request_id=request.pk) == "completed_with_errors"
    assert request_finalize(request_id=request.pk) is None
    request_finished(request_id=request.pk)  # as if the hook ran again
    webhook_sweep(now=timezone.now() + timedelta(minutes=2))  # the sweeper's recovery
    (row,) = settled(request.pk)
    assert (row.attempt, row.status) == (1, "succeeded")
    assert WebhookDelivery.objects.count() == 1
    assert len(receiver.hits) == 1


def test_the_sweeper_creates_an_event_a_dead_worker_never_created(client_obj: ApiClient, receiver: Receiver) -> None:
    request = finished_request(client_obj, "")  # no URL of its own: the client's default
    webhooks.api_client_set_default_webhook_url(client=client_obj, url=receiver.url("/default"))
    assert WebhookDelivery.objects.count() == 0
    assert webhook_sweep(now=timezone.now() + timedelta(minutes=2)) == 1
    (row,) = settled(request.pk)
    assert (row.status, row.url) == ("succeeded", receiver.url("/default"))
    assert [h.path for h in receiver.hits] == ["/default"]


def test_resend_from_the_api_keeps_the_webhook_id_and_is_owner_filtered(
    api: APIClient, client_obj: ApiClient, receiver: Receiver
) -> None:
    request = finished_request(client_obj, receiver.url())
    request_finished(request_id=request.pk)
    (first,) = settled(request.pk)

    for attempt, path in (
        (2, f"/csv/requests/{request.pk}/webhook/resend"),
        (3, f"/csv/requests/{request.pk}/webhook/resend/"),
    ):
        response = api.post(path)
        assert response.status_code == 202, response.content
        body = response.json()
        assert (body["event_id"], body["attempt"], body["status"]) == (first.event_id, attempt, "succeeded")
    assert [h.headers["webhook-id"] for h in receiver.hits] == [first.event_id] * 3
    assert len({h.body for h in receiver.hits}) == 1
    assert [r.status for r in WebhookDelivery.objects.filter(request=request)] == ["succeeded"] * 3

    other_client, _ = api_client_create(name="other")
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(client=other_client)}")
    assert other.post(f"/csv/requests/{request.pk}/webhook/resend").status_code == 404
    assert other.post("/csv/requests/00000000-0000-0000-0000-000000000000/webhook/resend").status_code == 404
    assert len(receiver.hits) == 3

    running = finished_request(client_obj, receiver.url(), status=RequestStatus.PROCESSING)
    assert api.post(f"/csv/requests/{running.pk}/webhook/resend").json()["error"] == "not_finished"
    silent = finished_request(client_obj, "")
    response = api.post(f"/csv/requests/{silent.pk}/webhook/resend")
    assert (response.status_code, response.json()["error"]) == (409, "no_webhook_url")


def test_resend_from_the_admin_action(client_obj: ApiClient, receiver: Receiver, settings: Any) -> None:
    settings.WEBHOOK_RETRY_SCHEDULE = (1.0,)
    receiver.replies = [Reply(500), Reply(200)]
    request = finished_request(client_obj, receiver.url())
    request_finished(request_id=request.pk)
    rows = settled(request.pk)
    assert [r.status for r in rows] == ["failed", "succeeded"]
    receiver.replies = [Reply(200)]
    receiver.hits.clear()

    admin_user = get_user_model().objects.create_superuser("boss", "boss@example.com", "pw")
    browser = APIClient()
    browser.force_login(admin_user)
    selected = {"action": "resend_webhook", "_selected_action": [str(r.pk) for r in rows]}
    # It asks first (the admin's confirmation); its form posts the same with post=yes.
    asked = browser.post("/admin/requests_app/webhookdelivery/", selected)
    assert asked.status_code == 200 and "Yes, resend" in asked.content.decode()
    assert len(settled(request.pk)) == 2
    response = browser.post("/admin/requests_app/webhookdelivery/", {**selected, "post": "yes"})
    assert response.status_code == 302
    rows = settled(request.pk)
    assert [(r.attempt, r.status) for r in rows] == [(1, "failed"), (2, "succeeded"), (3, "succeeded")]
    assert [h.headers["webhook-id"] for h in receiver.hits] == [rows[0].event_id]  # one resend per request
    assert browser.get(f"/admin/requests_app/webhookdelivery/{rows[2].pk}/change/").status_code == 200


def test_rotation_sends_both_signatures_until_the_window_ends(
    api: APIClient, client_obj: ApiClient, receiver: Receiver
) -> None:
    old = client_obj.webhook_secret
    new = webhooks.api_client_rotate_webhook_secret(client=client_obj)
    assert new != old and new.startswith("whsec_") and len(base64.b64decode(new[6:])) >= 24
    request = finished_request(client_obj, receiver.url())
    request_finished(request_id=request.pk)
    settled(request.pk)
    (hit,) = receiver.hits
    assert len(hit.headers["webhook-signature"].split(" ")) == 2
    assert verify(new, hit)["data"]["request_id"] == str(request.pk)
    assert verify(old, hit)["data"]["request_id"] == str(request.pk)

    # After the window: one signature, and the sweeper forgets the old secret.
    ApiClient.objects.filter(pk=client_obj.pk).update(webhook_secret_rotated_at=timezone.now() - timedelta(hours=25))
    assert api.post(f"/csv/requests/{request.pk}/webhook/resend").status_code == 202
    second = receiver.hits[1]
    assert len(second.headers["webhook-signature"].split(" ")) == 1
    assert verify(new, second)
    with pytest.raises(WebhookVerificationError):
        verify(old, second)
    webhook_sweep()
    client_obj.refresh_from_db()
    assert (client_obj.webhook_secret, client_obj.previous_webhook_secret) == (new, "")


def test_create_api_client_prints_the_webhook_secret_before_the_key(db: Any, receiver: Receiver) -> None:
    out = io.StringIO()
    call_command("create_api_client", "hooked", "--webhook-url", receiver.url(), stdout=out)
    lines = out.getvalue().strip().splitlines()
    client = ApiClient.objects.get(user__username="hooked")
    assert lines[-1].startswith("ipk_")
    secret_lines = [i for i, line in enumerate(lines) if line.startswith("webhook secret: ")]
    assert secret_lines and secret_lines[0] < len(lines) - 1
    secret = lines[secret_lines[0]].removeprefix("webhook secret: ")
    assert secret == client.webhook_secret and len(base64.b64decode(secret.removeprefix("whsec_"))) >= 24
    assert client.default_webhook_url == receiver.url()
    assert receiver.hits == []

    with pytest.raises(CommandError, match="webhook-url"):
        call_command("create_api_client", "evil", "--webhook-url", "http://127.0.0.1:9/", stdout=io.StringIO())
    assert not ApiClient.objects.filter(user__username="evil").exists()


def test_every_client_has_its_own_secret(db: Any) -> None:
    secrets = {api_client_create(name=f"c{i}")[0].webhook_secret for i in range(5)}
    assert len(secrets) == 5
    payload = json.dumps({"a": 1})
    headers = signing.webhook_headers(
        event_id="msg_x", body=payload, secrets=list(secrets)[:1], timestamp=timezone.now()
    )
    assert Webhook(next(iter(secrets))).verify(payload, headers) == {"a": 1}


def test_a_request_that_finishes_again_sends_a_new_event_and_stops_the_old_retries(
    client_obj: ApiClient, receiver: Receiver, settings: Any
) -> None:
    settings.WEBHOOK_TIME_SCALE = 1.0
    receiver.replies = [Reply(503, headers={"Retry-After": "7200"}), Reply(200)]
    request = finished_request(client_obj, receiver.url(), status=RequestStatus.COMPLETED_WITH_ERRORS)
    request_finished(request_id=request.pk)
    failed, waiting = WebhookDelivery.objects.filter(request=request).order_by("attempt")
    assert (failed.status, waiting.status) == ("failed", "pending")

    # Its failed images were retried and the request completed again.
    ProcessingRequest.objects.filter(pk=request.pk).update(
        status=RequestStatus.COMPLETED, images_done=3, images_failed=0, completed_at=timezone.now()
    )
    request_finished(request_id=request.pk)
    waiting.refresh_from_db()
    assert (waiting.status, waiting.next_retry_at) == ("failed", None)
    assert waiting.error.startswith("Superseded by event ")
    new = WebhookDelivery.objects.filter(request=request).exclude(event_id=failed.event_id).get()
    assert (new.attempt, new.status) == (1, "succeeded")
    first, second = receiver.hits
    assert first.headers["webhook-id"] != second.headers["webhook-id"] == new.event_id
    assert verify(client_obj.webhook_secret, second)["data"]["status"] == "completed"


# --- The real service: the webhooks' own qcluster, a restart, a kill, a full image queue ------


def _secret_line(stack: Stack) -> str:
    # The stack made the client already: its secret is printed again only when asked for.
    lines = stack.manage("create_api_client", "e2e", "--show-webhook-secret").splitlines()
    return next(line.removeprefix("webhook secret: ") for line in lines if line.startswith("webhook secret: "))


def _wait_hits(receiver: Receiver, count: int, stack: Stack, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(receiver.hits) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(receiver.hits)} of {count} deliveries:\n{stack.log.read_text()[-3000:]}")
        time.sleep(0.1)


@pytest.mark.e2e
def test_real_webhook_workers_retry_and_a_restart_loses_no_due_webhook_retry(
    tmp_path: Any, module_image_server: ImageServer
) -> None:
    quick = Receiver(replies=[Reply(500), Reply(200)])  # retried after ~5 ms, held by the webhooks task
    slow = Receiver(replies=[Reply(503, headers={"Retry-After": "3600000"}), Reply(200)])  # ~1 h: the sweeper's
    env = {"WEBHOOK_TIME_SCALE": "0.001"}
    image = module_image_server.add("/wh/a.jpg", make_image(64, 48))
    csv_file = ("catalogue.csv", csv_bytes([("1", "A", [image])]), "text/csv")
    first = start_stack(tmp_path, env)
    try:
        secret = _secret_line(first)
        for receiver in (quick, slow):
            # Connection: close, or gunicorn's gthread worker may sit out its 30 s graceful
            # timeout on the kept-alive connection when the stack stops.
            response = requests.post(
                first.base_url + "/csv/upload",
                headers={"Authorization": f"Bearer {first.api_key}", "Connection": "close"},
                files={"file": csv_file},
                data={"webhook_url": receiver.url()},
                timeout=60,
            )
            assert response.status_code == 202, response.text
        _wait_hits(quick, 2, first)
        _wait_hits(slow, 1, first)
    finally:
        stop_stack(first)  # graceful: the running delivery records its result first
    assert quick.hits[0].headers["webhook-id"] == quick.hits[1].headers["webhook-id"]
    assert verify(secret, quick.hits[1])["data"]["status"] == "completed"

    # New clusters on the same database; the retry exists only as a row. Time passes
    # (the row is made due) and the sweeper runs: the new webhooks cluster sends it.
    second = start_stack(tmp_path, env)
    try:
        out = second.manage(
            "shell",
            "--no-imports",
            "-c",
            "from django.utils import timezone; from requests_app.models import WebhookDelivery as W; "
            "print(W.objects.filter(status='pending').update(next_retry_at=timezone.now())); "
            "from imageproc.pipeline.sweep import sweep; print(sweep().webhooks)",
        )
        assert out.split() == ["1", "1"]
        _wait_hits(slow, 2, second)
    finally:
        stop_stack(second)
        quick.close()
        slow.close()
    assert slow.hits[0].headers["webhook-id"] == slow.hits[1].headers["webhook-id"]
    assert verify(secret, slow.hits[1])["data"]["request_id"] == verify(secret, slow.hits[0])["data"]["request_id"]


def _upload(stack: Stack, rows: list[tuple[str, str, list[str]]], webhook_url: str = "") -> str:
    response = requests.post(
        stack.base_url + "/csv/upload",
        headers={"Authorization": f"Bearer {stack.api_key}", "Connection": "close"},
        files={"file": ("catalogue.csv", csv_bytes(rows), "text/csv")},
        data={"webhook_url": webhook_url} if webhook_url else {},
        timeout=60,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["request_id"])


@pytest.mark.e2e
def test_a_completion_webhook_is_sent_while_image_batches_are_still_queued(
    tmp_path: Any, module_image_server: ImageServer
) -> None:
    # One image per batch, half a second each: the big request keeps both image workers (four
    # on the scale lane) busy for seconds, with dozens of batches queued behind them.
    env = {"IMAGE_BATCH_SIZE": "1", "IMAGE_IO_THREADS": "1", "UPLOAD_THROTTLE_RATE": "1000/min"}
    body = make_image(64, 48)
    small = module_image_server.add("/wh-queued/small.jpg", body, delay=1.5)
    big = [module_image_server.add(f"/wh-queued/{i}.jpg", body, delay=0.5) for i in range(60)]
    receiver = Receiver()
    stack = start_stack(tmp_path, env)
    try:
        # The small request's only image is under way first; the big one is queued behind it.
        small_id = _upload(stack, [("1", "Small", [small])], receiver.url())
        big_id = _upload(stack, [(str(i + 1), f"P{i}", [url]) for i, url in enumerate(big)])
        _wait_hits(receiver, 1, stack)
        # The moment the event arrives: most of the big request's batches are still to do.
        ended = stack.rows(
            "SELECT images_done + images_failed FROM requests_app_processingrequest WHERE id = %s", uuid.UUID(big_id)
        )[0][0]
        queued = requests.get(stack.base_url + "/health/", timeout=10).json()["checks"]["broker"]["queued"]
        assert ended < 30, f"the webhook came after {ended} of the 60 images"
        assert queued > 0  # image batches still wait in the image queue
        assert stack.wait_finished(small_id)["status"] == "completed"
        assert stack.wait_finished(big_id, timeout=180)["status"] == "completed"
    finally:
        stop_stack(stack)
        receiver.close()
    (hit,) = receiver.hits
    assert json.loads(hit.body)["data"]["request_id"] == small_id


@pytest.mark.e2e
def test_a_killed_webhook_cluster_loses_no_webhook_its_lease_ends_and_the_sweeper_resends_it(
    tmp_path: Any, module_image_server: ImageServer
) -> None:
    # The receiver takes the first POST and never answers it: the webhooks worker is in the
    # middle of the attempt when its whole cluster is SIGKILLed.
    receiver = Receiver(replies=[Reply(hang=True), Reply(200)])
    image = module_image_server.add("/wh-kill/a.jpg", make_image(64, 48))
    image_clusters = 2 if e2e_lane() == "scale" else 1
    stack = start_stack(tmp_path, clusters=image_clusters)  # the webhooks cluster started apart, to kill it
    try:
        secret = _secret_line(stack)
        request_id = _upload(stack, [("1", "A", [image])], receiver.url())
        _wait_hits(receiver, 1, stack)
        (webhooks_cluster,) = stack.webhook_clusters
        stack.kill_cluster(webhooks_cluster)

        # The row is claimed and leased; nothing recorded its outcome.
        ((status, attempt, leased),) = stack.rows(
            "SELECT status, attempt, next_retry_at > attempted_at FROM requests_app_webhookdelivery "
            "WHERE request_id = %s",
            uuid.UUID(request_id),
        )
        assert (status, attempt, bool(leased)) == ("pending", 1, True)
        stack.start_webhook_cluster()
        assert wait_clusters(stack, image_clusters), stack.logs()

        sweep_now = "from requests_app.services.webhook_sweep import webhook_sweep; print(webhook_sweep())"
        # While the lease runs the sweeper leaves the row alone (its worker may only be slow) ...
        assert stack.manage("shell", "--no-imports", "-c", sweep_now).split() == ["0"]
        time.sleep(1)
        assert len(receiver.hits) == 1
        # ... and once it has ended (time passes), queues it to the new webhooks cluster.
        expire_and_sweep = (
            "from django.utils import timezone; from requests_app.models import WebhookDelivery as W; "
            "print(W.objects.filter(status='pending').update(next_retry_at=timezone.now())); " + sweep_now
        )
        assert stack.manage("shell", "--no-imports", "-c", expire_and_sweep).split() == ["1", "1"]
        _wait_hits(receiver, 2, stack)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = stack.rows(
                "SELECT status, attempt FROM requests_app_webhookdelivery WHERE request_id = %s", uuid.UUID(request_id)
            )
            if rows == [("succeeded", 1)]:
                break
            time.sleep(0.1)
        assert rows == [("succeeded", 1)]
    finally:
        stop_stack(stack)
        receiver.close()
    first, second = receiver.hits
    assert first.headers["webhook-id"] == second.headers["webhook-id"]  # the receiver can deduplicate
    assert verify(secret, second)["data"]["request_id"] == request_id
