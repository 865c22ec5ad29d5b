"""The sweeper's part of webhooks: the database is the schedule, so whatever a restart, a
dead worker or a lost task left behind is found again from the rows."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from imageproc.engine.signing import event_id_for
from requests_app.models import FINISHED_STATUSES, ApiClient, ProcessingRequest, WebhookDelivery, WebhookStatus
from requests_app.services.webhook_delivery import webhook_queue
from requests_app.services.webhooks import EVENT_REQUEST_COMPLETED, webhook_event_create

logger = logging.getLogger(__name__)

# Finished requests this recent are checked for a missing event: a worker that died between
# setting the final status and creating the event would otherwise lose it.
_RECOVERY_WINDOW = timedelta(hours=1)
_RECOVERY_GRACE = timedelta(seconds=30)
_SWEEP_BATCH = 1000


def webhook_sweep(*, now: datetime | None = None) -> int:
    """Run from imageproc's sweeper. After any restart: queue every due attempt (a retry
    whose time has come, an attempt whose task was lost, one whose worker died once its
    lease has ended), through the one way in (webhook_delivery.webhook_queue); create the
    event of a recently finished request that has none (its worker died after setting the
    final status); drop previous secrets whose rotation window has passed. Returns how many
    attempts were queued plus events created."""
    now = now or timezone.now()
    count = 0
    due = (
        WebhookDelivery.objects.filter(status=WebhookStatus.PENDING, next_retry_at__lte=now)
        .order_by("next_retry_at")
        .values_list("id", flat=True)[:_SWEEP_BATCH]
    )
    for delivery_id in list(due):
        webhook_queue(delivery_id)
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
