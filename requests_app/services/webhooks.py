"""Completion webhooks, signed, retried, logged and resendable (Standard Webhooks 1.0).

How it holds together:

* One event per completion of a request: `request.completed`, the final status in the
  payload. Its id (the `webhook-id` header) is derived from the request and its
  `completed_at`, so creating it twice (the finaliser, then the sweeper's recovery) runs into
  the unique (event_id, attempt) constraint instead of sending twice. A request that is
  retried and completes again has a new `completed_at`, hence a new event.
* One WebhookDelivery row per attempt, and the rows are the schedule: a `pending` row whose
  `next_retry_at` has passed is due. The finaliser's task, an in-process timer (for waits
  shorter than a sweep interval) and the sweeper only *trigger* webhook_deliver; it claims
  the row with a conditional UPDATE that moves `next_retry_at` to the end of a lease, so an
  attempt is sent once, or again only if its worker died (receivers dedupe on webhook-id).
* Every attempt is signed afresh, because receivers refuse a `webhook-timestamp` older than
  a few minutes; the body and the webhook-id never change, across retries and resends.
* All HTTP goes through imageproc.engine.fetch.post: the address guard at connect time, no
  redirects, one total deadline. No database transaction is open around it.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import logging
import math
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError, connections, transaction
from django.utils import timezone
from django_q.conf import Conf
from django_q.tasks import async_task
from standardwebhooks import Webhook

from imageproc.engine import fetch
from imageproc.storage import absolute_url
from requests_app.models import (
    FINISHED_STATUSES,
    ApiClient,
    ProcessingRequest,
    WebhookDelivery,
    WebhookStatus,
    new_webhook_secret,
)
from requests_app.services.clients import api_client_enable_webhooks
from requests_app.services.errors import RequestNotFinished, ServiceError

logger = logging.getLogger(__name__)

EVENT_REQUEST_COMPLETED = "request.completed"
TASK = "imageproc.tasks.webhook_deliver"

# Fixed forever: event ids are uuid5(namespace, request + type + completion time).
_EVENT_NAMESPACE = uuid.UUID("5079c7f6-eac2-4f12-9079-1faa6c5fbe05")
# A claimed attempt whose worker recorded nothing this long after its timeout is due again.
_LEASE_MARGIN = 60.0
# A timer may fire a hair before the stored due time (clock reads, millisecond storage).
_EARLY = timedelta(seconds=1)
# Finished requests this recent are checked for a missing event: a worker that died between
# setting the final status and creating the event would otherwise lose it.
_RECOVERY_WINDOW = timedelta(hours=1)
_RECOVERY_GRACE = timedelta(seconds=30)
_SWEEP_BATCH = 1000
_ERROR_MAX = 1000
_BODY_SNIPPET = 200
# Failures that may go away by themselves. 3xx, other 4xx and a refused address do not.
_RETRYABLE_FETCH_ERRORS = frozenset({"timeout", "connect_error", "dns_error", "fetch_error"})


class WebhookUrlInvalid(ServiceError):
    status_code = 400
    code = "invalid_webhook_url"

    def __init__(self, message: str, *, reason: str = "invalid_url") -> None:
        super().__init__(message)
        # Like fetch.FetchError.code: invalid_url, blocked_address, https_required, dns_error.
        self.reason = reason


class WebhookNotConfigured(ServiceError):
    status_code = 409
    code = "no_webhook_url"


# --- URLs and the policy --------------------------------------------------------------------


def webhook_policy() -> fetch.FetchPolicy:
    """Built per call (it is cheap) so that settings overrides apply at once."""
    timeout = float(settings.WEBHOOK_TIMEOUT)
    return fetch.FetchPolicy(
        allowed_networks=fetch.parse_networks(settings.FETCH_ALLOWED_NETWORKS),
        connect_timeout=min(5.0, timeout),
        total_timeout=timeout,
        max_redirects=0,
        user_agent=settings.WEBHOOK_USER_AGENT,
    )


def webhook_url_check(url: str) -> str:
    """Return the URL if deliveries may go there; raise WebhookUrlInvalid otherwise.

    Refused: anything fetch.validate_url refuses (other schemes, credentials, odd hosts), a
    host that resolves to any private, loopback, link-local or reserved address outside
    FETCH_ALLOWED_NETWORKS, and plain http unless every address is in FETCH_ALLOWED_NETWORKS
    (local use). Called when a URL is saved; fetch.post applies the address guard again at
    every send, since DNS answers change.
    """
    try:
        fetch.validate_url(url)
    except fetch.InvalidUrl as exc:
        raise WebhookUrlInvalid(str(exc)) from None
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    addresses = _resolve(host, parts.port or (443 if scheme == "https" else 80))
    networks = fetch.parse_networks(settings.FETCH_ALLOWED_NETWORKS)
    if not all(fetch.is_address_allowed(address, networks) for address in addresses):
        raise WebhookUrlInvalid(
            f"The host {host!r} resolves to a private, loopback or reserved address; webhooks are not sent there.",
            reason="blocked_address",
        )
    if scheme != "https" and not all(_exempt(address, networks) for address in addresses):
        raise WebhookUrlInvalid("Webhook URLs must use https.", reason="https_required")
    return url


def _resolve(host: str, port: int) -> list[str]:
    """Every address of the host, waiting for DNS no longer than WEBHOOK_TIMEOUT."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    box: list[Any] = []

    def lookup() -> None:
        try:
            box.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as exc:
            box.append(exc)

    # getaddrinfo() cannot be interrupted: wait for it in a helper thread, up to the timeout.
    thread = threading.Thread(target=lookup, name="webhook-dns", daemon=True)
    thread.start()
    thread.join(float(settings.WEBHOOK_TIMEOUT))
    if not box:
        raise WebhookUrlInvalid(f"The host {host!r} did not resolve in time.", reason="dns_error")
    if isinstance(box[0], BaseException) or not box[0]:
        raise WebhookUrlInvalid(f"The host {host!r} does not resolve.", reason="dns_error")
    return list(dict.fromkeys(str(info[4][0]) for info in box[0]))


