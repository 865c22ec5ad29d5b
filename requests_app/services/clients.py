"""Use cases of API clients: onboarding, keys, and their webhook settings."""

from __future__ import annotations

import logging

from django.contrib.auth import get_user_model
from django.utils import timezone

from requests_app.models import (
    ApiClient,
    ApiKey,
)

logger = logging.getLogger(__name__)


def api_client_create(*, name: str) -> tuple[ApiClient, bool]:
    """The client called `name` (a user), created if missing."""
    user, _ = get_user_model().objects.get_or_create(username=name)
    client, created = ApiClient.objects.get_or_create(user=user)
    return client, created


def api_key_create(*, client: ApiClient) -> str:
    """A new key for the client. The raw key is returned once and never stored."""
    raw, prefix = ApiKey.generate()
    ApiKey.objects.create(client=client, prefix=prefix, key_hash=ApiKey.hash(raw))
    return raw


def api_key_revoke(*, prefix: str) -> ApiKey | None:
    key = ApiKey.objects.filter(prefix=prefix).first()
    if key and key.revoked_at is None:
        ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        key.refresh_from_db()
    return key


def api_client_enable_webhooks(*, client: ApiClient) -> bool:
    """Deliver the client's webhooks again after a 410 disabled them (the admin's switch; a
    resend does the same). Returns whether they were disabled."""
    enabled = ApiClient.objects.filter(pk=client.pk, webhook_disabled_at__isnull=False).update(
        webhook_disabled_at=None, webhook_disabled_reason=""
    )
    client.webhook_disabled_at, client.webhook_disabled_reason = None, ""
    return bool(enabled)


def api_client_set_weight(*, client: ApiClient, weight: float) -> None:
    """Set the client's share of the workers against other clients with work at the same
    time (imageproc.pipeline.fairness, docs/sharing.md). The workers read it within seconds."""
    field = ApiClient._meta.get_field("weight")
    field.run_validators(weight)  # 0.1 to 100: a client of weight 0 would never be served
    ApiClient.objects.filter(pk=client.pk).update(weight=weight)
    client.weight = weight
