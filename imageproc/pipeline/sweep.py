"""The sweeper: brings every image and request towards an end state, whatever the broker
lost or a crash left behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Q
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.tasks import async_task

from imageproc.pipeline.dispatch import images_dispatch
from imageproc.pipeline.finalize import request_try_finalize
from imageproc.pipeline.records import record_failed
from products.models import ImageStatus, ProductImage
from requests_app.models import ProcessingRequest, RequestStatus
from requests_app.services.webhook_sweep import webhook_sweep

logger = logging.getLogger(__name__)


@dataclass
class SweepReport:
    reset: int = 0
    gave_up: int = 0
    dispatched: int = 0
    reconciled: int = 0
    refinalized: int = 0
    webhooks: int = 0

    def __bool__(self) -> bool:
        return any(vars(self).values())


def sweep(*, now: Any = None) -> SweepReport:
    """Bring every image and request towards an end state, whatever the broker lost.

    - `processing` images whose claim is older than IMAGE_STALE_AFTER belong to a worker
      that died or timed out: re-queued alone (a crash may be theirs), or failed once
      they have used IMAGE_MAX_ATTEMPTS;
    - `pending` images never queued, or queued long ago while the broker holds nothing
      (the Redis broker loses in-flight tasks on a crash), are queued again;
    - requests whose images have all ended are reconciled from the rows and finalised;
      a finalisation that died half-way is run again.
    """
    now = now or timezone.now()
    report = SweepReport()

    stale = ProductImage.objects.filter(
        status=ImageStatus.PROCESSING, claimed_at__lt=now - timedelta(seconds=settings.IMAGE_STALE_AFTER)
    )
    # order_by() keeps these reads on one table/collection (see image_process).
    for request_id, image_id, attempts, token in stale.order_by().values_list(
        "request_id", "id", "attempts", "claim_token"
    ):
        if attempts >= settings.IMAGE_MAX_ATTEMPTS:
            report.gave_up += record_failed(
                request_id,
                token,
                [image_id],
                "too_many_attempts",
                f"The worker processing this image stopped (crash or timeout) {attempts} times.",
            )
            # It may have been the request's last image: nobody else will claim the end.
            if request_try_finalize(request_id=request_id):
                report.refinalized += 1
            continue
        reset = ProductImage.objects.filter(pk=image_id, claim_token=token, status=ImageStatus.PROCESSING).update(
            status=ImageStatus.PENDING, claim_token="", queued_at=now
        )
        if reset:
            report.reset += 1
            # Alone in its batch: if it crashes the worker again, it takes nobody with it.
            async_task("imageproc.tasks.process_images", str(request_id), [str(image_id)], group=str(request_id))
            report.dispatched += 1

    orphaned = Q(queued_at__isnull=True)
    if get_broker().queue_size() == 0:
        orphaned |= Q(queued_at__lt=now - timedelta(seconds=settings.IMAGE_ORPHAN_AFTER))
    request_ids = set(
        ProductImage.objects.filter(orphaned, status=ImageStatus.PENDING)
        .order_by()
        .values_list("request_id", flat=True)
        .distinct()
    )
    for request_id in request_ids:
        report.dispatched += images_dispatch(request_id=request_id)

    quiet = now - timedelta(seconds=settings.IMAGE_ORPHAN_AFTER)
    for request in ProcessingRequest.objects.filter(
        status__in=(RequestStatus.PENDING, RequestStatus.PROCESSING), updated_at__lt=quiet
    ).only("id", "images_total", "images_done", "images_failed"):
        if _reconcile(request):
            report.reconciled += 1
        if request_try_finalize(request_id=request.pk):
            report.refinalized += 1

    for request_id in ProcessingRequest.objects.filter(
        status=RequestStatus.FINALIZING, updated_at__lt=now - timedelta(seconds=settings.IMAGE_STALE_AFTER)
    ).values_list("id", flat=True):
        ProcessingRequest.objects.filter(pk=request_id, status=RequestStatus.FINALIZING).update(updated_at=now)
        async_task("imageproc.tasks.finalize_request", str(request_id))
        report.refinalized += 1

    # Due webhook retries live in the database, not only in the queue: a restart loses none.

    try:
        report.webhooks = webhook_sweep(now=now)
    except Exception:  # a webhook problem must not stop the image sweep from finishing
        logger.exception("sweep: webhooks failed")

    if report:
        logger.info("sweep: %s", report)
    return report


def _reconcile(request: ProcessingRequest) -> bool:
    """Recount a quiet request's counters from its rows. A worker that died between
    moving an image and counting it leaves them one short; the rows are the truth."""
    # order_by(): SQL drops Meta.ordering from a GROUP BY, MongoDB's backend still joins for it.
    counts = dict(
        ProductImage.objects.filter(request_id=request.pk)
        .order_by()
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    done, failed = counts.get(ImageStatus.DONE, 0), counts.get(ImageStatus.FAILED, 0)
    if (done, failed) == (request.images_done, request.images_failed):
        return False
    logger.warning(
        "request %s: counters %s/%s reconciled to %s/%s",
        request.pk,
        request.images_done,
        request.images_failed,
        done,
        failed,
    )
    ProcessingRequest.objects.filter(pk=request.pk).update(images_done=done, images_failed=failed)
    return True
