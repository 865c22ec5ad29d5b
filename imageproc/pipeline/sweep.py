"""The sweeper: brings every image and request towards an end state, whatever the broker
lost or a crash left behind.

It runs every IMAGE_SWEEP_SECONDS in one worker process of the deployment (a thread of
each worker process takes its turn: imageproc.pipeline.background), every
SWEEP_INTERVAL_MINUTES from django-q2's scheduler, and from `manage.py sweep`. Every step is
a conditional UPDATE, so two sweeps at once change nothing twice.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, Q
from django.utils import timezone
from django_q.brokers import Broker, get_broker
from django_q.tasks import async_task

from imageproc.pipeline.dispatch import images_dispatch
from imageproc.pipeline.finalize import request_finalize, request_try_finalize
from imageproc.pipeline.records import record_failed
from imageproc.pipeline.transient import db_is_transient, note_db_trouble, seconds_since_db_trouble
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
    # Parts of the sweep that failed (a dependency down); the next sweep tries them again.
    errors: int = 0

    def __bool__(self) -> bool:
        return any(vars(self).values())


def sweep(*, now: datetime | None = None) -> SweepReport:
    """Bring every image and request towards an end state, whatever the broker lost.

    - `processing` images whose lease ran out belong to a worker that died (a live one
      renews it, imageproc.pipeline.leases): re-queued alone (a crash may be theirs), or
      failed once they have used IMAGE_MAX_ATTEMPTS;
    - `pending` images set aside after a transient error are queued again when their time
      comes; images queued before the broker restarted (Redis loses its queue), or long ago
      while the broker holds nothing, are queued again;
    - requests whose images have all ended are reconciled from the rows and finalised;
      a finalisation that died half-way is run again.

    Each part runs even if another failed (the database, the broker or the storage down):
    the report counts the failed parts in `errors`.
    """
    now = now or timezone.now()
    report = SweepReport()
    parts: list[Callable[[datetime, SweepReport], None]] = [
        _take_back_dead_claims,
        _queue_waiting_images,
        _finish_quiet_requests,
        _rerun_dead_finalisations,
    ]
    for part in parts:
        try:
            part(now, report)
        except Exception as exc:
            report.errors += 1
            if db_is_transient(exc):
                note_db_trouble()
                connection.close()
            logger.exception("sweep: %s failed", part.__name__.strip("_").replace("_", " "))
    # Due webhook retries live in the database, not only in the queue: a restart loses none.
    try:
        report.webhooks = webhook_sweep(now=now)
    except Exception:  # a webhook problem must not stop the image sweep from finishing
        report.errors += 1
        logger.exception("sweep: webhooks failed")
    if report:
        logger.info("sweep: %s", report)
    return report


def _take_back_dead_claims(now: datetime, report: SweepReport) -> None:
    trouble = seconds_since_db_trouble()
    if trouble is not None and trouble < settings.IMAGE_LEASE_SECONDS:
        # The database was unreachable a moment ago: live workers could not renew their
        # leases either. Give them one lease period to do so before judging any claim.
        return
    stale = ProductImage.objects.filter(
        Q(lease_until__lt=now)
        # Claimed by a worker of an earlier version, which sets no lease.
        | Q(lease_until__isnull=True, claimed_at__lt=now - timedelta(seconds=settings.IMAGE_STALE_AFTER)),
        status=ImageStatus.PROCESSING,
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
            if request_try_finalize(request_id=request_id, here=True):
                report.refinalized += 1
            continue
        reset = ProductImage.objects.filter(pk=image_id, claim_token=token, status=ImageStatus.PROCESSING).update(
            status=ImageStatus.PENDING, claim_token="", lease_until=None, queued_at=now
        )
        if not reset:
            continue
        report.reset += 1
        try:
            # Alone in its batch: if it crashes the worker again, it takes nobody with it.
            async_task("imageproc.tasks.process_images", str(request_id), [str(image_id)], group=str(request_id))
        except Exception:
            # The broker is down: due at once, the next sweep queues it.
            ProductImage.objects.filter(pk=image_id, status=ImageStatus.PENDING, queued_at=now).update(
                queued_at=None, retry_at=now
            )
            raise
        report.dispatched += 1


def queue_due_images(*, now: datetime | None = None) -> int:
    """Queue the images set aside after a transient error whose time has come (and those a
    dispatch could not queue, the broker being down); return the number of batches. The
    light part of the sweep, run every second (imageproc.pipeline.background)."""
    now = now or timezone.now()
    return _dispatch(Q(status=ImageStatus.PENDING, retry_at__lte=now, queued_at__isnull=True))


def _dispatch(images: Q) -> int:
    by_request: dict[Any, list[Any]] = defaultdict(list)
    for request_id, image_id in ProductImage.objects.filter(images).order_by().values_list("request_id", "id"):
        by_request[request_id].append(image_id)
    return sum(images_dispatch(request_id=request_id, image_ids=ids) for request_id, ids in by_request.items())


def _queue_waiting_images(now: datetime, report: SweepReport) -> None:
    """Queue the pending images that no task in the broker will claim: set aside and due
    now, queued before the broker lost its queue, or queued long ago while it is empty."""
    report.dispatched += queue_due_images(now=now)
    broker = get_broker()
    lost_before = _tasks_lost_before(broker, now)
    if lost_before is None:
        return
    report.dispatched += _dispatch(Q(status=ImageStatus.PENDING, queued_at__lt=lost_before))

    # Requests whose dispatch task never ran (queued_at and retry_at still empty).
    fresh = (
        ProductImage.objects.filter(status=ImageStatus.PENDING, queued_at__isnull=True, retry_at__isnull=True)
        .order_by()
        .values_list("request_id", flat=True)
        .distinct()
    )
    for request_id in ProcessingRequest.objects.filter(pk__in=list(fresh), created_at__lt=lost_before).values_list(
        "id", flat=True
    ):
        report.dispatched += images_dispatch(request_id=request_id, only_unqueued=True)


def _tasks_lost_before(broker: Broker, now: datetime) -> datetime | None:
    """Tasks queued before this were lost, if images queued then are still pending: those
    queued before the Redis broker (re)started (without persistence a restart empties its
    queue), and, when the queue is empty, those queued more than IMAGE_ORPHAN_AFTER ago.
    (A task a cluster has taken but not started yet is in neither; queueing its images
    again only makes one of the two tasks find nothing to claim.)"""
    candidates = []
    started = _broker_started_at(broker, now)
    if started is not None:
        candidates.append(started)
    if broker.queue_size() == 0:
        candidates.append(now - timedelta(seconds=settings.IMAGE_ORPHAN_AFTER))
    return max(candidates) if candidates else None


def _broker_started_at(broker: Broker, now: datetime) -> datetime | None:
    """When the Redis server behind the broker started (None for the ORM broker)."""
    if type(broker).__name__ != "Redis":
        return None
    uptime = broker.connection.info("server")["uptime_in_seconds"]
    # A second's margin: uptime is whole seconds, and images queued in the very second
    # the server started are in its queue.
    return now - timedelta(seconds=int(uptime) + 1)


def _finish_quiet_requests(now: datetime, report: SweepReport) -> None:
    quiet = now - timedelta(seconds=settings.IMAGE_ORPHAN_AFTER)
    for request in ProcessingRequest.objects.filter(
        status__in=(RequestStatus.PENDING, RequestStatus.PROCESSING), updated_at__lt=quiet
    ).only("id", "images_total", "images_done", "images_failed"):
        if _reconcile(request):
            report.reconciled += 1
        if request_try_finalize(request_id=request.pk, here=True):
            report.refinalized += 1


def _rerun_dead_finalisations(now: datetime, report: SweepReport) -> None:
    """A finalisation that died (its worker, or the storage or the broker down) leaves its
    request `finalizing`: run it again here, once it has been quiet for a lease."""
    quiet = now - timedelta(seconds=settings.IMAGE_LEASE_SECONDS)
    dead = ProcessingRequest.objects.filter(status=RequestStatus.FINALIZING, updated_at__lt=quiet)
    for request_id in dead.values_list("id", flat=True):
        # Claim this run: a sweep elsewhere skips it until it is quiet again.
        if dead.filter(pk=request_id).update(updated_at=now):
            request_finalize(request_id=request_id)
            report.refinalized += 1


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
