"""django-q2 task entry points for requests."""

from __future__ import annotations

from requests_app import services, webhooks


def finalize_request(request_id: str) -> str | None:
    return services.request_finalize(request_id=request_id)


def webhook_deliver(delivery_id: str) -> str:
    return webhooks.webhook_deliver(delivery_id=delivery_id)