def _exempt(address: str, networks: Sequence[fetch.IPNetwork]) -> bool:
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in networks)


# --- Events, payloads and signatures ---------------------------------------------------------


def event_id_for(*, request_id: Any, event_type: str, completed_at: datetime) -> str:
    """The webhook-id of one completion of one request: the same whoever computes it."""
    key = f"{uuid.UUID(str(request_id))}:{event_type}:{completed_at.astimezone(UTC).isoformat()}"
    return "msg_" + uuid.uuid5(_EVENT_NAMESPACE, key).hex


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event_payload(*, request: ProcessingRequest) -> str:
    """The body of `request.completed`, as sent: small, and the same for every attempt."""
    assert request.completed_at is not None
    body = {
        "type": EVENT_REQUEST_COMPLETED,
        "timestamp": _iso(request.completed_at),
        "data": {
            "request_id": str(request.pk),
            "status": request.status,
            "progress": {
                "images_total": request.images_total,
                "images_done": request.images_done,
                "images_failed": request.images_failed,
                "percent": request.percent,
            },
            "bytes_in": request.bytes_in,
            "bytes_out": request.bytes_out,
            "status_url": absolute_url(request.get_status_path()),
            "output_url": absolute_url(request.get_output_path()),
        },
    }
    return json.dumps(body, separators=(",", ":"))


def webhook_headers(*, event_id: str, body: str, secrets: Iterable[str], timestamp: datetime) -> dict[str, str]:
    """Standard Webhooks headers; one `v1,` signature per secret, space-separated (rotation)."""
    timestamp = timestamp.astimezone(UTC)
    signatures = " ".join(Webhook(secret).sign(event_id, timestamp, body) for secret in secrets)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(math.floor(timestamp.timestamp())),
        "webhook-signature": signatures,
        "content-type": "application/json",
    }


def signing_secrets(*, client: ApiClient, now: datetime) -> list[str]:
    """The current secret, and the previous one while its rotation window lasts."""
    secrets = [client.webhook_secret]
    previous = client.previous_webhook_secret
    if previous:
        rotated = client.webhook_secret_rotated_at
        window = timedelta(hours=settings.WEBHOOK_SECRET_ROTATION_HOURS)
        if rotated is None or now < rotated + window:
            secrets.append(previous)
    return secrets


