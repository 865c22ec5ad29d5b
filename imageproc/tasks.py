"""django-q2 task entry points: thin shells that load by id and call a service."""

from __future__ import annotations

from imageproc import services


def dispatch_request(request_id: str) -> int:
    return services.images_dispatch(request_id=request_id, process_first=True)


def process_images(request_id: str, image_ids: list[str]) -> None:
    services.image_process(request_id=request_id, image_ids=image_ids)


def sweep() -> str:
    return str(services.sweep())
