"""What a batch task does: the fairest work, for IMAGE_STEAL_SECONDS at most.

A batch task names a request and some of its images, as it always did; the images are
still claimed by the conditional UPDATE of image_process, so a task delivered twice, lost,
or run after its images were taken changes nothing twice. What changed is what the task
serves: its batch of first attempts goes to the request that imageproc.pipeline.fairness
says is owed a worker, which is its own unless another client (or an older request of its
own client) is; and when its stream has stopped (its request ran out, or another request is
owed the worker), it goes on with the next fairest work until its time is up, instead of
leaving the worker to the next task in the queue. Every batch task is thus a work token:
the queue's order no longer decides who is served, the database does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from django.conf import settings

from imageproc.pipeline import fairness
from imageproc.pipeline.process import image_process

logger = logging.getLogger(__name__)

# Looks for work that another worker took first before giving up (each look is a claim
# that changed nothing).
MAX_EMPTY_LOOKS = 5


def images_work(*, request_id: Any, image_ids: Sequence[Any]) -> None:
    """Process a batch, or the fairer work it yields to, then more fair work while the
    task's IMAGE_STEAL_SECONDS last. A batch that holds a retry or an image set aside is
    processed as it is, alone (a retry must not take others down with it)."""
    if not settings.IMAGE_FAIR_SHARE:
        image_process(request_id=request_id, image_ids=image_ids)
        return
    deadline = time.monotonic() + settings.IMAGE_STEAL_SECONDS
    fairness.mark_rates()
    if not fairness.fresh_only(list(image_ids)):
        image_process(request_id=request_id, image_ids=image_ids)
        return
    chosen = fairness.choose(current=request_id)
    if chosen is not None and not fairness.same_request(chosen, request_id):
        # Our images stay pending and queued: a stream of their request, or a later task,
        # takes them when it is their request's turn.
        ids = fairness.fresh_batch(chosen)
        if ids:
            logger.debug("a batch of request %s serves request %s first", request_id, chosen)
            request_id, image_ids = chosen, ids
    image_process(request_id=request_id, image_ids=image_ids)
    empty = 0
    while time.monotonic() < deadline and empty < MAX_EMPTY_LOOKS:
        chosen = fairness.choose()
        if chosen is None:
            return
        ids = fairness.fresh_batch(chosen)
        if not ids:
            empty += 1
            continue
        image_process(request_id=chosen, image_ids=ids)
