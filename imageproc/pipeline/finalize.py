"""Finalisation: once every image of a request has ended, exactly one task writes its output
CSV, sets its final status and sends its completion webhook.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db.models import F
from django.utils import timezone
from django_q.tasks import async_task

from imageproc.engine.naming import csv_output_name
from imageproc.pipeline.transient import retry_call
from imageproc.storage import storage_error_is_transient
from requests_app.models import ProcessingRequest, RequestStatus
from requests_app.selectors import request_output_csv
from requests_app.services import webhooks

logger = logging.getLogger(__name__)


def request_try_finalize(*, request_id: Any, here: bool = False) -> bool:
    """Claim the request's finalisation if every image has ended. Exactly one caller wins
    the conditional UPDATE, and only the winner finalises: at once in this process with
    `here` (an image task, which ended the request), else through the queue."""
    won = ProcessingRequest.objects.filter(
        pk=request_id,
        status__in=(RequestStatus.PENDING, RequestStatus.PROCESSING),
        images_total=F("images_done") + F("images_failed"),
    ).update(status=RequestStatus.FINALIZING, updated_at=timezone.now())
    if won and here:
        try:
            request_finalize(request_id=request_id)
        except Exception:  # S3 or the database still down after their retries
            logger.exception("request %s: finalisation failed; queued to be tried again", request_id)
            _queue_finalize(request_id)
    elif won:
        _queue_finalize(request_id)
    return bool(won)


def _queue_finalize(request_id: Any) -> None:
    try:
        async_task("imageproc.tasks.finalize_request", str(request_id))
    except Exception:
        # The broker is down too. The request stays `finalizing`; the sweeper runs its
        # finalisation again once it has been quiet for IMAGE_LEASE_SECONDS.
        logger.exception("request %s: could not queue its finalisation; the sweeper will run it", request_id)


def request_finalize(*, request_id: Any) -> str | None:
    """Write the output CSV and set the final status. Idempotent: it acts only on a
    request in `finalizing`, which exactly one task claimed (request_try_finalize)."""
    request = ProcessingRequest.objects.filter(pk=request_id, status=RequestStatus.FINALIZING).first()
    if request is None:
        return None
    name = csv_output_name(request.pk)
    # As GET /csv/output answers by default: in the upload's columns and dialect.
    output = request_output_csv(request=request)
    content = b"".join(output.chunks)

    def save() -> str:
        csv_file = ContentFile(content, name=name)
        csv_file.content_type = output.content_type  # type: ignore[attr-defined]
        return default_storage.save(name, csv_file)

    # The storage briefly down: tried again with backoff, as image uploads are.
    saved = retry_call(
        save, transient=storage_error_is_transient, budget=settings.STORAGE_RETRY_SECONDS, what=f"storing {name}"
    )
    final = request.final_status()
    now = timezone.now()
    changed = ProcessingRequest.objects.filter(pk=request.pk, status=RequestStatus.FINALIZING).update(
        status=final, completed_at=now, updated_at=now, output_csv_name=saved
    )
    if changed:
        logger.info("request %s finished: %s", request.pk, final)
        request_finished(request_id=request.pk)
    return final


def request_finished(*, request_id: Any) -> None:
    """What follows a request's end (in the worker that finalised it): its completion
    webhook. This records the event and queues it on the webhooks' own queue, never behind
    image batches nor waiting for the receiver. If it fails, the sweeper creates the event
    later (requests_app.services.webhook_sweep), so the request's end is not undone."""
    try:
        webhooks.webhook_event_create(request_id=request_id)
    except Exception:
        logger.exception("request %s: could not create its webhook event; the sweeper will", request_id)
