"""Dispatch: a request's pending images become batch tasks in the queue."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from django.conf import settings
from django.utils import timezone
from django_q.tasks import async_task

from imageproc.pipeline.records import pending_due
from imageproc.pipeline.work import images_work
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
    *,
    request_id: Any,
    only_unqueued: bool = False,
    batch_size: int | None = None,
    process_first: bool = False,
    image_ids: Sequence[Any] | None = None,
) -> int:
    """Queue every pending image of a request (of `image_ids`, if given) in batches; return
    the number of batches. Images set aside until later are left for their time.

    The upload queues one dispatch task rather than thousands of batch tasks, so that the
    web request stays short whatever the size of the CSV. That task (`process_first`)
    queues all batches but the first, then processes the first itself: the request starts
    one queue poll sooner, and a worker that dies on it leaves the other batches queued.

    With the broker down, the batches that could not be queued are marked unqueued again
    (the sweeper queues them once it is back), and the dispatch task still processes its own.
    """
    now = timezone.now()
    pending = ProductImage.objects.filter(pending_due(now), request_id=request_id)
    if only_unqueued:
        pending = pending.filter(queued_at__isnull=True)
    if image_ids is not None:
        pending = pending.filter(pk__in=list(image_ids))
    rows = list(pending.order_by("source_key").values_list("id", "source_key"))
    if not rows:
        return 0
    ProductImage.objects.filter(pk__in=[r[0] for r in rows], status=ImageStatus.PENDING).update(queued_at=now)
    batches = batches_by_url(rows, batch_size=batch_size or settings.IMAGE_BATCH_SIZE)
    to_queue = batches[1:] if process_first else batches
    for n, ids in enumerate(to_queue):
        try:
            async_task("imageproc.tasks.process_images", str(request_id), ids, group=str(request_id))
        except Exception:
            unqueued = [image_id for batch in to_queue[n:] for image_id in batch]
            # Due at once: the next sweep after the broker is back queues them.
            ProductImage.objects.filter(pk__in=unqueued, status=ImageStatus.PENDING, queued_at=now).update(
                queued_at=None, retry_at=now
            )
            if not process_first:
                raise
            logger.exception("request %s: %d images could not be queued; the sweeper will", request_id, len(unqueued))
            break
    if process_first:
        images_work(request_id=request_id, image_ids=batches[0])
    return len(batches)