def _client_for(owner_id: Any) -> ApiClient:
    # A staff user uploading through the browsable API has no client yet: give it one (its
    # secret is in the admin) rather than send an unsigned webhook.
    client, _ = ApiClient.objects.get_or_create(user_id=owner_id)
    return client


# --- Creating events and attempts ------------------------------------------------------------


def webhook_event_create(*, request_id: Any, send_here: bool = False) -> WebhookDelivery | None:
    """Record the completion event of a finished request and queue its first attempt, or
    with `send_here` (the worker that finished the request) send it from a thread of this
    process: in the queue, it would wait behind every image batch queued before it.

    Returns that first attempt; None when the request has no webhook URL (its own, else its
    client's default), is not finished, or already has this event. Idempotent: the event id
    is derived from the completion, and (event_id, attempt) is unique. If the client's
    webhooks are disabled, the attempt is logged as `disabled` and nothing is sent.
    """
    request = ProcessingRequest.objects.filter(pk=request_id, status__in=FINISHED_STATUSES).first()
    if request is None or request.completed_at is None:
        return None
    # Most requests have no webhook: find that out in one small query, creating nothing.
    client = ApiClient.objects.filter(user_id=request.owner_id).first()
    url = request.webhook_url or (client.default_webhook_url if client else "")
    if not url:
        return None
    client = client or _client_for(request.owner_id)
    event_id = event_id_for(
        request_id=request.pk, event_type=EVENT_REQUEST_COMPLETED, completed_at=request.completed_at
    )
    if WebhookDelivery.objects.filter(event_id=event_id).exists():
        return None
    now = timezone.now()
    disabled = client.webhook_disabled_at is not None
    delivery = _create_attempt(
        request_id=request.pk,
        event_id=event_id,
        event_type=EVENT_REQUEST_COMPLETED,
        url=url,
        attempt=1,
        payload=event_payload(request=request),
        status=WebhookStatus.DISABLED if disabled else WebhookStatus.PENDING,
        next_retry_at=None if disabled else now,
        error=_disabled_error(client) if disabled else "",
    )
    if delivery is None:
        return None
    # A request retried and finished again makes its previous completion event stale: stop
    # that event's waiting retries (an attempt in flight is left to finish).
    WebhookDelivery.objects.filter(
        request_id=request.pk, status=WebhookStatus.PENDING, attempted_at__isnull=True
    ).exclude(event_id=event_id).update(
        status=WebhookStatus.FAILED,
        next_retry_at=None,
        error=f"Superseded by event {event_id}: the request finished again.",
    )
    if not disabled:
        _trigger(delivery.pk, here=send_here)
    return delivery


def _create_attempt(**fields: Any) -> WebhookDelivery | None:
    """Insert one attempt; None if another task inserted the same (event_id, attempt) first."""
    try:
        with transaction.atomic():  # a savepoint: a duplicate must not break an outer transaction
            return WebhookDelivery.objects.create(**fields)
    except IntegrityError:
        return None


def _disabled_error(client: ApiClient) -> str:
    when = client.webhook_disabled_at
    stamp = f"{when:%Y-%m-%d %H:%M:%S} UTC" if when else "earlier"
    return f"Not sent: webhooks for this client were disabled {stamp}. {client.webhook_disabled_reason}".strip()


def _trigger(delivery_id: Any, due: datetime | None = None, *, here: bool = False) -> None:
    """Queue an attempt now (or, with `here`, send it from a thread of this process), or
    send it from a thread of this process after a short wait (a timer: retries, which only
    workers schedule). Only a trigger: the row is the schedule, and the sweeper queues a due
    row whose trigger was lost (a worker restart) or whose wait was too long for a timer."""
    delay = 0.0 if due is None else (due - timezone.now()).total_seconds()
    delivery_id = str(delivery_id)
    if delay <= 0 and here:
        transaction.on_commit(lambda: _send_from_thread(delivery_id))
    elif delay <= 0:
        transaction.on_commit(lambda: async_task(TASK, delivery_id))
    elif delay < settings.SWEEP_INTERVAL_MINUTES * 60:

        def start() -> None:
            timer = threading.Timer(delay, _fire, args=(delivery_id,))
            timer.daemon = True
            timer.start()

        transaction.on_commit(start)


