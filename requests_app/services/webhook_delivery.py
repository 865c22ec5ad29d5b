"""Sending webhook attempts: one mechanism, the `webhooks` queue of django-q2.

Every attempt, first or retry, automatic or resent, is sent by one task,
imageproc.tasks.webhook_deliver, run by a qcluster of its own (`manage.py webhook_cluster`,
started by `manage.py serve` beside the image workers; cluster WEBHOOK_QUEUE in
Q_CLUSTER["ALT_CLUSTERS"]). Nothing else sends: `webhook_queue` is the only way in, and the
WebhookDelivery rows are the schedule. How that keeps each guarantee:

* A completion webhook never waits behind image batches: it is queued on its own queue,
  which only webhook tasks use, so a request that finishes while thousands of batches are
  queued has its event sent within a poll of the webhooks cluster.
* Retries run on schedule (≈5 s, 5 min, 30 min, ... WEBHOOK_RETRY_SCHEDULE, never before
  Retry-After): a failed attempt creates the next one, due at its time. One due within
  WEBHOOK_HOLD_SECONDS (the 5 s one) is waited for and sent by the same task: a webhooks
  worker may idle for seconds, an image worker never does. A later one is queued by the
  sweeper once due (it looks every SWEEP_INTERVAL_MINUTES).
* Nothing is lost when a worker dies: before sending, the task claims the row with a
  conditional UPDATE that moves its due time to the end of a lease. A worker that dies
  mid-send leaves the row leased; once the lease ends the row is due again and the sweeper
  queues it, through this same task. A task lost by the broker (Redis loses in-flight tasks)
  leaves a due row, found the same way. A task that runs twice, or late, finds the row
  claimed or finished and does nothing; an attempt is sent once, or again only after its
  worker died (receivers deduplicate on webhook-id).

Why a django-q2 queue rather than a sender loop of our own: it reuses the workers,
timeouts, recycling, stats (/health/) and graceful stop that the image side already relies
on; its sync mode runs tasks in line in the tests, as it does for the image tasks, so no
test-only branch lives here; and the rows, not the queue, stay the truth.

Every attempt is signed afresh (imageproc.engine.signing), because receivers refuse an old
`webhook-timestamp`; the body and the webhook-id never change. All HTTP goes through
imageproc.engine.http.post: the address guard at connect time, no redirects, one total
deadline. No database transaction is open around it.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_q.tasks import async_task

from imageproc.engine import http, signing
from imageproc.engine.http import parse_retry_after
from requests_app.models import ApiClient, ProcessingRequest, WebhookDelivery, WebhookStatus
from requests_app.services.webhook_urls import WebhookUrlInvalid, webhook_policy, webhook_url_check

logger = logging.getLogger(__name__)

TASK = "imageproc.tasks.webhook_deliver"
NOT_DUE = "not due"

# A claimed attempt whose worker recorded nothing this long after its timeout is due again.
_LEASE_MARGIN = 60.0
# A held retry may be sent a hair before its stored due time (clock reads, millisecond storage).
_EARLY = timedelta(seconds=1)
_ERROR_MAX = 1000
_BODY_SNIPPET = 200


# --- The one way in ---------------------------------------------------------------------------


def webhook_queue(delivery_id: Any) -> None:
    """Queue an attempt on the webhooks queue once the current transaction commits (at once
    outside one). Only a trigger: if queueing fails, the row is still due and the sweeper
    queues it."""
    delivery_id = str(delivery_id)

    def enqueue() -> None:
        try:
            async_task(TASK, delivery_id, cluster=settings.WEBHOOK_QUEUE)
        except Exception:
            logger.exception("could not queue webhook delivery %s; the sweeper will", delivery_id)

    transaction.on_commit(enqueue)


# --- The task ---------------------------------------------------------------------------------


def webhook_deliver(*, delivery_id: Any) -> str:
    """The body of the task imageproc.tasks.webhook_deliver: send one due attempt and record
    how it went; then, while the event's next attempt comes due within WEBHOOK_HOLD_SECONDS
    (and the task's time allows), wait for it and send it too. Safe to run twice, late or
    never (the sweeper). Returns the status last recorded, or "not due".

    2xx: succeeded. 410: disabled, and the client's webhooks with it (the reason is kept).
    3xx (never followed), other 4xx, a refused URL: failed for good. 408, 429, 5xx, timeouts
    and connection errors: failed, and the next attempt is created, due after the next delay
    of WEBHOOK_RETRY_SCHEDULE (with jitter, at least Retry-After), until the schedule runs out.
    """
    started = time.monotonic()
    # Each attempt may take two timeouts (a plain-http URL is resolved for its check, then sent).
    budget = float(settings.WEBHOOK_TASK_TIMEOUT) - 2 * float(settings.WEBHOOK_TIMEOUT)
    status, following = _attempt(delivery_id)
    while following is not None and following.next_retry_at is not None:
        wait = max((following.next_retry_at - timezone.now()).total_seconds(), 0.0)
        if wait > float(settings.WEBHOOK_HOLD_SECONDS) or time.monotonic() - started + wait > budget:
            break  # the sweeper queues it once it is due
        time.sleep(wait)
        held, following = _attempt(following.pk)
        if held != NOT_DUE:  # else a resend's task got to it first
            status = held
    return status


def _attempt(delivery_id: Any) -> tuple[str, WebhookDelivery | None]:
    """Claim, send and record one attempt. Returns its status and the attempt that follows
    it (a retry, not yet due), if any."""
    now = timezone.now()
    lease_end = now + timedelta(seconds=float(settings.WEBHOOK_TIMEOUT) + _LEASE_MARGIN)
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_id, status=WebhookStatus.PENDING, next_retry_at__lte=now + _EARLY
    ).update(next_retry_at=lease_end, attempted_at=now)
    if not claimed:
        return NOT_DUE, None
    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    owner_id = ProcessingRequest.objects.filter(pk=delivery.request_id).values_list("owner_id", flat=True).get()
    client = client_for(owner_id)
    if client.webhook_disabled_at is not None:
        _finish(delivery, status=WebhookStatus.DISABLED, next_retry_at=None, error=disabled_error(client))
        return WebhookStatus.DISABLED, None
    return _record(delivery, client, _send(delivery, client))


# --- Sending one attempt ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    ok: bool = False
    gone: bool = False
    retryable: bool = False
    status_code: int | None = None
    latency_ms: int | None = None
    error: str = ""
    retry_after: float | None = None


def _send(delivery: WebhookDelivery, client: ApiClient) -> _Outcome:
    started = time.monotonic()

    def elapsed_ms() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        if urlsplit(delivery.url).scheme.lower() != "https":
            webhook_url_check(delivery.url)  # plain http only to exempted hosts, at send too
        timestamp = timezone.now()
        secrets = signing.signing_secrets(
            current=client.webhook_secret,
            previous=client.previous_webhook_secret,
            rotated_at=client.webhook_secret_rotated_at,
            window=timedelta(hours=settings.WEBHOOK_SECRET_ROTATION_HOURS),
            now=timestamp,
        )
        headers = signing.webhook_headers(
            event_id=delivery.event_id, body=delivery.payload, secrets=secrets, timestamp=timestamp
        )
        result = http.post(delivery.url, body=delivery.payload.encode(), headers=headers, policy=webhook_policy())
    except WebhookUrlInvalid as exc:
        retryable = exc.reason == "dns_error"  # a DNS failure may pass; a refused address does not
        return _Outcome(retryable=retryable, latency_ms=elapsed_ms(), error=f"{exc.reason}: {exc}")
    except http.FetchError as exc:
        return _Outcome(retryable=exc.transient, latency_ms=elapsed_ms(), error=f"{exc.code}: {exc.message}")

    code = result.status_code
    latency = int(result.elapsed * 1000)
    if 200 <= code < 300:
        return _Outcome(ok=True, status_code=code, latency_ms=latency)
    if code == 410:
        return _Outcome(gone=True, status_code=code, latency_ms=latency, error="HTTP 410 Gone")
    if 300 <= code < 400:
        location = result.headers.get("Location", "")
        return _Outcome(
            status_code=code, latency_ms=latency, error=f"HTTP {code}: redirect to {location!r} not followed"
        )
    snippet = result.body[:_BODY_SNIPPET].decode("utf-8", "replace").strip()
    return _Outcome(
        retryable=http.transient_status(code),
        status_code=code,
        latency_ms=latency,
        error=f"HTTP {code}" + (f": {snippet}" if snippet else ""),
        retry_after=parse_retry_after(result.headers.get("Retry-After"), now=timezone.now()),
    )


# --- Recording it, and the retry schedule -------------------------------------------------------


def retry_delay(*, attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based), scaled by
    WEBHOOK_TIME_SCALE: the schedule's delay ± jitter, and never less than Retry-After."""
    schedule = settings.WEBHOOK_RETRY_SCHEDULE
    base = float(schedule[min(attempt, len(schedule)) - 1])
    jitter = float(settings.WEBHOOK_RETRY_JITTER)
    delay = base * random.uniform(1 - jitter, 1 + jitter)
    if retry_after is not None:
        delay = max(delay, min(retry_after, float(settings.WEBHOOK_RETRY_AFTER_MAX)))
    return delay * float(settings.WEBHOOK_TIME_SCALE)


def _finish(delivery: WebhookDelivery, **fields: Any) -> bool:
    """Record an attempt's result, once: only the task holding the pending row may."""
    return bool(WebhookDelivery.objects.filter(pk=delivery.pk, status=WebhookStatus.PENDING).update(**fields))


def _record(delivery: WebhookDelivery, client: ApiClient, outcome: _Outcome) -> tuple[str, WebhookDelivery | None]:
    now = timezone.now()
    result = {"status_code": outcome.status_code, "latency_ms": outcome.latency_ms, "error": outcome.error[:_ERROR_MAX]}
    if outcome.ok:
        _finish(delivery, status=WebhookStatus.SUCCEEDED, next_retry_at=None, **result)
        logger.info("webhook %s #%d delivered to %s", delivery.event_id, delivery.attempt, delivery.url)
        return WebhookStatus.SUCCEEDED, None
    if outcome.gone:
        if _finish(delivery, status=WebhookStatus.DISABLED, next_retry_at=None, **result):
            reason = (
                f"{delivery.url} answered 410 Gone at {now:%Y-%m-%d %H:%M:%S} UTC "
                f"(event {delivery.event_id}, attempt {delivery.attempt})."
            )
            ApiClient.objects.filter(pk=client.pk, webhook_disabled_at__isnull=True).update(
                webhook_disabled_at=now, webhook_disabled_reason=reason
            )
            logger.warning("webhooks of client %s disabled: %s", client.pk, reason)
        return WebhookStatus.DISABLED, None
    if outcome.retryable and delivery.attempt <= len(settings.WEBHOOK_RETRY_SCHEDULE):
        due = now + timedelta(seconds=retry_delay(attempt=delivery.attempt, retry_after=outcome.retry_after))
        following = None
        if _finish(delivery, status=WebhookStatus.FAILED, next_retry_at=due, **result):
            following = create_attempt(
                request_id=delivery.request_id,
                event_id=delivery.event_id,
                event_type=delivery.event_type,
                url=delivery.url,
                attempt=delivery.attempt + 1,
                payload=delivery.payload,
                status=WebhookStatus.PENDING,
                next_retry_at=due,
            )
        logger.info("webhook %s #%d failed (%s); retry at %s", delivery.event_id, delivery.attempt, outcome.error, due)
        return WebhookStatus.FAILED, following
    if outcome.retryable:
        result["error"] = f"{outcome.error} (gave up after {delivery.attempt} attempts)"[:_ERROR_MAX]
    _finish(delivery, status=WebhookStatus.FAILED, next_retry_at=None, **result)
    logger.warning("webhook %s #%d failed for good: %s", delivery.event_id, delivery.attempt, result["error"])
    return WebhookStatus.FAILED, None


# --- Shared with the use cases ------------------------------------------------------------------


def create_attempt(**fields: Any) -> WebhookDelivery | None:
    """Insert one attempt; None if another task inserted the same (event_id, attempt) first."""
    try:
        with transaction.atomic():  # a savepoint: a duplicate must not break an outer transaction
            return WebhookDelivery.objects.create(**fields)
    except IntegrityError:
        return None


def client_for(owner_id: Any) -> ApiClient:
    # A staff user uploading through the browsable API has no client yet: give it one (its
    # secret is in the admin) rather than send an unsigned webhook.
    client, _ = ApiClient.objects.get_or_create(user_id=owner_id)
    return client


def disabled_error(client: ApiClient) -> str:
    when = client.webhook_disabled_at
    stamp = f"{when:%Y-%m-%d %H:%M:%S} UTC" if when else "earlier"
    return f"Not sent: webhooks for this client were disabled {stamp}. {client.webhook_disabled_reason}".strip()
