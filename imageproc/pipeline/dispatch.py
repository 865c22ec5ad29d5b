"""Dispatch: a request's pending images become batch tasks in the queue."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.utils import timezone
from django_q.tasks import async_task

from imageproc.pipeline.process import image_process
from products.models import ImageStatus, ProductImage

logger = logging.getLogger(__name__)


def batches_by_url(images: Iterable[tuple[Any, str]], *, batch_size: int) -> list[list[str]]:
    """Split (image id, source key) pairs into batches of at most `batch_size` distinct URLs.
    Every copy of one URL lands in the same batch, so it is fetched and compressed once."""
    by_key: dict[str, list[str]] = defaultdict(list)
    for image_id, key in images:
        by_key[key].append(str(image_id))
    batches: list[list[str]] = []
    current: list[str] = []
    distinct = 0
    for ids in by_key.values():
        if distinct == batch_size:
            batches.append(current)
            current, distinct = [], 0
        current.extend(ids)
        distinct += 1
    if current:
        batches.append(current)
    return batches


def images_dispatch(
    *, request_id: Any, only_unqueued: bool = False, batch_size: int | None = None, process_first: bool = False
) -> int:
    """Queue every pending image of a request in batches; return the number of batches.

    The upload queues one dispatch task rather than thousands of batch tasks, so that the
    web request stays short whatever the size of the CSV. That task (`process_first`)
    queues all batches but the first, then processes the first itself: the request starts
    one queue poll sooner, and a worker that dies on it leaves the other batches queued.
    """
    pending = ProductImage.objects.filter(request_id=request_id, status=ImageStatus.PENDING)
    if only_unqueued:
        pending = pending.filter(queued_at__isnull=True)
    rows = list(pending.order_by("source_key").values_list("id", "source_key"))
    if not rows:
        return 0
    ProductImage.objects.filter(pk__in=[r[0] for r in rows], status=ImageStatus.PENDING).update(
        queued_at=timezone.now()
    )
    batches = batches_by_url(rows, batch_size=batch_size or settings.IMAGE_BATCH_SIZE)
    for ids in batches[1:] if process_first else batches:
        async_task("imageproc.tasks.process_images", str(request_id), ids, group=str(request_id))
    if process_first:
        image_process(request_id=request_id, image_ids=batches[0])
    return len(batches)