def _send_from_thread(delivery_id: str) -> None:
    if Conf.SYNC:  # the queue runs tasks in line (the tests): so does this
        _deliver_logged(delivery_id)
        return

    def run() -> None:
        try:
            _deliver_logged(delivery_id)
        finally:
            connections.close_all()  # this thread's connections only

    # Not a daemon (which a thread started by a timer would be by default): a worker that
    # stops, or is recycled, finishes the attempt before it exits. Killed first, it leaves
    # the row leased; once the lease ends, the sweeper queues it.
    threading.Thread(target=run, name=f"webhook-{delivery_id[:8]}", daemon=False).start()


def _deliver_logged(delivery_id: str) -> None:
    try:
        webhook_deliver(delivery_id=delivery_id)
    except Exception:  # the row stays due (or leased): the sweeper queues it
        logger.exception("webhook delivery %s failed before recording a result", delivery_id)


def _fire(delivery_id: str) -> None:
    """A retry's timer went off, in the worker whose attempt failed: send it from a thread,
    as the first attempt was, rather than queue it behind the image batches."""
    try:
        _send_from_thread(delivery_id)
    except Exception:  # the sweeper queues it instead; a timer thread has nobody to raise to
        logger.exception("could not start webhook delivery %s", delivery_id)
    finally:
        connections.close_all()  # this thread's connections only


# --- Delivering one attempt ------------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    ok: bool = False
    gone: bool = False
    retryable: bool = False
    status_code: int | None = None
    latency_ms: int | None = None
    error: str = ""
    retry_after: float | None = None


def webhook_deliver(*, delivery_id: Any) -> str:
    """Send one due attempt and record how it went: the body of the task
    imageproc.tasks.webhook_deliver. Safe to run twice, late or never (the sweeper).

    2xx: succeeded. 410: disabled, and the client's webhooks with it (the reason is kept).
    3xx (never followed), other 4xx, a refused URL: failed for good. 408, 429, 5xx, timeouts
    and connection errors: failed, and the next attempt is created, due after the next delay
    of WEBHOOK_RETRY_SCHEDULE (with jitter, at least Retry-After), until the schedule runs out.
    Returns the status recorded, or "not due".
    """
    now = timezone.now()
    lease_end = now + timedelta(seconds=float(settings.WEBHOOK_TIMEOUT) + _LEASE_MARGIN)
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_id, status=WebhookStatus.PENDING, next_retry_at__lte=now + _EARLY
    ).update(next_retry_at=lease_end, attempted_at=now)
    if not claimed:
        return "not due"
    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    owner_id = ProcessingRequest.objects.filter(pk=delivery.request_id).values_list("owner_id", flat=True).get()
    client = _client_for(owner_id)
    if client.webhook_disabled_at is not None:
        _finish(delivery, status=WebhookStatus.DISABLED, next_retry_at=None, error=_disabled_error(client))
        return WebhookStatus.DISABLED
    outcome = _send(delivery, client)
    return _record(delivery, client, outcome)


def _send(delivery: WebhookDelivery, client: ApiClient) -> _Outcome:
    started = time.monotonic()

    def elapsed_ms() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        if urlsplit(delivery.url).scheme.lower() != "https":
            webhook_url_check(delivery.url)  # plain http only to exempted hosts, at send too
        timestamp = timezone.now()
        headers = webhook_headers(
            event_id=delivery.event_id,
            body=delivery.payload,
            secrets=signing_secrets(client=client, now=timestamp),
            timestamp=timestamp,
        )
        result = fetch.post(delivery.url, body=delivery.payload.encode(), headers=headers, policy=webhook_policy())
    except WebhookUrlInvalid as exc:
        retryable = exc.reason == "dns_error"  # a DNS failure may pass; a refused address does not
        return _Outcome(retryable=retryable, latency_ms=elapsed_ms(), error=f"{exc.reason}: {exc}")
    except fetch.FetchError as exc:
        retryable = exc.code in _RETRYABLE_FETCH_ERRORS
        return _Outcome(retryable=retryable, latency_ms=elapsed_ms(), error=f"{exc.code}: {exc.message}")

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
        retryable=code in (408, 429) or code >= 500,
        status_code=code,
        latency_ms=latency,
        error=f"HTTP {code}" + (f": {snippet}" if snippet else ""),
        retry_after=parse_retry_after(result.headers.get("Retry-After")),
    )


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or timezone.now())).total_seconds())


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


