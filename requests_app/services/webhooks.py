"""Completion webhooks, the use cases: record a finished request's event, resend it, rotate a
client's signing secret, set a client's default URL (Standard Webhooks 1.0).

* One event per completion of a request: `request.completed`, the final status in the
  payload. Its id (the `webhook-id` header) is derived from the request and its
  `completed_at` (imageproc.engine.signing.event_id_for), so creating it twice (the
  finaliser, then the sweeper's recovery) runs into the unique (event_id, attempt)
  constraint instead of sending twice. A request that is retried and completes again has a
  new `completed_at`, hence a new event.
* One WebhookDelivery row per attempt; the rows are the schedule. Sending, retries and the
  lease are requests_app.services.webhook_delivery; the URL rules webhook_urls; the
  sweeper's part webhook_sweep.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from django.db.models import Count, Sum
from django.utils import timezone

from imageproc.engine.signing import event_id_for
from imageproc.storage import absolute_url
from products.models import ImageOutput, Product, ProductImage
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
from requests_app.services.webhook_delivery import client_for, create_attempt, disabled_error, webhook_queue
from requests_app.services.webhook_urls import webhook_url_check

logger = logging.getLogger(__name__)

EVENT_REQUEST_COMPLETED = "request.completed"
# Images listed one by one in a payload (the first, in row order); the status answer has all.
WEBHOOK_IMAGES_MAX = 100
# What a payload tells of each image: what the engine made of it. No output URL: a payload is
# the same for every attempt and a presigned link would expire; the status answer has them.
_IMAGE_RECORD = (
    "source_url",
    "status",
    "output_format",
    "candidate",
    "quality_chosen",
    "score",
    "bytes_in",
    "bytes_out",
)


class WebhookNotConfigured(ServiceError):
    status_code = 409
    code = "no_webhook_url"


# --- The event ----------------------------------------------------------------------------------


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
            "options": {
                "quality": request.quality_option,
                "output_format": request.output_format,
                "keep_copyright": request.keep_copyright,
            },
            # Small requests whole, large ones their first WEBHOOK_IMAGES_MAX images
            # (images_omitted says how many more the status answer lists).
            "images": _image_records(request),
            "images_omitted": max(0, request.images_total - WEBHOOK_IMAGES_MAX),
        },
    }
    if request.sizes:
        # Renditions: per size, how many images have an output and their bytes. Each
        # image's own list ({size, url, width, height, bytes, format}) is in the status
        # answer: the payload stays small, and the same for every attempt.
        totals = {
            size: (count, total or 0)
            for size, count, total in ImageOutput.objects.filter(request_id=request.pk)
            .order_by()
            .values_list("size")
            .annotate(count=Count("id"), total=Sum("bytes"))
            .values_list("size", "count", "total")
        }
        body["data"]["sizes"] = list(request.sizes)  # type: ignore[index]
        body["data"]["outputs"] = [  # type: ignore[index]
            {"size": size, "images": totals.get(size, (0, 0))[0], "bytes": totals.get(size, (0, 0))[1]}
            for size in request.sizes
        ]
    return json.dumps(body, separators=(",", ":"))


def _image_records(request: ProcessingRequest) -> list[dict[str, Any]]:
    # Two reads of one collection each, not one ordered across the product relation: on
    # MongoDB that would be a join ($lookup). A product has at least one image, so the first
    # WEBHOOK_IMAGES_MAX products hold the first WEBHOOK_IMAGES_MAX images.
    products = list(
        Product.objects.filter(request_id=request.pk)
        .order_by("position")
        .values_list("id", flat=True)[:WEBHOOK_IMAGES_MAX]
    )
    order = {product_id: index for index, product_id in enumerate(products)}
    images = ProductImage.objects.filter(request_id=request.pk, product_id__in=products).values_list(
        "product_id", "position", *_IMAGE_RECORD
    )
    rows = sorted(images, key=lambda row: (order[row[0]], row[1]))[:WEBHOOK_IMAGES_MAX]
    records = []
    for _, _, url, status, fmt, candidate, quality_chosen, score, bytes_in, bytes_out in rows:
        records.append(
            {
                "url": url,
                "status": status,
                "format": fmt or None,
                "candidate": candidate or None,
                "quality_chosen": quality_chosen,
                "score": score,
                "bytes_in": bytes_in,
                "bytes_out": bytes_out,
            }
        )
    return records


def completion_event_id(request: ProcessingRequest) -> str:
    assert request.completed_at is not None
    return event_id_for(request_id=request.pk, event_type=EVENT_REQUEST_COMPLETED, completed_at=request.completed_at)


def webhook_event_create(*, request_id: Any) -> WebhookDelivery | None:
    """Record the completion event of a finished request and queue its first attempt on the
    webhooks queue (never behind image batches; webhook_delivery).

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
    client = client or client_for(request.owner_id)
    event_id = completion_event_id(request)
    if WebhookDelivery.objects.filter(event_id=event_id).exists():
        return None
    disabled = client.webhook_disabled_at is not None
    delivery = create_attempt(
        request_id=request.pk,
        event_id=event_id,
        event_type=EVENT_REQUEST_COMPLETED,
        url=url,
        attempt=1,
        payload=event_payload(request=request),
        status=WebhookStatus.DISABLED if disabled else WebhookStatus.PENDING,
        next_retry_at=None if disabled else timezone.now(),
        error=disabled_error(client) if disabled else "",
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
        webhook_queue(delivery.pk)
    return delivery


# --- Resend, rotate, configure ------------------------------------------------------------------


def webhook_resend(*, request: ProcessingRequest) -> WebhookDelivery:
    """Send the completion event of a finished request again, now.

    The same webhook-id and body; a new attempt row, to the request's URL or else the
    client's default URL as it is now. A retry already waiting is brought forward instead
    (an attempt in flight is left alone), so one event never has two chains of retries. A
    resend also re-enables the client's webhooks if a 410 had disabled them: whoever resends
    says the receiver is back. A failed resend is retried while the schedule has delays left
    for its attempt number. Returns the attempt.
    Raises RequestNotFinished for a request that has not finished, and WebhookNotConfigured
    when it has no webhook URL and its client no default one.
    """
    fresh = ProcessingRequest.objects.filter(pk=request.pk).first()
    if fresh is None or fresh.status not in FINISHED_STATUSES or fresh.completed_at is None:
        status = fresh.status if fresh else "gone"
        raise RequestNotFinished(f"The request is {status}; its webhook is sent once it has finished.")
    client = client_for(fresh.owner_id)
    url = fresh.webhook_url or client.default_webhook_url
    if not url:
        raise WebhookNotConfigured("The request has no webhook URL, and its client no default one.")
    if api_client_enable_webhooks(client=client):
        logger.info("webhooks of client %s re-enabled by a resend", client.pk)
    event_id = completion_event_id(fresh)
    for _ in range(3):
        last = WebhookDelivery.objects.filter(event_id=event_id).order_by("-attempt").first()
        if last is None:
            created = webhook_event_create(request_id=fresh.pk)
            if created is not None:
                return created
            continue  # created by someone else meanwhile
        if last.status == WebhookStatus.PENDING:
            if WebhookDelivery.objects.filter(
                pk=last.pk, status=WebhookStatus.PENDING, attempted_at__isnull=True
            ).update(next_retry_at=timezone.now(), url=url):
                webhook_queue(last.pk)
            last.refresh_from_db()
            return last
        following = create_attempt(
            request_id=fresh.pk,
            event_id=event_id,
            event_type=last.event_type,
            url=url,
            attempt=last.attempt + 1,
            payload=last.payload,
            status=WebhookStatus.PENDING,
            next_retry_at=timezone.now(),
        )
        if following is not None:
            webhook_queue(following.pk)
            return following
    latest = WebhookDelivery.objects.filter(event_id=event_id).order_by("-attempt").first()
    assert latest is not None  # three rounds, each of which saw or made a row
    return latest


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
