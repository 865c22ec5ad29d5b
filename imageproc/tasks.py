"""django-q2 task entry points: thin shells that load by id and call the pipeline.

Tasks are queued by these dotted names (strings), so that no lower layer imports this one.
"""

from __future__ import annotations

from imageproc.pipeline.dispatch import images_dispatch
from imageproc.pipeline.finalize import request_finalize
from imageproc.pipeline.sweep import sweep as sweep_all
from imageproc.pipeline.work import images_work
from requests_app.services.webhook_delivery import webhook_deliver as deliver


def dispatch_request(request_id: str) -> int:
    return images_dispatch(request_id=request_id, process_first=True)


def process_images(request_id: str, image_ids: list[str]) -> None:
    images_work(request_id=request_id, image_ids=image_ids)


def finalize_request(request_id: str) -> str | None:
    return request_finalize(request_id=request_id)


def webhook_deliver(delivery_id: str) -> str:
    """Run by the webhooks' own cluster (settings.WEBHOOK_QUEUE), never by the image workers."""
    return deliver(delivery_id=delivery_id)


def sweep() -> str:
    return str(sweep_all())