def _record(delivery: WebhookDelivery, client: ApiClient, outcome: _Outcome) -> str:
    now = timezone.now()
    result = {"status_code": outcome.status_code, "latency_ms": outcome.latency_ms, "error": outcome.error[:_ERROR_MAX]}
    if outcome.ok:
        _finish(delivery, status=WebhookStatus.SUCCEEDED, next_retry_at=None, **result)
        logger.info("webhook %s #%d delivered to %s", delivery.event_id, delivery.attempt, delivery.url)
        return WebhookStatus.SUCCEEDED
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
        return WebhookStatus.DISABLED
    if outcome.retryable and delivery.attempt <= len(settings.WEBHOOK_RETRY_SCHEDULE):
        due = now + timedelta(seconds=retry_delay(attempt=delivery.attempt, retry_after=outcome.retry_after))
        if _finish(delivery, status=WebhookStatus.FAILED, next_retry_at=due, **result):
            following = _create_attempt(
                request_id=delivery.request_id,
                event_id=delivery.event_id,
                event_type=delivery.event_type,
                url=delivery.url,
                attempt=delivery.attempt + 1,
                payload=delivery.payload,
                status=WebhookStatus.PENDING,
                next_retry_at=due,
            )
            if following is not None:
                _trigger(following.pk, due)
        logger.info("webhook %s #%d failed (%s); retry at %s", delivery.event_id, delivery.attempt, outcome.error, due)
        return WebhookStatus.FAILED
    if outcome.retryable:
        result["error"] = f"{outcome.error} (gave up after {delivery.attempt} attempts)"[:_ERROR_MAX]
    _finish(delivery, status=WebhookStatus.FAILED, next_retry_at=None, **result)
    logger.warning("webhook %s #%d failed for good: %s", delivery.event_id, delivery.attempt, result["error"])
    return WebhookStatus.FAILED


# --- Use cases: resend, rotate, configure ----------------------------------------------------


def webhook_resend(*, request: ProcessingRequest) -> WebhookDelivery | None:
    """Send the completion event of a finished request again, now.

    The same webhook-id and body; a new attempt row, to the request's URL or else the
    client's default URL as it is now. A retry already waiting is brought forward instead
    (an attempt in flight is left alone), so one event never has two chains of retries. A
    resend also re-enables the client's webhooks if a 410 had disabled them: whoever resends
    says the receiver is back. A failed resend is retried while the schedule has delays left
    for its attempt number. Returns the attempt; None if there is no webhook URL to send to.
    Raises RequestNotFinished for a request that has not finished.
    """
    fresh = ProcessingRequest.objects.filter(pk=request.pk).first()
    if fresh is None or fresh.status not in FINISHED_STATUSES or fresh.completed_at is None:
        status = fresh.status if fresh else "gone"
        raise RequestNotFinished(f"The request is {status}; its webhook is sent once it has finished.")
    client = _client_for(fresh.owner_id)
    url = fresh.webhook_url or client.default_webhook_url
    if not url:
        return None
    if api_client_enable_webhooks(client=client):
        logger.info("webhooks of client %s re-enabled by a resend", client.pk)
    event_id = event_id_for(request_id=fresh.pk, event_type=EVENT_REQUEST_COMPLETED, completed_at=fresh.completed_at)
    for _ in range(3):
        last = WebhookDelivery.objects.filter(event_id=event_id).order_by("-attempt").first()
        if last is None:
            created = webhook_event_create(request_id=fresh.pk)
            if created is not None:
                return created
            continue  # created by someone else meanwhile
        now = timezone.now()
        if last.status == WebhookStatus.PENDING:
            if WebhookDelivery.objects.filter(
                pk=last.pk, status=WebhookStatus.PENDING, attempted_at__isnull=True
            ).update(next_retry_at=now, url=url):
                _trigger(last.pk)
            last.refresh_from_db()
            return last
        following = _create_attempt(
            request_id=fresh.pk,
            event_id=event_id,
            event_type=last.event_type,
            url=url,
            attempt=last.attempt + 1,
            payload=last.payload,
            status=WebhookStatus.PENDING,
            next_retry_at=now,
        )
        if following is not None:
            _trigger(following.pk)
            return following
    return WebhookDelivery.objects.filter(event_id=event_id).order_by("-attempt").first()


def api_client_rotate_webhook_secret(*, client: ApiClient) -> str:
    """Give the client a new signing secret and return it.

    The old secret becomes `previous_webhook_secret`: for WEBHOOK_SECRET_ROTATION_HOURS after
    the rotation every delivery carries both signatures, space-separated, so the receiver can
    switch secrets at its own pace. Then deliveries carry only the new one, and the sweeper
    clears the old one. Rotating again within that window drops the older secret at once.
    """
    for _ in range(5):
        current = ApiClient.objects.filter(pk=client.pk).values_list("webhook_secret", flat=True).get()
        new = new_webhook_secret()
        now = timezone.now()
        # Conditional on the secret read: two concurrent rotations cannot both keep "previous".
        if ApiClient.objects.filter(pk=client.pk, webhook_secret=current).update(
            webhook_secret=new, previous_webhook_secret=current, webhook_secret_rotated_at=now
        ):
            client.webhook_secret, client.previous_webhook_secret = new, current
            client.webhook_secret_rotated_at = now
            return new
    raise RuntimeError(f"could not rotate the webhook secret of client {client.pk}: concurrent rotations")


def api_client_set_default_webhook_url(*, client: ApiClient, url: str) -> None:
    """Set (or clear, with "") the URL used for the client's requests that have none."""
    if url:
        webhook_url_check(url)
    ApiClient.objects.filter(pk=client.pk).update(default_webhook_url=url)
    client.default_webhook_url = url


# --- The sweeper's part ----------------------------------------------------------------------


def webhook_sweep(*, now: datetime | None = None) -> int:
    """Run from imageproc's sweeper. The database is the schedule, so after any restart:
    queue every due attempt; create the event of a recently finished request that has none
    (its worker died after setting the final status); drop previous secrets whose rotation
    window has passed. Returns how many attempts were queued plus events created."""
    now = now or timezone.now()
    count = 0
    due = (
        WebhookDelivery.objects.filter(status=WebhookStatus.PENDING, next_retry_at__lte=now)
        .order_by("next_retry_at")
        .values_list("id", flat=True)[:_SWEEP_BATCH]
    )
    for delivery_id in list(due):
        async_task(TASK, str(delivery_id))
        count += 1

    rows = list(
        ProcessingRequest.objects.filter(
            status__in=FINISHED_STATUSES,
            updated_at__gte=now - _RECOVERY_WINDOW,
            updated_at__lt=now - _RECOVERY_GRACE,
            completed_at__isnull=False,
        ).values_list("id", "owner_id", "webhook_url", "completed_at")[:_SWEEP_BATCH]
    )
    owners = {owner_id for _, owner_id, url, _ in rows if not url}
    with_default = set(
        ApiClient.objects.filter(user_id__in=owners).exclude(default_webhook_url="").values_list("user_id", flat=True)
    )
    expected = {
        event_id_for(request_id=pk, event_type=EVENT_REQUEST_COMPLETED, completed_at=completed_at): pk
        for pk, owner_id, url, completed_at in rows
        if completed_at is not None and (url or owner_id in with_default)
    }
    existing = set(WebhookDelivery.objects.filter(event_id__in=list(expected)).values_list("event_id", flat=True))
    for event_id, request_id in expected.items():
        if event_id not in existing and webhook_event_create(request_id=request_id) is not None:
            logger.warning("webhook event of request %s was missing; created it", request_id)
            count += 1

    cutoff = now - timedelta(hours=settings.WEBHOOK_SECRET_ROTATION_HOURS)
    ApiClient.objects.filter(webhook_secret_rotated_at__lt=cutoff).exclude(previous_webhook_secret="").update(
        previous_webhook_secret=""
    )
    return count
